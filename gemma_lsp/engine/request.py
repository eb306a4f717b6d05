"""What every engine and backend shares: the request (token ids, stop rules, time policy),
its result and stats, and the two functions that decide where an answer ends (`emit`, the
stop rules; `DecodeClock`, the time policy). The in-process engine, the llama.cpp
comparison engine and the remote client all call them (invariant 10).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Protocol, runtime_checkable

import torch

# Given the tokens generated so far, the allowed next tokens (bool mask over the
# vocabulary), or None when unconstrained. Used for token healing.
Constraint = Callable[[Sequence[int]], "torch.Tensor | None"]


@dataclass
class GenerateRequest:
    prompt: list[int]
    max_tokens: int = 64
    stop_ids: frozenset[int] = frozenset()  # end generation, not included (EOS, FIM tokens)
    newline_ids: frozenset[int] = frozenset()  # end generation after this token (single-line mode)
    drafter: str = "auto"
    suggestion: list[int] | None = None  # expected continuation for the suggestion drafter
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    # Time policy, counted from the end of the prompt pass (which always runs to the end:
    # its KV is cached either way). Past `budget_s` decoding stops at the next token in
    # `line_end_ids` (reason "budget": the text ends with a whole line); past `ceiling_s`,
    # or when the next forward would end past it, it stops wherever it is (reason "time").
    budget_s: float | None = None
    ceiling_s: float | None = None
    line_end_ids: frozenset[int] = frozenset()  # tokens whose text contains a newline
    stop_event: threading.Event | None = None
    constraint: Constraint | None = None
    # Caller's check over the tokens so far; True ends generation after the latest token
    # (e.g. the text left its code block). It sees the same prefix on every path, so it
    # never breaks losslessness.
    stop_after: Callable[[Sequence[int]], bool] | None = None
    # A label of the caller's that keys the adaptive draft length: drafts are learned per
    # group (the completer passes the document's language; the engine never reads it).
    draft_group: str = ""
    retrieval: bool = True  # auto may draft from the engine's retrieval index (the caller knows its corpus fits)
    # Token offsets where other files' chunks begin, the last one where the rest (the
    # current file) begins: an engine that knows its cache may leave out the chunks it has
    # not cached yet, when that saves enough of the prompt pass (engine/deferral.py).
    cuts: tuple[int, ...] = ()


@dataclass
class Stats:
    prompt_tokens: int = 0
    reused_tokens: int = 0
    prefill_ms: float = 0.0
    prefill_forwards: int = 0  # included in target_forwards
    decode_ms: float = 0.0
    target_forwards: int = 0
    drafted: int = 0
    accepted: int = 0
    tokens: int = 0
    drafter: str = "none"
    drafted_by: dict[str, list[int]] = field(default_factory=dict)  # name -> [drafted, accepted]
    draft_reused_tokens: int = 0
    deferred_tokens: int = 0  # other files' chunks left out of the prompt, not cached yet (engine/deferral.py)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass
class GenerateResult:
    tokens: list[int]
    stop_reason: str  # "stop" | "newline" | "max_tokens" | "budget" | "time" | "cancelled"
    stats: Stats


def emit(req: GenerateRequest, out: list[int], token: int) -> str | None:
    """Append the target's chosen `token` to `out` under the request's stop rules; the stop
    reason, or None to go on. One home for these rules: every engine and backend calls it."""
    if token in req.stop_ids:
        return "stop"  # a stop token is never part of the answer
    out.append(token)
    if token in req.newline_ids:
        return "newline"
    if req.stop_after is not None and req.stop_after(out):
        return "stop"
    if len(out) >= req.max_tokens:
        return "max_tokens"
    return None


class DecodeClock:
    """The decode-time policy of a request (see GenerateRequest.budget_s)."""

    def __init__(self, req: GenerateRequest, start: float) -> None:
        self.req = req
        self.soft = None if req.budget_s is None else start + req.budget_s
        self.hard = None if req.ceiling_s is None else start + req.ceiling_s

    def line_done(self, token: int) -> bool:
        """Past the budget and `token` just ended a line."""
        return self.soft is not None and token in self.req.line_end_ids and time.perf_counter() > self.soft

    def stopped(self, token: int, next_step_s: float) -> str | None:
        """Before the next forward: cancelled, a line ended past the budget, or the ceiling
        would pass before that forward finishes."""
        if self.req.stop_event is not None and self.req.stop_event.is_set():
            return "cancelled"
        if self.line_done(token):
            return "budget"
        if self.hard is not None and time.perf_counter() + next_step_s > self.hard:
            return "time"
        return None


@runtime_checkable
class Backend(Protocol):
    """What runs a `GenerateRequest`: the engine in this process, the daemon's and any
    OpenAI-compatible server's client, the llama.cpp comparison engine. Each declares it
    (subclasses this), and tests/test_layering.py checks that each defines both methods."""

    name: str  # what `gemma/stats` and `--json` report as the backend that answered

    def generate(self, req: GenerateRequest) -> GenerateResult:
        """Run one request to a stop; `req.stop_event` ends it early (reason "cancelled")."""
        ...

    def warm(self, prompt: list[int], stop: threading.Event | None = None, cuts: Sequence[int] = ()) -> Stats:
        """Compute and keep the KV of `prompt` where the backend can; background work.
        `cuts` as in GenerateRequest."""
        ...
