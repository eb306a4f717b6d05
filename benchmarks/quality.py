"""`gemma-lsp bench quality`: functional correctness of completions on HumanEval infilling.

What it measures
  HumanEval problems turned into fill-in-the-middle tasks (``benchmarks/humaneval.py``):
  ``single`` masks one canonical-solution line, ``multi`` a block of 2-5 lines; the
  cursor sits after the masked line's indentation, as an editor leaves it. Each task
  goes through the SAME path as the server: ``Completer.complete`` on a ``Snapshot``
  (text = prefix + suffix, offset = len(prefix)), maxTokens 64 (single) / 128 (multi)
  and a time budget so large that no run is cut by time. The completion is inserted
  and the problem's own tests run in a sandboxed interpreter (``humaneval.run_tests``,
  with a timeout).

  ``singleLine``: ``auto`` for single-line tasks (the server's default; the next line's
  code follows the cursor on its line, so ``auto`` asks for one line, as it does in an
  editor mid-line). Multi-line tasks use ``never`` by default (``--multi-single-line``),
  as ``bench speculative`` does: in text = prefix + suffix the block's following line
  also sits right after the cursor, so ``auto`` would cut every block to its first line
  (an editor would show a fresh blank line there instead).

Figures (per layout x kind)
  pass@1 (post)    the post-processed completion (what an editor inserts) plus the
                   newline that ends the masked block passes the tests
  pass@1 (raw)     the model's raw text (``Completion.raw``: after token healing, before
                   postprocess; cut to its first line for single-line tasks) passes
  post lost        runs (task x drafter) where raw passed but post failed: postprocess
                   turned a pass into a fail. It must be 0; it is printed prominently
  post gained      runs where raw failed but post passed (what postprocess is worth)
  exact match      ``humaneval.exact_match`` of the post-processed completion
  identical        tasks where every drafter gave the same completion text (greedy
                   speculation is lossless; in bf16 a batched verify may flip a near-tie)
  latency          median ``Completer.complete`` wall time per drafter

Layouts (``--layouts``)
  spm              suffix-prefix-middle, token healing on (the server's default)
  psm              prefix-suffix-middle, healing on
  spm-noheal       SPM without token healing (what healing is worth)
  psm-noheal       PSM without token healing
  short-suffix     SPM with ``suffixTokens`` 32

Fairness: one loaded model; the KV prefix caches are cleared and the remembered
suggestion forgotten before every run, so each (layout, task, drafter) starts cold;
the adaptive draft length is kept per drafter. The table reports the first drafter's
pass@1 (``none`` by default); the JSON has every drafter's.

Examples
  gemma-lsp bench quality                          # 40 single + 10 multi, none,auto, spm
  gemma-lsp bench quality --tasks 5 --layouts spm,psm,spm-noheal,psm-noheal
  gemma-lsp bench quality --full --device cuda --json quality.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .speculative import graded_text

TIME_BUDGET_MS = 3_600_000  # an hour: no run is ever cut by time
MAX_TOKENS = {"single": 64, "multi": 128}
DEFAULT_TASKS = {"single": 40, "multi": 10}
KINDS = ("single", "multi")
TEST_TIMEOUT_S = 10.0

# name -> (prompt layout, token healing, suffixTokens override or None)
LAYOUTS: dict[str, tuple[str, bool, int | None]] = {
    "spm": ("spm", True, None),
    "psm": ("psm", True, None),
    "spm-noheal": ("spm", False, None),
    "psm-noheal": ("psm", False, None),
    "short-suffix": ("spm", True, 32),
}


def _csv(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


def parse_layouts(s: str) -> list[str]:
    names = _csv(s)
    bad = [n for n in names if n not in LAYOUTS]
    if bad or not names:
        raise SystemExit(f"gemma-lsp bench quality: unknown layout(s) {', '.join(bad) or '(none)'}; "
                         f"choose from {', '.join(LAYOUTS)}")
    return list(dict.fromkeys(names))


def parse_kinds(s: str) -> list[str]:
    names = _csv(s)
    bad = [n for n in names if n not in KINDS]
    if bad or not names:
        raise SystemExit(f"gemma-lsp bench quality: unknown kind(s) {', '.join(bad) or '(none)'}; "
                         "choose from single,multi")
    return list(dict.fromkeys(names))


def parse_drafters(s: str, draft_model: str | None) -> list[str]:
    from gemma_lsp.names import DRAFTERS

    names = list(dict.fromkeys(_csv(s)))
    bad = [d for d in names if d not in DRAFTERS]
    if bad or not names:
        raise SystemExit(f"gemma-lsp bench quality: unknown drafter(s) {', '.join(bad) or '(none)'}; "
                         f"choose from {', '.join(DRAFTERS)}")
    if "model" in names and not draft_model:
        raise SystemExit("gemma-lsp bench quality: drafter 'model' needs --draft-model")
    return names


def task_counts(args: argparse.Namespace) -> dict[str, int | None]:
    """Sample size per kind; None = every task (--full)."""
    if getattr(args, "full", False):
        return {"single": None, "multi": None}
    single = args.tasks if args.tasks is not None else DEFAULT_TASKS["single"]
    multi = getattr(args, "multi_tasks", None)
    if multi is None:
        multi = args.tasks if args.tasks is not None else DEFAULT_TASKS["multi"]
    return {"single": single, "multi": multi}


def pick_tasks(problems, kinds: Sequence[str], counts: dict[str, int | None], seed: int) -> dict[str, list]:
    from . import humaneval

    out: dict[str, list] = {}
    for kind in kinds:
        pool = (humaneval.single_line_tasks(problems) if kind == "single"
                else humaneval.multi_line_tasks(problems, seed=seed))
        n = counts[kind]
        out[kind] = list(pool) if n is None else humaneval.sample(pool, n, seed)
    return out


# --- grading ------------------------------------------------------------------------


def raw_candidate(raw: str, kind: str) -> str:
    """The raw model text as graded: a single-line task takes only its first line."""
    return raw.split("\n", 1)[0] if kind == "single" else raw


class Grader:
    """Runs a task's tests on a candidate, once per distinct program."""

    def __init__(self, timeout_s: float = TEST_TIMEOUT_S,
                 run_tests: Callable[[str, float], Any] | None = None) -> None:
        from . import humaneval

        self.timeout_s = timeout_s
        self._run = run_tests or humaneval.run_tests
        self._seen: dict[str, Any] = {}
        self.runs = 0

    def __call__(self, task, candidate: str):
        from . import humaneval

        prog = humaneval.program(task, graded_text(candidate))
        if prog not in self._seen:
            self.runs += 1
            self._seen[prog] = self._run(prog, self.timeout_s)
        return self._seen[prog]


