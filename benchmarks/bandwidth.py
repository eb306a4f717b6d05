"""How close a one-token step comes to the memory ceiling: bytes of weights it reads ÷ the
machine's read bandwidth, measured here and now.

A decode step of a 1.5B model reads ~1 GB of weights for ~3 GFLOP: memory-bound on any CPU.
Its floor is (weight bytes) ÷ (bytes per second the cores can read); the ratio of a measured
step to that floor says how much is left to win (kernels, overhead between them) on this
machine, whatever its CPU family. The bandwidth of a VM drifts from run to run (30-57 GB/s
seen on the same machine): it is measured in the same run as the step it judges.
"""

from __future__ import annotations

import time
from typing import Any

import torch

READ_BYTES = 1 << 30  # well past any L3 cache


def read_gb_s(reps: int = 3) -> float:
    """GB/s of one pass over READ_BYTES with torch's threads (an integer sum: a few instructions
    per 64 bytes, so memory sets the pace), best of `reps`."""
    x = torch.ones(READ_BYTES // 8, dtype=torch.int64)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - t0)
    return READ_BYTES / best / 1e9


def step_bytes(model: torch.nn.Module) -> int:
    """Bytes of weights a one-token step reads: the few-row form of each hybrid Linear (its
    dense twin serves prompt passes only), every other Linear whole; the token embedding
    reads one row, left out. Fused siblings hold views of one tensor: each byte counts once."""
    from gemma_lsp.quant.linear import HybridLinear

    hybrids = [m for m in model.modules() if isinstance(m, HybridLinear)]
    dense = {id(m.dense) for m in hybrids}
    size = lambda t: t.numel() * t.element_size()  # noqa: E731
    total = sum(size(t) for m in hybrids for t in list(m.quant.buffers()) + list(m.quant.parameters()))
    return total + sum(size(m.weight) for m in model.modules() if isinstance(m, torch.nn.Linear) and id(m) not in dense)


def ceiling(model: torch.nn.Module, steps_ms: dict[str, float | None], gb_s: float | None = None) -> dict[str, Any]:
    """The floor of a one-token step on this machine, and each measured step ÷ that floor;
    `gb_s`: the bandwidth sampled while the steps ran (else measured now)."""
    gb_s = gb_s or read_gb_s()
    nbytes = step_bytes(model)
    floor_ms = nbytes / (gb_s * 1e9) * 1e3
    return {"weights_mb_per_token": round(nbytes / 1e6, 1), "read_gb_s": round(gb_s, 1),
            "floor_ms": round(floor_ms, 1),
            "step_over_floor": {k: round(v / floor_ms, 2) for k, v in steps_ms.items() if v}}


def line(c: dict[str, Any]) -> str:
    ratios = ", ".join(f"{k} {v}x" for k, v in c["step_over_floor"].items())
    return (f"memory floor of a one-token step: {c['weights_mb_per_token']} MB of weights at {c['read_gb_s']} GB/s "
            f"= {c['floor_ms']} ms; measured step ÷ floor: {ratios}")
