"""GGUF quantized blocks -> torch's CPU weight-only formats, without a float detour where possible.

Q4_K (256-weight super-blocks, eight 32-weight groups) is affine 4-bit:
    w = d·sc_g · q − dmin·m_g,   q ∈ [0, 15]
torch's int4 kernel computes w = (q − 8)·s + z per 32-weight group, so
    s = d·sc_g,   z = 8·s − dmin·m_g
holds the file's weights exactly (in float32 scales). Q4_0 (w = d·(q − 8)) and
Q4_1 (w = d·q + m) map the same way. Every other type (Q6_K, Q8_0, Q5_K, ...)
is dequantized and requantized to int8 with one scale per output row
(s = max|w| / 127), so its error per weight is at most s/2.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import quants

QK_K = 256
GROUP = 32  # int4 group size: one Q4_K sub-block
FLOAT_TYPES = (T.F32, T.F16, T.BF16)


@dataclass
class Int4Weight:
    """q: uint8 [N, K] in 0..15; scale, zero: float32 [N, K/32]. w = (q − 8)·scale + zero."""

    q: np.ndarray
    scale: np.ndarray
    zero: np.ndarray

    def dequantize(self) -> np.ndarray:
        n, k = self.q.shape
        g = self.q.reshape(n, k // GROUP, GROUP).astype(np.float32) - 8
        return (g * self.scale[..., None] + self.zero[..., None]).reshape(n, k)


@dataclass
class Int8Weight:
    """q: int8 [N, K]; scale: float32 [N]. w = q·scale."""

    q: np.ndarray
    scale: np.ndarray

    def dequantize(self) -> np.ndarray:
        return self.q.astype(np.float32) * self.scale[:, None]


def q4_k_scale_min(scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The eight 6-bit (scale, min) pairs packed into each super-block's 12 bytes."""
    s = scales.reshape(-1, 3, 4)
    d, m, md = s[:, 0], s[:, 1], s[:, 2]
    sc = np.concatenate([d & 0x3F, (md & 0x0F) | ((d >> 2) & 0x30)], axis=-1)
    mn = np.concatenate([m & 0x3F, (md >> 4) | ((m >> 2) & 0x30)], axis=-1)
    return sc, mn


def dequantize_q5_k_unpacked(data: np.ndarray, n: int, k: int) -> np.ndarray:
    """The kernel's 180-byte Q5_K blocks (formats.repack_q5_k) -> float32 [N, K], computed as the
    gguf package computes the file's: w = (d·sc_g)·q − dmin·m_g, q = low nibble + 16·(bit g of qh)."""
    b = data.reshape(-1, 180)
    d = b[:, 0:2].copy().view(np.float16).astype(np.float32)
    dmin = b[:, 2:4].copy().view(np.float16).astype(np.float32)
    sc, mn = b[:, 4:12].astype(np.float32), b[:, 12:20].astype(np.float32)
    qs = b[:, 52:].reshape(-1, 4, 1, 32)
    low = np.concatenate([qs & 0x0F, qs >> 4], axis=2).reshape(-1, 8, 32)  # group 2j low nibbles, 2j+1 high
    high = ((b[:, None, 20:52] >> np.arange(8, dtype=np.uint8)[None, :, None]) & 1) << 4
    q = (low | high).astype(np.float32)
    return ((d * sc)[..., None] * q - (dmin * mn)[..., None]).reshape(n, k)


def int4_from_q4_k(raw: np.ndarray, n: int, k: int) -> Int4Weight:
    """raw: uint8 [N, K/256·144] as stored; returns the same weights as int4 groups of 32."""
    b = raw.reshape(n * k // QK_K, 144)
    sc, mn = q4_k_scale_min(b[:, 4:16])
    return _int4_from_q4_k_parts(b[:, 0:4], sc, mn, b[:, 16:], n, k)


def int4_from_q4_k_unpacked(blocks: np.ndarray, n: int, k: int) -> Int4Weight:
    """The same from the kernels' 148-byte form (formats.repack_q4_k: the 6-bit pairs as bytes)."""
    b = blocks.reshape(n * k // QK_K, 148)
    return _int4_from_q4_k_parts(b[:, 0:4], b[:, 4:12], b[:, 12:20], b[:, 20:], n, k)


def _int4_from_q4_k_parts(dd: np.ndarray, sc: np.ndarray, mn: np.ndarray, qs: np.ndarray, n: int,
                          k: int) -> Int4Weight:
    d = dd[:, 0:2].copy().view(np.float16).astype(np.float32)  # [B, 1]
    dmin = dd[:, 2:4].copy().view(np.float16).astype(np.float32)
    qs = qs.reshape(-1, 4, 1, 32)
    # byte j of chunk c holds group 2c (low nibble) and group 2c+1 (high nibble)
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=2).reshape(-1, QK_K)
    scale = d * sc.astype(np.float32)  # [B, 8]
    minv = dmin * mn.astype(np.float32)
    return _int4(q, scale, 8 * scale - minv, n, k)


def int4_from_q4_0(raw: np.ndarray, n: int, k: int) -> Int4Weight:
    b = raw.reshape(n * k // 32, 18)
    d = b[:, 0:2].copy().view(np.float16).astype(np.float32)
    qs = b[:, 2:]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=1)  # first 16 weights in low nibbles
    return _int4(q, d, np.zeros_like(d), n, k)


def int4_from_q4_1(raw: np.ndarray, n: int, k: int) -> Int4Weight:
    b = raw.reshape(n * k // 32, 20)
    d = b[:, 0:2].copy().view(np.float16).astype(np.float32)
    m = b[:, 2:4].copy().view(np.float16).astype(np.float32)
    qs = b[:, 4:]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=1)
    return _int4(q, d, 8 * d + m, n, k)


def _int4(q: np.ndarray, scale: np.ndarray, zero: np.ndarray, n: int, k: int) -> Int4Weight:
    return Int4Weight(q.reshape(n, k).astype(np.uint8), scale.reshape(n, k // GROUP), zero.reshape(n, k // GROUP))


def int8_from(w: np.ndarray) -> Int8Weight:
    """Per-row symmetric int8: error per weight <= scale/2."""
    amax = np.abs(w).max(axis=1)
    scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
    q = np.clip(np.rint(w / scale[:, None]), -127, 127).astype(np.int8)
    return Int8Weight(q, scale)


def convert(raw: np.ndarray, qtype: T, n: int, k: int) -> Int4Weight | Int8Weight | None:
    """One GGUF weight matrix [N out, K in]; None for float types (kept as they are)."""
    if qtype in FLOAT_TYPES:
        return None
    if qtype == T.Q4_K:
        return int4_from_q4_k(raw, n, k)
    if qtype == T.Q4_0:
        return int4_from_q4_0(raw, n, k)
    if qtype == T.Q4_1:
        return int4_from_q4_1(raw, n, k)
    return int8_from(dequantize(raw, qtype, n, k))


def dequantize(raw: np.ndarray, qtype: T, n: int, k: int) -> np.ndarray:
    """Any GGUF type -> float32 [N, K], with the gguf package's reference dequantizer."""
    return quants.dequantize(raw, qtype).reshape(n, k).astype(np.float32)
