"""Deferring other files' chunks that are not cached yet (engine/deferral.py): the choice on
injected cache states and rates (no timing), the engine running the short prompt exactly as
if it had been asked for it, a warm-up that caches the short prompt and then the whole one,
the Prompter's cuts on the real tokenizer (tiny_qwen_dir's), and the daemon forwarding them."""

from __future__ import annotations

import pytest

from gemma_lsp.backends import inprocess
from gemma_lsp.backends.daemon import Daemon
from gemma_lsp.complete.prompt import Prompter
from gemma_lsp.engine import Engine, GenerateRequest
from gemma_lsp.engine.deferral import DEFER_S, prompt_now
from gemma_lsp.models.loader import load
from tiny_models import qwen2, reference_greedy

A = list(range(3, 23))  # chunk 0: the head, cached from earlier requests
B = list(range(23, 63))  # chunk 1: the file the user just left, new
REST = list(range(63, 83))  # the current file
WHOLE, CUTS = A + B + REST, (0, len(A), len(A) + len(B))
SHORT = A + REST


def holder(*entries: list[int]):
    """`longest` over a cache that holds `entries`."""
    def longest(ids) -> int:
        best = 0
        for e in entries:
            n = 0
            while n < min(len(e), len(ids)) and e[n] == ids[n]:
                n += 1
            best = max(best, n)
        return best
    return longest


def test_the_uncached_chunk_is_left_out_when_it_costs_more_than_the_threshold():
    rate = (len(B) - 1) / DEFER_S  # B's tokens take just over DEFER_S
    assert prompt_now(WHOLE, CUTS, holder(A), rate) == (SHORT, len(B))
    assert prompt_now(WHOLE, CUTS, holder(A), len(B) / DEFER_S) == (WHOLE, 0)  # saves no more than it
    assert prompt_now(WHOLE, CUTS, holder(), 1.0) == (REST, len(A) + len(B))  # nothing cached: every chunk
    assert prompt_now(WHOLE, CUTS, holder(A + B), 1.0) == (WHOLE, 0)  # all chunks cached
    assert prompt_now(WHOLE, CUTS, holder(A), None) == (WHOLE, 0)  # rate unknown: whole
    assert prompt_now(WHOLE, (), holder(), 1.0) == (WHOLE, 0)  # no chunks


def test_a_half_cached_chunk_is_kept_when_its_rest_is_cheap():
    """A warm-up that got through most of B: finishing B costs less than the threshold."""
    rate = 10 / DEFER_S
    assert prompt_now(WHOLE, CUTS, holder(A + B[:35]), rate) == (WHOLE, 0)  # 5 left, < 10
    assert prompt_now(WHOLE, CUTS, holder(A + B[:20]), rate) == (SHORT, len(B))  # 20 left
    # the short prompt's own cached tokens count for it: a request that ran SHORT before
    assert prompt_now(WHOLE, CUTS, holder(A, SHORT), rate) == (SHORT, len(B))


@pytest.mark.parametrize("cuts", [(0, 50, 40), (-1, 20), (0, 200), (0, True)])
def test_bad_cuts_are_a_clear_error(cuts):
    with pytest.raises(ValueError, match="cuts"):
        prompt_now(WHOLE, cuts, holder(), 1.0)


@pytest.fixture(scope="module")
def model():
    return qwen2(seed=5)


def test_the_engine_runs_the_short_prompt_exactly_then_the_whole_one_once_warmed(model):
    engine = Engine(model)
    engine.generate(GenerateRequest(prompt=A + [7, 8, 9], max_tokens=2, drafter="none"))  # A cached
    engine.prompt_rate = 1.0  # any uncached chunk costs more than DEFER_S (no timing in tests)
    first = engine.generate(GenerateRequest(prompt=WHOLE, cuts=CUTS, max_tokens=10, drafter="ngram"))
    assert first.stats.deferred_tokens == len(B) and first.stats.prompt_tokens == len(SHORT)
    assert first.stats.reused_tokens == len(A)
    assert first.tokens == reference_greedy(model, SHORT, 10)  # exactly what SHORT alone gives
    # the warm-up in the next pause: the short prompt is there, then the whole one
    warmed = engine.warm(WHOLE, None, CUTS)
    assert warmed.tokens == len(B) + len(REST) and engine.cache.longest(WHOLE) >= len(WHOLE) - 1
    engine.prompt_rate = 1.0  # the warm-up measured this machine's rate: back to tiny, so only the cache decides
    second = engine.generate(GenerateRequest(prompt=WHOLE, cuts=CUTS, max_tokens=10, drafter="ngram"))
    assert second.stats.deferred_tokens == 0 and second.stats.reused_tokens == len(WHOLE) - 1
    assert second.tokens == reference_greedy(model, WHOLE, 10)


