"""`gemma-lsp bench speculative`: every drafter side by side on HumanEval multi-line FIM tasks.

What it measures
  For each task (a block of 2-5 lines masked out of a HumanEval canonical solution,
  the cursor after the first masked line's indentation) and each drafter, one
  completion goes through the SAME path as the server: ``Completer.complete`` with a
  ``Snapshot`` (text = prefix + suffix, offset = len(prefix)), so the prompt layout,
  windows, token healing constraint and postprocess are the server's. Only the
  settings differ from an editor's: ``singleLine: never`` and a time budget large
  enough that no run is cut by time.

Fairness
  All drafters run on ONE loaded model. The engine's KV prefix caches (target and
  draft) are cleared before every (task, drafter) run, so every drafter pays the
  same prefill; the adaptive draft length is kept per drafter (warm across tasks,
  as in a server, but never shared between drafters). One untimed warm-up run
  precedes the measurements.

Figures (per drafter)
  decode tok/s     tokens / decode time, from the engine's own stats
  speedup          total decode time of ``none`` / total decode time of the drafter
                   over the same tasks (``x tot``), and the median of the per-task
                   ratios of decode time per token (``x med``)
  acceptance       accepted / drafted draft tokens
  fwd/tok          target forwards of the decode phase per generated token
                   (prefill forwards excluded; 1.00 means no speculation gain)
  identical        tasks whose generated token ids equal those of ``none``
                   (greedy speculation is lossless: in float32 this should be all
                   of them; in bfloat16 a batched verify forward may round
                   differently from a one-token forward and flip a near-tie)
  pass@1           the post-processed completion plus the newline that ends the
                   masked block (postprocess strips it), run against HumanEval's
                   tests in a sandboxed interpreter (``humaneval.run_tests``)
  e2e              Completer.complete wall time (prompt, prefill, decode, postprocess)

Benchmarks print figures; they assert nothing about speed.

Examples
  gemma-lsp bench speculative --tasks 4
  gemma-lsp bench speculative --tasks 12 --dtype float32 --json spec-fp32.json
  gemma-lsp bench speculative --draft-model /path/to/small --drafters none,ngram,model,auto

GPU machine
  ``gemma-lsp bench speculative --device-script`` prints a ready-to-run shell script
  (the same benchmark with ``--device cuda --tasks 40``, bf16 and fp32, JSON files
  written next to it) instead of running anything. Pipe it to a file and run it on
  the GPU host: ``gemma-lsp bench speculative --device-script > bench_gpu.sh``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any

from .machine import cpu_name, isa_flags, loadavg

DEFAULT_DRAFTERS = ("none", "ngram", "auto")
TIME_BUDGET_MS = 3_600_000  # an hour: no run is ever cut by time


@dataclass
class Row:
    task_id: str
    drafter: str
    tokens: int
    prompt_tokens: int
    reused_tokens: int
    prefill_ms: float
    decode_ms: float
    e2e_ms: float
    target_forwards: int
    decode_forwards: int
    drafted: int
    accepted: int
    drafted_by: dict[str, list[int]]
    stop_reason: str
    identical: bool | None  # token ids equal to the `none` run (None for `none` itself or when absent)
    passed: bool
    test_reason: str
    text: str
    token_ids: list[int]


def drafter_list(args: argparse.Namespace) -> list[str]:
    if getattr(args, "drafters", None):
        names = [d.strip() for d in args.drafters.split(",") if d.strip()]
    else:
        names = list(DEFAULT_DRAFTERS)
        if getattr(args, "draft_model", None):
            names.insert(2, "model")
    if "none" not in names:
        names.insert(0, "none")  # the reference for speedup and identity
    else:
        names.remove("none")
        names.insert(0, "none")
    from gemma_lsp.names import DRAFTERS

    bad = [d for d in names if d not in DRAFTERS]
    if bad:
        raise SystemExit(f"gemma-lsp bench speculative: unknown drafter(s) {', '.join(bad)}; choose from {', '.join(DRAFTERS)}")
    if "model" in names and not getattr(args, "draft_model", None):
        raise SystemExit("gemma-lsp bench speculative: drafter 'model' needs --draft-model")
    return names


def device_script(args: argparse.Namespace) -> str:
    """A shell script that runs this benchmark on a CUDA machine (bf16 and fp32)."""
    common = ["--device", "cuda", "--tasks", "40", "--max-tokens", str(args.max_tokens), "--seed", str(args.seed)]
    if args.model:
        common += ["--model", args.model]
    if getattr(args, "draft_model", None):
        common += ["--draft-model", args.draft_model]
    if getattr(args, "drafters", None):
        common += ["--drafters", args.drafters]
    q = " ".join(shlex.quote(c) for c in common)
    return f"""#!/usr/bin/env bash
