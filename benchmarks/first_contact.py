"""`gemma-lsp bench typing --first-contact N`: open a file, ask once, over the REAL LSP stdio.

What a user judges the tool by is the first request in a file the cache has never seen.
For each of N held-out single-line HumanEval tasks (the vs-llama-cpp sample, seed 1), one
`gemma-lsp serve` with default settings (only what is given on the command line) gets:

  cold   didOpen of the task's file, then at once one inlineCompletion at the gap;
  pause  didOpen of the file without the gap line's indentation, the editor's auto-indent
         as a didChange at the gap (a top-level gap: a `gemma/cursor` notification), a
         1 s pause, then one inlineCompletion there (the warm-up's effect).

Each answer is graded by running the task's tests, and classified as empty, a fragment (a
proper prefix of the right line that fails, like `fib` for `fib(n - 1) + fib(n - 2)`), or
whole. `--busy K` runs K busy loops on the machine during the run (a slow or busy CPU).
`--windows K` adds a cold run with K servers (K editor windows, each its own `gemma-lsp
serve`) taking the tasks in turn, one request at a time: with `--backend local` they share
one engine, which should answer each as fast as the one window of the cold run.
`--reference` also runs `gemma-lsp complete`'s path (in process, its 120 s budget) on the
same tasks for the pass@1 to compare with. Figures only: nothing here asserts speed.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import sys
import time
from typing import Any

PAUSE_S = 1.0
TASKS_SEED = 1  # the held-out sample of bench vs-llama-cpp (bench quality uses seed 0)


def _spin() -> None:  # a busy loop on some core: what another program does to ours
    while True:
        pass


def classify(answer: str, middle: str, passed: bool) -> str:
    if not answer.strip():
        return "empty"
    want = middle.split("\n", 1)[0].strip()
    if not passed and want.startswith(answer.strip()) and answer.strip() != want:
        return "fragment"
    return "whole"


async def _ask_all(args: argparse.Namespace, tasks: list, mode: str, windows: int = 1) -> list[dict[str, Any]]:
    """`windows` server processes (one by default) taking the tasks in turn; every task
    opened as a new document and asked once, never two requests at a time."""
    import contextlib

    from lsprotocol import types as lsp

    from gemma_lsp.text import position_at

    from .lsp_client import lsp_session

    rows: list[dict[str, Any]] = []
    async with contextlib.AsyncExitStack() as stack:
        sessions = [await stack.enter_async_context(lsp_session(args)) for _ in range(windows)]
        for i, task in enumerate(tasks):
            s = sessions[i % windows]
            uri = f"file:///bench/{mode}/{task.task_id.replace('/', '_')}.py"
            text = task.prefix + task.suffix
            cursor = len(task.prefix)
            line, col = position_at(text, cursor, s.encoding)
            indent = task.prefix[len(task.prefix.rstrip(" \t")):]
            if mode == "cold":
                s.open(uri, text)
            else:
                s.open(uri, text[: cursor - len(indent)] + text[cursor:])
                if indent:
                    s.change(uri, 2, lsp.Position(line, col - len(indent)), indent)
                else:
                    s.client.protocol.notify("gemma/cursor", {"textDocument": {"uri": uri},
                                                              "position": {"line": line, "character": col}})
                await asyncio.sleep(PAUSE_S)
            before = await s.stats()
            t0 = time.perf_counter()
            res = await s.inline(uri, lsp.Position(line, col))
            ms = (time.perf_counter() - t0) * 1e3
            after = await s.stats()
            answer = res.items[0].insert_text if res is not None and res.items else ""
            rows.append({"task": task.task_id, "window": i % windows, "ms": round(ms, 1), "text": answer,
                         "prompt_tokens": after["prompt_tokens"] - before["prompt_tokens"],
                         "reused_tokens": after["reused_tokens"] - before["reused_tokens"],
                         "tokens": after["tokens"] - before["tokens"]})
            s.client.text_document_did_close(lsp.DidCloseTextDocumentParams(lsp.TextDocumentIdentifier(uri)))
            print(f"[{mode} {i + 1}/{len(tasks)}] {task.task_id} {ms / 1e3:.2f} s {answer[:40]!r}", file=sys.stderr)
    return rows


def _reference(args: argparse.Namespace, tasks: list) -> list[dict[str, Any]]:
    """`gemma-lsp complete`'s path on the same files: the model's accuracy without a deadline."""
    from gemma_lsp.complete.completer import Completer, Snapshot
    from gemma_lsp.config import COMPLETE_BUDGET_MS, Settings

    settings = Settings().merged({k: v for k, v in {"model": args.model, "dtype": args.dtype}.items() if v})
    settings = settings.merged({"timeBudgetMs": COMPLETE_BUDGET_MS})
    completer = Completer.from_settings(settings)
    rows = []
    for task in tasks:
        snap = Snapshot(f"file:///bench/ref/{task.task_id}.py", task.prefix + task.suffix, len(task.prefix),
                        "python", "task.py")
        c = completer.complete(snap, settings, instant=False)
        rows.append({"task": task.task_id, "ms": round(c.latency_ms, 1), "text": c.text})
    return rows


def _grade(rows: list[dict[str, Any]], tasks: list) -> dict[str, Any]:
    from gemma_lsp.lsp.stats import percentile

    from .quality import Grader

    grader = Grader()
    by_id = {t.task_id: t for t in tasks}
    for r in rows:
        task = by_id[r["task"]]
        r["passed"] = bool(grader(task, r["text"]).passed)
        r["kind"] = classify(r["text"], task.middle, r["passed"])
    n = len(rows)
    ms = [r["ms"] for r in rows]
    prompt = sum(r.get("prompt_tokens", 0) for r in rows)
    reused = sum(r.get("reused_tokens", 0) for r in rows)
    return {
        "tasks": n, "pass@1": round(sum(r["passed"] for r in rows) / n, 3) if n else None,
        "empty": sum(r["kind"] == "empty" for r in rows), "fragments": sum(r["kind"] == "fragment" for r in rows),
        "p50_ms": percentile(ms, 0.5), "p95_ms": percentile(ms, 0.95),
        "reuse": round(reused / prompt, 3) if prompt else None,
    }


def run(args: argparse.Namespace) -> int:
    import json

    from . import humaneval
    from .machine import cpu_name, loadavg

    problems = humaneval.load_problems()
    tasks = humaneval.sample(humaneval.single_line_tasks(problems), args.first_contact, TASKS_SEED)
    info = {"cpu": cpu_name(), "cpu_count": os.cpu_count(), "busy_loops": args.busy, "loadavg_before": loadavg(),
            "date": time.strftime("%Y-%m-%d %H:%M")}
    print(f"first contact on {len(tasks)} held-out tasks; {info['cpu']}; load {info['loadavg_before']}", file=sys.stderr)
    spinners = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(args.busy)]
    for p in spinners:
        p.start()
    try:
        res: dict[str, Any] = {"info": info}
        for mode in ("cold", "pause"):
            rows = asyncio.run(_ask_all(args, tasks, mode))
            res[mode] = {"summary": _grade(rows, tasks), "rows": rows}
        if args.windows > 1:
            rows = asyncio.run(_ask_all(args, tasks, "cold", args.windows))
            res["windows"] = {"summary": _grade(rows, tasks), "rows": rows, "windows": args.windows}
    finally:
        for p in spinners:
            p.terminate()
    if args.reference:
        rows = _reference(args, tasks)
        res["complete"] = {"summary": _grade(rows, tasks), "rows": rows}
    info["loadavg_after"] = loadavg()
    print(f"\nopen a file, ask once: {len(tasks)} held-out single-line tasks over LSP stdio, server "
          f"{args_options(args) or 'defaults'}; {info['cpu']}, {info['cpu_count']} cores, {args.busy} busy loops")
    print(f"  {'mode':<28}{'pass@1':>8}{'empty':>7}{'fragm.':>8}{'p50':>9}{'p95':>9}{'reuse':>8}")
    for mode, label in (("cold", "cold (open, ask at once)"), ("pause", f"open, {PAUSE_S:g} s pause, ask"),
                        ("windows", f"cold, {args.windows} windows in turn"),
                        ("complete", "gemma-lsp complete (ref.)")):
        if mode in res:
            s = res[mode]["summary"]
            reuse = "-" if s["reuse"] is None else f"{s['reuse']:.0%}"
            print(f"  {label:<28}{s['pass@1']:>8.3f}{s['empty']:>7}{s['fragments']:>8}"
                  f"{s['p50_ms'] / 1e3:>8.2f}s{s['p95_ms'] / 1e3:>8.2f}s{reuse:>8}")
    print("  figures only; the benchmark asserts nothing.")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(res, fh, indent=1)
    return 0


def args_options(args: argparse.Namespace) -> dict[str, Any]:
    from .lsp_client import server_options

    return server_options(args)
