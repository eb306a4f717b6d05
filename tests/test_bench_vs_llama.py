"""`bench vs-llama-cpp`: the ratios and the table (pure functions), and the CLI wiring.

llama-cpp-python is an optional extra that takes minutes to build, so CI does not
install it; the adapter itself runs in the benchmark (docs/benchmarks.md).
"""

from __future__ import annotations

import pytest

from benchmarks.vs_llama_cpp import summarize, table


def fake_results() -> dict:
    def rows(ms: list[float], passed: list[bool], key: list[float]):
        out = []
        for i, (m, p) in enumerate(zip(ms, passed)):
            r = {"task": f"T/{i}", "ms": m, "passed": p, "tokens": 5, "text": "x"}
            if i < len(key):
                r.update(key_ms=key[i], key_first_token_ms=key[i] / 2, key_new_tokens=1)
            out.append(r)
        return out

    return {
        "prefill": {"tokens": 512, "ours": {"ms": 2000.0, "tok_s": 256.0}, "llama.cpp": {"ms": 6400.0, "tok_s": 80.0}},
        "decode": {"ours (plain)": {"tok_s": 7.0}, "ours (speculative)": {"tok_s": 14.0},
                   "llama.cpp": {"tok_s": 7.0}, "speculative_identical_to_plain": "4 of 4"},
        "tasks": {"ours": rows([1000, 2000, 3000], [True, True, False], [200, 400]),
                  "llama.cpp": rows([2000, 4000, 6000], [True, False, False], [100, 300])},
    }


def test_ratios_are_speed_ratios_ours_over_llama_cpp():
    s = summarize(fake_results())
    r = s["ratio"]
    assert r["prefill_tok_s"] == pytest.approx(3.2)
    assert r["decode_plain_tok_s"] == pytest.approx(1.0)
    assert r["decode_effective_tok_s"] == pytest.approx(2.0)
    assert r["task_median_ms"] == pytest.approx(2.0)  # 4000 / 2000: ours twice as fast
    assert r["key_median_ms"] == pytest.approx(0.67)  # 200 / 300: ours slower on keystrokes here
    assert r["pass_at_1"] == pytest.approx(2 / 3 - 1 / 3, abs=1e-3)
    assert s["ours"]["pass_at_1"] == pytest.approx(0.667, abs=1e-3)
    text = table(s)
    assert "| per task, median (ms) | 2000 | 4000 | 2.0 |" in text
    assert "speculative decode output identical to plain: 4 of 4 prompts" in text


def test_cli_has_the_command():
    import argparse

    from benchmarks.cli import add_bench_args

    p = argparse.ArgumentParser()
    add_bench_args(p)
    args = p.parse_args(["vs-llama-cpp", "--tasks", "3", "--gguf", "x.gguf"])
    assert args.bench == "vs-llama-cpp" and args.tasks == 3 and args.gguf == "x.gguf"


def test_drift_compares_each_run_with_the_reference():
    import torch

    from benchmarks.drift import compare, kl

    ref = torch.tensor([[4.0, 1.0, 0.0], [2.0, 1.8, 0.0], [0.0, 0.0, 5.0]])  # row 1: no clear leader
    same = ref.clone()
    flipped = ref.clone()
    flipped[0] = torch.tensor([1.0, 4.0, 0.0])  # the clear leader of row 0 loses
    out = compare(ref, {"same": same, "flipped": flipped})
    assert out["positions"] == 3 and out["clear_positions"] == 2
    assert out["same"] == {"mean_kl": 0.0, "top1_clear": 1.0}
    assert out["flipped"]["top1_clear"] == 0.5
    p, q = torch.softmax(ref[0], -1), torch.softmax(flipped[0], -1)
    assert out["flipped"]["mean_kl"] == pytest.approx((p * (p / q).log()).sum().item() / 3, rel=1e-5)
    assert kl(ref, flipped)[1:].abs().max() == 0


def test_cli_takes_drift():
    import argparse

    from benchmarks.cli import add_bench_args

    p = argparse.ArgumentParser()
    add_bench_args(p)
    assert p.parse_args(["vs-llama-cpp"]).drift == 0
    assert p.parse_args(["vs-llama-cpp", "--drift", "4"]).drift == 4