# gemma-lsp speculative benchmark on a GPU machine (generated by `gemma-lsp bench speculative --device-script`).
# Needs: the package installed with a CUDA build of torch, `a clone of gemma-lsp with `pip install -e '.[bench]'` (run it in the clone)`,
# and the model prepared once (`gemma-lsp prepare`; set GEMMA_LSP_CACHE if the cache lives elsewhere).
set -euo pipefail
python -c 'import torch; assert torch.cuda.is_available(), "no CUDA GPU visible"; print(torch.cuda.get_device_name(0))'
gemma-lsp bench speculative {q} --dtype bfloat16 --json bench-speculative-cuda-bf16.json
gemma-lsp bench speculative {q} --dtype float32 --json bench-speculative-cuda-fp32.json
"""


def machine_info(completer, args: argparse.Namespace) -> dict[str, Any]:
    import torch
    import transformers

    model = completer.engine.model
    p = next(model.parameters())
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_name(),
        "isa": isa_flags(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": torch.get_num_threads(),
        "device": str(p.device),
        "dtype": str(p.dtype).replace("torch.", ""),
        "model": completer.target.name,
        "model_path": str(completer.target.path),
        "draft_model": completer.built.draft.name if completer.built.draft else None,
        "fim_family": completer.prompter.family,
    }
    cost = getattr(completer.engine, "cost", None)
    info["cost_curve_ms"] = {k: round(v, 1) for k, v in cost.ms.items()} if cost else None
    if p.device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(p.device)
    info["loadavg_before"] = loadavg()
    return info


def cpu_line(info: dict[str, Any]) -> str:
    """The CPU, its instruction sets, the cost curve and the memory floor: figures from one
    machine say nothing about another."""
    out = f"cpu: {info['cpu']} ({info['cpu_count']} cores; {' '.join(info['isa']) or 'no AVX2'})"
    if info.get("cost_curve_ms"):
        c = info["cost_curve_ms"]
        one = c.get(1)
        ratios = ", ".join(f"{k}: {v} ms ({v / one:.2f}x)" for k, v in c.items()) if one else ""
        out += f"\ncost of a forward by rows: {ratios}"
    if info.get("memory_floor"):
        from .bandwidth import line

        out += "\n" + line(info["memory_floor"])
    return out


def announce(info: dict[str, Any], load_s: float, noisy: str) -> None:
    """Say what runs where, and warn when other processes share the CPU (then `noisy`)."""
    print(f"model {info['model']} ({info['fim_family']}), {info['device']} {info['dtype']}, torch {info['torch']}, "
          f"{info['threads']} threads; loaded in {load_s:.1f} s", file=sys.stderr)
    load = info["loadavg_before"]
    if load and info["device"] == "cpu" and load[0] > 0.5:
        print(f"note: load average {load[0]:.2f} before starting: other processes share these CPUs, so {noisy}",
              file=sys.stderr)


def _capture_tokens(engine) -> dict[str, Any]:
    """Wrap engine.generate (on this instance only) to keep the last result's token ids."""
    box: dict[str, Any] = {}
    inner = engine.generate

    def generate(req):
        res = inner(req)
        box["tokens"] = list(res.tokens)
        return res

    engine.generate = generate
    return box


def graded_text(text: str) -> str:
    """What an editor's document holds after accepting `text` at the task's cursor.

    Postprocess strips the completion's final newline (an inline suggestion should not
    leave the cursor on a fresh line), while a HumanEval task's masked block ends with
    one; the grader puts it back, as tests/test_real_model.py does.
    """
    return text + "\n"


