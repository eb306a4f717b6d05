"""How long a drafter's next draft is: learned from its acceptance, capped by what pays on
the measured cost curve (engine/costs.py), with cheap probes where nothing pays."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .costs import CostCurve


@dataclass
class DraftLength:
    """Per-(language, drafter) draft length from measured acceptance.

    All k accepted -> k += 2 (code earns long drafts); otherwise k shrinks to what was
    accepted + 1 (at most k - 1), within [k_min, k_max]. `acceptance` is an exponential
    moving average of accepted/proposed.

    With a measured cost curve (costs.py), k is further capped at the length that
    maximizes expected tokens per millisecond; when no draft pays (best length 0), the
    drafter is skipped and only probed with one token now and then, so its acceptance can
    recover. A failed probe costs cost(2)/cost(1) − 1 of a step (13 % on the Intel machine's
    curve, 19–39 % on the AMD EPYC's), so a probe every n skipped steps costs that / n of
    plain decoding's time: n (`probe_interval`) keeps it within `probe_loss`, and n doubles
    after each failed probe in a row (up to 16×), so where a drafter never pays its probes
    cost next to nothing. A fixed n = 4 ran at 0.91 of plain on the steep AMD curve, where no
    draft ever pays. A drafter not measured yet is assumed to be right half the time
    (`prior`): its first proposal is as long as that pays, not k_init.
    """

    k_init: int = 8
    k_min: int = 1
    k_max: int = 16
    decay: float = 0.8
    k: dict[tuple[str, str], int] = field(default_factory=dict)
    acceptance: dict[tuple[str, str], float] = field(default_factory=dict)
    cost: CostCurve | None = None
    probe_every: int = 4  # the shortest interval (measured on free generation: 8 → 4 saved 2–7 % of the forwards)
    probe_loss: float = 0.02  # the most a skipped drafter's failed probes may cost, against plain decoding
    prior: float = 0.5  # acceptance assumed for a drafter not yet measured (with a cost curve)
    skipped: dict[tuple[str, str], int] = field(default_factory=dict)
    failed_probes: dict[tuple[str, str], int] = field(default_factory=dict)  # in a row, while skipped

    def base(self, key: tuple[str, str]) -> int:
        """The length earned from acceptance so far, before the cost cap."""
        # The suggestion is the model's own earlier output: bet on all of it from the start.
        return self.k.get(key, self.k_max if key[1] == "suggestion" else self.k_init)

    def capped(self, key: tuple[str, str]) -> int:
        """base(), capped at the length that pays most on the cost curve (0: none pays)."""
        k = self.base(key)
        if self.cost is None or (key[1] == "suggestion" and key not in self.acceptance):
            return k
        # Not measured yet: assume `prior`, so a first proposal costs what an average one pays.
        return self.cost.best_k(self.acceptance.get(key, self.prior), k)

    def get(self, key: tuple[str, str]) -> int:
        best = self.capped(key)
        if best > 0:
            return best
        self.skipped[key] = self.skipped.get(key, 0) + 1
        if self.skipped[key] < self.probe_interval() << min(self.failed_probes.get(key, 0), 4):
            return 0
        self.skipped[key] = 0
        return 1

    def probe_interval(self) -> int:
        """Skipped steps per one-token probe: (cost(2)/cost(1) − 1) / n ≤ probe_loss."""
        if self.cost is None:
            return self.probe_every
        return max(self.probe_every, math.ceil((self.cost(2) / self.cost(1) - 1) / self.probe_loss - 1e-9))

    def update(self, key: tuple[str, str], proposed: int, accepted: int) -> None:
        if proposed <= 0:
            return
        k = self.capped(key)
        if k <= 0:  # a probe: back off while they fail
            self.failed_probes[key] = self.failed_probes.get(key, 0) + 1 if accepted == 0 else 0
        self.k[key] = min(self.k_max, k + 2) if accepted == proposed else max(self.k_min, min(k - 1, accepted + 1))
        rate = accepted / proposed
        self.acceptance[key] = self.decay * self.acceptance.get(key, rate) + (1 - self.decay) * rate
