"""The lean few-token forward (quant/lean.py) on tiny random-weight models with int4 weights.

What must hold: it computes what transformers' forward computes (close in float32, same
argmax), a k-row verify equals k one-row steps bit for bit (the losslessness the engine
relies on), fused siblings equal their members, and everything it does not cover falls
back to transformers unchanged.
"""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache, LlamaConfig

from gemma_lsp.engine import Engine, GenerateRequest
from gemma_lsp.engine.cache import truncate
from gemma_lsp.engine.costs import CostCurve
from gemma_lsp.quant import lean, native
from gemma_lsp.quant.linear import HybridLinear, Int4Linear, set_max_rows
from gemma_lsp.quant.model import attach
from test_quant import _quantize_tiny
from tiny_models import VOCAB, _build, gemma3, qwen2


def llama(seed: int = 0) -> torch.nn.Module:
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      tie_word_embeddings=False)
    return _build(cfg, seed)


def quantized(build, tmp_path, dtype: torch.dtype = torch.float32, max_rows: int = 4) -> torch.nn.Module:
    model = build().to(dtype)
    _quantize_tiny(model, tmp_path / "w.safetensors", dtype)
    attach(model, tmp_path / "w.safetensors", max_rows=max_rows)
    return model


def prompt(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(3, VOCAB, (1, n), generator=torch.Generator().manual_seed(seed))


def use_native(model: torch.nn.Module, on: bool) -> None:
    """Run the lean forward's layers on our kernels (native_layer) or in torch ops (torch_layer)."""
    if on and not native.available():
        pytest.skip(f"native kernels: {native.status()}")
    model.forward.native = on


@pytest.mark.parametrize("on", [True, False], ids=["native", "torch-ops"])
@pytest.mark.parametrize("build", [qwen2, llama])
@torch.inference_mode()
def test_lean_forward_computes_what_transformers_computes(build, on, tmp_path):
    model = quantized(build, tmp_path)
    assert lean.installed(model)
    use_native(model, on)
    ids = prompt(20)
    for rows in (1, 3, 4):  # after a dense prompt pass, as in decoding
        ours, theirs = DynamicCache(), DynamicCache()
        model.forward.fallback(input_ids=ids, cache=theirs)
        model.forward.fallback(input_ids=ids, cache=ours)
        x = prompt(rows, seed=rows)
        got = model(input_ids=x, cache=ours, logits_to_keep=rows).logits
        want = model.forward.fallback(input_ids=x, cache=theirs, logits_to_keep=rows).logits
        # float32 sums in another order (our attention kernel, fused siblings): rounding relative
        # to the logits' scale (~80 here), not to each small logit
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * want.abs().max().item())
        assert torch.equal(got.argmax(-1), want.argmax(-1))
        for a, b in zip(ours.layers, theirs.layers):  # and it leaves the same KV behind
            torch.testing.assert_close(a.keys, b.keys, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(a.values, b.values, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("on", [True, False], ids=["native", "torch-ops"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@torch.inference_mode()
def test_a_verify_forward_equals_one_token_steps_bit_for_bit(tmp_path, dtype, on):
    model = quantized(qwen2, tmp_path, dtype, max_rows=8)
    use_native(model, on)
    cache = DynamicCache()
    model(input_ids=prompt(30), cache=cache)
    feed = prompt(8, seed=9)
    steps = [model(input_ids=feed[:, i : i + 1], cache=cache, logits_to_keep=1).logits[0, -1] for i in range(8)]
    truncate(cache, 30)
    verify = model(input_ids=feed, cache=cache, logits_to_keep=8).logits[0]
    assert all(torch.equal(verify[i], steps[i]) for i in range(8))


@torch.inference_mode()
def test_a_short_prompt_can_start_on_the_lean_path(tmp_path):
    """A prompt of at most max_rows tokens: the lean path fills an empty cache itself."""
    model = quantized(qwen2, tmp_path)
    ids = prompt(3)
    got = model(input_ids=ids, cache=DynamicCache(), logits_to_keep=3).logits
    want = model.forward.fallback(input_ids=ids, cache=DynamicCache(), logits_to_keep=3).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("sizes", "calls"), [((128, 64, 64), [[128, 64, 64]]),  # the default model's shape
                                                ((64, 32, 32), [[64, 32], [32]]),  # a 32-row tail ends a run
                                                ((32, 64), [[32], [64]])])
def test_fused_siblings_equal_their_members_and_share_their_bytes(sizes, calls):
    g = torch.Generator().manual_seed(0)
    mods = []
    for n in sizes:
        q = Int4Linear(64, n, True, torch.float32)
        q.set_weight(torch.randint(0, 16, (n, 64), generator=g, dtype=torch.uint8), torch.rand(n, 2, generator=g),
                     torch.randn(n, 2, generator=g))
        q.bias = torch.nn.Parameter(torch.randn(n, generator=g), requires_grad=False)
        mods.append(HybridLinear(torch.nn.Linear(64, n), q))
    x = torch.randn(3, 64, generator=g)
    want = [m.quant(x) for m in mods]  # before fusing: each member's own packed weight
    sib = lean.Siblings(mods)
    assert [s for _, s in sib.calls] == calls
    for got, w, m in zip(sib(x), want, mods):
        assert torch.equal(got, w) and torch.equal(m.quant(x), w)  # members still right, on shared bytes
    kernel = sib.calls[0][0]
    if len(calls[0]) > 1:
        assert mods[1].quant.packed.untyped_storage().data_ptr() == kernel.packed.untyped_storage().data_ptr()


@torch.inference_mode()
def test_what_it_does_not_cover_goes_to_transformers(tmp_path):
    model = quantized(qwen2, tmp_path, max_rows=4)
    calls: list[int] = []
    hook = model.model.register_forward_hook(lambda _m, a, _o: calls.append(1))  # only transformers' path calls it
    try:
        cache = DynamicCache()
        model(input_ids=prompt(10), cache=cache)  # 10 rows > max_rows: a dense prompt pass
        assert len(calls) == 1
        model(input_ids=prompt(2), cache=cache)
        assert len(calls) == 1  # lean
        model(input_ids=prompt(2))  # no cache given
        model(input_ids=prompt(2), cache=cache, output_hidden_states=True)  # an argument it does not handle
        assert len(calls) == 3
        set_max_rows(model, 0)  # the cost measurement's dense run
        model(input_ids=prompt(1), cache=cache)
        assert len(calls) == 4
    finally:
        hook.remove()


def test_other_architectures_keep_transformers_forward(tmp_path):
    model = quantized(lambda: gemma3(seed=1), tmp_path)
    assert not lean.installed(model)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_speculative_equals_plain_on_the_lean_path(tmp_path, dtype):
    """Lossless end to end, in bf16 too: no near-tie exemption on this path."""
    model = quantized(qwen2, tmp_path, dtype, max_rows=8)
    cost = CostCurve({1: 10.0, 2: 10.5, 4: 11.0, 8: 12.0}, max_rows=8)
    motif = [int(t) for t in prompt(6, seed=3)[0]]
    for p in ([int(t) for t in prompt(30, seed=4)[0]], motif * 5 + [7, 8, 9]):
        want = Engine(model, cost=cost).generate(GenerateRequest(prompt=p, max_tokens=32, drafter="none")).tokens
        guess = want[:16] + [(t + 1) % VOCAB for t in want[16:]]
        for drafter in ("ngram", "suggestion", "auto"):
            res = Engine(model, cost=cost).generate(GenerateRequest(prompt=p, max_tokens=32, drafter=drafter,
                                                                    suggestion=guess))
            assert res.tokens == want, drafter


@torch.inference_mode()
def test_steps_write_into_room_after_the_kv_and_crops_reuse_it(tmp_path):
    import copy

    from gemma_lsp.engine.cache import cache_bytes

    model = quantized(qwen2, tmp_path, max_rows=4)
    ours, ref = DynamicCache(), DynamicCache()
    for c in (ours, ref):
        model(input_ids=prompt(12), cache=c)  # a dense prompt pass: transformers' cat
    fallback = model.forward.fallback
    ptrs = set()
    for step in range(6):
        x = prompt(1 + step % 3, seed=step)
        got = model(input_ids=x, cache=ours, logits_to_keep=1).logits
        want = fallback(input_ids=x, cache=ref, logits_to_keep=1).logits
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
        ptrs.add(ours.layers[0].keys.data_ptr())
        if step == 3:  # rejected drafts: crop both, then write over the cut positions
            truncate(ours, 14)
            truncate(ref, 14)
    assert len(ptrs) == 1  # one buffer from the first step on: no copy of the history per step
    for a, b in zip(ours.layers, ref.layers):
        torch.testing.assert_close(a.keys, b.keys, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(a.values, b.values, rtol=1e-5, atol=1e-5)
    assert cache_bytes(ours) > sum(2 * t.keys.numel() * 4 for t in ours.layers)  # the room is counted
    twin = copy.deepcopy(ours)  # what PrefixCache.take does for a diverging prompt
    before = ours.layers[0].keys.clone()
    truncate(twin, ours.get_seq_length() - 2)
    model(input_ids=prompt(2, seed=8), cache=twin)  # overwrites the last 2 positions, in its buffer
    assert not torch.equal(twin.layers[0].keys, before)
    assert torch.equal(ours.layers[0].keys, before)  # the original's are untouched
