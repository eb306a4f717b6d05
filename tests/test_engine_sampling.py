"""Speculative *sampling* keeps the target's distribution exactly (rejection sampling).

A tiny 8-token vocabulary lets us compute the exact distribution of the first two
generated tokens and compare it with thousands of seeded speculative samples.
"""

from __future__ import annotations


import pytest
import torch
from transformers import AutoModelForCausalLM, Qwen2Config

from gemma_lsp.engine import Engine, GenerateRequest

V = 8
N = 3000
PROMPT = [1, 2, 3, 4]
# Chi-square critical value for df = V*V - 1 = 63 at p = 0.001 (the test's false-alarm rate).
CHI2_CRIT_63 = 103.4


def tiny(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
    return AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()


@torch.inference_mode()
def exact_pairs(model, temperature: float) -> dict[tuple[int, int], float]:
    p1 = torch.softmax(model(input_ids=torch.tensor([PROMPT])).logits[0, -1] / temperature, -1)
    out = {}
    for a in range(V):
        p2 = torch.softmax(model(input_ids=torch.tensor([PROMPT + [a]])).logits[0, -1] / temperature, -1)
        for b in range(V):
            out[(a, b)] = float(p1[a] * p2[b])
    return out


def chi2(counts: dict[tuple[int, int], int], probs: dict[tuple[int, int], float]) -> float:
    return sum((counts.get(k, 0) - N * p) ** 2 / (N * p) for k, p in probs.items() if N * p > 0)


@pytest.mark.parametrize("drafter", ["suggestion", "model", "ngram"])
def test_speculative_sampling_matches_target_distribution(drafter):
    target, draft = tiny(0), tiny(1)
    temperature = 1.5  # flatten: every pair has real mass
    probs = exact_pairs(target, temperature)
    engine = Engine(target, draft_model=draft)
    counts: dict[tuple[int, int], int] = {}
    forwards = drafted = 0
    for seed in range(N):
        # A fixed one-hot guess: sometimes right, often wrong (exercises accept and reject).
        res = engine.generate(GenerateRequest(prompt=PROMPT, max_tokens=2, drafter=drafter, suggestion=[5, 5, 5],
                                              temperature=temperature, seed=seed))
        counts[tuple(res.tokens)] = counts.get(tuple(res.tokens), 0) + 1
        forwards += res.stats.target_forwards
        drafted += res.stats.drafted
    assert sum(counts.values()) == N
    assert drafted > 0, "nothing was drafted: the test would prove nothing"
    assert chi2(counts, probs) < CHI2_CRIT_63


def test_the_chi_square_check_can_fail():
    """Guard: a distribution that is off (the proposal always accepted) is rejected by the same check."""
    target = tiny(0)
    probs = exact_pairs(target, 1.5)
    biased = {k: (0.5 if k == (5, 5) else 0.0) + 0.5 * p for k, p in probs.items()}
    counts = {k: round(N * p) for k, p in biased.items()}
    assert chi2(counts, probs) > CHI2_CRIT_63


def test_top_p_restricts_to_the_nucleus():
    target = tiny(0)
    engine = Engine(target)
    with torch.inference_mode():
        p = torch.softmax(target(input_ids=torch.tensor([PROMPT])).logits[0, -1], -1)
    top = int(torch.argmax(p))
    seen = {engine.generate(GenerateRequest(prompt=PROMPT, max_tokens=1, drafter="none", temperature=1.0,
                                            top_p=float(p[top]) * 0.99, seed=s)).tokens[0] for s in range(50)}
    assert seen == {top}
