"""Prefix cache: reuse is exact (also past a sliding window), bounded by bytes; cancel and time budget."""

from __future__ import annotations

import threading

import pytest
import torch

from gemma_lsp.engine import Engine, GenerateRequest
from gemma_lsp.engine.cache import PrefixCache, cache_bytes
from tiny_models import FAMILIES, reference_greedy


@pytest.fixture(scope="module", params=list(FAMILIES))
def model(request):
    return FAMILIES[request.param](seed=3)


def test_reuse_is_exact_and_counted(model):
    """Window 8 on Gemma: the crops below go far behind the sliding window."""
    base = [(7 * i + 3) % 90 + 3 for i in range(30)]
    p1 = base
    p2 = base[:20] + [5, 6, 7, 8, 9]  # diverges after 20 tokens
    p3 = base + [11, 12]  # extends p1
    engine = Engine(model)
    for prompt, reused in ((p1, 0), (p2, 20), (p3, 30), (p1, 29)):
        res = engine.generate(GenerateRequest(prompt=prompt, max_tokens=12, drafter="ngram"))
        assert res.tokens == reference_greedy(model, prompt, 12)
        assert res.stats.reused_tokens == reused, prompt
    # p2's branch survived p3's extension of p1: alternating prompts both stay cached.
    res = engine.generate(GenerateRequest(prompt=p2, max_tokens=12, drafter="none"))
    assert res.stats.reused_tokens == len(p2) - 1


def test_identical_prompt_recomputes_only_its_last_token(model):
    prompt = list(range(3, 40))
    engine = Engine(model)
    a = engine.generate(GenerateRequest(prompt=prompt, max_tokens=8))
    b = engine.generate(GenerateRequest(prompt=prompt, max_tokens=8))
    assert a.tokens == b.tokens
    assert b.stats.reused_tokens == len(prompt) - 1
    assert b.stats.target_forwards < a.stats.target_forwards + 1


def test_lru_respects_its_byte_bound(model):
    engine = Engine(model)
    engine.generate(GenerateRequest(prompt=list(range(3, 43)), max_tokens=4))
    one = engine.cache.bytes
    assert one > 0
    bound = int(one * 2.5)
    cache = PrefixCache(bound)
    for i in range(6):
        e = Engine(model)
        e.cache = cache
        e.generate(GenerateRequest(prompt=[3 + i] + list(range(4, 43)), max_tokens=4))
        assert cache.bytes <= bound
    assert len(cache) == 2
    tiny = PrefixCache(10)  # smaller than any entry: nothing is kept, nothing breaks
    e = Engine(model)
    e.cache = tiny
    e.generate(GenerateRequest(prompt=list(range(3, 20)), max_tokens=2))
    assert len(tiny) == 0


class CountingModel(torch.nn.Module):
    """Wraps a model; sets `event` when the n-th forward starts (as a cancel arriving mid-decode)."""

    def __init__(self, inner, n: int, event: threading.Event) -> None:
        super().__init__()
        self.inner, self.n, self.event, self.calls = inner, n, event, 0
        self.config = inner.config

    def forward(self, **kw):
        self.calls += 1
        if self.calls == self.n:
            self.event.set()
        return self.inner(**kw)


def test_cancel_lands_within_one_forward(model):
    ev = threading.Event()
    wrapped = CountingModel(model, 4, ev)
    res = Engine(wrapped).generate(GenerateRequest(prompt=list(range(3, 30)), max_tokens=50, drafter="none", stop_event=ev))
    assert res.stop_reason == "cancelled"
    assert wrapped.calls == 4  # the event set during forward 4 stops the loop before forward 5
    assert len(res.tokens) == 4


def test_cancel_before_start_and_time_budget(model):
    ev = threading.Event()
    ev.set()
    res = Engine(model).generate(GenerateRequest(prompt=list(range(3, 30)), max_tokens=50, stop_event=ev))
    assert res.stop_reason == "cancelled" and res.stats.target_forwards == 0 and res.tokens == []



