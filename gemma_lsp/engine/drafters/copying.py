"""Drafters that copy tokens the context already holds: n-gram prompt lookup, and the rest
of the suggestion the user is typing through. Their drafts are one-hot (q = 1)."""

from __future__ import annotations

from collections.abc import Sequence

from .base import Draft


class NGramDrafter:
    """Prompt lookup: find the last n tokens (n = max_n..1) earlier in the context, propose what followed.

    The context includes the prompt (extra chunks, suffix, prefix) and the text
    generated so far, indexed incrementally: O(max_n) dict updates per new token.
    The latest occurrence wins, so code just written is preferred over old code.
    """

    name = "ngram"

    def __init__(self, max_n: int = 4, min_n: int = 1) -> None:
        self.max_n, self.min_n = max_n, min_n
        self._ends: dict[tuple[int, ...], int] = {}  # n-gram -> index of its last token
        self._indexed = 0  # n-grams ending before this index are in _ends
        self._seq: list[int] = []

    def _index(self, ctx: Sequence[int]) -> None:
        if len(ctx) < len(self._seq) or list(ctx[: len(self._seq)]) != self._seq:
            self._ends.clear()
            self._indexed = 0
        self._seq = list(ctx)
        # An n-gram ending at j is useful only if a token follows it: j <= len-2.
        for j in range(self._indexed, len(ctx) - 1):
            for n in range(self.min_n, self.max_n + 1):
                if j - n + 1 < 0:
                    break
                self._ends[tuple(ctx[j - n + 1 : j + 1])] = j
        self._indexed = max(self._indexed, len(ctx) - 1)

    def propose(self, ctx: Sequence[int], k: int) -> Draft:
        if k <= 0 or len(ctx) < 2:
            return Draft([])
        self._index(ctx)
        for n in range(min(self.max_n, len(ctx) - 1), self.min_n - 1, -1):
            j = self._ends.get(tuple(ctx[-n:]))
            if j is not None:
                # Weak evidence, short bet: a 1-token match proposes at most 2 tokens,
                # a 2-token match 4; longer matches get the full adaptive k.
                cap = k if n >= 3 else 2 * n
                return Draft(list(ctx[j + 1 : j + 1 + min(k, cap)]))
        return Draft([])

    def finish(self) -> None:
        pass


class SuggestionDrafter:
    """Propose the rest of the previous suggestion while generation follows it.

    `expected` is the continuation the target produced last time for this
    document, re-aligned by the caller to the new prompt (the user typed its
    first characters). Once the target departs from it, it proposes nothing.
    """

    name = "suggestion"

    def __init__(self, expected: Sequence[int], prompt_len: int) -> None:
        self.expected = list(expected)
        self.prompt_len = prompt_len

    def propose(self, ctx: Sequence[int], k: int) -> Draft:
        gen = ctx[self.prompt_len :]
        n = len(gen)
        if k <= 0 or n > len(self.expected) or list(gen) != self.expected[:n]:
            return Draft([])
        return Draft(self.expected[n : n + k])

    def finish(self) -> None:
        pass
