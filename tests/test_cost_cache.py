"""The cost curve's disk cache (models/cost_cache.py): measured once, then read back, until
the code that sets what a forward costs changes. A curve kept across a faster lean forward
would make the engine draft as if a verify still cost what it did."""

from __future__ import annotations

import torch

from gemma_lsp.engine.costs import CostCurve
from gemma_lsp.models import cost_cache


def test_a_curve_is_measured_once_and_again_when_the_forward_code_changes(tmp_path, monkeypatch):
    code = tmp_path / "quant"
    (code / "kernels").mkdir(parents=True)
    for name in ("lean.py", "linear.py", "native.py", "kernels/ops.cpp"):
        (code / name).write_text("v1")
    (tmp_path / "costs.py").write_text("ROWS = (1, 8)")
    monkeypatch.setattr(cost_cache, "FORWARD_CODE", tuple(code / n for n in ("lean.py", "linear.py", "native.py", "kernels"))
                        + (tmp_path / "costs.py",))
    measured: list[int] = []

    def measure(model):
        measured.append(1)
        return CostCurve({1: 10.0 * len(measured), 8: 20.0}, 8)

    monkeypatch.setattr(cost_cache, "measure", measure)
    model = torch.nn.Linear(2, 2)
    first = cost_cache.cached_measure(model, "m", tmp_path / "cache")
    again = cost_cache.cached_measure(model, "m", tmp_path / "cache")
    assert len(measured) == 1 and again.ms == first.ms  # read back from disk
    (code / "kernels" / "ops.cpp").write_text("v2")  # a faster kernel, say
    changed = cost_cache.cached_measure(model, "m", tmp_path / "cache")
    assert len(measured) == 2 and changed.ms[1] == 20.0
    (code / "lean.py").write_text("v2")
    cost_cache.cached_measure(model, "m", tmp_path / "cache")
    assert len(measured) == 3
    (tmp_path / "costs.py").write_text("ROWS = (1, 8, 128)")  # more rows measured: a curve that lacks them is stale
    cost_cache.cached_measure(model, "m", tmp_path / "cache")
    assert len(measured) == 4


def test_the_key_covers_the_real_forward_code():
    assert all(p.exists() for p in cost_cache.FORWARD_CODE)
    names = {p.name for p in cost_cache.FORWARD_CODE}
    assert {"lean.py", "linear.py", "native.py", "kernels", "costs.py"} <= names
    assert len(cost_cache.forward_code_key()) == 12
