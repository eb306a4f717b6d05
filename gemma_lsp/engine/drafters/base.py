"""What a drafter is (`Drafter`: propose k tokens after ctx, `Draft`: the tokens and, for
sampling, their q), the drafter that never drafts, and `auto`, which asks others in turn."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass
class Draft:
    tokens: list[int]
    # q(x) for each proposed position, shape [len(tokens), vocab]; None means one-hot
    # (n-gram and suggestion drafts are deterministic: q = 1 on the proposed token).
    probs: torch.Tensor | None = None


class Drafter(Protocol):
    name: str

    def propose(self, ctx: Sequence[int], k: int) -> Draft: ...

    def finish(self) -> None: ...


class NoDrafter:
    name = "none"

    def propose(self, ctx: Sequence[int], k: int) -> Draft:
        return Draft([])

    def finish(self) -> None:
        pass


class AutoDrafter:
    """Ask each drafter in order (cheapest first); the first with a proposal drafts this step.

    Each sub-drafter drafts with its own adaptive length `k_for(name)`, capped by `k` (the room left).
    """

    name = "auto"

    def __init__(self, drafters: Sequence[Drafter], k_for: Callable[[str], int]) -> None:
        self.drafters = list(drafters)
        self.k_for = k_for
        self.last = "none"

    def propose(self, ctx: Sequence[int], k: int) -> Draft:
        for d in self.drafters:
            n = min(k, self.k_for(d.name))
            if n <= 0:
                continue
            draft = d.propose(ctx, n)
            if draft.tokens:
                self.last = d.name
                return draft
        self.last = "none"
        return Draft([])

    def finish(self) -> None:
        for d in self.drafters:
            d.finish()