def test_cache_bytes_counts_every_layer(model):
    engine = Engine(model)
    engine.generate(GenerateRequest(prompt=list(range(3, 23)), max_tokens=1))
    (key, cache), = list(engine.cache._lru.items())
    layers = model.config.num_hidden_layers - (getattr(model.config, "num_kv_shared_layers", 0) or 0)  # shared layers store nothing
    kv = model.config.num_key_value_heads * getattr(model.config, "head_dim", 16)
    assert cache_bytes(cache) == layers * 2 * len(key) * kv * 4  # fp32


class FakeClock:
    """Deterministic time for the engine: each forward of the wrapped model takes 0.1 s."""

    def __init__(self) -> None:
        self.now = 100.0

    def monotonic(self) -> float:
        return self.now

    perf_counter = monotonic

    def time_ns(self) -> int:
        return int(self.now * 1e9)


class ClockedModel(torch.nn.Module):
    def __init__(self, inner, clock: FakeClock) -> None:
        super().__init__()
        self.inner, self.clock, self.config = inner, clock, inner.config

    def forward(self, **kw):
        out = self.inner(**kw)
        self.clock.now += 0.1
        return out


def test_the_prompt_pass_is_never_cut_by_time(model):
    """A budget already spent still runs the whole prompt pass (its KV is cached either way)."""
    prompt = [(5 * i + 1) % 90 + 3 for i in range(300)]  # two prefill chunks
    engine = Engine(model)
    res = engine.generate(GenerateRequest(prompt=prompt, max_tokens=50, drafter="none", budget_s=-1.0, ceiling_s=-1.0))
    assert res.stop_reason == "time" and res.stats.prefill_forwards == 2 and res.stats.target_forwards == 2
    again = engine.generate(GenerateRequest(prompt=prompt + [7], max_tokens=2, drafter="none"))
    assert again.stats.reused_tokens == len(prompt)


def fake_time(monkeypatch) -> "FakeClock":
    """One fake clock for the engine loop and the time policy (engine/request.py)."""
    from gemma_lsp.engine import request, speculative

    clock = FakeClock()
    monkeypatch.setattr(speculative, "time", clock)
    monkeypatch.setattr(request, "time", clock)
    return clock


def test_time_ceiling_is_not_overrun_by_the_last_forward(model, monkeypatch):
    clock = fake_time(monkeypatch)
    wrapped = ClockedModel(model, clock)
    # The ceiling counts from the end of the prompt pass (0.1): 4 decode forwards fit, a 5th would end at 0.5.
    res = Engine(wrapped).generate(GenerateRequest(prompt=list(range(3, 30)), max_tokens=50, drafter="none",
                                                   ceiling_s=0.45))
    assert res.stop_reason == "time"
    assert clock.now <= 100.0 + 0.1 + 0.45
    assert res.stats.target_forwards == 5 and len(res.tokens) == 5


@pytest.mark.parametrize("drafter", ["none", "ngram"])
def test_past_the_budget_decoding_finishes_the_line(model, monkeypatch, drafter):
    """The budget never cuts the line being written: decoding goes on to the next line end,
    and the output is plain greedy's, cut just after that token."""
    prompt = [(3 * i) % 20 + 3 for i in range(40)]  # repetitive: n-gram drafts get accepted
    full = reference_greedy(model, prompt, 30)
    # A "line end" token first emitted at index >= 4: every decode forward ends past the budget.
    first = next(i for i in range(4, 30) if full[i] not in full[:i])
    clock = fake_time(monkeypatch)
    res = Engine(ClockedModel(model, clock)).generate(GenerateRequest(
        prompt=prompt, max_tokens=30, drafter=drafter, budget_s=0.05, ceiling_s=60.0,
        line_end_ids=frozenset([full[first]])))
    assert res.stop_reason == "budget"
    assert res.tokens == full[: first + 1]
    # With no line end in sight, the ceiling still holds.
    res = Engine(ClockedModel(model, clock)).generate(GenerateRequest(
        prompt=prompt, max_tokens=30, drafter=drafter, budget_s=0.15, ceiling_s=0.35, line_end_ids=frozenset([999])))
    assert res.stop_reason == "time" and res.tokens == full[: len(res.tokens)] and res.stats.target_forwards <= 4
