"""Which prompt to run now: the whole one, or one that leaves out other files' chunks whose
KV is not cached yet (first contact in a file).

Why. The other files' chunks open the prompt (what is stable comes first), so the first
request after the user leaves a file pays for that file's chunk and for all of the current
file behind it: measured on a 2-core AMD EPYC, 400-800 new tokens, 3-7 s before the first
suggestion at ~150 prompt tokens/s. Left out, the chunk costs nothing now; a warm-up
prefills the whole prompt in the next pause, and from then on requests run it whole.

Math. The prompt is [chunk 0] ... [chunk n−1] [rest], chunk i = prompt[cuts[i]:cuts[i+1]],
rest = prompt[cuts[n]:]. Of chunks 0..j−1 the KV is cached whole (cuts[j] <= cached, the
longest cached prefix). Running the prompt costs (len − cached) new tokens; leaving out
chunks j.. costs (len(short) − cached(short)). The short prompt is run when the tokens it
saves take longer than DEFER_S at the measured prompt rate: a quarter second of waiting
for context the model may not need, against context the next request will have.

The engine knows only token ids: the caller says where the optional chunks are.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence

DEFER_S = 0.25  # prompt-pass seconds a left-out chunk must save


def check_cuts(cuts: Sequence[int], length: int) -> None:
    """`cuts` must rise from 0.. and stay within the prompt (ValueError otherwise)."""
    if any(not isinstance(c, int) or isinstance(c, bool) for c in cuts):
        raise ValueError("cuts must be token offsets (integers)")
    if any(b < a for a, b in zip(cuts, cuts[1:])) or (cuts and (cuts[0] < 0 or cuts[-1] > length)):
        raise ValueError(f"cuts must rise within the prompt's {length} tokens; got {list(cuts)}")


def prompt_now(prompt: list[int], cuts: Sequence[int], longest: Callable[[Sequence[int]], int],
               tokens_per_s: float | None) -> tuple[list[int], int]:
    """The prompt to run now and how many of `prompt`'s tokens it leaves out.

    `longest(ids)` is how many leading tokens of `ids` the cache holds; `tokens_per_s` the
    prompt pass's rate on this machine now (None: unknown, run the prompt whole)."""
    check_cuts(cuts, len(prompt))
    if len(cuts) < 2 or not tokens_per_s:
        return prompt, 0
    cached = longest(prompt)
    j = max(0, bisect.bisect_right(cuts, cached) - 1)  # chunks 0..j-1 are cached whole
    if j >= len(cuts) - 1:
        return prompt, 0
    short = prompt[: cuts[j]] + prompt[cuts[-1] :]
    saved = (len(prompt) - cached) - (len(short) - longest(short))
    if saved <= tokens_per_s * DEFER_S:
        return prompt, 0
    return short, len(prompt) - len(short)
