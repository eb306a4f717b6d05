"""`gemma-lsp bench ...`: benchmarks print figures; they assert nothing about speed."""

from __future__ import annotations

import argparse


def add_bench_args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="bench", required=True)
    s = sub.add_parser("speculative", help="all drafters side by side on HumanEval multi-line FIM tasks")
    s.add_argument("--tasks", type=int, default=12)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--max-tokens", type=int, default=96)
    s.add_argument("--model")
    s.add_argument("--dtype", default="auto")
    s.add_argument("--device", default="auto")
    s.add_argument("--drafters", default="none,ngram,auto")
    s.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    t = sub.add_parser("typing", help="replay typing a file over real LSP stdio; keystroke latency and reuse")
    t.add_argument("file", nargs="?", help="file to type (default: a HumanEval solution)")
    t.add_argument("--chars", type=int, default=120, help="characters to type")
    t.add_argument("--model")
    t.add_argument("--json", metavar="FILE")


def run_bench(args: argparse.Namespace) -> int:
    if args.bench == "speculative":
        from .speculative import run

        return run(args)
    from .typing import run as run_typing

    return run_typing(args)
