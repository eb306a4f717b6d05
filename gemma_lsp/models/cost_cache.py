"""A loaded model's forward-cost curve, measured once per machine and kept on disk.

The curve decides the hybrid switch and the draft length (engine/costs.py); measuring it
takes ~20 s, so it is remembered per (model, weights, torch, CPU, threads, and the code
that runs a forward: a curve measured before a faster lean forward would make the engine
draft as if verifying still cost what it did).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..engine import costs
from ..engine.costs import CostCurve, measure
from ..paths import models_dir, write_atomic
from ..quant import lean
from ..quant.linear import set_max_rows

FORWARD_CODE = tuple(Path(lean.__file__).parent / n for n in ("lean.py", "linear.py", "native.py", "kernels")) + (
    Path(costs.__file__),)


def forward_code_key() -> str:
    """A hash of the sources that set what a forward costs (quant/'s lean forward, Linears,
    kernels) and what is measured of it (engine/costs.py's rows)."""
    h = hashlib.sha256()
    for path in FORWARD_CODE:
        for f in sorted(path.rglob("*")) if path.is_dir() else [path]:
            if f.is_file():
                h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()[:12]

if TYPE_CHECKING:
    from .loader import Loaded


def cached_measure(model: torch.nn.Module, key: str, directory: Path, refresh: bool = False) -> CostCurve:
    """`measure`, remembered per (model, weights, forward code, torch, CPU) in `directory`.

    Measured on a busy machine, the curve is skewed: `gemma-lsp prepare --remeasure` redoes it."""
    ident = f"{key}|{forward_code_key()}|{torch.__version__}|{platform.processor()}|{platform.machine()}|{torch.get_num_threads()}|{os.cpu_count()}"
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
