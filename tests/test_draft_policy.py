"""`auto` is never slower than `none`: the draft-length policy on injected cost curves and
acceptance, with no timing at all.

The decode loop is simulated the way `Engine._decode` drives `DraftLength`: ask for k, draft
k tokens that are each right with probability p until the first wrong one (prefix
acceptance), pay cost(k + 1) for the verify forward, gain accepted + 1 tokens, report back.
Plain decoding pays cost(1) per token. The curves are ones measured on this project's
machines (`gemma-lsp prepare` prints them), plus the two extremes.
"""

from __future__ import annotations

import random

import pytest

from gemma_lsp.engine.costs import CostCurve
from gemma_lsp.engine.draft_length import DraftLength

CURVES = {  # rows -> ms per forward
    "amd-epyc row kernels": {1: 56, 2: 78, 3: 99, 4: 131, 6: 177, 8: 236, 12: 327, 17: 352},
    "amd-epyc tile kernels": {1: 43, 2: 51, 3: 59, 4: 67, 6: 84, 8: 102, 12: 155, 17: 208},
    "intel-xeon": {1: 70.6, 2: 79.8, 4: 86.1, 8: 129.7, 17: 260.0},
    "flat": {1: 50, 17: 55},
    "linear (no draft can pay)": {1: 50, 17: 850},
}
ACCEPTANCE = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 0.97)
ROOM = 16  # the engine caps a draft at max_rows - 1


def decode(curve: dict[int, float], accept, steps: int = 4000, seed: int = 0) -> tuple[float, int]:
    """(ms, tokens) of `steps` forwards under the policy; `accept(step)`: p at that step."""
    cost = CostCurve(dict(curve))
    dl = DraftLength(cost=cost)
    rng = random.Random(seed)
    key = ("python", "ngram")
    ms = tokens = 0.0
    for step in range(steps):
        k = min(dl.get(key), ROOM)
        p = accept(step)
        a = 0
        while a < k and rng.random() < p:
            a += 1
        ms += cost(k + 1)
        tokens += a + 1
        if k:
            dl.update(key, k, a)
    return ms, int(tokens)


@pytest.mark.parametrize("name", CURVES)
@pytest.mark.parametrize("p", ACCEPTANCE)
def test_auto_is_never_slower_than_plain(name, p):
    curve = CURVES[name]
    ms, tokens = decode(curve, lambda _: p)
    speedup = (tokens / ms) * curve[1]  # tokens per ms against plain's 1 / cost(1)
    assert speedup >= 0.98, (name, p, speedup)
    # and where drafting can pay a lot, it does
    best = CostCurve(dict(curve)).best_k(p, ROOM)
    if best:
        ideal = (1 - p ** (best + 1)) / (1 - p) / CostCurve(dict(curve))(best + 1) * curve[1]
        if ideal >= 1.3:
            assert speedup >= 1.0 + 0.5 * (ideal - 1.0), (name, p, speedup, ideal)


@pytest.mark.parametrize("name", CURVES)
def test_drafting_turns_off_within_a_few_steps_when_acceptance_collapses(name):
    """Right 90 % of the time for 200 steps (a file being typed in again), then never (new
    code): the drafts stop costing within a few steps, and the probes after stay cheap."""
    curve = CURVES[name]
    switch = 200
    ms, tokens = decode(curve, lambda s: 0.9 if s < switch else 0.0, steps=switch + 1000)
    before_ms, before_tokens = decode(curve, lambda s: 0.9, steps=switch)
    after_ms, after_tokens = ms - before_ms, tokens - before_tokens  # the same seed: the same first 200 steps
    assert after_tokens == 1000  # nothing accepted after the switch
    assert after_ms <= 1000 * curve[1] * 1.02 + 8 * (CostCurve(dict(curve))(ROOM + 1) - curve[1]), (name, after_ms)


def test_probes_come_back_when_acceptance_recovers():
    curve = CURVES["amd-epyc tile kernels"]
    ms, tokens = decode(curve, lambda s: 0.0 if s < 300 else 0.9, steps=900)
    later_ms, later_tokens = decode(curve, lambda s: 0.0, steps=300)
    gain = ((tokens - later_tokens) / (ms - later_ms)) * curve[1]
    assert gain >= 1.5, gain  # after the drought, drafting pays again within the run


def test_a_warm_up_chunk_is_as_narrow_as_costs_little_more_per_token():
    """A request waits for the warm-up chunk it preempts: narrow where narrow is cheap."""
    quant = CostCurve({1: 35, 8: 95, 17: 171, 32: 279, 64: 550, 128: 989}, 128)  # AMD EPYC, measured
    assert quant.narrow_chunk() == 32  # 115 tok/s against 129 at 128 rows
    dense = CostCurve({1: 260, 17: 338, 32: 521, 64: 821, 128: 1297})  # dense bf16: narrow is dear
    assert dense.narrow_chunk() == 128
    assert CostCurve({1: 35, 8: 95}, 8).narrow_chunk() == 128  # nothing measured that wide: the default
