"""The `gemma-lsp` command: serve, complete, prepare, doctor, bench."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from .config import COMPLETE_BUDGET_MS, FIELDS, RETRIEVAL, Settings
from .errors import GemmaLspError, exit_status

MODEL_FLAGS = ("model", "draftModel", "drafter", "maxTokens", "dtype", "device", "retrieval")
BACKEND_FLAGS = ("backend", "backendModel", "apiKeyEnv")


def add_setting_flags(p: argparse.ArgumentParser, keys: tuple[str, ...], **defaults: Any) -> None:
    """`--kebab-case` flags for settings, generated from the schema (config.FIELDS): its
    help, choices and type. A flag left out is None, so the client's setting stands."""
    for key in keys:
        f = FIELDS[key]
        check = f.metadata["check"]
        default = defaults.get(f.name)
        shown = default if default is not None else f.default
        p.add_argument("--" + f.name.replace("_", "-"), dest=f.name, default=default,
                       choices=getattr(check, "choices", None), type=getattr(check, "kind", str),
                       help=f.metadata["doc"] + (f" (default {shown})" if shown is not None else ""))


def flag_settings(args: argparse.Namespace) -> dict[str, object]:
    """The settings given on the command line (they override the client's)."""
    return {key: getattr(args, f.name) for key, f in FIELDS.items()
            if f.metadata["flag"] and getattr(args, f.name, None) is not None}


def settings_of(args: argparse.Namespace) -> Settings:
    return Settings().merged(flag_settings(args))


def parse_location(loc: str) -> tuple[Path, int, int]:
    try:
        file, line, col = loc.rsplit(":", 2)
        return Path(file), int(line), int(col)
    except ValueError:
        raise GemmaLspError(f"expected FILE:LINE:COL (1-based), got {loc!r}") from None


def cursor_offset(text: str, line: int, col: int) -> int:
    """Index of 1-based (line, column in characters), with LSP line ends (\\n, \\r\\n, \\r)."""
    from .text import line_starts

    starts = line_starts(text)
    if not 1 <= line <= len(starts):
        raise GemmaLspError(f"line {line} is out of range: the file has {len(starts)} lines")
    begin = starts[line - 1]
    end = starts[line] if line < len(starts) else len(text)
    content = text[begin:end].rstrip("\r\n")
    if not 1 <= col <= len(content) + 1:
        raise GemmaLspError(f"column {col} is out of range: line {line} has {len(content)} characters")
    return begin + col - 1


