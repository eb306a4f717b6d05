"""`python -m benchmarks <bench> ...` from a clone (or `gemma-lsp bench ...`, which runs this).

The benchmarks live outside the package on purpose: a user's wheel carries no benchmark
code, no HumanEval runner and no plotting. `all` is dispatched here, above the others,
since the suite runs each of them through `cli.run_bench` (no import cycle).
"""

from __future__ import annotations

import argparse
import sys

from .cli import add_bench_args, run_bench


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="gemma-lsp bench", description="benchmarks (not tests): they print figures")
    add_bench_args(p)
    args = p.parse_args(argv)
    if args.bench == "all":
        from .suite import run as run_suite

        return run_suite(args)
    return run_bench(args)


if __name__ == "__main__":
    from gemma_lsp.errors import exit_status

    sys.exit(exit_status(lambda: main(sys.argv[1:]), prog="gemma-lsp bench"))