def grade(task, kind: str, text: str, raw: str, grader: Grader) -> dict[str, Any]:
    """Grade the post-processed text and the raw text of one run."""
    from . import humaneval

    post = grader(task, text)
    rc = raw_candidate(raw, kind)
    rawr = grader(task, rc)
    return {
        "passed": post.passed, "test_reason": post.reason, "test_detail": post.detail,
        "raw_graded": rc, "raw_passed": rawr.passed, "raw_test_reason": rawr.reason,
        "exact": humaneval.exact_match(task, text), "raw_exact": humaneval.exact_match(task, rc),
        "post_lost": rawr.passed and not post.passed,
        "post_gained": post.passed and not rawr.passed,
    }


@dataclass
class Row:
    layout: str
    kind: str
    task_id: str
    drafter: str
    text: str
    raw: str
    raw_graded: str
    passed: bool
    test_reason: str
    test_detail: str
    raw_passed: bool
    raw_test_reason: str
    exact: bool
    raw_exact: bool
    post_lost: bool
    post_gained: bool
    identical: bool | None  # same text as the first drafter's (None for the first drafter itself)
    latency_ms: float
    tokens: int
    prompt_tokens: int
    reused_tokens: int
    prefill_ms: float
    decode_ms: float
    drafted: int
    accepted: int
    stop_reason: str


def _p95(xs: Sequence[float]) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    return round(s[min(len(s) - 1, round(0.95 * (len(s) - 1)))], 1)


def _rate(k: int, n: int) -> float | None:
    return round(k / n, 4) if n else None


