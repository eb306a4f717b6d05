"""Greedy speculative decoding is lossless: identical tokens to plain greedy, for every drafter.

Tiny random-weight Qwen2 / Gemma 3 / Gemma 4 text models in float32 (built in
the test); Gemma's sliding window is 8 tokens, so every prompt crosses it.
"""

from __future__ import annotations

import random

import pytest

from gemma_lsp.engine import Engine, GenerateRequest
from tiny_models import FAMILIES, VOCAB, reference_greedy

DRAFTERS = ["none", "ngram", "suggestion", "model", "auto"]


def prompts(seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    motif = [rng.randrange(3, VOCAB) for _ in range(6)]
    noisy = [rng.randrange(3, VOCAB) for _ in range(30)]
    # A repetitive prompt gives the n-gram drafter real (and partly wrong) proposals.
    return [noisy, motif * 5 + noisy[:7], noisy[:10] + motif * 3]


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request):
    make = FAMILIES[request.param]
    return request.param, make(seed=1), make(seed=2)


@pytest.mark.parametrize("drafter", DRAFTERS)
def test_greedy_speculative_equals_plain_greedy(family, drafter):
    name, target, draft = family
    engine = Engine(target, draft_model=draft)
    total_drafted = 0
    for i, prompt in enumerate(prompts(7)):
        want = reference_greedy(target, prompt, 24)
        # The suggestion drafter gets a half-right guess, so both accept and reject paths run.
        guess = want[:10] + [(t + 1) % VOCAB for t in want[10:]]
        res = engine.generate(GenerateRequest(prompt=prompt, max_tokens=24, drafter=drafter, suggestion=guess))
        assert res.tokens == want, f"{name}/{drafter} prompt {i}"
        assert res.stop_reason == "max_tokens"
        total_drafted += res.stats.drafted
        if drafter != "none":
            assert res.stats.target_forwards <= len(prompt) // 256 + 1 + len(want)
    if drafter != "none":
        assert total_drafted > 0, "the drafter never proposed anything: the test would prove nothing"


def test_accepted_drafts_save_forwards(family):
    """A correct suggestion is verified in a few forwards, not one per token."""
    _, target, _ = family
    engine = Engine(target)
    prompt = prompts(3)[0]
    want = reference_greedy(target, prompt, 20)
    res = engine.generate(GenerateRequest(prompt=prompt, max_tokens=20, drafter="suggestion", suggestion=want))
    assert res.tokens == want
    assert res.stats.accepted >= 15
    assert res.stats.target_forwards <= 6  # 1 prefill + a few verify steps (k grows 8 -> 10 -> ...)


def test_stop_tokens_end_generation_and_are_not_emitted(family):
    _, target, draft = family
    prompt = prompts(5)[1]
    full = reference_greedy(target, prompt, 16)
    stop = frozenset({full[5]})
    want = reference_greedy(target, prompt, 16, stop=stop)
    for drafter in DRAFTERS:
        res = Engine(target, draft_model=draft).generate(
            GenerateRequest(prompt=prompt, max_tokens=16, stop_ids=stop, drafter=drafter, suggestion=full)
        )
        assert res.tokens == want and res.stop_reason == "stop", drafter


def test_newline_tokens_end_after_emitting(family):
    _, target, _ = family
    prompt = prompts(5)[2]
    full = reference_greedy(target, prompt, 16)
    nl = frozenset({full[4]})
    cut = full[: full.index(full[4]) + 1]
    res = Engine(target).generate(GenerateRequest(prompt=prompt, max_tokens=16, newline_ids=nl, drafter="suggestion", suggestion=full))
    assert res.tokens == cut and res.stop_reason == "newline"


def test_unknown_drafter_is_a_clear_error(family):
    _, target, _ = family
    with pytest.raises(ValueError, match="unknown drafter"):
        Engine(target).generate(GenerateRequest(prompt=[1, 2, 3], drafter="telepathy"))
    with pytest.raises(ValueError, match="draft model"):
        Engine(target).generate(GenerateRequest(prompt=[1, 2, 3], drafter="model"))


def test_caller_stop_after_is_lossless_and_early(family):
    """A caller's stop check ends plain and speculative decoding at the same token."""
    _, target, draft = family
    prompt = prompts(9)[1]
    full = reference_greedy(target, prompt, 20)
    stop_at = 7

    def stop_after(out) -> bool:
        return len(out) >= stop_at and list(out[:stop_at]) == full[:stop_at]

    for drafter in DRAFTERS:
        res = Engine(target, draft_model=draft).generate(GenerateRequest(
            prompt=prompt, max_tokens=20, drafter=drafter, suggestion=full, stop_after=stop_after))
        assert res.tokens == full[:stop_at] and res.stop_reason == "stop", drafter