def test_a_warm_up_caches_the_short_prompt_first(model):
    """A request that preempts the warm-up in the first pause finds the prompt it will run."""
    import threading

    engine = Engine(model)
    engine.generate(GenerateRequest(prompt=A + [7], max_tokens=1, drafter="none"))
    engine.prompt_rate = 1.0
    stop = threading.Event()
    calls = []
    real = engine._warm

    def warm_then_preempt(prompt, ev):  # the request arrives after the first warm-up job
        calls.append(list(prompt))
        st = real(prompt, ev)
        stop.set()
        return st

    engine._warm = warm_then_preempt
    engine.warm(WHOLE, stop, CUTS)
    assert calls == [SHORT]  # the whole one waits for the next pause
    assert engine.cache.longest(SHORT) >= len(SHORT) - 1


def test_a_fast_prompt_pass_never_defers(model):
    engine = Engine(model)
    engine.prompt_rate = 1e9
    res = engine.generate(GenerateRequest(prompt=WHOLE, cuts=CUTS, max_tokens=4, drafter="none"))
    assert res.stats.deferred_tokens == 0 and res.tokens == reference_greedy(model, WHOLE, 4)


@pytest.fixture(scope="module")
def tiny(tiny_qwen_dir):
    return load(str(tiny_qwen_dir), "cpu", "float32")


def test_the_prompters_cuts_split_at_the_chunks_and_the_short_prompt_is_the_one_without_them(tiny):
    p = Prompter(tiny.tokenizer)
    extras = [("a.py", "def alpha():\n    return 1\n"), ("b.py", "BETA = 2\n")]
    whole = p.build("x = alp", "\nprint(x)\n", extras, "c.py")
    c = whole.cuts
    assert len(c) == 3 and c[0] == 0
    assert "alpha" in p.decode(whole.ids[c[0]:c[1]]) and "BETA" in p.decode(whole.ids[c[1]:c[2]])
    alone = p.build("x = alp", "\nprint(x)\n", [], "c.py")
    assert whole.ids[: c[0]] + whole.ids[c[-1]:] == alone.ids and alone.cuts == ()
    head = p.build("x = alp", "\nprint(x)\n", extras[:1], "c.py")
    assert whole.ids[: c[1]] + whole.ids[c[-1]:] == head.ids


def test_the_daemon_forwards_cuts_to_its_engine(tiny, tmp_path):
    import threading

    from gemma_lsp.backends.http import Http, HttpStatusError
    from gemma_lsp.backends.openai import OpenAIBackend

    engine = inprocess.build(tiny, None, 64 << 20).engine
    d = Daemon(engine, tiny.tokenizer, "tiny", tmp_path / "engine.sock", idle_s=3600)
    d.bind()
    t = threading.Thread(target=d.serve_forever, daemon=True)
    t.start()
    try:
        backend = OpenAIBackend(Http(f"unix:{d.path}"), tiny.tokenizer, label="local", extensions=True)
        backend.generate(GenerateRequest(prompt=A + [7], max_tokens=1, drafter="none"))
        engine.prompt_rate = 1.0
        backend.warm(WHOLE, None, CUTS)
        assert engine.cache.longest(SHORT) >= len(SHORT) - 1  # it warmed the short prompt (then the whole)
        with pytest.raises(HttpStatusError) as e:
            Http(f"unix:{d.path}").post("/completions", {"prompt": [1, 2, 3], "gemma": {"cuts": [0, 9]}})
        assert e.value.status == 400 and "cuts" in e.value.body
        with pytest.raises(HttpStatusError) as e:
            Http(f"unix:{d.path}").post("/completions", {"prompt": [1, 2, 3], "gemma": {"cuts": "0"}})
        assert e.value.status == 400 and "gemma.cuts" in e.value.body
    finally:
        d.server.shutdown()
        t.join(10)
