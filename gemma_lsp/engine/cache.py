"""KV prefix cache: reuse the model state of the longest cached common prefix.

An entry that the new prompt extends is *moved* out (pop, extend, put back under
the new key): typing at the end of the prompt costs no copy. An entry that the
new prompt diverges from stays cached, and the caller gets a cropped copy, so
alternating between two prompts (two files, or a cursor jumping back) keeps
both. Either way a cache object is mutated by exactly one generation at a time
and the LRU's byte accounting, taken at insertion, stays true.

Exactness with sliding-window layers (Gemma 2/3/4): we always build
`DynamicCache()` without a config, so every layer keeps its full history and
the model applies the sliding mask itself. Cropping to any earlier length is
then exact; the price is memory, which is small for FIM-sized prompts.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import cachetools
import torch
from transformers import DynamicCache


def cache_bytes(cache: DynamicCache) -> int:
    """Bytes of K and V memory held by the cache (what the LRU is bounded by).

    Counted by storage, not by view, over every tensor a layer holds: a cropped layer, or
    the lean path's KV with room to grow (quant/lean.py), holds its whole buffer."""
    seen: dict[int, int] = {}
    for layer in cache.layers:
        for t in vars(layer).values():
            if isinstance(t, torch.Tensor):
                s = t.untyped_storage()
                seen[s.data_ptr()] = max(seen.get(s.data_ptr(), 0), s.nbytes())
    return max(sum(seen.values()), 1)


def truncate(cache: DynamicCache, length: int) -> None:
    """Keep the first `length` positions (transformers 5 crops by a negative count to remove)."""
    extra = cache.get_seq_length() - length
    if extra > 0:
        cache.crop(-extra)


def restore(cache: DynamicCache, length: int) -> bool:
    """Crop every layer back to `length` positions after a forward that may have raised part
    way (some layers appended, others not). False when a layer holds fewer: the entry is
    then unusable and must be dropped, never stored."""
    for layer in cache.layers:
        extra = layer.get_seq_length() - length
        if extra < 0:
            return False
        if extra > 0:
            layer.crop(-extra)
    return True


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class PrefixCache:
    """A byte-bounded LRU of (token ids -> DynamicCache holding exactly those ids)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._lru: cachetools.LRUCache[tuple[int, ...], DynamicCache] = cachetools.LRUCache(
            maxsize=max_bytes, getsizeof=cache_bytes
        )

    def _best(self, ids: Sequence[int]) -> tuple[tuple[int, ...] | None, int]:
        """The key sharing the longest prefix with `ids`, and that length (None, 0: none)."""
        best_key, best_len = None, 0
        for key in self._lru.keys():
            n = common_prefix(key, ids)
            if n > best_len:
                best_key, best_len = key, n
        return best_key, best_len

    def longest(self, ids: Sequence[int]) -> int:
        """How many leading tokens of `ids` some entry holds (the cache is left as it is)."""
        return self._best(ids)[1]

    def take(self, ids: Sequence[int]) -> tuple[DynamicCache, int]:
        """Pop the entry sharing the longest prefix with `ids`, cropped to that prefix.

        Returns a fresh empty cache and 0 when nothing matches.
        """
        best_key, best_len = self._best(ids)
        if best_key is None:
            return DynamicCache(), 0
        if best_len >= len(best_key) - 1:  # the new prompt extends this entry: take it, no copy
            cache = self._lru.pop(best_key)
        else:  # it diverges: keep the entry for prompts that still match it, crop a copy
            cache = copy.deepcopy(self._lru[best_key])
        truncate(cache, best_len)
        return cache, best_len

    def put(self, ids: Sequence[int], cache: DynamicCache, evict: bool = True) -> None:
        """Store `cache`, which must hold the KV of exactly `ids`; drop it if it exceeds the bound.

        With `evict=False` (background warm-ups) it is stored only if that evicts nothing."""
        assert cache.get_seq_length() == len(ids), (cache.get_seq_length(), len(ids))
        if not ids:
            return
        if not evict and self._lru.currsize + cache_bytes(cache) > self.max_bytes:
            return
        try:
            self._lru[tuple(ids)] = cache
        except ValueError:  # larger than the whole bound: keep nothing
            pass

    def resize(self, max_bytes: int) -> None:
        """Change the bound at run time (setting cacheMb), evicting the oldest entries to fit."""
        if max_bytes == self.max_bytes:
            return
        old = list(self._lru.items())  # oldest first
        self.max_bytes = max_bytes
        self._lru = cachetools.LRUCache(maxsize=max_bytes, getsizeof=cache_bytes)
        for key, cache in old:
            self.put(key, cache)  # drops an entry larger than the new bound on its own

    def clear(self) -> None:
        self._lru.clear()

    @property
    def bytes(self) -> int:
        return int(self._lru.currsize)

    def __len__(self) -> int:
        return len(self._lru)
