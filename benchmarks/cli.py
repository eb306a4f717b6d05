"""The benchmarks' arguments (`python -m benchmarks ...`, `gemma-lsp bench ...`) and `run_bench`: they print figures; they assert nothing about speed."""

from __future__ import annotations

import argparse
from typing import Any


def add_bench_args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="bench", required=True)
    _speculative_args(sub)
    _typing_args(sub)
    _quality_args(sub)
    _vs_llama_cpp_args(sub)
    _all_args(sub)


def _speculative_args(sub: Any) -> None:
    s = sub.add_parser("speculative", help="all drafters side by side on HumanEval multi-line FIM tasks")
    s.add_argument("--tasks", type=int, default=12)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--max-tokens", type=int, default=96)
    s.add_argument("--model")
    s.add_argument("--draft-model", help="draft model (same tokenizer); adds the `model` drafter to the default list")
    s.add_argument("--dtype", default="auto", help="auto | bfloat16 | float32 | float16 (float32 shows exactness)")
    s.add_argument("--device", default="auto")
    s.add_argument("--drafters", default=None,
                   help="comma-separated (default none,ngram,auto; plus model with --draft-model); none is always run")
    s.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    s.add_argument("--no-block-stop", action="store_true",
                   help="decode to --max-tokens even past the end of the block (stopAtBlockEnd: false)")
    s.add_argument("--device-script", action="store_true",
                   help="print a ready-to-run shell script for a GPU machine (--device cuda --tasks 40) and exit")


def _typing_args(sub: Any) -> None:
    t = sub.add_parser("typing", help="replay typing a file over real LSP stdio; keystroke latency and reuse")
    t.add_argument("file", nargs="?", help="file to type (default: a HumanEval solution)")
    t.add_argument("--chars", type=int, default=120, help="characters to type")
    t.add_argument("--start-line", type=int, default=None,
                   help="with FILE: 1-based line where typing starts (default: the middle of the file)")
    t.add_argument("--keep-suffix", action="store_true",
                   help="with FILE: keep the text after the typed part in the document (default: typing at its end)")
    t.add_argument("--problem", default="HumanEval/0", help="HumanEval problem typed when no FILE is given")
    t.add_argument("--cps", type=float, default=None,
                   help="type at this many characters per second without awaiting answers (server supersedes); "
                        "default: await each answer before the next keystroke")
    t.add_argument("--model")
    t.add_argument("--draft-model")
    t.add_argument("--drafter", help="server drafter setting (default: the server's, auto)")
    t.add_argument("--max-tokens", type=int, help="server maxTokens (default: the server's)")
    t.add_argument("--dtype", help="server dtype (default: the server's)")
    t.add_argument("--device", help="server device (default: the server's)")
    t.add_argument("--time-budget-ms", type=int, help="server timeBudgetMs (default: the server's)")
    t.add_argument("--server-log", metavar="FILE", help="write the server's stderr to FILE")
    t.add_argument("--backend", help="server backend: inprocess (default) | local | an OpenAI-compatible base URL")
    t.add_argument("--backend-model", help="server backendModel")
    t.add_argument("--api-key-env", help="server apiKeyEnv")
    t.add_argument("--first-contact", type=int, default=0, metavar="N",
                   help="instead of typing: open N held-out tasks' files and ask once in each, cold and after "
                        "a 1 s pause (benchmarks/first_contact.py)")
    t.add_argument("--busy", type=int, default=0, metavar="K", help="with --first-contact: K busy loops run meanwhile")
    t.add_argument("--windows", type=int, default=1, metavar="K",
                   help="with --first-contact: also a cold run with K servers (editor windows) taking the tasks in turn")
    t.add_argument("--reference", action="store_true",
                   help="with --first-contact: also run `gemma-lsp complete`'s path on the same tasks")
    t.add_argument("--json", metavar="FILE")


