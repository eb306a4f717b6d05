"""Choosing the target's token from its logits, and accepting a draft against them.

  greedy   pick = argmax(logits); accept d_i while d_i == argmax(logits[i-1])
  sampling pick ~ p = top_p(softmax(logits / T)); accept d_i with prob min(1, p_i(d_i) / q_i(d_i)),
           on the first reject resample from norm(max(0, p_i − q_i)) (a one-hot q zeroes p_i(d_i))

A healing constraint masks the logits first, at every position, on every path.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .drafters import Draft
from .request import GenerateRequest


def pick(logits: torch.Tensor, req: GenerateRequest, generator: torch.Generator | None, out: Sequence[int]) -> int:
    """The target's own next token from one row of logits (greedy or sampled)."""
    logits = constrain(logits, req, out)
    if req.temperature <= 0:
        return int(torch.argmax(logits))
    return int(torch.multinomial(probs(logits, req), 1, generator=generator))


def accept(logits: torch.Tensor, draft: Draft, req: GenerateRequest, generator: torch.Generator | None,
           out: list[int]) -> tuple[int, int]:
    """(number of draft tokens accepted, the target's next token) for logits [k + 1, V] of
    [t0, d1..dk]."""
    d = draft.tokens
    if req.temperature <= 0:
        # Greedy: the target's argmax at every verified position, compared at once.
        if not d:
            return 0, pick(logits[0], req, generator, out)
        preds = torch.argmax(logits, dim=-1).tolist()
        n = 0
        while n < len(d) and d[n] == preds[n]:
            n += 1
        return n, pick(logits[n], req, generator, out + d[:n])
    for i, t in enumerate(d):
        p = probs(logits[i], req)
        q_t = 1.0 if draft.probs is None else float(draft.probs[i, t])
        r = float(torch.rand((), generator=generator))
        if q_t > 0 and r < min(1.0, float(p[t]) / q_t):
            continue
        # Reject: resample from norm(max(0, p - q)); one-hot q just zeroes p[t].
        q = torch.zeros_like(p)
        if draft.probs is None:
            q[t] = 1.0
        else:
            q = draft.probs[i].to(p)
        resid = torch.clamp(p - q, min=0)
        if float(resid.sum()) <= 0:
            resid = p
        return i, int(torch.multinomial(resid / resid.sum(), 1, generator=generator))
    return len(d), pick(logits[len(d)], req, generator, out + d)


def constrain(logits: torch.Tensor, req: GenerateRequest, out: Sequence[int]) -> torch.Tensor:
    """The logits with what the healing constraint forbids after `out` set to −inf."""
    if req.constraint is None:
        return logits
    mask = req.constraint(out)
    if mask is None:
        return logits
    n = logits.shape[-1]  # the model may have more output rows than the tokenizer has tokens
    if mask.shape[0] < n:
        mask = torch.cat([mask, mask.new_zeros(n - mask.shape[0])])
    return logits.masked_fill(~mask[:n].to(logits.device), float("-inf"))


def probs(logits: torch.Tensor, req: GenerateRequest) -> torch.Tensor:
    """Target distribution: softmax(logits / T), restricted to the top-p nucleus."""
    p = torch.softmax(logits / req.temperature, dim=-1)
    if req.top_p < 1.0:
        sp, idx = torch.sort(p, descending=True)
        keep = torch.cumsum(sp, 0) - sp < req.top_p  # smallest set with mass >= top_p
        mask = torch.zeros_like(p, dtype=torch.bool)
        mask[idx[keep]] = True
        p = torch.where(mask, p, torch.zeros_like(p))
        p = p / p.sum()
    return p