def summarize(rows: Sequence[Row], layouts: Sequence[str], kinds: Sequence[str],
              drafters: Sequence[str]) -> dict[str, dict[str, dict[str, Any]]]:
    """layout -> kind -> figures (the first drafter's pass@1 at top level, every drafter's in by_drafter)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    ref = drafters[0]
    for layout in layouts:
        for kind in kinds:
            rs = [r for r in rows if r.layout == layout and r.kind == kind]
            if not rs:
                continue
            by: dict[str, dict[str, Any]] = {}
            for d in drafters:
                ds = [r for r in rs if r.drafter == d]
                lat = [r.latency_ms for r in ds]
                by[d] = {
                    "tasks": len(ds),
                    "passed": sum(r.passed for r in ds),
                    "pass_at_1": _rate(sum(r.passed for r in ds), len(ds)),
                    "raw_passed": sum(r.raw_passed for r in ds),
                    "raw_pass_at_1": _rate(sum(r.raw_passed for r in ds), len(ds)),
                    "exact": sum(r.exact for r in ds),
                    "exact_match": _rate(sum(r.exact for r in ds), len(ds)),
                    "raw_exact_match": _rate(sum(r.raw_exact for r in ds), len(ds)),
                    "post_lost": sum(r.post_lost for r in ds),
                    "post_gained": sum(r.post_gained for r in ds),
                    "latency_ms_median": round(statistics.median(lat), 1) if lat else None,
                    "latency_ms_p95": _p95(lat),
                    "tokens": sum(r.tokens for r in ds),
                    "prefill_ms_total": round(sum(r.prefill_ms for r in ds), 1),
                    "decode_ms_total": round(sum(r.decode_ms for r in ds), 1),
                    "drafted": sum(r.drafted for r in ds),
                    "accepted": sum(r.accepted for r in ds),
                    "identical": (len(ds) if d == ref else sum(1 for r in ds if r.identical)),
                }
            tasks = sorted({r.task_id for r in rs})
            texts: dict[str, set[str]] = {}
            for r in rs:
                texts.setdefault(r.task_id, set()).add(r.text)
            same = sum(1 for t in tasks if len(texts[t]) == 1)
            first = by[ref]
            out.setdefault(layout, {})[kind] = {
                "tasks": len(tasks),
                "reference_drafter": ref,
                "pass_at_1": first["pass_at_1"],
                "raw_pass_at_1": first["raw_pass_at_1"],
                "exact_match": first["exact_match"],
                "passed": first["passed"],
                "raw_passed": first["raw_passed"],
                "post_lost": sum(b["post_lost"] for b in by.values()),  # over every run (task x drafter)
                "post_gained": sum(b["post_gained"] for b in by.values()),
                "runs": len(rs),
                "drafters_identical": same,
                "latency_ms_median": {d: by[d]["latency_ms_median"] for d in drafters},
                "by_drafter": by,
            }
    return out


def total_post_lost(summary: dict[str, dict[str, dict[str, Any]]]) -> int:
    return sum(s["post_lost"] for kinds in summary.values() for s in kinds.values())


def markdown_table(summary: dict[str, dict[str, dict[str, Any]]]) -> str:
    def pct(x: float | None) -> str:
        return "-" if x is None else f"{x:.2f}"

    def sec(ms: float | None) -> str:
        return "-" if ms is None else f"{ms / 1e3:.2f}s"

    lines = [
        "| layout | kind | tasks | pass@1 (post) | pass@1 (raw) | exact match | post lost | post gained "
        "| drafters identical | median latency |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for layout, kinds in summary.items():
        for kind, s in kinds.items():
            lat = ", ".join(f"{d} {sec(v)}" for d, v in s["latency_ms_median"].items())
            lost = str(s["post_lost"]) if s["post_lost"] == 0 else f"**{s['post_lost']}**"
            lines.append(
                f"| {layout} | {kind} | {s['tasks']} | {pct(s['pass_at_1'])} | {pct(s['raw_pass_at_1'])} "
                f"| {pct(s['exact_match'])} | {lost} | {s['post_gained']} "
                f"| {s['drafters_identical']}/{s['tasks']} | {lat} |")
    return "\n".join(lines)


# --- the run ------------------------------------------------------------------------


@dataclass
class Setup:
    """What every completion of a quality run shares: the completer, one prompter per layout,
    the base settings, the tasks, and the machine they ran on."""

    completer: Any
    prompters: dict[str, Any]
    base: Any  # Settings
    layouts: list[str]
    kinds: list[str]
    drafters: list[str]
    tasks: dict[str, list]
    single_line: dict[str, str]
    info: dict[str, Any]

    @property
    def runs(self) -> int:
        return sum(len(v) for v in self.tasks.values()) * len(self.layouts) * len(self.drafters)

    def complete(self, task, layout: str, drafter: str, max_tokens: int | None = None):
        """One cold completion of `task`: caches cleared, nothing remembered from the last."""
        from gemma_lsp.complete.completer import Snapshot

        c, engine = self.completer, self.completer.engine
        c.prompter = self.prompters[layout]
        uri = f"file:///humaneval/{task.task_id.replace('/', '_')}.py"
        snap = Snapshot(uri=uri, text=task.prefix + task.suffix, offset=len(task.prefix), language="python",
                        path="task.py")
        c.forget(uri)  # else the previous drafter's answer would feed the suggestion drafter
        engine.cache.clear()
        engine.draft_cache.clear()
        over: dict[str, Any] = {"drafter": drafter, "maxTokens": max_tokens or MAX_TOKENS[task.kind],
                                "singleLine": self.single_line[task.kind]}
        if LAYOUTS[layout][2] is not None:
            over["suffixTokens"] = LAYOUTS[layout][2]
        return c.complete(snap, self.base.merged(over), instant=False)


def setup(args: argparse.Namespace) -> Setup:
    from gemma_lsp.complete.completer import Completer
    from gemma_lsp.config import Settings

    from . import humaneval
    from .speculative import announce, machine_info

    layouts = parse_layouts(args.layouts)
    kinds = parse_kinds(args.kinds)
    drafters = parse_drafters(args.drafters, getattr(args, "draft_model", None))
    single_line = {"single": "auto", "multi": getattr(args, "multi_single_line", None) or "never"}
    tasks = pick_tasks(humaneval.load_problems(), kinds, task_counts(args), args.seed)
    base = Settings().merged({
        "model": args.model, "draftModel": getattr(args, "draft_model", None),
        "timeBudgetMs": TIME_BUDGET_MS, "dtype": args.dtype, "device": args.device,
    })
    t0 = time.perf_counter()
    first_layout, first_heal, _ = LAYOUTS[layouts[0]]
    completer = Completer.from_settings(base, layout=first_layout, heal=first_heal)
    load_s = time.perf_counter() - t0
    base_prompter = completer.prompter
    base_prompter.token_texts()  # computed once, shared by every layout's prompter
    prompters = {name: dataclasses.replace(base_prompter, layout=lay, heal=heal)
                 for name, (lay, heal, _) in LAYOUTS.items() if name in layouts}
    info = machine_info(completer, args)
    info["load_s"] = round(load_s, 2)
    st = Setup(completer, prompters, base, layouts, kinds, drafters, tasks, single_line, info)
    announce(info, load_s, "latencies are noisy (pass@1, exact match and identity are not)")
    print(f"tasks: {', '.join(f'{len(tasks[k])} {k}' for k in kinds)} x layouts {', '.join(layouts)} "
          f"x drafters {', '.join(drafters)} = {st.runs} completions; greedy", file=sys.stderr)
    return st


def run(args: argparse.Namespace) -> int:
    from .machine import loadavg

    st = setup(args)
    engine = st.completer.engine
    warm = next((st.tasks[k][0] for k in st.kinds if st.tasks[k]), None)
    if warm is not None:  # untimed warm-up: first-call allocations
        saved = engine.draft_length
        engine.draft_length = engine.new_draft_length()
        st.complete(warm, st.layouts[0], st.drafters[-1], max_tokens=4)
        engine.draft_length = saved
    t_run = time.perf_counter()
    rows = run_all(st)
    run_s = time.perf_counter() - t_run
    st.info["loadavg_after"] = loadavg()
    summary = summarize(rows, st.layouts, st.kinds, st.drafters)
    report(st, summary, rows, run_s)
    if args.json:
        write_json(args, st, summary, rows, run_s)
    return 0


def run_all(st: Setup) -> list[Row]:
    """Every (layout, task, drafter), graded; the first drafter is each task's reference text."""
    from tqdm import tqdm

    engine = st.completer.engine
    grader = Grader()
    lengths = {d: engine.new_draft_length() for d in st.drafters}
    rows: list[Row] = []
    with tqdm(total=st.runs, desc="quality", unit="run", file=sys.stderr, dynamic_ncols=True) as bar:
        for layout in st.layouts:
            for kind in st.kinds:
                for task in st.tasks[kind]:
                    ref_text: str | None = None
                    for d in st.drafters:
                        bar.set_postfix_str(f"{layout} {kind} {task.task_id} {d}", refresh=False)
                        engine.draft_length = lengths[d]
                        c = st.complete(task, layout, d)
                        g = grade(task, kind, c.text, c.raw, grader)
                        ident = None if ref_text is None else c.text == ref_text
                        ref_text = c.text if ref_text is None else ref_text
                        s = c.stats
                        rows.append(Row(layout=layout, kind=kind, task_id=task.task_id, drafter=d, text=c.text,
                                        raw=c.raw, identical=ident, latency_ms=round(c.latency_ms, 1),
                                        tokens=s.tokens, prompt_tokens=s.prompt_tokens, reused_tokens=s.reused_tokens,
                                        prefill_ms=round(s.prefill_ms, 1), decode_ms=round(s.decode_ms, 1),
                                        drafted=s.drafted,
                                        accepted=s.accepted, stop_reason=c.stop_reason, **g))
                        if g["post_lost"]:
                            tqdm.write(f"POST LOST A PASS: {layout} {task.task_id} {d}: raw {g['raw_graded']!r} "
                                       f"passed, post {c.text!r} failed ({g['test_reason']})", file=sys.stderr)
                        bar.update(1)
    return rows


