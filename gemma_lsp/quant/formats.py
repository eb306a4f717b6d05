"""The GGUF block formats gemma-lsp runs: one registry of what each one is.

A format is a GGUF tensor type and everything the code needs of it: the name its weights
file entries and kernel ops go by (`q4k_mm`, `q4k_tiled_mm`), the block's shape in the file
and as the kernels read it, how the file's bytes become the kernel's (`repack`), whether it
has tile kernels, and how torch's fallback kernels hold it (int4 exactly, else int8 per row).
The C++ side (kernels/ops.cpp `GEMMA_LSP_FORMAT`, kernels/common.h) is checked against this
table by tests/test_native.py, so a format added here and not there fails a test.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .blocks import T, q4_k_scale_min

KERNEL_ROWS = 8  # kernels/common.h MAX_ROWS: rows per kernel pass, and the few-row path's default reach
TILE = 16  # output rows per tile (kernels/tiles.h)


@dataclass(frozen=True)
class Format:
    kind: str  # weights-file suffix and op name ("q4k" -> q4k_mm)
    gguf: T  # the GGUF tensor type
    weights: int  # weights per block
    file_bytes: int  # bytes per block in the GGUF
    kernel_bytes: int  # bytes per block as the kernels read them: [N, K / weights, kernel_bytes]
    repack: Callable[[np.ndarray, int, int], np.ndarray]  # GGUF rows (raw bytes, N, K) -> kernel blocks
    int4: bool  # torch's fallback holds it as int4 exactly (Q4 types), else as int8 per row
    tiled: bool = False  # has tile kernels (AVX512-VNNI): 16 output rows share each activation

    @property
    def as_stored(self) -> bool:
        """The kernels read the file's own block (nothing repacked)."""
        return self.file_bytes == self.kernel_bytes


def _unpack_scales(b: np.ndarray) -> np.ndarray:
    """[N, K/256, bytes] blocks with d, dmin, 12 bytes of packed scales first -> d, dmin, sc[8], mn[8], rest."""
    sc, mn = q4_k_scale_min(b[:, :, 4:16].reshape(-1, 12))
    n = b.shape[0]
    parts = [b[:, :, 0:4], sc.reshape(n, -1, 8), mn.reshape(n, -1, 8), b[:, :, 16:]]
    return np.ascontiguousarray(np.concatenate([p.astype(np.uint8) for p in parts], axis=2))


def repack_q4_k(raw: np.ndarray, n: int, k: int) -> np.ndarray:
    """GGUF Q4_K rows (144-byte blocks) -> the kernel's 148-byte blocks: the same values,
    with the eight 6-bit (scale, min) pairs unpacked to bytes so the kernel need not."""
    return _unpack_scales(raw.reshape(n, k // 256, 144))


def repack_q5_k(raw: np.ndarray, n: int, k: int) -> np.ndarray:
    """GGUF Q5_K rows (176-byte blocks: d, dmin, 12 bytes of 6-bit scales, qh[32], qs[128]) ->
    the kernel's 180-byte blocks: the scale/min pairs unpacked to bytes, as for Q4_K."""
    return _unpack_scales(raw.reshape(n, k // 256, 176))


def stored(weights: int, size: int) -> Callable[[np.ndarray, int, int], np.ndarray]:
    """GGUF rows as [N, K / weights, size]: the file's blocks unchanged (for 32-weight blocks K
    is a multiple of 32, not necessarily of 256: Qwen2.5-Coder-0.5B's 896, Gemma 3 270M's 640)."""

    def shape(raw: np.ndarray, n: int, k: int) -> np.ndarray:
        return np.array(raw.reshape(n, k // weights, size), copy=True)

    return shape


FORMATS = (
    Format("q4k", T.Q4_K, 256, 144, 148, repack_q4_k, int4=True, tiled=True),
    Format("q5k", T.Q5_K, 256, 176, 180, repack_q5_k, int4=False),
    Format("q6k", T.Q6_K, 256, 210, 210, stored(256, 210), int4=False, tiled=True),
    Format("q8_0", T.Q8_0, 32, 34, 34, stored(32, 34), int4=False),
    Format("q5_0", T.Q5_0, 32, 22, 22, stored(32, 22), int4=False),
    Format("q4_0", T.Q4_0, 32, 18, 18, stored(32, 18), int4=True),
    Format("q4_1", T.Q4_1, 32, 20, 20, stored(32, 20), int4=True),
    Format("q5_1", T.Q5_1, 32, 24, 24, stored(32, 24), int4=False),
)
BY_KIND = {f.kind: f for f in FORMATS}
BY_GGUF = {f.gguf: f for f in FORMATS}
KINDS = tuple(BY_KIND)
NAMES = "/".join(f.gguf.name for f in FORMATS)  # "Q4_K/Q5_K/...": what doctor says the kernels run
