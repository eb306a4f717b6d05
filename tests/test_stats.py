"""The server's cumulative counters (gemma/stats)."""

from __future__ import annotations

from gemma_lsp.engine import Stats
from gemma_lsp.lsp.stats import ServerStats


def test_latency_is_null_before_any_completion_then_measured() -> None:
    """Nothing measured is not 0 ms: clients show "-" until the first answer."""
    stats = ServerStats()
    assert stats.snapshot()["latency_ms"] == {"p50": None, "p95": None, "last": None}
    stats.add(Stats(), 120.0)
    assert stats.snapshot()["latency_ms"] == {"p50": 120.0, "p95": 120.0, "last": 120.0}