def report(st: Setup, summary: dict, rows: list[Row], run_s: float) -> None:
    info, drafters = st.info, st.drafters
    lost = total_post_lost(summary)
    raw_passes = sum(r.raw_passed for r in rows)
    print(f"\nquality: HumanEval infilling; {info['model']} on {info['device']} {info['dtype']} "
          f"(torch {info['torch']}, {info['threads']} threads); drafters {', '.join(drafters)}; "
          f"pass@1 columns are drafter `{drafters[0]}`'s; {st.runs} runs in {run_s:.0f} s\n")
    print(markdown_table(summary))
    print()
    if lost == 0:
        print(f"POST-PROCESS LOST PASSES: 0 (of {raw_passes} raw passes over {len(rows)} runs) - OK")
    else:
        print(f"!!! POST-PROCESS LOST PASSES: {lost} (of {raw_passes} raw passes over {len(rows)} runs) - "
              "postprocess turned a passing raw completion into a failing one; see the rows with post_lost !!!")
    differ = [(lay, k) for lay, ks in summary.items() for k, s in ks.items() if s["drafters_identical"] != s["tasks"]]
    if len(drafters) > 1:
        if differ:
            print(f"drafters NOT identical in: {', '.join(f'{a}/{b}' for a, b in differ)} "
                  f"({info['dtype']}: a batched verify may round a near-tie differently)")
        else:
            print(f"drafters identical: every task gave the same text with {', '.join(drafters)}")
    print("post lost / gained: runs (task x drafter) where postprocess turned a raw pass into a fail / "
          "a raw fail into a pass; raw = Completion.raw (first line for single-line tasks).")


