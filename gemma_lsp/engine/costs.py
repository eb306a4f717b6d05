"""What a target forward of m tokens costs on this machine, measured once and kept on disk.

Speculation pays only if the tokens a verify forward yields outweigh its cost. With
per-token acceptance a, a draft of k tokens yields on average
    E(k) = 1 + a + a² + ... + a^k = (1 − a^(k+1)) / (1 − a)
tokens for cost(k + 1), against 1 token for cost(1) without a draft. So the best
draft length maximizes E(k) / cost(k + 1), and it is 0 (no draft) when nothing beats
1 / cost(1). The curve is flat for dense bf16 on a CPU (weights are read once for
all rows) but steep for integer weight-only kernels (they dequantize per row), which
is why it is measured rather than assumed. A model with HybridLinear layers is
measured on both paths and switches at the cheaper one (HybridLinear.max_rows).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..paths import models_dir, write_atomic
from ..quant.linear import HybridLinear, set_max_rows

if TYPE_CHECKING:
    from .models import Loaded

ROWS = (1, 2, 3, 4, 6, 8, 12, 17)  # measured; others are interpolated
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


def cached_measure(model: torch.nn.Module, key: str, directory: Path, refresh: bool = False) -> CostCurve:
    """`measure`, remembered per (model, weights, torch, CPU) in `directory`.

    Measured on a busy machine, the curve is skewed: `gemma-lsp prepare --remeasure` redoes it."""
    ident = f"{key}|{torch.__version__}|{platform.processor()}|{platform.machine()}|{torch.get_num_threads()}|{os.cpu_count()}"
    path = directory / f"cost-{hashlib.sha256(ident.encode()).hexdigest()[:16]}.json"
    try:
        if refresh:
            raise OSError("asked to measure again")
        data = json.loads(path.read_text())
        curve = CostCurve({int(k): float(v) for k, v in data["ms"].items()}, int(data["max_rows"]))
        set_max_rows(model, curve.max_rows)
        return curve
    except (OSError, ValueError, KeyError):
        pass
    curve = measure(model)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps({"ident": ident, "ms": curve.ms, "max_rows": curve.max_rows}, indent=1))
    except OSError:
        pass  # a read-only cache only costs the measurement next time
    return curve


def curve_for(loaded: "Loaded", refresh: bool = False) -> CostCurve:
    """The cached curve of a loaded model, keyed by its directory and what its Linears run."""
    return cached_measure(loaded.model, f"{loaded.path}|{loaded.weights}", models_dir(), refresh)