def run(args: argparse.Namespace) -> int:
    if getattr(args, "device_script", False):
        sys.stdout.write(device_script(args))
        return 0
    from gemma_lsp.complete.completer import Completer, Snapshot
    from gemma_lsp.config import Settings

    from . import humaneval

    drafters = drafter_list(args)
    problems = humaneval.load_problems()
    tasks = humaneval.sample(humaneval.multi_line_tasks(problems, seed=args.seed), args.tasks, args.seed)
    base = Settings().merged({
        "model": args.model, "draftModel": getattr(args, "draft_model", None), "maxTokens": args.max_tokens,
        "singleLine": "never", "timeBudgetMs": TIME_BUDGET_MS,
        "stopAtBlockEnd": not getattr(args, "no_block_stop", False), "dtype": args.dtype, "device": args.device,
    })
    t0 = time.perf_counter()
    completer = Completer.from_settings(base)
    load_s = time.perf_counter() - t0
    engine = completer.engine
    box = _capture_tokens(engine)
    info = machine_info(completer, args)
    info["load_s"] = round(load_s, 2)
    announce(info, load_s, "timings are noisy (the token-identity and pass@1 figures are not)")
    print(f"{len(tasks)} tasks x drafters {', '.join(drafters)}; max {args.max_tokens} tokens, greedy", file=sys.stderr)

    def one(task, drafter: str, max_tokens: int | None = None):
        uri = f"file:///humaneval/{task.task_id.replace('/', '_')}.py"
        snap = Snapshot(uri=uri, text=task.prefix + task.suffix, offset=len(task.prefix), language="python",
                        path=uri[len("file://"):])
        completer.forget(uri)
        engine.cache.clear()
        engine.draft_cache.clear()
        box.clear()
        settings = base.merged({"drafter": drafter, "maxTokens": max_tokens or base.max_tokens})
        return completer.complete(snap, settings, instant=False), list(box.get("tokens", []))

    if tasks:  # untimed warm-up: first-call allocations, kernel selection
        saved = engine.draft_length
        engine.draft_length = engine.new_draft_length()
        one(tasks[0], drafters[-1], max_tokens=min(8, base.max_tokens))
        engine.draft_length = saved

    lengths = {d: engine.new_draft_length() for d in drafters}
    rows: list[Row] = []
    tested: dict[tuple[str, str], Any] = {}
    for i, task in enumerate(tasks):
        ref_tokens: list[int] | None = None
        line = [f"[{i + 1}/{len(tasks)}] {task.task_id}:"]
        for d in drafters:
            engine.draft_length = lengths[d]
            c, toks = one(task, d)
            s = c.stats
            key = (task.task_id, c.text)
            if key not in tested:
                tested[key] = humaneval.run_tests(humaneval.program(task, graded_text(c.text)))
            res = tested[key]
            if d == "none":
                ref_tokens = toks
            row = Row(
                task_id=task.task_id, drafter=d, tokens=s.tokens, prompt_tokens=s.prompt_tokens,
                reused_tokens=s.reused_tokens, prefill_ms=round(s.prefill_ms, 2), decode_ms=round(s.decode_ms, 2),
                e2e_ms=round(c.latency_ms, 2), target_forwards=s.target_forwards,
                decode_forwards=s.target_forwards - s.prefill_forwards,
                drafted=s.drafted, accepted=s.accepted, drafted_by={k: list(v) for k, v in s.drafted_by.items()},
                stop_reason=c.stop_reason, identical=None if d == "none" or ref_tokens is None else toks == ref_tokens,
                passed=res.passed, test_reason=res.reason, text=c.text, token_ids=toks,
            )
            rows.append(row)
            tps = row.tokens / (row.decode_ms / 1e3) if row.decode_ms > 0 else 0.0
            mark = "" if row.identical is None else (" =" if row.identical else " DIFF")
            line.append(f"{d} {row.tokens}t {tps:.1f}t/s{mark}")
        print(" ".join(line), file=sys.stderr)

    info["loadavg_after"] = loadavg()
    summary = summarize(rows, drafters)
    if "none" in summary and summary["none"]["decode_tok_s"] and info["device"] == "cpu":
        from . import bandwidth

        info["memory_floor"] = bandwidth.ceiling(engine.model, {"none": 1e3 / summary["none"]["decode_tok_s"]})
    print_table(summary, info, len(tasks))
    if args.json:
        out = {
            "bench": "speculative",
            "args": {k: v for k, v in vars(args).items() if k != "func" and not callable(v)},
            "machine": info,
            "drafters": drafters,
            "tasks": [t.task_id for t in tasks],
            "summary": summary,
            "rows": [r.__dict__ for r in rows],
        }
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(out, fh, indent=1)
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


