"""The GGUF-weights path: block decoding, the torch kernels, the hybrid switch, and losslessness.

Blocks are random bytes shaped as real GGUF blocks and checked against the gguf
package's own dequantizer (the reference llama.cpp's Python tools use). The engine
test runs a tiny Qwen2 whose every Linear is a HybridLinear, through the real
`attach` and weights-file format.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as T
from gguf import quants
from safetensors.torch import save_file

from gemma_lsp.engine import Engine, GenerateRequest
from gemma_lsp.engine.costs import CostCurve, measure
from gemma_lsp.engine.draft_length import DraftLength
from gemma_lsp.quant import blocks
from gemma_lsp.quant.formats import BY_KIND
from gemma_lsp.quant.linear import HybridLinear, Int4Linear, Int8Linear, nibbles, set_max_rows, unnibble
from gemma_lsp.quant.model import FORMAT, attach
from tiny_models import VOCAB, qwen2


def random_blocks(qtype: T, n: int, k: int, seed: int = 0) -> np.ndarray:
    """Random bytes in `qtype`'s block layout, with sane float16 scales."""
    rng = np.random.default_rng(seed)
    block, size = quants.GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, size=(n * k // block, size), dtype=np.uint8)
    d = rng.uniform(1e-3, 2e-2, size=(raw.shape[0], 2)).astype(np.float16).view(np.uint8)
    if qtype in (T.Q4_K, T.Q5_K):
        raw[:, 0:4] = d.reshape(-1, 4)  # d and dmin
    elif qtype == T.Q4_0:
        raw[:, 0:2] = d[:, :2]
    elif qtype in (T.Q4_1, T.Q5_1):
        raw[:, 0:4] = d.reshape(-1, 4)  # d and m
    elif qtype == T.Q6_K:
        raw[:, -2:] = d[:, :2]
    elif qtype in (T.Q8_0, T.Q5_0):
        raw[:, 0:2] = d[:, :2]
    return raw.reshape(n, -1)


def test_q5_k_unpacked_for_the_kernels_dequantizes_as_the_file():
    """The fallback reads the kernel's Q5_K layout: it must hold the file's weights, bit for bit."""
    from gemma_lsp.quant import native

    raw = random_blocks(T.Q5_K, 24, 512, seed=4)
    got = blocks.dequantize_q5_k_unpacked(BY_KIND["q5k"].repack(raw, 24, 512), 24, 512)
    assert np.array_equal(got, quants.dequantize(raw, T.Q5_K).reshape(24, 512))


@pytest.mark.parametrize("qtype", [T.Q4_K, T.Q4_0, T.Q4_1])
def test_4bit_blocks_become_int4_exactly(qtype):
    n, k = 16, 512
    raw = random_blocks(qtype, n, k)
    w = blocks.convert(raw, qtype, n, k)
    assert isinstance(w, blocks.Int4Weight)
    assert w.q.max() <= 15
    ref = quants.dequantize(raw, qtype).reshape(n, k)
    np.testing.assert_array_equal(w.dequantize(), ref)


@pytest.mark.parametrize("qtype", [T.Q6_K, T.Q8_0])
def test_other_blocks_become_int8_within_half_a_step(qtype):
    n, k = 16, 512
    raw = random_blocks(qtype, n, k, seed=3)
    w = blocks.convert(raw, qtype, n, k)
    assert isinstance(w, blocks.Int8Weight)
    ref = quants.dequantize(raw, qtype).reshape(n, k)
    err = np.abs(w.dequantize() - ref)
    assert (err <= w.scale[:, None] * (0.5 + 1e-5)).all()  # round to nearest: |error| <= step / 2
    assert err.max() > 0  # requantizing is not free: the test would notice a no-op


def test_float_weights_are_left_dense():
    assert blocks.convert(np.zeros((4, 64), np.float32), T.F32, 4, 64) is None


def _int4_layer(n: int, k: int, dtype: torch.dtype, seed: int = 0) -> tuple[Int4Linear, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(0, 16, (n, k), generator=g, dtype=torch.uint8)
    scale = torch.rand(n, k // 32, generator=g) * 0.05 + 0.01
    zero = torch.randn(n, k // 32, generator=g) * 0.05
    layer = Int4Linear(k, n, False, dtype)
    layer.set_weight(q, scale, zero)
    w = ((q.float() - 8).view(n, k // 32, 32) * scale[..., None] + zero[..., None]).view(n, k)
    return layer, w


def test_nibble_form_round_trips():
    q = torch.randint(0, 16, (8, 64), dtype=torch.uint8)
    assert torch.equal(unnibble(nibbles(q)), q)


@torch.inference_mode()
def test_int4_kernel_computes_the_dequantized_matmul():
    layer, w = _int4_layer(64, 256, torch.float32)
    x = torch.randn(5, 256)
    torch.testing.assert_close(layer(x), x @ w.T, rtol=1e-5, atol=1e-4)
    # bf16 activations (and bf16 scales): within bf16's precision
    layer16, _ = _int4_layer(64, 256, torch.bfloat16)
    y = layer16(x.bfloat16()).float()
    assert ((y - x @ w.T).abs().max() / (x @ w.T).abs().max()) < 2e-2


@torch.inference_mode()
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_each_row_is_computed_alone(dtype):
    """Batch invariance: verifying k tokens in one forward gives each row what one-row forwards give."""
    l4, _ = _int4_layer(64, 256, dtype)
    l8 = Int8Linear(256, 64, False, dtype)
    l8.set_weight(torch.randint(-127, 128, (64, 256), dtype=torch.int8), torch.rand(64) / 100)
    x = torch.randn(9, 256, dtype=dtype)
    for layer in (l4, l8):
        full = layer(x)
        for i in range(9):
            assert torch.equal(layer(x[i : i + 1]), full[i : i + 1])


@torch.inference_mode()
def test_weights_read_at_an_unaligned_offset_are_safe():
    """safetensors hands out tensors at any offset of its mmap; the int8 kernel's vector loads
    fault on a misaligned weight (a segfault, seen with Gemma 3 270M's file) unless copied."""
    n, k = 1024, 640
    base = torch.randint(-127, 128, (n * k + 64,), dtype=torch.int8)
    off = next(o for o in range(1, 64) if (base.data_ptr() + o) % 64 == 40)
    q = base[off : off + n * k].view(n, k)
    assert q.data_ptr() % 64 == 40
    layer = Int8Linear(k, n, False, torch.bfloat16)
    layer.set_weight(q, torch.rand(n) / 100)
    assert layer.q.data_ptr() % 64 == 0
    x = torch.randn(8, k, dtype=torch.bfloat16)
    ref = x.float() @ (q.float() * layer.scale.float()[:, None]).T
    assert ((layer(x).float() - ref).abs().max() / ref.abs().max()) < 2e-2


@torch.inference_mode()
def test_hybrid_uses_the_kernel_for_few_rows_and_dense_for_many():
    layer, w = _int4_layer(64, 256, torch.float32)
    dense = torch.nn.Linear(256, 64, bias=False)
    dense.weight.data = w + 1.0  # visibly different, to tell the paths apart
    h = HybridLinear(dense, layer, max_rows=4)
    x = torch.randn(6, 256)
    assert torch.equal(h(x[:4]), layer(x[:4]))
    assert torch.equal(h(x), dense(x))


def test_best_draft_length_follows_the_cost_curve():
    flat = CostCurve({1: 100.0, 17: 110.0})
    assert flat.best_k(0.8, 16) >= 8  # verifying is almost free: long drafts pay
    steep = CostCurve({1: 100.0, 2: 200.0, 17: 1700.0})
    assert steep.best_k(0.9, 16) == 0  # cost grows like the tokens: no draft beats plain
    mid = CostCurve({1: 100.0, 2: 110.0, 4: 180.0, 8: 400.0})
    assert mid(3) == pytest.approx(145.0)  # interpolated
    assert 1 <= mid.best_k(0.7, 16) <= 3
    assert mid.best_k(0.05, 16) == 0  # a drafter that is rarely right is not worth a forward


def test_draft_length_skips_unprofitable_drafters_but_probes_them():
    assert DraftLength(cost=CostCurve({1: 100.0, 2: 200.0, 17: 1700.0})).probe_interval() == 50  # 100 % / 2 %
    dl = DraftLength(cost=CostCurve({1: 100.0, 2: 200.0, 17: 1700.0}), probe_every=4, probe_loss=0.25)
    key = ("python", "ngram")
    assert dl.get(key) == 0  # not measured yet: the prior (0.5) does not pay on this curve either
    dl.update(key, 1, 0)  # a failed probe: the next one waits twice as long (8 steps)
    got = [dl.get(key) for _ in range(8)]
    assert got == [0, 0, 0, 0, 0, 0, 1, 0]
    dl.update(key, 1, 1)  # a probe that was right: back to every 4th step
    assert [dl.get(key) for _ in range(4)] == [0, 0, 1, 0]


def test_a_drafter_not_yet_measured_starts_at_what_the_prior_pays():
    """A first proposal of 7 tokens costs cost(8) = 2.3 one-token steps here if it is wrong."""
    dl = DraftLength(cost=CostCurve({1: 90.8, 2: 97.8, 3: 102.8, 4: 114.5, 6: 187.5, 8: 208.1}))
    assert dl.get(("python", "retrieval")) == 2  # best for acceptance 0.5 on the measured curve
    assert dl.get(("python", "suggestion")) == dl.k_max  # the model's own output: all of it
    assert DraftLength().get(("python", "ngram")) == DraftLength().k_init  # no curve: no cap


def _quantize_tiny(model: torch.nn.Module, path, dtype: torch.dtype) -> None:
    """Give every Linear random 4-bit weights (dense copy = their exact dequantization); save them."""
    g = torch.Generator().manual_seed(5)
    tensors = {}
    for name, mod in model.named_modules():
        if not isinstance(mod, torch.nn.Linear):
            continue
        n, k = mod.out_features, mod.in_features
        q = torch.randint(0, 16, (n, k), generator=g, dtype=torch.uint8)
        scale = torch.rand(n, k // 32, generator=g) * 0.1 + 0.02
        zero = torch.randn(n, k // 32, generator=g) * 0.05
        if name == "lm_head":
            scale, zero = scale * 8, zero * 8  # decisive argmaxes, as tiny_models does
        w = ((q.float() - 8).view(n, k // 32, 32) * scale[..., None] + zero[..., None]).view(n, k)
        mod.weight.data = w.to(dtype)
        tensors[f"{name}.q4"] = nibbles(q)
        tensors[f"{name}.q4_scale"] = scale
        tensors[f"{name}.q4_zero"] = zero
    save_file(tensors, path, metadata={"format": FORMAT})


@pytest.mark.parametrize("drafter", ["ngram", "suggestion", "auto"])
def test_speculative_equals_plain_on_quantized_weights(tmp_path, drafter):
    """Lossless w.r.t. the model actually run: GGUF-style int4 kernels for decode, dense prefill."""
    model = qwen2(seed=1)
    _quantize_tiny(model, tmp_path / "w.safetensors", torch.float32)
    counts = attach(model, tmp_path / "w.safetensors", max_rows=4)
    assert {k: v for k, v in counts.items() if v} == {"int4": 15}  # q, k, v, o, gate, up, down in 2 layers, and lm_head
    cost = CostCurve({1: 10.0, 2: 10.5, 4: 11.0, 8: 30.0}, max_rows=4)
    rng = np.random.default_rng(0)
    motif = list(rng.integers(3, VOCAB, 6))
    prompts = [list(rng.integers(3, VOCAB, 30)), motif * 5 + list(rng.integers(3, VOCAB, 7))]
    plain = Engine(model, cost=cost)
    spec = Engine(model, cost=cost)
    drafted = 0
    for p in prompts:
        p = [int(t) for t in p]
        want = plain.generate(GenerateRequest(prompt=p, max_tokens=24, drafter="none")).tokens
        guess = want[:12] + [(t + 1) % VOCAB for t in want[12:]]
        res = spec.generate(GenerateRequest(prompt=p, max_tokens=24, drafter=drafter, suggestion=guess))
        assert res.tokens == want
        drafted += res.stats.drafted
    assert drafted > 0


def test_verify_forwards_stay_on_the_quantized_kernel(tmp_path):
    """Drafts are capped at max_rows - 1, so no verify forward falls through to the dense path."""
    model = qwen2(seed=2)
    _quantize_tiny(model, tmp_path / "w.safetensors", torch.float32)
    attach(model, tmp_path / "w.safetensors", max_rows=3)
    rows: list[int] = []
    hook = model.lm_head.register_forward_pre_hook(lambda _m, a: rows.append(a[0].shape[1]))
    engine = Engine(model, cost=CostCurve({1: 10.0, 2: 10.0, 3: 10.0, 17: 10.0}, max_rows=3))
    want = Engine(model).generate(GenerateRequest(prompt=list(range(3, 40)), max_tokens=20, drafter="none")).tokens
    rows.clear()
    res = engine.generate(GenerateRequest(prompt=list(range(3, 40)), max_tokens=20, drafter="suggestion",
                                          suggestion=want))
    hook.remove()
    assert res.tokens == want
    decode_rows = rows[1:]  # the first forward is the prompt
    assert decode_rows and max(decode_rows) <= 3


@torch.inference_mode()
def test_measured_curve_sets_the_switch(tmp_path):
    model = qwen2(seed=3)
    _quantize_tiny(model, tmp_path / "w.safetensors", torch.float32)
    attach(model, tmp_path / "w.safetensors")
    curve = measure(model, rows=(1, 2, 4))
    assert set(curve.ms) == {1, 2, 4} and all(v > 0 for v in curve.ms.values())
    assert curve.max_rows in (0, 1, 2, 4)
    assert all(m.max_rows == curve.max_rows for m in model.modules() if isinstance(m, HybridLinear))
    set_max_rows(model, 8)
    assert all(m.max_rows == 8 for m in model.modules() if isinstance(m, HybridLinear))


def _tiny_gguf_pair(tmp_path, vocab: int = 88, types: tuple[T, T] = (T.Q4_K, T.Q6_K), hidden: int = 256):
    """A tiny Qwen2 as a real GGUF file (random blocks: types[1] for down_proj, types[0] for the
    rest, as in a Q4_K_M file) plus the bf16 copy transformers would make of it: what `prepare`
    has on disk before `build` runs."""
    from gguf import GGUFWriter
    from transformers import AutoModelForCausalLM, Qwen2Config
    from transformers.modeling_gguf_pytorch_utils import TensorProcessor, get_gguf_hf_weights_map

    cfg = Qwen2Config(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=64, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    names = {hf: g for g, hf in get_gguf_hf_weights_map(model, TensorProcessor()).items()}
    writer = GGUFWriter(tmp_path / "tiny.gguf", "qwen2")
    for i, (name, mod) in enumerate(model.named_modules()):
        if not isinstance(mod, torch.nn.Linear):
            continue
        qtype = types[1] if name.endswith("down_proj") else types[0]
        raw = random_blocks(qtype, mod.out_features, mod.in_features, seed=i)
        writer.add_tensor(names[f"{name}.weight"], raw, raw_dtype=qtype)
        deq = quants.dequantize(raw, qtype).reshape(mod.out_features, mod.in_features)
        mod.weight.data = torch.from_numpy(deq).bfloat16()
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    model.save_pretrained(tmp_path / "hf")
    return tmp_path / "tiny.gguf", tmp_path / "hf"


def test_build_and_attach_a_real_gguf_file(tmp_path, monkeypatch):
    """torch's int4 / int8 forms of the file (what runs where gemma-lsp's kernels cannot: test_native.py)."""
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    from gemma_lsp.quant import native
    from gemma_lsp.quant.model import build

    monkeypatch.setitem(native._state, "error", "turned off for this test")

    gguf_path, hf = _tiny_gguf_pair(tmp_path)
    out = build(gguf_path, hf)
    with safe_open(out, "pt") as f:
        keys = set(f.keys())
    assert "model.layers.0.self_attn.q_proj.q4" in keys  # Q4_K -> int4, exact
    assert "model.layers.0.mlp.down_proj.q8" in keys  # Q6_K -> int8 per row
    assert "lm_head.q8" in keys  # Q4_K, but 88 rows: torch's int4 packer needs multiples of 16
    model = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.bfloat16)
    dense = {n: m.weight.detach().clone() for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    counts = attach(model, out)
    assert {k: v for k, v in counts.items() if v} == {"int4": 6, "int8": 2}
    x = torch.randn(3, 256, dtype=torch.bfloat16)
    with torch.inference_mode():
        for name, w in dense.items():
            layer = model.get_submodule(name)
            if layer.in_features != 256:
                continue
            ref = x.float() @ w.float().T
            got = layer.quant(x).float() - (layer.dense.bias.float() if layer.dense.bias is not None else 0)
            assert ((got - ref).abs().max() / ref.abs().max()) < 3e-2, name


def test_build_refuses_a_gguf_that_does_not_match_its_bf16_copy(tmp_path):
    from safetensors.torch import load_file, save_file

    from gemma_lsp.errors import ModelError
    from gemma_lsp.quant.model import QUANT_FILE, build

    gguf_path, hf = _tiny_gguf_pair(tmp_path)
    st = next(hf.glob("*.safetensors"))
    tensors = load_file(st)
    key = "model.layers.0.self_attn.q_proj.weight"
    tensors[key] = tensors[key].t().contiguous()  # what a permuted layout would look like
    save_file(tensors, st, metadata={"format": "pt"})
    with pytest.raises(ModelError, match="does not match"):
        build(gguf_path, hf)
    assert not (hf / QUANT_FILE).exists()
    assert not list(hf.glob(f".{QUANT_FILE}.*"))  # no temp file left behind


def test_a_damaged_weights_file_is_a_clear_error(tmp_path, monkeypatch, tiny_qwen_dir):
    """load() names the file and the fix instead of a safetensors traceback."""
    import shutil

    from gemma_lsp.models import loader as models
    from gemma_lsp.errors import ModelError
    from gemma_lsp.quant.model import QUANT_FILE

    _, hf = _tiny_gguf_pair(tmp_path)
    for f in tiny_qwen_dir.glob("tokenizer*"):
        shutil.copy(f, hf / f.name)
    (hf / QUANT_FILE).write_bytes(b"\x00" * 100)  # truncated garbage
    monkeypatch.setattr(models, "resolve", lambda spec, quant=True: (hf, None))
    with pytest.raises(ModelError, match="delete it and run `gemma-lsp prepare`"):
        models.load("x", "cpu", "gguf")
