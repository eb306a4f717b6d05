"""gemma-lsp's own kernels (quant/kernels/: Q4_K, Q5_K, Q6_K, Q8_0, Q5_0, Q4_0; AVX512 and AVX2) on
random blocks shaped like a GGUF's.

Two references, both from the gguf package's dequantizer (the one llama.cpp's Python tools use):
  * exact: the activations quantized per 32 values as the kernel does (round half to even of
    x·127/max|x|), times the dequantized weights, in float64. The kernel's integer sums are
    exact, so only float32 accumulation over groups and blocks separates them.
  * the float matmul: the gap may not exceed Σ|w|·dx/2 per output, the most that rounding each
    activation to its int8 step (dx = max|x|/127 of its 32 values) can move it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as T
from gguf import quants

from gemma_lsp.quant import native
from gemma_lsp.quant.formats import BY_GGUF, BY_KIND, FORMATS
from gemma_lsp.quant.linear import BlockLinear
from test_quant import random_blocks

pytestmark = pytest.mark.skipif(not native.available(), reason=f"native kernels: {native.status()}")

def op(kind: str):
    return lambda x, w: native.mm(kind, x, w)


KERNELS = {f.gguf: (f.repack, op(f.kind)) for f in FORMATS}  # every format of the registry


@pytest.fixture(params=["avx512", "avx2"])
def isa(request):
    """Each kernel test runs on both instruction sets this CPU has (AVX2 code runs on AVX512 CPUs)."""
    before = native.isa()
    if native.isa(request.param) != request.param:
        native.isa(before)
        pytest.skip(f"this CPU has no {request.param}")
    yield request.param
    native.isa(before)


def weights(qtype: T, n: int, k: int, seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    raw = random_blocks(qtype, n, k, seed)
    pack, _ = KERNELS[qtype]
    return torch.from_numpy(pack(raw, n, k)), quants.dequantize(raw, qtype).reshape(n, k).astype(np.float64)


STEP = 32  # activations per int8 step: each group of 32 has its own


def blocks_of(a: torch.Tensor, size: int) -> torch.Tensor:
    """[rows, K] -> [rows, ceil(K/size), size], zeros after a shorter last block (as the kernel pads)."""
    pad = -a.shape[-1] % size
    return torch.nn.functional.pad(a, (0, pad)).reshape(a.shape[0], -1, size)


def int8_activations(x: torch.Tensor, scale: int) -> torch.Tensor:
    """x as the kernel sees it: dx·round(x/dx) per `scale` values, dx = max|x|/127 (float32 math)."""
    b = blocks_of(x.float(), scale)
    amax = b.abs().amax(-1, keepdim=True)
    inv = torch.where(amax > 0, torch.tensor(127.0) / amax, torch.zeros_like(amax))
    return (torch.round(b * inv).double() * (amax / 127.0).double()).reshape(x.shape[0], -1)[:, : x.shape[1]]


def check_against_references(y: torch.Tensor, x: torch.Tensor, ref: np.ndarray, qtype: T) -> None:
    """y within float32 rounding of the exact reference, and within Σ|w|·dx/2 of the float matmul."""
    scale = STEP
    y = y.double().numpy()
    exact = int8_activations(x, scale).numpy() @ ref.T
    np.testing.assert_allclose(y, exact, rtol=1e-5, atol=1e-4 * np.abs(exact).max())
    dense = x.double().numpy() @ ref.T
    step = blocks_of(x.abs(), scale).amax(-1).double().numpy() / 127  # dx per block
    bound = (blocks_of(torch.from_numpy(np.abs(ref)), scale).sum(-1).numpy() @ (step.T / 2)).T  # Σ_blocks Σ|w|·dx/2
    assert np.all(np.abs(y - dense) <= bound * 1.001 + 1e-4)
    assert np.abs(y - dense).max() > 0  # the activations really are quantized


@pytest.mark.parametrize("qtype", list(KERNELS), ids=lambda t: t.name)
@pytest.mark.parametrize("rows", [1, 3, 8, 11])
def test_kernel_computes_the_blocks_times_int8_activations(qtype, rows, isa):
    n, k = 80, 768
    w, ref = weights(qtype, n, k, seed=rows)
    x = torch.randn(rows, k, generator=torch.Generator().manual_seed(rows)) * 3
    x[:, 5] = 40.0  # an outlier channel, as real activations have
    check_against_references(KERNELS[qtype][1](x, w), x, ref, qtype)


@pytest.mark.parametrize("qtype", [T.Q8_0, T.Q5_0, T.Q4_0, T.Q4_1, T.Q5_1], ids=lambda t: t.name)
@pytest.mark.parametrize("k", [96, 640, 896])  # only a tail; Gemma 3 270M's width; Qwen2.5-Coder-0.5B's
@pytest.mark.parametrize("rows", [1, 5, 9])
def test_rows_of_32_weight_blocks_need_not_be_a_multiple_of_256(qtype, k, rows, isa):
    """Blocks of 32 weights: the last block of 256 activations is shorter, and its weights run
    in the tail loop. Each row is still computed alone."""
    w, ref = weights(qtype, 40, k, seed=k + rows)
    x = torch.randn(rows, k, generator=torch.Generator().manual_seed(k)) * 2
    x[:, -1] = 25.0  # an outlier in the short block: its dx is its own
    mm = KERNELS[qtype][1]
    y = mm(x, w)
    check_against_references(y, x, ref, qtype)
    assert torch.equal(y, torch.cat([mm(x[i : i + 1], w) for i in range(rows)]))


@pytest.mark.parametrize("qtype", list(KERNELS), ids=lambda t: t.name)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_each_row_is_computed_alone(qtype, dtype, isa):
    """A k-row call yields, bit for bit, what k one-row calls yield (verify == steps)."""
    w, _ = weights(qtype, 48, 512, seed=7)
    x = torch.randn(12, 512, generator=torch.Generator().manual_seed(1)).to(dtype)
    mm = KERNELS[qtype][1]
    together = mm(x, w)
    assert together.dtype == dtype and together.shape == (12, 48)
    alone = torch.cat([mm(x[i : i + 1], w) for i in range(12)])
    assert torch.equal(together, alone)
    assert torch.equal(mm(x.view(3, 4, 512), w), together.view(3, 4, 48))


needs_avx512 = pytest.mark.skipif(not native.available() or native.isa() != "avx512",
                                  reason="the tile kernels need AVX512-VNNI")
TILED = {T.Q4_K: "q4k", T.Q6_K: "q6k"}


def tiled(qtype: T, n: int, k: int, seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    w, ref = weights(qtype, n, k, seed)
    return native.tile(TILED[qtype], w), ref


@needs_avx512
@pytest.mark.parametrize("qtype", list(TILED), ids=lambda t: t.name)
@pytest.mark.parametrize("rows", [1, 3, 8, 11])
def test_tile_kernels_compute_the_blocks_times_int8_activations(qtype, rows):
    """The same math as the row kernels, 16 output columns per tile (kernels/tiles.h)."""
    w, ref = tiled(qtype, 96, 768, seed=rows)
    assert w.shape == (6, 3, 16 * BY_KIND[TILED[qtype]].kernel_bytes)
    x = torch.randn(rows, 768, generator=torch.Generator().manual_seed(rows)) * 3
    x[:, 5] = 40.0
    y = native.op(TILED[qtype], tiled=True)(x, w)
    check_against_references(y, x, ref, qtype)
    rows_kernel = native.mm(TILED[qtype], x, weights(qtype, 96, 768, seed=rows)[0])
    torch.testing.assert_close(y, rows_kernel, rtol=1e-5, atol=1e-5 * y.abs().max().item())


@needs_avx512
@pytest.mark.parametrize("qtype", list(TILED), ids=lambda t: t.name)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_tile_kernels_compute_each_row_alone(qtype, dtype):
    """A k-row call on tiles yields, bit for bit, what k one-row calls yield (verify == steps)."""
    w, _ = tiled(qtype, 64, 512, seed=7)
    mm = native.op(TILED[qtype], tiled=True)
    x = torch.randn(12, 512, generator=torch.Generator().manual_seed(1)).to(dtype)
    together = mm(x, w)
    assert together.dtype == dtype and together.shape == (12, 64)
    assert torch.equal(together, torch.cat([mm(x[i : i + 1], w) for i in range(12)]))


@pytest.mark.parametrize("qtype", [T.Q4_K, T.Q6_K], ids=lambda t: t.name)
@pytest.mark.parametrize("tiles", [False, True], ids=["rows", "tiles"])
def test_prompt_chunks_run_every_pass_on_a_block_of_weights_and_keep_rows_alone(qtype, tiles):
    """Over 8 rows, each thread runs all passes of 8 on ~256 KB of weights before the next
    (ops.cpp): 1024 columns of K = 2048 are several blocks per thread. Rows stay alone."""
    if tiles and (not native.available() or native.isa() != "avx512"):
        pytest.skip("the tile kernels need AVX512-VNNI")
    w, ref = tiled(qtype, 1024, 2048, seed=3) if tiles else weights(qtype, 1024, 2048, seed=3)
    mm = native.op(TILED[qtype], tiled=True) if tiles else KERNELS[qtype][1]
    x = torch.randn(21, 2048, generator=torch.Generator().manual_seed(2)) * 2
    together = mm(x, w)
    check_against_references(together, x, ref, qtype)
    assert torch.equal(together, torch.cat([mm(x[i : i + 1], w) for i in range(21)]))


@needs_avx512
def test_tiles_need_whole_tiles_and_matching_shapes():
    w, _ = weights(T.Q4_K, 40, 256)
    with pytest.raises(RuntimeError, match="multiple of 16"):
        native.tile("q4k", w)
    assert not native.tiles("q4k", 40) and native.tiles("q4k", 48) and not native.tiles("q8_0", 48)
    layer = BlockLinear(256, 40, False, torch.float32, "q4k")
    layer.set_weight(w)  # 40 rows: stays on the row kernel
    assert not layer.tiled and layer.blocks.shape == (40, 1, 148)
    t, _ = tiled(T.Q4_K, 32, 256)
    with pytest.raises(RuntimeError, match="features"):
        native.op("q4k", tiled=True)(torch.zeros(1, 512), t)
    with pytest.raises(RuntimeError, match="2368"):
        native.op("q4k", tiled=True)(torch.zeros(1, 256), t.view(2, 1, 2, 1184))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("head_dim,heads,kv_heads", [(128, 12, 2), (20, 4, 4), (8, 2, 1)])
def test_attend_is_causal_attention_row_by_row(dtype, head_dim, heads, kv_heads):
    """kernels/attend.h against torch's attention (float64), on strided views of a cache buffer
    with room to spare, as lean.py keeps them; and a k-row call equals k one-row calls bit for bit."""
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(head_dim)
    buf_k, buf_v = (torch.randn(1, kv_heads, 400, head_dim, generator=g).to(dtype) for _ in range(2))
    start, m, scale = 300, 5, head_dim**-0.5
    k, v = buf_k[:, :, : start + m], buf_v[:, :, : start + m]
    q = torch.randn(1, heads, m, head_dim, generator=g).to(dtype)
    y = native.attend(q, k, v, start, scale)
    assert y.dtype == dtype and y.shape == q.shape
    ref = torch.cat([F.scaled_dot_product_attention(q[:, :, r : r + 1].double(), k[:, :, : start + r + 1].double(),
                                                    v[:, :, : start + r + 1].double(), scale=scale, enable_gqa=True)
                     for r in range(m)], 2)
    tol = 1e-6 if dtype == torch.float32 else 8e-3  # float32 sums; bf16 output rounding
    assert (y.double() - ref).abs().max() < tol
    alone = [native.attend(q[:, :, r : r + 1], k[:, :, : start + r + 1], v[:, :, : start + r + 1], start + r, scale)
             for r in range(m)]
    assert torch.equal(torch.cat(alone, 2), y)


def test_attend_refuses_what_it_cannot_read():
    q, k = torch.zeros(1, 4, 2, 8), torch.zeros(1, 2, 10, 8)
    with pytest.raises(RuntimeError, match="cached positions"):
        native.attend(q, k, k, 9, 1.0)
    with pytest.raises(RuntimeError, match="multiple of KV heads"):
        native.attend(torch.zeros(1, 3, 1, 8), k, k, 0, 1.0)
    with pytest.raises(RuntimeError, match="contiguous"):
        strided = torch.zeros(1, 2, 8, 10).transpose(2, 3)  # [1, 2, 10, 8], head_dim strided
        native.attend(q, strided, strided, 0, 1.0)


def test_zero_rows_and_wrong_shapes(isa):
    w8, _ = weights(T.Q8_0, 16, 96)
    with pytest.raises(RuntimeError, match="features"):
        native.mm("q8_0", torch.zeros(1, 128), w8)
    w, _ = weights(T.Q4_K, 16, 256)
    assert torch.equal(native.mm("q4k", torch.zeros(2, 256), w), torch.zeros(2, 16))
    with pytest.raises(RuntimeError, match="features"):
        native.mm("q4k", torch.zeros(1, 512), w)
    with pytest.raises(RuntimeError, match="148"):
        native.mm("q4k", torch.zeros(1, 256), w.view(16, 1, 2, 74))


MIXES = {  # (type of every Linear but down_proj, type of down_proj), hidden size
    "Q4_K_M": ((T.Q4_K, T.Q6_K), 256),  # the GGUF files people use
    "Q8_0+Q5_K": ((T.Q8_0, T.Q5_K), 256),
    "Q5_0+Q8_0, 160 wide": ((T.Q5_0, T.Q8_0), 160),  # a small model's Q4_K_M: rows of 5 blocks, the tail loop
    "Q4_0": ((T.Q4_0, T.Q4_0), 256),
    "Q5_1+Q4_1, 160 wide": ((T.Q5_1, T.Q4_1), 160),  # a small model's Q5_K_M
}


@pytest.fixture(scope="module", params=list(MIXES))
def tiny_blocks(request, tmp_path_factory):
    """A tiny Qwen2 as a real GGUF through the real `build`: (weights file, hf dir, its two types)."""
    from gemma_lsp.quant.model import build
    from test_quant import _tiny_gguf_pair

    types, hidden = MIXES[request.param]
    gguf_path, hf = _tiny_gguf_pair(tmp_path_factory.mktemp("blocks"), types=types, hidden=hidden)
    return build(gguf_path, hf), hf, types


def load_attached(tiny_blocks, dtype=torch.bfloat16):
    from transformers import AutoModelForCausalLM

    from gemma_lsp.quant.model import attach

    path, hf, _ = tiny_blocks
    model = AutoModelForCausalLM.from_pretrained(hf, dtype=dtype)
    dense = {n: m.weight.detach().clone() for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    return model, attach(model, path), dense


def test_build_keeps_the_blocks_and_attach_runs_them(tiny_blocks):
    from safetensors import safe_open

    from gemma_lsp.quant.linear import BlockLinear

    main, down = (BY_GGUF[t].kind for t in tiny_blocks[2])
    with safe_open(tiny_blocks[0], "pt") as f:
        keys = set(f.keys())
    layer = "model.layers.0"
    assert {f"{layer}.self_attn.q_proj.{main}", f"{layer}.mlp.down_proj.{down}", f"lm_head.{main}"} <= keys
    assert not any(k.endswith((".q4", ".q8")) for k in keys)  # torch's forms would only take disk here
    model, counts, dense = load_attached(tiny_blocks)
    want = {k: 0 for k in counts}
    want[main] += 7  # q k v o gate up + lm_head
    want[down] += 1
    assert counts == want
    hidden = model.config.hidden_size
    x = torch.randn(3, hidden, dtype=torch.bfloat16, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        for name, w in dense.items():
            layer = model.get_submodule(name)
            assert isinstance(layer.quant, BlockLinear)
            # tiles wherever they run (lm_head's 88 rows are not whole tiles: the row kernel)
            assert layer.quant.tiled == native.tiles(layer.quant.kind, layer.out_features)
            if layer.in_features != hidden:
                continue
            ref = x.float() @ w.float().T
            got = layer.quant(x).float() - (layer.dense.bias.float() if layer.dense.bias is not None else 0)
            assert ((got - ref).abs().max() / ref.abs().max()) < 3e-2, name


@pytest.mark.parametrize("drafter", ["ngram", "suggestion"])
def test_speculative_equals_plain_on_the_block_kernels(tiny_blocks, drafter, isa):
    """Lossless w.r.t. the model actually run, through the lean forward and fused block siblings."""
    from gemma_lsp.engine import Engine, GenerateRequest
    from gemma_lsp.engine.costs import CostCurve
    from gemma_lsp.quant import lean

    model, _, _ = load_attached(tiny_blocks)
    assert lean.installed(model)
    cost = CostCurve({1: 10.0, 2: 10.5, 4: 11.0, 8: 30.0}, max_rows=8)
    rng = np.random.default_rng(2)
    motif = [int(t) for t in rng.integers(3, 88, 5)]
    prompts = [[int(t) for t in rng.integers(3, 88, 40)], motif * 6 + [int(t) for t in rng.integers(3, 88, 9)]]
    drafted = 0
    for p in prompts:
        want = Engine(model, cost=cost).generate(GenerateRequest(prompt=p, max_tokens=24, drafter="none")).tokens
        guess = want[:12] + [(t + 1) % 88 for t in want[12:]]
        res = Engine(model, cost=cost).generate(
            GenerateRequest(prompt=p, max_tokens=24, drafter=drafter, suggestion=guess))
        assert res.tokens == want
        drafted += res.stats.drafted
    assert drafted > 0


@torch.inference_mode()
def test_a_verify_forward_equals_one_token_steps_on_the_blocks(tiny_blocks, isa):
    from transformers import DynamicCache

    from gemma_lsp.engine.cache import truncate

    model, _, _ = load_attached(tiny_blocks)
    prompt = torch.arange(3, 40)[None]
    cache = DynamicCache()
    model(input_ids=prompt, cache=cache)
    feed = [5, 9, 13, 2, 77, 40]
    steps = [model(input_ids=torch.tensor([[t]]), cache=cache, logits_to_keep=1).logits[0, -1] for t in feed]
    truncate(cache, prompt.shape[1])
    verify = model(input_ids=torch.tensor([feed]), cache=cache, logits_to_keep=len(feed)).logits[0]
    assert all(torch.equal(verify[i], steps[i]) for i in range(len(feed)))


def test_the_two_instruction_sets_compute_the_same_values():
    """Not bit for bit (their float sums over lanes differ in order), but within float32 rounding."""
    before = native.isa()
    if native.isa("avx512") != "avx512":
        pytest.skip("this CPU has no AVX512-VNNI")
    try:
        for qtype, (pack, mm) in KERNELS.items():
            w, _ = weights(qtype, 64, 1024, seed=3)
            x = torch.randn(5, 1024, generator=torch.Generator().manual_seed(9))
            wide = mm(x, w)
            native.isa("avx2")
            narrow = mm(x, w)
            native.isa("avx512")
            # float32 sums in another order: rounding relative to the size of the terms summed
            torch.testing.assert_close(narrow, wide, rtol=1e-5, atol=1e-5 * wide.abs().max().item())
    finally:
        native.isa(before)


def test_without_the_kernels_the_same_file_runs_torchs(tiny_blocks, monkeypatch):
    """A file built where the kernels ran holds blocks only; where they do not run, attach converts
    them: Q4_K, Q4_0 and Q4_1 to int4 exactly (but lm_head's 88 rows are not a multiple of 16), the rest to int8."""
    monkeypatch.setitem(native._state, "error", "turned off for this test")
    model, counts, dense = load_attached(tiny_blocks)
    main, down = (t in (T.Q4_K, T.Q4_0, T.Q4_1) for t in tiny_blocks[2])
    int4 = 6 * main + down  # q k v o gate up; down_proj
    assert {k: v for k, v in counts.items() if v} == {k: v for k, v in {"int4": int4, "int8": 8 - int4}.items() if v}
    q = model.get_submodule("model.layers.0.self_attn.q_proj").quant
    x = torch.randn(2, model.config.hidden_size, dtype=torch.bfloat16, generator=torch.Generator().manual_seed(3))
    w = dense["model.layers.0.self_attn.q_proj"].float()  # the exact dequantization, in bf16
    ref = x.float() @ w.T
    got = q(x).float() - model.get_submodule("model.layers.0.self_attn.q_proj").dense.bias.float()
    # int8 per row moves each weight by at most max|w_row|/254; bf16 output rounding aside
    bound = x.float().abs().sum(1, keepdim=True) * (w.abs().amax(1) / 254) + 1e-2 * ref.abs().max()
    assert torch.all((got - ref).abs() <= bound)


def test_a_failed_build_is_a_reason_not_a_crash(monkeypatch, tmp_path):
    """No compiler output, a broken toolchain: the kernels report why, and the GGUF path falls back."""
    import torch.utils.cpp_extension as ext

    def broken(*_a, **_k):
        raise RuntimeError("Error building extension 'gemma_lsp_kernels'\nc++: fatal error: no input files")

    monkeypatch.setenv("GEMMA_LSP_CACHE", str(tmp_path))  # nothing built there yet
    monkeypatch.setattr(ext, "load", broken)
    monkeypatch.setattr(native, "_state", {})
    assert not native.available()
    assert native.status() == "build failed (RuntimeError: c++: fatal error: no input files)"


def test_a_build_killed_midway_does_not_hang_the_next_one(tmp_path):
    """torch waits for its `lock` file to vanish; a killed build leaves it behind. A fresh process
    (a subprocess here: the kernels load once per process) must build anyway, not wait forever."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "GEMMA_LSP_CACHE": str(tmp_path)}
    code = "from gemma_lsp.quant import native; print(native._target()[1])"
    where = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    build_dir = tmp_path / where.stdout.strip().split(str(tmp_path) + os.sep, 1)[1]
    build_dir.mkdir(parents=True)
    (build_dir / "lock").write_text("")  # what a build killed while compiling leaves
    done = subprocess.run([sys.executable, "-c", "from gemma_lsp.quant import native; print(native.status())"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.stdout.strip() == "None", done.stderr[-2000:]
    assert any(build_dir.glob("*.so"))


def test_a_weights_file_of_an_older_format_runs_and_is_marked_for_rebuilding(tiny_blocks, tmp_path):
    """A /2 file (before Q5_K / Q8_0 blocks) still loads; `prepare` rebuilds it (convert.missing)."""
    import shutil

    from safetensors import safe_open
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    from gemma_lsp.models.convert import missing
    from gemma_lsp.quant.model import QUANT_FILE, attach, is_current

    path, hf, _ = tiny_blocks
    dest = tmp_path / "model"
    shutil.copytree(hf, dest)
    with safe_open(path, "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = {**f.metadata(), "format": "gemma-lsp-gguf-weights/2"}
    save_file(tensors, dest / QUANT_FILE, metadata=meta)
    assert is_current(path) and not is_current(dest / QUANT_FILE)
    assert missing(dest, True)[1]  # the weights file is rebuilt
    counts = attach(AutoModelForCausalLM.from_pretrained(dest, dtype=torch.bfloat16), dest / QUANT_FILE)
    assert sum(counts.values()) == 8
