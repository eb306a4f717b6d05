"""What a target forward of m tokens costs on this machine, and the draft length it implies.

Speculation pays only if the tokens a verify forward yields outweigh its cost. With
per-token acceptance a, a draft of k tokens yields on average
    E(k) = 1 + a + a² + ... + a^k = (1 − a^(k+1)) / (1 − a)
tokens for cost(k + 1), against 1 token for cost(1) without a draft. So the best
draft length maximizes E(k) / cost(k + 1), and it is 0 (no draft) when nothing beats
1 / cost(1). The curve is flat for dense bf16 on a CPU (weights are read once for
all rows) but steep for integer weight-only kernels (they dequantize per row), which
is why it is measured rather than assumed. A model with HybridLinear layers is
measured on both paths and switches at the cheaper one (HybridLinear.max_rows).
Keeping a curve on disk per machine is the model layer's (models/cost_cache.py).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..quant.linear import HybridLinear, set_max_rows

# Measured; others are interpolated. Up to 128: the quantized kernels reach prompt chunks
# where they beat the dense bf16 path on this machine (measured, 2-core AMD EPYC: 32 rows
# 329 ms against 521, 128 rows 1169 against 1297; they read 1 GB of weights, dense 3 GB).
ROWS = (1, 2, 3, 4, 6, 8, 12, 17, 32, 64, 128)
CONTEXT = 128  # tokens already in the cache when measuring (attention cost is small next to weights)


@dataclass
class CostCurve:
    ms: dict[int, float]  # rows -> milliseconds per forward
    max_rows: int = 0  # quantized kernel up to this many rows, dense above (0: no hybrid layers)

    def __call__(self, rows: int) -> float:
        keys = sorted(self.ms)
        if rows <= keys[0]:
            return self.ms[keys[0]]
        for lo, hi in zip(keys, keys[1:]):
            if rows <= hi:  # linear between measured points
                return self.ms[lo] + (self.ms[hi] - self.ms[lo]) * (rows - lo) / (hi - lo)
        last, prev = keys[-1], keys[-2]
        return self.ms[last] + (self.ms[last] - self.ms[prev]) * (rows - last) / (last - prev)

    def narrow_chunk(self, slack: float = 0.8, least: int = 16, default: int = 128) -> int:
        """The fewest rows (at least `least`) whose tokens/s is within `slack` of the best
        measured: a warm-up's chunk. A request that preempts a warm-up waits for its chunk,
        so it should be narrow where narrow costs little more per token (the quantized
        kernels: AMD EPYC 32 rows 115 tok/s, 128 rows 129) and wide where it does not
        (dense bf16: 32 rows 61, 128 rows 99)."""
        rates = {m: m / ms for m, ms in self.ms.items() if m >= least and ms > 0}
        if not rates:
            return default
        best = max(rates.values())
        return min(m for m, r in rates.items() if r >= slack * best)

    def best_k(self, acceptance: float, k_max: int) -> int:
        """argmax over k in 0..k_max of E(k) / cost(k + 1)."""
        a = min(max(acceptance, 0.0), 0.99)
        best, best_rate = 0, 1.0 / self(1)
        for k in range(1, k_max + 1):
            rate = (1 - a ** (k + 1)) / (1 - a) / self(k + 1)
            if rate > best_rate:
                best, best_rate = k, rate
        return best


def measure(model: torch.nn.Module, rows: Sequence[int] = ROWS, reps: int = 3) -> CostCurve:
    """Time forwards of `rows` tokens after a CONTEXT-token prefix; pick the hybrid switch point."""
    from transformers import DynamicCache

    from .cache import truncate

    device = next(model.parameters()).device
    hybrid = any(isinstance(m, HybridLinear) for m in model.modules())

    @torch.inference_mode()
    def run(max_rows: int, ceiling: dict[int, float] | None = None) -> dict[int, float]:
        if hybrid:
            set_max_rows(model, max_rows)
        cache = DynamicCache()
        model(input_ids=torch.full((1, CONTEXT), 13, device=device), cache=cache, use_cache=True, logits_to_keep=1)
        out = {}
        for m in rows:
            best = float("inf")
            for _ in range(reps + 1):  # the first run warms the kernels for this shape
                t0 = time.perf_counter()
                model(input_ids=torch.full((1, m), 13, device=device), cache=cache, use_cache=True, logits_to_keep=m)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)  # GPU calls return before the work is done
                best = min(best, time.perf_counter() - t0)
                truncate(cache, CONTEXT)
            out[m] = best * 1e3
            if ceiling is not None and out[m] > ceiling[m]:
                break  # the quantized kernel only gets dearer with more rows
        return out

    dense = run(0)
    if not hybrid:
        return CostCurve(dense)
    quant = run(max(rows), ceiling=dense)
    # The quantized kernel's cost grows with rows; use it while it is the cheaper path.
    switch = 0
    for m in sorted(rows):
        if m in quant and quant[m] <= dense[m]:
            switch = m
        else:
            break
    set_max_rows(model, switch)
    return CostCurve({m: min(quant[m], dense[m]) if m <= switch else dense[m] for m in rows}, switch)