def summarize(rows: list[Row], drafters: list[str]) -> dict[str, dict[str, Any]]:
    ref = {r.task_id: r for r in rows if r.drafter == "none"}
    out: dict[str, dict[str, Any]] = {}
    for d in drafters:
        rs = [r for r in rows if r.drafter == d]
        tokens = sum(r.tokens for r in rs)
        decode_ms = sum(r.decode_ms for r in rs)
        ref_ms = sum(ref[r.task_id].decode_ms for r in rs if r.task_id in ref)
        ratios = []
        for r in rs:
            b = ref.get(r.task_id)
            if b is not None and b.tokens and r.tokens and r.decode_ms > 0:
                ratios.append((b.decode_ms / b.tokens) / (r.decode_ms / r.tokens))
        drafted = sum(r.drafted for r in rs)
        accepted = sum(r.accepted for r in rs)
        dfw = sum(r.decode_forwards for r in rs)
        by: dict[str, list[int]] = {}
        for r in rs:
            for k, (n, a) in r.drafted_by.items():
                acc = by.setdefault(k, [0, 0])
                acc[0] += n
                acc[1] += a
        e2e = [r.e2e_ms for r in rs]
        out[d] = {
            "tasks": len(rs),
            "tokens": tokens,
            "decode_ms": round(decode_ms, 1),
            "prefill_ms": round(sum(r.prefill_ms for r in rs), 1),
            "decode_tok_s": round(tokens / (decode_ms / 1e3), 2) if decode_ms > 0 else 0.0,
            "speedup_total": round(ref_ms / decode_ms, 3) if decode_ms > 0 and ref_ms > 0 else None,
            "speedup_median": round(statistics.median(ratios), 3) if ratios else None,
            "drafted": drafted,
            "accepted": accepted,
            "acceptance": round(accepted / drafted, 3) if drafted else None,
            "drafted_by": by,
            "decode_forwards": dfw,
            "forwards_per_token": round(dfw / tokens, 3) if tokens else None,
            "identical": sum(1 for r in rs if r.identical) if d != "none" else len(rs),
            "passed": sum(1 for r in rs if r.passed),
            "pass_at_1": round(sum(1 for r in rs if r.passed) / len(rs), 3) if rs else None,
            "e2e_ms_median": round(statistics.median(e2e), 1) if e2e else None,
            "e2e_ms_total": round(sum(e2e), 1),
        }
    return out


def print_table(summary: dict[str, dict[str, Any]], info: dict[str, Any], n_tasks: int) -> None:
    def f(x, fmt):
        return "-" if x is None else format(x, fmt)

    print(f"\nspeculative decoding, {n_tasks} HumanEval multi-line FIM tasks; {info['model']} on "
          f"{info['device']} {info['dtype']} (torch {info['torch']}, {info['threads']} threads)")
    print(cpu_line(info))
    head = (f"{'drafter':<10}{'tasks':>6}{'tokens':>8}{'tok/s':>8}{'x tot':>7}{'x med':>7}{'accept':>14}"
            f"{'fwd/tok':>9}{'identical':>11}{'pass@1':>8}{'e2e med':>9}")
    print(head)
    print("-" * len(head))
    for d, s in summary.items():
        acc = f"{s['accepted']}/{s['drafted']}" if s["drafted"] else "-"
        if s["acceptance"] is not None:
            acc = f"{acc} {s['acceptance']:.2f}"
        print(f"{d:<10}{s['tasks']:>6}{s['tokens']:>8}{s['decode_tok_s']:>8.2f}{f(s['speedup_total'], '.2f'):>7}"
              f"{f(s['speedup_median'], '.2f'):>7}{acc:>14}{f(s['forwards_per_token'], '.2f'):>9}"
              f"{str(s['identical']) + '/' + str(s['tasks']):>11}{f(s['pass_at_1'], '.2f'):>8}"
              f"{'-' if s['e2e_ms_median'] is None else format(s['e2e_ms_median'] / 1e3, '.2f') + 's':>9}")
    print("tok/s: decode tokens per second (engine stats); x tot: total decode time of `none` / this drafter's; "
          "x med: median per-task ratio of decode time per token; identical: same token ids as `none`.")