def cmd_complete(args: argparse.Namespace) -> int:
    from .complete.completer import Completer, Snapshot, language_of

    path, line, col = parse_location(args.location)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise GemmaLspError(f"cannot read {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise GemmaLspError(f"{path} is not UTF-8 text") from None
    offset = cursor_offset(text, line, col)
    settings = settings_of(args)
    t0 = time.perf_counter()
    completer = Completer.from_settings(settings)
    load_ms = (time.perf_counter() - t0) * 1e3
    snap = Snapshot(uri=path.resolve().as_uri(), text=text, offset=offset, language=language_of(path), path=path.name)
    for i in range(args.repeat):
        c = completer.complete(snap, settings, instant=False)
        if args.json:
            d = c.as_dict()
            d.update(load_ms=round(load_ms, 1), run=i + 1)
            print(json.dumps(d))
        else:
            if i == args.repeat - 1:
                print(c.text)
            s = c.stats
            print(
                f"[{c.model}] {s.tokens} tokens in {c.latency_ms:.0f} ms (prefill {s.prefill_ms:.0f} ms, "
                f"{s.reused_tokens}/{s.prompt_tokens} prompt tokens reused; decode {s.decode_ms:.0f} ms, "
                f"{s.target_forwards} target forwards, {s.accepted}/{s.drafted} drafted accepted, drafter {s.drafter}); "
                f"model load {load_ms:.0f} ms",
                file=sys.stderr,
            )
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from .models.cost_cache import curve_for
    from .models.loader import load, pick_device, resolve
    from .quant.model import quant_path

    t0 = time.perf_counter()
    path, _ = resolve(args.model)
    tokenizer = None
    if quant_path(path).is_file() and pick_device("auto").type == "cpu":
        # The CPU default runs the GGUF's weights: measure the forward-cost curve now, once,
        # rather than on the first completion (~10 s).
        loaded = load(args.model)
        tokenizer = loaded.tokenizer
        curve = curve_for(loaded, refresh=args.remeasure)
        print(f"forward cost (ms by tokens): {', '.join(f'{k}: {v:.0f}' for k, v in curve.ms.items())}; "
              f"quantized kernels up to {curve.max_rows} tokens", file=sys.stderr)
    if args.retrieval == "stdlib":  # index the retrieval corpus now, not at the first completion
        from transformers import AutoTokenizer

        from .models.corpus import index_for

        index = index_for(tokenizer or AutoTokenizer.from_pretrained(path, local_files_only=True))
        print(f"retrieval corpus: {len(index) if index else 0} tokens", file=sys.stderr)
    print(f"ready: {path} ({time.perf_counter() - t0:.1f} s)")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .lsp.main import serve

    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # pygls logs whole messages (document text) at INFO, and values in its errors: keep
    # them out of logs unless asked.
    logging.getLogger("pygls").setLevel(logging.DEBUG if args.log_protocol else logging.WARNING)
    if not args.log_protocol:
        from .lsp.logs import withhold_protocol_values

        withhold_protocol_values()
    settings_of(args)  # validate flags before starting
    serve(flag_settings(args), tcp_port=args.tcp)
    return 0


def cmd_engine(args: argparse.Namespace) -> int:
    from . import threads
    from .backends import inprocess
    from .backends.daemon import Daemon
    from .backends.local import hold_lock, socket_path

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = settings_of(args)
    path = Path(args.socket) if args.socket else socket_path(settings)
    lock = hold_lock(path)
    if lock is None:  # started twice at once: the first one serves
        print(f"gemma-lsp engine: another engine already serves {path}", file=sys.stderr)
        return 0
    t0 = time.perf_counter()
    threads.watch()
    built = inprocess.from_settings(settings)
    daemon = Daemon(built.engine, built.target.tokenizer, built.target.name, path, idle_s=args.idle_exit)
    threads.register()  # shares the cores with any other engine process of this user
    daemon.bind()
    logging.getLogger("gemma_lsp.engine").info("engine ready on %s (pid %d, model %s, %s; %.1f s)", path, os.getpid(),
                                               built.target.name, built.target.weights, time.perf_counter() - t0)
    daemon.serve_forever()
    lock.close()
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from .doctor import doctor

    return doctor(settings_of(args))


def benchmarks_root(package: Path = Path(__file__).resolve().parent) -> Path:
    """The clone the running package comes from, if it has the benchmarks: they are not in
    the wheel (no benchmark code, HumanEval runner or plotting in a user's install)."""
    root = package.parent
    if not (root / "benchmarks" / "__main__.py").is_file():
        raise GemmaLspError("the benchmarks are not part of an installed gemma-lsp: they run from a clone of its "
                            "repository (`pip install -e '.[bench]'` there, then `gemma-lsp bench ...` or "
                            "`python -m benchmarks ...` in it)")
    return root


def run_benchmarks(argv: list[str]) -> int:
    """`gemma-lsp bench ...` is `python -m benchmarks ...` in the clone: a child process, so
    the package never imports the benchmarks."""
    import subprocess

    root = benchmarks_root()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    return subprocess.call([sys.executable, "-m", "benchmarks", *argv], env=env)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gemma-lsp", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("serve", help="run the language server (LSP over stdio)")
    add_setting_flags(s, MODEL_FLAGS + BACKEND_FLAGS)
    s.add_argument("--tcp", type=int, metavar="PORT", help="listen on 127.0.0.1:PORT instead of stdio")
    s.add_argument("--verbose", action="store_true", help="debug logging to stderr (prompts only with logPrompts)")
    s.add_argument("--log-protocol", action="store_true", help="log every LSP message, document text included")
    s.set_defaults(func=cmd_serve)

    c = sub.add_parser("complete", help="complete FILE at LINE:COL (1-based, COL in characters)")
    c.add_argument("location", metavar="FILE:LINE:COL")
    add_setting_flags(c, MODEL_FLAGS + BACKEND_FLAGS + ("singleLine", "timeBudgetMs"),
                      time_budget_ms=COMPLETE_BUDGET_MS)
    c.add_argument("--json", action="store_true", help="print one JSON object with the text and stats")
    c.add_argument("--repeat", type=int, default=1, help="complete N times in one process (shows warm-cache speed)")
    c.set_defaults(func=cmd_complete)

    r = sub.add_parser("prepare", help="assemble, verify and convert a model once (default: the embedded model)")
    r.add_argument("--model")
    r.add_argument("--remeasure", action="store_true",
                   help="measure the forward-cost curve again (do it on an idle machine)")
    r.add_argument("--retrieval", choices=RETRIEVAL, default="stdlib", help="index the retrieval corpus (default stdlib)")
    r.set_defaults(func=cmd_prepare)

    e = sub.add_parser("engine", help="run the shared engine daemon (serve --backend local starts it by itself)")
    add_setting_flags(e, MODEL_FLAGS + ("cacheMb",))
    e.add_argument("--socket", help="Unix socket path (default: one per user and model in the runtime dir)")
    e.add_argument("--idle-exit", type=float, default=300.0, help="exit this many seconds after the last client leaves")
    e.set_defaults(func=cmd_engine)

    d = sub.add_parser("doctor", help="check the installation and say how to fix what is missing")
    d.add_argument("--model", help="the model the backend checks are for (local: which daemon)")
    add_setting_flags(d, BACKEND_FLAGS)
    d.set_defaults(func=cmd_doctor)

    b = sub.add_parser("bench", add_help=False,
                       help="benchmarks (not tests), from a clone: quality, speculative, typing, vs-llama-cpp, all")
    b.add_argument("bench_args", nargs=argparse.REMAINDER, help="`gemma-lsp bench --help` lists them")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:  # everything after it is the benchmarks' own (--help included)
        return exit_status(lambda: run_benchmarks(argv[1:]))
    args = build_parser().parse_args(argv)
    return exit_status(lambda: args.func(args))
