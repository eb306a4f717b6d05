"""The prompt pass: reuse the longest cached prefix, run the rest in chunks, keep the KV.

Also the warm-ups (a likely next request's prompt pass, run while the user pauses) and the
choice of the prompt to run now (deferral.py). A mixin of Engine: it needs the engine's
`cache`, `cost` and `_forward(ids, cache, all_logits)`, and nothing of the decoding loop.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import torch

from .cache import PrefixCache, restore, truncate
from .costs import CostCurve
from .deferral import prompt_now
from .request import Stats

PREFILL_CHUNK = 256  # tokens per prefill forward: a cancel lands between chunks
# A warm-up's chunks are smaller, so that a request preempting it waits less: as narrow as
# the cost curve allows at little more cost per token (CostCurve.narrow_chunk), else this.
WARM_CHUNK = 128
RATE_MIN_TOKENS = 32  # a prompt chunk this long times the prompt pass's rate (narrower ones cost more per token)


class PromptPass:
    """The prompt-pass half of Engine (see the module docstring)."""

    cache: PrefixCache
    cost: CostCurve | None
    prompt_rate: float | None = None  # prompt tokens/s of recent prefill chunks (deferral.py)

    def tokens_per_s(self) -> float | None:
        """The prompt pass's rate: measured on recent chunks, else the cost curve's widest
        forward (an underestimate: wider chunks cost less per token), else unknown."""
        if self.prompt_rate is not None:
            return self.prompt_rate
        if self.cost is not None and self.cost.ms:
            rows = max(self.cost.ms)
            return rows / self.cost.ms[rows] * 1e3
        return None

    def _prompt_now(self, prompt: list[int], cuts: Sequence[int]) -> tuple[list[int], int]:
        return prompt_now(prompt, cuts, self.cache.longest, self.tokens_per_s())

    def _prefill(self, prompt: list[int], stop: threading.Event | None, stats: Stats, chunk: int = PREFILL_CHUNK):
        """Reuse the longest cached prefix, run the rest in chunks; keep >= 1 token to get
        the next logits. No deadline here: a cut prompt pass would waste its work and answer
        nothing. Returns (cache, the ids it holds, last logits, "cancelled" or None)."""
        cache, reused = self.cache.take(prompt)
        if reused >= len(prompt):
            reused = len(prompt) - 1
            truncate(cache, reused)
        stats.reused_tokens = reused
        cached: list[int] = list(prompt[:reused])  # tokens whose KV is in `cache`
        logits = None
        try:
            for s in range(reused, len(prompt), chunk):
                if stop is not None and stop.is_set():
                    return cache, cached, None, "cancelled"
                ids = prompt[s : s + chunk]
                t0 = time.perf_counter()
                logits = self._forward(ids, cache, all_logits=False)[-1]
                if len(ids) >= RATE_MIN_TOKENS:  # tokens/s, averaged over the last few chunks
                    rate = len(ids) / max(time.perf_counter() - t0, 1e-6)
                    self.prompt_rate = rate if self.prompt_rate is None else 0.5 * (self.prompt_rate + rate)
                cached.extend(ids)
                stats.target_forwards += 1
                stats.prefill_forwards += 1
        except BaseException:  # keep the reused prefix and the chunks done: the next request needs them
            if restore(cache, len(cached)):
                self.cache.put(cached, cache)
            raise
        return cache, cached, logits, None

    @torch.inference_mode()
    def warm(self, prompt: list[int], stop: threading.Event | None = None, cuts: Sequence[int] = ()) -> Stats:
        """Run the prompt pass of a likely next request and cache its KV, nothing else.

        Background work: it stops between chunks when `stop` is set (keeping what it
        computed), and stores its entry only where that evicts nothing. With `cuts`, first
        the prompt a request would run now (deferral.py), then the whole one."""
        now, deferred = self._prompt_now(prompt, cuts)
        stats = self._warm(now, stop)
        if deferred and not (stop is not None and stop.is_set()):
            whole = self._warm(prompt, stop)
            stats.prompt_tokens, stats.reused_tokens = whole.prompt_tokens, whole.reused_tokens
            stats.tokens += whole.tokens
            stats.prefill_ms += whole.prefill_ms
        return stats

    def _warm(self, prompt: list[int], stop: threading.Event | None) -> Stats:
        stats = Stats(prompt_tokens=len(prompt))
        if not prompt:
            return stats
        t0 = time.perf_counter()
        if (reused := self.cache.longest(prompt)) >= len(prompt) - 1:
            stats.reused_tokens = reused  # already there (a request just ran here): nothing to do
            return stats
        chunk = self.cost.narrow_chunk(default=WARM_CHUNK) if self.cost is not None else WARM_CHUNK
        cache, cached, _, _ = self._prefill(prompt, stop, stats, chunk)
        stats.prefill_ms = (time.perf_counter() - t0) * 1e3
        stats.tokens = len(cached) - stats.reused_tokens  # prompt tokens computed (less if preempted)
        self.cache.put(cached, cache, evict=False)
        return stats

