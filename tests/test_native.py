"""gemma-lsp's own Q4_K / Q6_K kernels (quant/kernels.cpp) on random blocks shaped like a GGUF's.

Two references, both from the gguf package's dequantizer (the one llama.cpp's Python tools use):
  * exact: the activations quantized per 256 values as the kernel does (round half to even of
    x·127/max|x|), times the dequantized weights, in float64. The kernel's integer sums are
    exact, so only float32 accumulation over blocks separates them.
  * the float matmul: the gap may not exceed Σ|w|·dx/2 per output, the most that rounding each
    activation to its int8 step (dx = max|x|/127 of its block) can move it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as T
from gguf import quants

from gemma_lsp.quant import native
from test_quant import random_blocks

pytestmark = pytest.mark.skipif(not native.available(), reason=f"native kernels: {native.status()}")

KERNELS = {T.Q4_K: (native.repack_q4_k, native.q4k_mm), T.Q6_K: (native.q6_k_blocks, native.q6k_mm)}


def weights(qtype: T, n: int, k: int, seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    raw = random_blocks(qtype, n, k, seed)
    pack, _ = KERNELS[qtype]
    return torch.from_numpy(pack(raw, n, k)), quants.dequantize(raw, qtype).reshape(n, k).astype(np.float64)


def int8_activations(x: torch.Tensor) -> torch.Tensor:
    """x as the kernel sees it: dx·round(x/dx) per block of 256, dx = max|x|/127 (float32 math)."""
    b = x.float().reshape(x.shape[0], -1, 256)
    amax = b.abs().amax(-1, keepdim=True)
    inv = torch.where(amax > 0, torch.tensor(127.0) / amax, torch.zeros_like(amax))
    return (torch.round(b * inv).double() * (amax / 127.0).double()).reshape(x.shape)


@pytest.mark.parametrize("qtype", [T.Q4_K, T.Q6_K])
@pytest.mark.parametrize("rows", [1, 3, 8, 11])
def test_kernel_computes_the_blocks_times_int8_activations(qtype, rows):
    n, k = 80, 768
    w, ref = weights(qtype, n, k, seed=rows)
    x = torch.randn(rows, k, generator=torch.Generator().manual_seed(rows)) * 3
    x[:, 5] = 40.0  # an outlier channel, as real activations have
    y = KERNELS[qtype][1](x, w).double().numpy()
    exact = int8_activations(x).numpy() @ ref.T
    np.testing.assert_allclose(y, exact, rtol=1e-5, atol=1e-4 * np.abs(exact).max())
    dense = x.double().numpy() @ ref.T
    step = x.abs().reshape(rows, -1, 256).amax(-1).double().numpy() / 127  # dx per block
    bound = (np.abs(ref).reshape(n, -1, 256).sum(-1) @ (step.T / 2)).T  # Σ_blocks Σ|w|·dx/2
    assert np.all(np.abs(y - dense) <= bound * 1.001 + 1e-4)
    assert np.abs(y - dense).max() > 0  # the activations really are quantized


@pytest.mark.parametrize("qtype", [T.Q4_K, T.Q6_K])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_each_row_is_computed_alone(qtype, dtype):
    """A k-row call yields, bit for bit, what k one-row calls yield (verify == steps)."""
    w, _ = weights(qtype, 48, 512, seed=7)
    x = torch.randn(12, 512, generator=torch.Generator().manual_seed(1)).to(dtype)
    mm = KERNELS[qtype][1]
    together = mm(x, w)
    assert together.dtype == dtype and together.shape == (12, 48)
    alone = torch.cat([mm(x[i : i + 1], w) for i in range(12)])
    assert torch.equal(together, alone)
    assert torch.equal(mm(x.view(3, 4, 512), w), together.view(3, 4, 48))


def test_zero_rows_and_wrong_shapes():
    w, _ = weights(T.Q4_K, 16, 256)
    assert torch.equal(native.q4k_mm(torch.zeros(2, 256), w), torch.zeros(2, 16))
    with pytest.raises(RuntimeError, match="features"):
        native.q4k_mm(torch.zeros(1, 512), w)
    with pytest.raises(RuntimeError, match="148"):
        native.q4k_mm(torch.zeros(1, 256), w.view(16, 1, 2, 74))
