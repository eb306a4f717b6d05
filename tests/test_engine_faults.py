"""A forward or a drafter that raises fails its own request only: the KV the request took
from the prefix cache goes back (cropped to what is known good), so the next request still
reuses it and still equals plain greedy. The fault is a real exception inside the model's
last decoder layer, after the first layers appended their KV: the half-updated cache case."""

from __future__ import annotations

import pytest

from gemma_lsp.engine import Engine, GenerateRequest
from tiny_models import FAMILIES, reference_greedy


class Boom(RuntimeError):
    pass


def _arm(model, calls: int):
    """Raise inside the last decoder layer on its `calls`-th call from now."""
    layer = model.model.layers[-1]
    left = [calls]

    def hook(_module, _args):
        left[0] -= 1
        if left[0] == 0:
            raise Boom("injected fault in the last layer")

    return layer.register_forward_pre_hook(hook)


@pytest.fixture(scope="module", params=list(FAMILIES))
def model(request):
    return FAMILIES[request.param](seed=5)


@pytest.mark.parametrize("when", [1, 2, 4], ids=["prefill", "first-decode", "later-decode"])
def test_a_failed_forward_keeps_the_cache(model, when):
    prompt = [(5 * i + 7) % 90 + 3 for i in range(40)]
    engine = Engine(model)
    engine.generate(GenerateRequest(prompt=prompt[:30], max_tokens=2, drafter="none"))  # cache 30+ tokens
    handle = _arm(model, when)
    try:
        with pytest.raises(Boom):
            engine.generate(GenerateRequest(prompt=prompt, max_tokens=8, drafter="ngram"))
    finally:
        handle.remove()
    res = engine.generate(GenerateRequest(prompt=prompt, max_tokens=8, drafter="ngram"))
    assert res.tokens == reference_greedy(model, prompt, 8)
    assert res.stats.reused_tokens >= 30  # the entry survived the failure


def test_a_failing_drafter_fails_alone(model, monkeypatch):
    prompt = [(3 * i + 1) % 90 + 3 for i in range(32)]
    engine = Engine(model)

    def broken(ctx, k):
        raise Boom("injected fault in a drafter")

    from gemma_lsp.engine.drafters import copying as drafters

    monkeypatch.setattr(drafters.NGramDrafter, "propose", lambda self, ctx, k: broken(ctx, k))
    with pytest.raises(Boom):
        engine.generate(GenerateRequest(prompt=prompt, max_tokens=8, drafter="ngram"))
    monkeypatch.undo()
    res = engine.generate(GenerateRequest(prompt=prompt, max_tokens=8, drafter="ngram"))
    assert res.tokens == reference_greedy(model, prompt, 8)
    assert res.stats.reused_tokens == len(prompt) - 1
