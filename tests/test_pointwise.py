"""The small ops of the lean forward (quant/kernels/pointwise.h) against transformers' own modules.

What must hold: each computes what transformers' Qwen2/Llama module computes (float32: up to
the order of one float sum; bfloat16: within one rounding step), reads strided views as the
fused projections hand them over, computes every row alone (a k-row verify equals k one-row
steps, bit for bit), and refuses what it cannot read.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers.models.qwen2.modeling_qwen2 import Qwen2RMSNorm, apply_rotary_pos_emb

from gemma_lsp.quant import native

pytestmark = pytest.mark.skipif(not native.available(), reason=f"native kernels: {native.status()}")

DTYPES = [torch.float32, torch.bfloat16]


def close(got: torch.Tensor, want: torch.Tensor) -> None:
    if got.dtype == torch.bfloat16:  # one bf16 step (2^-8 relative) where the float32 sum order tips a rounding
        torch.testing.assert_close(got.float(), want.float(), rtol=2**-7, atol=1e-5)
    else:
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def rows_alone(f, *xs: torch.Tensor) -> None:
    whole = f(*xs)
    for r in range(xs[0].shape[1]):
        assert torch.equal(f(*(x[:, r : r + 1] for x in xs)), whole[..., r : r + 1, :]), r


@pytest.mark.parametrize("dtype", DTYPES)
@torch.inference_mode()
def test_rms_norm_is_transformers_rms_norm(dtype):
    g = torch.Generator().manual_seed(0)
    norm = Qwen2RMSNorm(1536, eps=1e-6).to(dtype)
    norm.weight.copy_(torch.randn(1536, generator=g))
    x = (torch.randn(1, 5, 1536, generator=g) * 3).to(dtype)
    x[0, 2, 7] = 400.0  # one huge channel, as real activations have
    close(native.rms_norm(x, norm.weight, norm.variance_epsilon), norm(x))
    wide = torch.randn(1, 5, 2000, generator=g).to(dtype)[..., 100:1636]  # a strided view
    close(native.rms_norm(wide, norm.weight, 1e-6), norm(wide.contiguous()))
    rows_alone(lambda a: native.rms_norm(a, norm.weight, 1e-6), x)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("heads", [2, 12])
@torch.inference_mode()
def test_rope_is_transformers_rotary_embedding(dtype, heads):
    g = torch.Generator().manual_seed(1)
    m, d = 4, 128
    fused = torch.randn(1, m, (heads + 2) * d, generator=g).to(dtype)  # q and a k, as one fused projection
    q = fused[..., : heads * d]
    angles = torch.arange(300, 300 + m)[:, None] * (10000 ** (-torch.arange(0, d, 2) / d))[None]
    emb = torch.cat((angles, angles), dim=-1)[None]
    cos, sin = emb.cos().to(dtype), emb.sin().to(dtype)
    want, _ = apply_rotary_pos_emb(q.view(1, m, heads, d).transpose(1, 2), q.view(1, m, heads, d).transpose(1, 2),
                                   cos, sin)
    got = native.rope(q, cos, sin, heads)
    assert got.shape == (1, heads, m, d) and got.is_contiguous()
    if dtype == torch.bfloat16:  # the same roundings in the same order: equal
        assert torch.equal(got, want)
    else:
        close(got, want)
    rows_alone(lambda a, c, s: native.rope(a, c, s, heads), q, cos, sin)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("width", [8960, 1029])  # the default model's, and one with a scalar tail past a 512-span
@torch.inference_mode()
def test_silu_mul_is_silu_of_gate_times_up(dtype, width):
    g = torch.Generator().manual_seed(2)
    gate_up = (torch.randn(1, 3, 2 * width, generator=g) * 8).to(dtype)
    gate_up[0, 0, :6] = torch.tensor([-200.0, -88.0, -30.0, 0.0, 30.0, 200.0])  # far tails of e^−v
    gate, up = gate_up.split([width, width], dim=-1)  # views with row stride 2·width
    got = native.silu_mul(gate, up)
    close(got, F.silu(gate) * up)
    assert torch.isfinite(got).all()
    rows_alone(native.silu_mul, gate, up)


def test_they_refuse_what_they_cannot_read():
    x = torch.zeros(1, 2, 8)
    with pytest.raises(RuntimeError, match="rms_norm: 7 weights for 8"):
        native.rms_norm(x, torch.ones(7), 1e-6)
    with pytest.raises(RuntimeError, match="rope: 8 features are not 3 heads"):
        native.rope(x, torch.zeros(2, 8), torch.zeros(2, 8), 3)
    with pytest.raises(RuntimeError, match="rows, features"):
        native.rope(torch.zeros(2, 8), torch.zeros(2, 8), torch.zeros(2, 8), 1)
    with pytest.raises(RuntimeError, match="bfloat16 or float32"):
        native.silu_mul(x.double(), x.double())
    with pytest.raises(RuntimeError, match="g and u must match"):
        native.silu_mul(x, torch.zeros(1, 2, 4))