def _quality_args(sub: Any) -> None:
    q = sub.add_parser("quality", help="pass@1 and exact match on HumanEval infilling (post-processed vs raw), "
                                       "per prompt layout; checks drafters give identical completions")
    q.add_argument("--tasks", type=int, default=None,
                   help="tasks sampled per kind (default: 40 single-line, 10 multi-line)")
    q.add_argument("--multi-tasks", type=int, default=None, help="multi-line tasks (default: --tasks, else 10)")
    q.add_argument("--full", action="store_true", help="every task (all single-line tasks, one block per problem)")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--kinds", default="single,multi", help="comma-separated: single,multi (default both)")
    q.add_argument("--drafters", default="none,auto",
                   help="comma-separated; the first is the reference (default none,auto)")
    q.add_argument("--layouts", default="spm",
                   help="comma-separated: spm, psm, spm-noheal, psm-noheal, short-suffix (default spm)")
    q.add_argument("--multi-single-line", choices=("never", "auto"), default="never",
                   help="singleLine for multi-line tasks (default never: with auto the block's next line, "
                        "right after the cursor, makes every answer one line); single-line tasks use auto")
    q.add_argument("--model")
    q.add_argument("--draft-model", help="draft model (same tokenizer) for the `model` drafter")
    q.add_argument("--dtype", default="auto", help="auto | bfloat16 | float32 | float16")
    q.add_argument("--device", default="auto")
    q.add_argument("--json", metavar="FILE", help="also write the results as JSON")


def _vs_llama_cpp_args(sub: Any) -> None:
    v = sub.add_parser("vs-llama-cpp", help="ours vs llama.cpp on the same GGUF, prompts and machine "
                                            "(needs the llama-cpp extra)")
    v.add_argument("--gguf", help="the GGUF llama.cpp runs (default: the embedded model's, assembled from its parts)")
    v.add_argument("--model", help="our side's model (default: the embedded model; with --gguf: that file)")
    v.add_argument("--dtype", default="auto", help="our side: auto (CPU: the GGUF's own weights) | gguf | bfloat16")
    v.add_argument("--tasks", type=int, default=30, help="single-line HumanEval-infilling tasks (default 30)")
    v.add_argument("--keystrokes", type=int, default=10, help="tasks followed by one typed character (default 10)")
    v.add_argument("--seed", type=int, default=1, help="task sample seed (default 1: not bench quality's 0)")
    v.add_argument("--max-tokens", type=int, default=64)
    v.add_argument("--prefill-tokens", type=int, default=512)
    v.add_argument("--decode-prompts", type=int, default=8)
    v.add_argument("--decode-tokens", type=int, default=64)
    v.add_argument("--drift", type=int, default=0, metavar="N",
                   help="also measure each engine's mean KL from the file's model in float32 on N FIM prompts "
                        "(loads that model: ~4 bytes per weight of memory; default 0: off)")
    v.add_argument("--json", metavar="FILE")


def _all_args(sub: Any) -> None:
    a = sub.add_parser("all", help="quality + speculative + typing; one results.json, summary.md and PNG plots")
    a.add_argument("--out", metavar="DIR", help="output folder (default bench-results/<date>)")
    a.add_argument("--quality-tasks", type=int, default=20,
                   help="single-line tasks per layout (multi-line: a quarter of it, at least 1; default 20)")
    a.add_argument("--quality-layouts", default="spm,psm,spm-noheal,psm-noheal")
    a.add_argument("--spec-tasks", type=int, default=None, help="speculative tasks (default: its own, 12)")
    a.add_argument("--typing-chars", type=int, default=None, help="characters typed (default: its own, 120)")
    a.add_argument("--skip", default="", help="comma-separated benches to skip: quality,speculative,typing")
    a.add_argument("--model")
    a.add_argument("--dtype", default=None, help="passed to every bench (default: each bench's own, auto)")
    a.add_argument("--device", default=None, help="passed to every bench, e.g. cuda (default: auto)")
    a.add_argument("--device-script", action="store_true",
                   help="print a shell script that runs the whole suite on a GPU machine in ~15 min, and exit")


def run_bench(args: argparse.Namespace) -> int:
    """Run one benchmark. `all` sits above the others (it runs each through this function),
    so it is dispatched by the CLI, not here: no import cycle."""
    if args.bench == "all":
        raise ValueError("`bench all` is run by benchmarks.__main__ (suite.run), not by run_bench")
    if args.bench == "quality":
        from .quality import run as run_quality

        return run_quality(args)
    if args.bench == "speculative":
        from .speculative import run

        return run(args)
    if args.bench == "vs-llama-cpp":
        from .vs_llama_cpp import run as run_vs

        return run_vs(args)
    from .keystrokes import run as run_typing

    return run_typing(args)
