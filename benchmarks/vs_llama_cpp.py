"""`gemma-lsp bench vs-llama-cpp`: our engine and llama.cpp on the same GGUF, prompts and machine.

Both engines get the same token ids from our prompt builder, the same stops, the same
token-healing constraint and the same post-processing (llama.cpp through the adapter
in llama_engine.py), so only the engines differ. Figures:
  prefill tok/s     one cold prompt of --prefill-tokens tokens
  decode tok/s      --decode-tokens greedy tokens after each of a few HumanEval prompts,
                    no stops; ours plain (drafter none) and with speculation (auto)
  per-task latency  single-line HumanEval-infilling tasks, cold cache, whole pipeline
  keystroke         after each task, type the next character and ask again: the prompt
                    extends the cached one; time to the first token and to the answer
  pass@1            of the per-task completions
  drift (--drift N) mean KL of each engine's next-token distributions from the file's model
                    in float32, over every position of N FIM prompts (benchmarks/drift.py)
Ratios are ours ÷ llama.cpp as speed (> 1: ours faster). Nothing here asserts speed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any


def run(args: argparse.Namespace) -> int:
    if args.gguf:
        return _run(args, Path(args.gguf))
    if args.model not in (None, "", "default"):
        raise SystemExit("with --model, also give --gguf (the same model's .gguf for llama.cpp)")
    from gemma_lsp.models.default import assembled_gguf

    with assembled_gguf() as path:
        return _run(args, path)


def _run(args: argparse.Namespace, gguf: Path) -> int:
    from gemma_lsp.complete.completer import Completer
    from gemma_lsp.config import Settings

    from . import bandwidth, humaneval
    from .llama_engine import LlamaCppEngine
    from .machine import loadavg
    from .speculative import cpu_line, machine_info

    base = Settings().merged({"model": args.model or (str(gguf) if args.gguf else None), "dtype": args.dtype,
                              "timeBudgetMs": 60_000, "maxTokens": args.max_tokens})
    t0 = time.perf_counter()
    completer = Completer.from_settings(base)
    ours_load = time.perf_counter() - t0
    t0 = time.perf_counter()
    llama = LlamaCppEngine(gguf)
    llama_load = time.perf_counter() - t0
    ours = completer.engine
    info = machine_info(completer, args)
    info.update(weights=completer.target.weights, llama_cpp_threads=llama.threads, gguf=gguf.name,
                load_s={"ours": round(ours_load, 2), "llama.cpp": round(llama_load, 2)},
                date=time.strftime("%Y-%m-%d"))
    print(f"ours: {completer.target.weights}; llama.cpp: {llama.threads} threads; load average {loadavg()}",
          file=sys.stderr)

    problems = humaneval.load_problems()
    engines = {"ours": ours, "llama.cpp": llama}
    res: dict[str, Any] = {"info": info}
    res["prefill"] = prefill(completer, engines, problems, args.prefill_tokens)
    res["decode"] = decode(completer, engines, problems, args.decode_prompts, args.decode_tokens)
    info["memory_floor"] = bandwidth.ceiling(ours.model, {name: res["decode"][label]["ms_per_token"]
                                                          for name, label in (("ours", "ours (plain)"),
                                                                              ("llama.cpp", "llama.cpp"))},
                                             res["decode"]["read_gb_s_median"])
    tasks = humaneval.sample(humaneval.single_line_tasks(problems), args.tasks, args.seed)
    res["tasks"] = per_task(completer, engines, tasks, args.keystrokes)
    res["summary"] = summarize(res)
    print(cpu_line(info))
    print(table(res["summary"]))
    if args.drift:
        spec = args.model or (str(gguf) if args.gguf else None)
        res["drift"] = drift_from_float32(completer, spec, gguf, args.drift, llama.threads)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    return 0


def _ids(completer, text: str, n: int) -> list[int]:
    ids = completer.prompter.encode(text)
    return ids[:n]


def prefill(completer, engines, problems, n_tokens: int) -> dict[str, Any]:
    """Cold prompt of n_tokens: tokens per second of the prompt pass (best of 2, the engines taking turns)."""
    from gemma_lsp.engine.request import GenerateRequest

    text = "\n\n".join(p["prompt"] + p["canonical_solution"] for p in problems.values())
    prompt = _ids(completer, text, n_tokens)
    out: dict[str, Any] = {"tokens": len(prompt)}
    best = dict.fromkeys(engines, float("inf"))
    for _ in range(2):  # the engines take turns (see decode)
        for name, eng in engines.items():
            eng.cache.clear()
            r = eng.generate(GenerateRequest(prompt=prompt, max_tokens=1, drafter="none"))
            best[name] = min(best[name], r.stats.prefill_ms)
    for name, ms in best.items():
        out[name] = {"ms": round(ms, 1), "tok_s": round(len(prompt) / ms * 1e3, 1)}
        print(f"prefill {len(prompt)} tokens: {name} {ms / 1e3:.2f} s", file=sys.stderr)
    eng_clear(engines)
    return out


def decode(completer, engines, problems, n_prompts: int, n_tokens: int) -> dict[str, Any]:
    """n_tokens greedy tokens after each of n_prompts HumanEval prompts, no stops.

    The runs take turns prompt by prompt (ours plain, ours speculative, llama.cpp, next prompt):
    a VM's speed drifts by a third within a minute here, and three runs one after the other
    measured that drift as much as the engines (decode ratio 1.09 in one run, 0.84 in the next)."""
    from gemma_lsp.engine.request import GenerateRequest

    from . import bandwidth

    prompts = [completer.prompter.encode(p["prompt"]) for p in list(problems.values())[:n_prompts]]
    runs = {"ours (plain)": ("ours", "none"), "ours (speculative)": ("ours", "auto"), "llama.cpp": ("llama.cpp", "none")}
    out: dict[str, Any] = {"prompts": len(prompts), "tokens": n_tokens}
    outputs: dict[str, list[list[int]]] = {label: [] for label in runs}
    toks = dict.fromkeys(runs, 0)
    ms = dict.fromkeys(runs, 0.0)
    gb_s: list[float] = []  # the read bandwidth between prompts: the memory floor's, as it drifts with the runs
    for p in prompts:
        gb_s.append(bandwidth.read_gb_s(reps=1))
        for label, (name, drafter) in runs.items():
            eng = engines[name]
            eng.cache.clear()
            r = eng.generate(GenerateRequest(prompt=p, max_tokens=n_tokens, drafter=drafter))
            toks[label] += len(r.tokens) - 1  # the first token comes with the prompt pass
            ms[label] += r.stats.decode_ms
            outputs[label].append(r.tokens)
    for label in runs:
        out[label] = {"tok_s": round(toks[label] / ms[label] * 1e3, 2), "ms_per_token": round(ms[label] / toks[label], 1)}
        print(f"decode: {label} {toks[label] / ms[label] * 1e3:.1f} tok/s", file=sys.stderr)
    # bf16 attention rounds a k-row verify differently from a 1-row step: at a near-tie the
    # two may pick different tokens (ARCHITECTURE.md, invariant 1); count, don't hide it.
    same = sum(a == b for a, b in zip(outputs["ours (speculative)"], outputs["ours (plain)"]))
    out["speculative_identical_to_plain"] = f"{same} of {len(prompts)}"
    out["same_tokens_as_llama_cpp"] = sum(a == b for a, b in zip(outputs["ours (plain)"], outputs["llama.cpp"]))
    out["read_gb_s_median"] = round(statistics.median(gb_s), 1) if gb_s else None
    eng_clear(engines)
    return out


NEWLINE_RUN = "llama.cpp, newline stop"  # llama.cpp's own way: the answer ends at the first newline


def per_task(completer, engines, tasks, keystrokes: int) -> dict[str, Any]:
    """Whole-pipeline latency per cold task, pass@1, then one keystroke that extends the prompt.
    Last, llama.cpp once more with every answer cut at the first newline (singleLine always),
    the rule it and llama.vscode use: the bar for our multi-line policy on single-line gaps."""
    from gemma_lsp.complete.completer import Snapshot
    from gemma_lsp.config import Settings

    from .quality import Grader

    grader = Grader()
    settings = Settings().merged({"timeBudgetMs": 60_000, "singleLine": "auto"})
    ours_backend = completer.backend
    runs = [(name, eng, settings) for name, eng in engines.items()]
    runs.append((NEWLINE_RUN, engines["llama.cpp"], settings.merged({"singleLine": "always"})))
    out: dict[str, Any] = {name: [] for name, _, _ in runs}
    for i, task in enumerate(tasks):
        for name, eng, settings in runs:  # the engines take turns task by task (see decode)
            completer.backend = eng  # both implement backends.Backend
            uri = f"file:///humaneval/{task.task_id.replace('/', '_')}.py"
            snap = Snapshot(uri=uri, text=task.prefix + task.suffix, offset=len(task.prefix), language="python",
                            path="task.py")
            completer.forget(uri)
            eng.cache.clear()
            c = completer.complete(snap, settings, instant=False)
            row = {"task": task.task_id, "ms": round(c.latency_ms, 1), "tokens": c.stats.tokens, "text": c.text,
                   "passed": bool(grader(task, c.text).passed)}
            if i < keystrokes and task.middle.strip() and name != NEWLINE_RUN:
                typed = task.middle.lstrip()[0]  # the next character the user types
                pos = len(task.prefix) + len(task.middle) - len(task.middle.lstrip())
                text = task.prefix + task.middle[: pos - len(task.prefix)] + typed + task.suffix
                k = Snapshot(uri=uri, text=text, offset=pos + 1, language="python", path="task.py")
                completer.forget(uri)  # no typed-through shortcut: measure the engine
                kc = completer.complete(k, settings, instant=False)
                row["key_ms"] = round(kc.latency_ms, 1)
                row["key_first_token_ms"] = round(kc.stats.prefill_ms, 1)
                row["key_new_tokens"] = kc.stats.prompt_tokens - kc.stats.reused_tokens
            out[name].append(row)
            print(f"[{name} {i + 1}/{len(tasks)}] {task.task_id} {c.latency_ms / 1e3:.2f} s "
                  f"{'pass' if row['passed'] else 'fail'}", file=sys.stderr)
    completer.backend = ours_backend
    return out


def drift_from_float32(completer, spec: str | None, gguf: Path, n_prompts: int, threads: int) -> dict[str, Any]:
    """Both engines' logits on the same prompts against the file's model in float32 (loaded last:
    it needs ~4 bytes per weight of memory)."""
    import gc

    import torch

    from gemma_lsp.models.loader import load

    from . import drift

    prompts = [p.ids for p in drift.fim_prompts(completer.prompter, n_prompts)]
    runs = {"ours": drift.quant_logits(completer.target.model, prompts)}
    theirs = drift.llama_cpp_logits(gguf, prompts, threads)
    if theirs is not None:
        runs["llama.cpp"] = theirs
    ref = load(spec, "cpu", "float32")
    logits = torch.cat([drift.all_logits(ref.model, ids) for ids in prompts])
    del ref
    gc.collect()
    out = drift.compare(logits, runs)
    print(f"\ndrift from the file's model in float32, {out['positions']} positions of {len(prompts)} prompts: "
          + "; ".join(f"{name} mean KL {out[name]['mean_kl']:.5f} nats, top-1 kept at "
                      f"{out[name]['top1_clear']:.2%} of {out['clear_positions']} clear positions" for name in runs))
    return out


def eng_clear(engines) -> None:
    for eng in engines.values():
        eng.cache.clear()


def summarize(res: dict[str, Any]) -> dict[str, Any]:
    t = res["tasks"]

    def med(name: str, key: str) -> float | None:
        xs = [r[key] for r in t[name] if key in r]
        return round(statistics.median(xs), 1) if xs else None

    s: dict[str, Any] = {}
    for name in ("ours", "llama.cpp"):
        s[name] = {
            "prefill_tok_s": res["prefill"][name]["tok_s"],
            "task_median_ms": med(name, "ms"),
            "task_mean_ms": round(statistics.fmean(r["ms"] for r in t[name]), 1),
            "pass_at_1": round(sum(r["passed"] for r in t[name]) / len(t[name]), 3),
            "key_median_ms": med(name, "key_ms"),
            "key_first_token_median_ms": med(name, "key_first_token_ms"),
        }
    s["ours"]["decode_plain_tok_s"] = res["decode"]["ours (plain)"]["tok_s"]
    s["ours"]["decode_effective_tok_s"] = res["decode"]["ours (speculative)"]["tok_s"]
    s["llama.cpp"]["decode_plain_tok_s"] = s["llama.cpp"]["decode_effective_tok_s"] = res["decode"]["llama.cpp"]["tok_s"]
    o, l = s["ours"], s["llama.cpp"]

    def speed(a: float | None, b: float | None, higher_better: bool) -> float | None:
        if not a or not b:
            return None
        return round(a / b if higher_better else b / a, 2)

    s["ratio"] = {
        "prefill_tok_s": speed(o["prefill_tok_s"], l["prefill_tok_s"], True),
        "decode_plain_tok_s": speed(o["decode_plain_tok_s"], l["decode_plain_tok_s"], True),
        "decode_effective_tok_s": speed(o["decode_effective_tok_s"], l["decode_effective_tok_s"], True),
        "task_median_ms": speed(o["task_median_ms"], l["task_median_ms"], False),
        "task_mean_ms": speed(o["task_mean_ms"], l["task_mean_ms"], False),
        "key_median_ms": speed(o["key_median_ms"], l["key_median_ms"], False),
        "key_first_token_median_ms": speed(o["key_first_token_median_ms"], l["key_first_token_median_ms"], False),
        "pass_at_1": round(o["pass_at_1"] - l["pass_at_1"], 3),
    }
    s["speculative_identical_to_plain"] = res["decode"]["speculative_identical_to_plain"]
    if NEWLINE_RUN in t:
        rows = t[NEWLINE_RUN]
        s[NEWLINE_RUN] = {"pass_at_1": round(sum(r["passed"] for r in rows) / len(rows), 3),
                          "task_median_ms": med(NEWLINE_RUN, "ms")}
    return s


def table(s: dict[str, Any]) -> str:
    rows = [
        ("prefill (tok/s)", "prefill_tok_s"),
        ("decode, plain (tok/s)", "decode_plain_tok_s"),
        ("decode, effective (tok/s)", "decode_effective_tok_s"),
        ("per task, median (ms)", "task_median_ms"),
        ("per task, mean (ms)", "task_mean_ms"),
        ("keystroke, first token (ms)", "key_first_token_median_ms"),
        ("keystroke, answer (ms)", "key_median_ms"),
        ("pass@1", "pass_at_1"),
    ]
    lines = ["| | ours | llama.cpp | ours ÷ llama.cpp (speed; pass@1: difference) |", "|---|---|---|---|"]
    for label, key in rows:
        lines.append(f"| {label} | {s['ours'][key]} | {s['llama.cpp'][key]} | {s['ratio'][key]} |")
    lines.append(f"\nspeculative decode output identical to plain: {s['speculative_identical_to_plain']} prompts")
    if NEWLINE_RUN in s:
        n = s[NEWLINE_RUN]
        lines.append(f"{NEWLINE_RUN}: pass@1 {n['pass_at_1']}, per task median {n['task_median_ms']} ms "
                     f"(ours, deciding how much to write: pass@1 {s['ours']['pass_at_1']})")
    return "\n".join(lines)