def write_json(args: argparse.Namespace, st: Setup, summary: dict, rows: list[Row], run_s: float) -> None:
    base, kinds = st.base, st.kinds
    out = {
        "bench": "quality",
        "args": {k: v for k, v in vars(args).items() if k != "func" and not callable(v)},
        "machine": st.info,
        "settings": {
            "time_budget_ms": TIME_BUDGET_MS, "max_tokens": {k: MAX_TOKENS[k] for k in kinds},
            "single_line": {k: st.single_line[k] for k in kinds},
            "prefix_tokens": base.prefix_tokens, "suffix_tokens": base.suffix_tokens,
            "layouts": {n: {"layout": LAYOUTS[n][0], "heal": LAYOUTS[n][1], "suffix_tokens": LAYOUTS[n][2]
                            or base.suffix_tokens} for n in st.layouts},
            "test_timeout_s": TEST_TIMEOUT_S, "seed": args.seed,
        },
        "layouts": st.layouts, "kinds": kinds, "drafters": st.drafters,
        "tasks": {k: [t.task_id for t in st.tasks[k]] for k in kinds},
        "run_s": round(run_s, 1),
        "post_lost_total": total_post_lost(summary),
        "raw_passes_total": sum(r.raw_passed for r in rows),
        "summary": summary,
        "rows": [dataclasses.asdict(r) for r in rows],
    }
    with open(args.json, "w", encoding="utf-8") as fh:
        json.dump(out, fh, indent=1)
    print(f"wrote {args.json}", file=sys.stderr)
