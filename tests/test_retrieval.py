"""Retrieval drafting: the suffix-array index, the majority continuation, the corpus, losslessness."""

from __future__ import annotations

import numpy as np
import pytest

from gemma_lsp.models import corpus
from gemma_lsp.config import Settings
from gemma_lsp.engine import Engine, GenerateRequest
from gemma_lsp.engine.drafters.retrieval import ORDER, RetrievalDrafter, TokenIndex
from gemma_lsp.errors import GemmaLspError
from tiny_models import VOCAB, qwen2


def brute_find(ids: list[int], tail: list[int]) -> list[int]:
    n = len(tail)
    return sorted(i for i in range(len(ids)) if ids[i : i + n] == tail)


def test_find_returns_exactly_the_positions_that_start_with_the_tail():
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 5, 3000)  # a small alphabet: many matches of every length
    index = TokenIndex(ids)
    as_list = ids.tolist()
    for n in range(1, ORDER + 1):
        for start in rng.integers(0, len(ids), 25).tolist() + [len(ids) - n]:  # the corpus end too
            tail = as_list[start : start + n]
            lo, hi = index.find(tail)
            assert sorted(index.sa[lo:hi].tolist()) == brute_find(as_list, tail)
    assert index.find([9, 9]) == (index.find([9, 9])[0],) * 2  # absent: an empty range


def test_positions_are_sorted_by_their_next_tokens():
    ids = np.random.default_rng(1).integers(0, 7, 2000)
    sa = TokenIndex(ids).sa.tolist()
    keys = [ids[p : p + ORDER].tolist() for p in sa]
    assert keys == sorted(keys) and sorted(sa) == list(range(len(ids)))


def test_the_majority_continuation_of_the_longest_tail_wins():
    a, b, c, d, e, x = 10, 11, 12, 13, 14, 15
    ids = [a, b, c, 1] * 3 + [a, b, d, 2] + [x, a, b, e, 3] + [0] * 5
    index = TokenIndex(np.array(ids))
    assert index.continue_([7, a, b], 2) == [c, 1]  # "a b" is followed by c three times in five
    assert index.continue_([x, a, b], 2) == [e, 3]  # the longer tail "x a b" is more specific
    assert index.continue_([7, 8, 9], 3) == []  # nothing matches (a 1-token tail is not enough)
    assert index.continue_([0, 0, 0, 0], 5) == [0]  # stops at the corpus end


def test_vocabularies_too_large_to_pack_are_refused():
    with pytest.raises(ValueError, match="below"):
        TokenIndex(np.array([1, 2, 1 << 20]))


def test_an_index_survives_saving(tmp_path):
    ids = np.random.default_rng(2).integers(0, 50, 500)
    index = TokenIndex(ids)
    index.save(tmp_path / "r.npz")
    back = TokenIndex.load(tmp_path / "r.npz")
    assert np.array_equal(back.ids, index.ids) and np.array_equal(back.sa, index.sa)


def test_retrieval_drafts_never_change_the_output():
    model = qwen2(seed=4)
    rng = np.random.default_rng(3)
    prompts = [[int(t) for t in rng.integers(3, VOCAB, 20)] for _ in range(3)]
    want = [Engine(model).generate(GenerateRequest(prompt=p, max_tokens=24, drafter="none")).tokens for p in prompts]
    # A corpus holding what the model writes (and noise): its drafts are mostly right, sometimes wrong.
    corpus_ids = []
    for p, w in zip(prompts, want):
        corpus_ids += p[-4:] + w[:12] + [int(t) for t in rng.integers(3, VOCAB, 3)] + w[12:] + [0]
    index = TokenIndex(np.array(corpus_ids))
    drafted = accepted = 0
    for drafter in ("retrieval", "auto"):
        engine = Engine(model, retrieval=index)
        for p, w in zip(prompts, want):
            r = engine.generate(GenerateRequest(prompt=p, max_tokens=24, drafter=drafter))
            assert r.tokens == w, drafter
            drafted += r.stats.drafted_by.get("retrieval", [0, 0])[0]
            accepted += r.stats.drafted_by.get("retrieval", [0, 0])[1]
    assert drafted > accepted > 0


def test_auto_drafts_from_retrieval_only_when_the_caller_allows():
    model = qwen2(seed=4)
    p = [5, 6, 7, 8]
    want = Engine(model).generate(GenerateRequest(prompt=p, max_tokens=16, drafter="none")).tokens
    index = TokenIndex(np.array(p + want))
    r = Engine(model, retrieval=index).generate(GenerateRequest(prompt=p, max_tokens=16, retrieval=False))
    assert r.tokens == want and "retrieval" not in r.stats.drafted_by
    with pytest.raises(ValueError, match="retrieval index"):
        Engine(model).generate(GenerateRequest(prompt=p, max_tokens=4, drafter="retrieval"))
    assert RetrievalDrafter(index).propose([5], 4).tokens == []


def test_the_corpus_is_the_library_without_tests_and_is_built_once(tmp_path, tiny_qwen_dir, monkeypatch):
    from transformers import AutoTokenizer

    lib = tmp_path / "lib"
    (lib / "pkg").mkdir(parents=True)
    (lib / "test").mkdir()
    (lib / "a.py").write_text("def add(a, b):\n    return a + b\n")
    (lib / "pkg" / "b.py").write_text("for i in range(len(items)):\n    print(items[i])\n")
    (lib / "test" / "test_a.py").write_text("assert add(1, 2) == 3\n")
    assert [p.name for p in corpus.stdlib_files(lib)] == ["a.py", "b.py"]
    assert [p.name for p in corpus.stdlib_files(lib, max_bytes=40)] == ["a.py"]
    tok = AutoTokenizer.from_pretrained(tiny_qwen_dir)
    index = corpus.index_for(tok, tmp_path / "cache", root=lib)
    text = tok.decode(index.ids.tolist())
    assert "def add(a, b)" in text and "print(items[i])" in text and "assert add" not in text
    line = tok.encode("for i in range(len(items)):")
    assert index.continue_(line[:4], 2) == line[4:6]
    monkeypatch.setattr(TokenIndex, "sort", staticmethod(lambda ids: pytest.fail("built twice")))
    again = corpus.index_for(tok, tmp_path / "cache", root=lib)
    assert np.array_equal(again.ids, index.ids)


def test_the_retrieval_setting_is_checked():
    assert Settings().retrieval == "stdlib"
    assert Settings().merged({"retrieval": "none"}).retrieval == "none"
    with pytest.raises(GemmaLspError, match="retrieval must be one of"):
        Settings().merged({"retrieval": "everything"})


def test_switching_the_corpus_keeps_the_model(tiny_qwen_dir, monkeypatch):
    """retrieval is not part of the engine key: the server switches it on the loaded engine."""
    from gemma_lsp.complete.completer import Completer

    small = TokenIndex(np.arange(3, 40))
    monkeypatch.setattr(corpus, "index_for", lambda tok: small)
    base = Settings().merged({"model": str(tiny_qwen_dir), "dtype": "float32", "retrieval": "none"})
    assert base.merged({"retrieval": "stdlib"}).engine_key() == base.engine_key()
    c = Completer.from_settings(base)
    assert c.engine.retrieval is None
    model = c.engine.model
    c.apply(base.merged({"retrieval": "stdlib"}))
    assert c.engine.retrieval is small and c.engine.model is model
    c.apply(base)
    assert c.engine.retrieval is None
