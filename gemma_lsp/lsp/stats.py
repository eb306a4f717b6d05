"""Cumulative counters for `gemma/stats` (a fixed contract: the keys are documented in README.md)."""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field

from ..engine import Stats


def percentile(xs: list[float], q: float) -> float | None:
    """The nearest-rank q-quantile (an observed value, never an interpolated one); None for
    no values: nothing was measured, which is not 0 ms. The benchmarks use it too."""
    if not xs:
        return None
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def _percentile(xs: list[float], q: float) -> float | None:
    p = percentile(xs, q)
    return None if p is None else round(p, 1)


@dataclass
class ServerStats:
    completions: int = 0
    prompt_tokens: int = 0
    reused_tokens: int = 0
    tokens: int = 0
    drafted: int = 0
    accepted: int = 0
    target_forwards: int = 0
    cancelled: int = 0
    typed_through: int = 0
    errors: int = 0
    warmups: int = 0  # background prompt passes run while the user paused
    warm_tokens: int = 0  # prompt tokens they computed (less than asked when a request preempted one)
    backend: str = ""  # the backend that answered last ("inprocess", "local", a server's URL)
    latencies: deque = field(default_factory=lambda: deque(maxlen=2000))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, s: Stats, latency_ms: float, typed_through: bool = False, backend: str = "") -> None:
        with self.lock:
            self.completions += 1
            self.backend = backend or self.backend
            self.typed_through += int(typed_through)
            self.prompt_tokens += s.prompt_tokens
            self.reused_tokens += s.reused_tokens
            self.tokens += s.tokens
            self.drafted += s.drafted
            self.accepted += s.accepted
            self.target_forwards += s.target_forwards
            self.latencies.append(latency_ms)

    def add_warmup(self, s: Stats) -> None:
        with self.lock:
            self.warmups += 1
            self.warm_tokens += s.tokens

    def snapshot(self) -> dict[str, object]:
        with self.lock:
            lat = list(self.latencies)
            return {
                "completions": self.completions, "prompt_tokens": self.prompt_tokens,
                "reused_tokens": self.reused_tokens, "tokens": self.tokens, "drafted": self.drafted,
                "accepted": self.accepted, "target_forwards": self.target_forwards, "cancelled": self.cancelled,
                "typed_through": self.typed_through, "errors": self.errors,
                "warmups": self.warmups, "warm_tokens": self.warm_tokens, "backend": self.backend,
                "latency_ms": {"p50": _percentile(lat, 0.5), "p95": _percentile(lat, 0.95),
                               "last": round(lat[-1], 1) if lat else None},
            }
