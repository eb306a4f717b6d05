"""Quantized Linear layers for the CPU: the GGUF's own blocks, or torch's int4/int8 forms.

Decode on a CPU is bound by the bytes of weights read per token: bf16 reads 2 bytes
per weight, torch's int8 1, its int4 0.5 (+ 4 bytes of scale and zero per 32 weights),
a Q4_K block 0.58, Q5_K 0.70, Q6_K 0.82, Q8_0 1.06, Q5_0 0.69, Q4_0 0.56, Q4_1 0.63 and
Q5_1 0.75. BlockLinear runs gemma-lsp's kernels on the blocks (activations rounded to int8
per 32 values); Int4Linear and Int8Linear run torch's (activations in floating point), where
those kernels cannot run.
"""

from __future__ import annotations

import torch
from torch import nn

from . import native
from .formats import BY_KIND, KERNEL_ROWS, TILE

GROUP = 32
INNER_K_TILES = 2  # the CPU packer's tiling; the kernel reads it back from the packed shape


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """q: uint8 [N, K] in 0..15 -> torch's packed CPU int4 layout."""
    return torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.to(torch.int32).contiguous(), INNER_K_TILES)


def _aligned(t: torch.Tensor) -> torch.Tensor:
    """A contiguous copy in memory of its own (64-byte aligned by torch's CPU allocator)."""
    return t.clone(memory_format=torch.contiguous_format)


def nibbles(q: torch.Tensor) -> torch.Tensor:
    """uint8 [N, K] in 0..15 -> uint8 [N, K/2]: even k in the low nibble (the on-disk form)."""
    return (q[:, 0::2] | (q[:, 1::2] << 4)).contiguous()


def unnibble(p: torch.Tensor) -> torch.Tensor:
    return torch.stack([p & 0x0F, p >> 4], dim=-1).reshape(p.shape[0], -1)


class Int4Linear(nn.Module):
    """y = x · dequant(W)ᵀ + b with W = (q − 8)·scale + zero per group of 32 along K."""

    def __init__(self, in_features: int, out_features: int, bias: bool, dtype: torch.dtype) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("packed", torch.empty(0, dtype=torch.uint8), persistent=False)
        # [K/32, N, 2]: (scale, zero) per group and output row, in the activation dtype
        self.register_buffer("scales_zeros", torch.empty(in_features // GROUP, out_features, 2, dtype=dtype),
                             persistent=False)
        self.bias = nn.Parameter(torch.empty(out_features, dtype=dtype), requires_grad=False) if bias else None

    def set_weight(self, q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> None:
        """q: uint8 [N, K]; scale, zero: float32 [N, K/32]."""
        self.packed = pack_int4(q)
        sz = torch.stack([scale.t(), zero.t()], dim=-1)
        self.scales_zeros = _aligned(sz.to(self.scales_zeros.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(x.reshape(-1, shape[-1]), self.packed, GROUP,
                                                         self.scales_zeros)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features)


class Int8Linear(nn.Module):
    """y = x · (q·scale)ᵀ + b with one scale per output row."""

    def __init__(self, in_features: int, out_features: int, bias: bool, dtype: torch.dtype) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("q", torch.empty(out_features, in_features, dtype=torch.int8), persistent=False)
        self.register_buffer("scale", torch.empty(out_features, dtype=dtype), persistent=False)
        self.bias = nn.Parameter(torch.empty(out_features, dtype=dtype), requires_grad=False) if bias else None

    def set_weight(self, q: torch.Tensor, scale: torch.Tensor) -> None:
        # A fresh copy: torch's allocator aligns it to 64 bytes. The kernel's vector loads
        # fault on a tensor read at an odd offset of a safetensors mmap (seen: offset 40).
        self.q = _aligned(q)
        self.scale = _aligned(scale.to(self.scale.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        y = torch.ops.aten._weight_int8pack_mm(x.reshape(-1, shape[-1]), self.q, self.scale)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features)


class BlockLinear(nn.Module):
    """y = x · dequant(blocks)ᵀ + b, on the GGUF's own blocks (quant/native.py; formats.py: the types)."""

    def __init__(self, in_features: int, out_features: int, bias: bool, dtype: torch.dtype, kind: str) -> None:
        super().__init__()
        self.in_features, self.out_features, self.kind = in_features, out_features, kind
        self.mm = native.op(kind)  # resolved once (use()): forward runs on every decode step
        self.tiled = False
        fmt = BY_KIND[kind]
        per, size = fmt.weights, fmt.kernel_bytes
        self.register_buffer("blocks", torch.empty(out_features, in_features // per, size, dtype=torch.uint8),
                             persistent=False)
        self.bias = nn.Parameter(torch.empty(out_features, dtype=dtype), requires_grad=False) if bias else None

    def set_weight(self, blocks: torch.Tensor) -> None:
        """blocks: [N, K / weights, bytes] (whatever the file's shape); tiled where native.tiles says."""
        rows = blocks.reshape(self.blocks.shape)
        tiled = native.tiles(self.kind, self.out_features)
        self.use(native.tile(self.kind, rows) if tiled else _aligned(rows), tiled)

    def use(self, blocks: torch.Tensor, tiled: bool) -> None:
        """Run these blocks: row blocks [N, K / weights, bytes], or tiles [N/16, K/256, 16·bytes]."""
        self.blocks, self.tiled = blocks, tiled
        self.mm = native.op(self.kind, tiled)

    def rows(self, start: int, stop: int) -> torch.Tensor:
        """The blocks of output rows start..stop (a view; multiples of 16 when tiled)."""
        step = TILE if self.tiled else 1
        assert start % step == 0 and stop % step == 0, (start, stop)
        return self.blocks[start // step : stop // step]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.mm(x, self.blocks)
        return y if self.bias is None else y + self.bias


class HybridLinear(nn.Module):
    """The quantized kernel for a few rows (decode, verify), the dense weight for many (prefill).

    Integer weight-only kernels read half or a quarter of the bytes per token, but they
    redo the dequantization for every row: at 8+ rows a dense bf16 matmul (AMX) wins.
    On the kernel path each row's result depends only on that row, so verifying k drafts
    (k < max_rows, the engine's cap) computes what k one-token forwards compute.
    """

    def __init__(self, dense: nn.Linear, quant: nn.Module, max_rows: int = KERNEL_ROWS) -> None:
        super().__init__()
        self.max_rows = max_rows  # set from the measured cost table (set_max_rows)
        self.dense = dense
        self.quant = quant
        self.in_features, self.out_features = dense.in_features, dense.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel() // self.in_features <= self.max_rows:
            return self.quant(x)
        return self.dense(x)


def set_max_rows(model: nn.Module, rows: int) -> None:
    for m in model.modules():
        if isinstance(m, HybridLinear):
            m.max_rows = rows
