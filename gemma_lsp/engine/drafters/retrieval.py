"""Retrieval drafting: continue the context the way a large body of code continues it.

In free generation the context's own n-grams often have nothing to propose, while code
elsewhere does (`for i in range(len(`, `raise ValueError(f"`). This drafter looks up the
longest tail of the context (up to ORDER tokens) in a token corpus and proposes the
continuation most of the matches share (REST, He et al. 2024). Like every drafter it
only changes how many target forwards a completion takes, never its tokens.

The index is a truncated suffix array: every corpus position, sorted by the ORDER tokens
that start there. A tail of n <= ORDER tokens then matches one contiguous range, found by
binary search. Memory: 8 bytes per corpus token (ids + positions, int32).
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ...paths import replace_atomically
from .base import Draft

ORDER = 8  # longest tail looked up; the suffix array is sorted by this many tokens
MIN_TAIL = 2  # a 1-token match says too little about what follows
MAX_MATCHES = 256  # matches that vote on the continuation (evenly sampled from the range)
BITS = 20  # token ids are packed 3 per int64 key while sorting: vocabularies up to 2^20 - 1


class TokenIndex:
    def __init__(self, ids: np.ndarray, sa: np.ndarray | None = None) -> None:
        self.ids = np.ascontiguousarray(ids, dtype=np.int32)
        self.sa = self.sort(self.ids) if sa is None else np.ascontiguousarray(sa, dtype=np.int32)

    @staticmethod
    def sort(ids: np.ndarray) -> np.ndarray:
        """Positions ordered by their next ORDER tokens (a shorter rest at the end sorts first)."""
        if len(ids) and int(ids.max()) >= (1 << BITS) - 1:
            raise ValueError(f"token ids must be below {(1 << BITS) - 1} to be indexed")
        n = len(ids)
        shifted = np.zeros(n + ORDER, dtype=np.int64)  # id + 1, and 0 past the end
        shifted[:n] = ids.astype(np.int64) + 1
        keys = []
        for start in range(0, ORDER, 3):  # key j packs tokens start..start+2 after each position
            key = np.zeros(n, dtype=np.int64)
            for j in range(start, min(start + 3, ORDER)):
                key = (key << BITS) | shifted[j : j + n]
            keys.append(key)
        return np.lexsort(keys[::-1]).astype(np.int32)  # lexsort's last key is the primary one

    def __len__(self) -> int:
        return len(self.ids)

    def find(self, tail: Sequence[int]) -> tuple[int, int]:
        """The range of suffix-array rows whose suffix starts with `tail` (len(tail) <= ORDER)."""
        n, sa, ids = len(tail), self.sa, self.ids
        want = [int(t) for t in tail]

        def key(row: int) -> list[int]:  # lists compare like the sort: a shorter rest first
            return ids[sa[row] : sa[row] + n].tolist()

        lo = bisect.bisect_left(range(len(sa)), want, key=key)
        hi = bisect.bisect_right(range(len(sa)), want, lo=lo, key=key)
        return lo, hi

    def continue_(self, ctx: Sequence[int], k: int) -> list[int]:
        """Up to k tokens after the longest tail of `ctx` found here, by majority of the matches."""
        for n in range(min(ORDER, len(ctx)), MIN_TAIL - 1, -1):
            lo, hi = self.find(ctx[-n:])
            if hi <= lo:
                continue
            step = max(1, (hi - lo) // MAX_MATCHES)
            at = self.sa[lo:hi:step].astype(np.int64) + n  # where each match's continuation starts
            out: list[int] = []
            for d in range(k):
                at = at[at + d < len(self.ids)]
                if not len(at):
                    break
                nxt = self.ids[at + d]
                values, counts = np.unique(nxt, return_counts=True)
                tok = int(values[np.argmax(counts)])  # ties: the smallest id, deterministically
                out.append(tok)
                at = at[nxt == tok]
            if out:
                return out
        return []

    def save(self, path: Path) -> None:
        # np.savez adds ".npz" to a name without it: the temporary name keeps the suffix.
        replace_atomically(path, lambda tmp: np.savez(tmp, ids=self.ids, sa=self.sa), suffix=".npz")

    @classmethod
    def load(cls, path: Path) -> "TokenIndex":
        with np.load(path) as f:
            ids, sa = f["ids"], f["sa"]
        if ids.shape != sa.shape:
            raise ValueError(f"{path}: ids and suffix array differ in length")
        return cls(ids, sa)


class RetrievalDrafter:
    """Drafts from a TokenIndex; proposes nothing when no tail of >= MIN_TAIL tokens is in it."""

    name = "retrieval"

    def __init__(self, index: TokenIndex) -> None:
        self.index = index

    def propose(self, ctx: Sequence[int], k: int) -> Draft:
        if k <= 0 or len(ctx) < MIN_TAIL:
            return Draft([])
        return Draft(self.index.continue_(ctx, k))

    def finish(self) -> None:
        pass
