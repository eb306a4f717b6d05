"""The speculative decoding loop (greedy exact, sampling by rejection).

One step:  ctx = prompt + generated, whose last token t0 is chosen but not yet fed.
  draft    d1..dk            = drafter.propose(ctx, k)
  verify   logits[0..k]      = target([t0, d1..dk])  -- ONE forward, KV appended
  greedy   accept d_i while d_i == argmax(logits[i-1]); n = accepted count
           next token        = argmax(logits[n])     -- the target's own token
  sampling accept d_i with prob min(1, p_i(d_i) / q_i(d_i)); on the first reject,
           next ~ norm(max(0, p_i - q_i)); if all accepted, next ~ p_k
  crop     KV back to prompt + generated + t0 + d1..dn   (drop rejected entries)

So greedy speculative output equals plain greedy output token for token (up to
floating-point differences between a batched and a one-token forward; see
ARCHITECTURE.md), and sampled output has exactly the target's distribution.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch

from .. import faults
from ..names import DRAFTERS
from .cache import PrefixCache, restore, truncate
from .costs import CostCurve
from .drafters import (
    AssistantDrafter,
    AutoDrafter,
    Draft,
    Drafter,
    DraftLength,
    ModelDrafter,
    NGramDrafter,
    NoDrafter,
    SuggestionDrafter,
)
from .retrieval import RetrievalDrafter, TokenIndex

PREFILL_CHUNK = 256  # tokens per prefill forward: a cancel lands between chunks
# A warm-up's chunks are smaller, so that a request preempting it waits less: a prompt
# pass costs the same per token from 64 to 512 rows (measured, Xeon 2 cores: 151-167 tok/s).
WARM_CHUNK = 128

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
    language: str = ""  # keys the adaptive draft length
    retrieval: bool = True  # auto may draft from the engine's retrieval index (the caller knows its language)


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

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass
class GenerateResult:
    tokens: list[int]
    stop_reason: str  # "stop" | "newline" | "max_tokens" | "budget" | "time" | "cancelled"
    stats: Stats


class Engine:
    """Owns the target model, an optional draft model, and their prefix caches.

    Not thread-safe: the scheduler calls it from one thread only. It is the `inprocess`
    backend (see backends/): `generate` and `warm` are the whole interface.
    """

    name = "inprocess"

    def __init__(
        self,
        model: torch.nn.Module,
        draft_model: torch.nn.Module | None = None,
        cache_bytes: int = 2 << 30,
        draft_cache_bytes: int = 512 << 20,
        assistant: torch.nn.Module | None = None,
        cost: CostCurve | None = None,
        retrieval: TokenIndex | None = None,
    ) -> None:
        self.model = model.eval()
        self.retrieval = retrieval  # a token corpus for RetrievalDrafter, or None
        self.draft_model = draft_model.eval() if draft_model is not None else None
        self.assistant = assistant.eval() if assistant is not None else None
        self._observer: AssistantDrafter | None = None  # fed the target's state after each forward
        self.device = next(model.parameters()).device
        self.cache = PrefixCache(cache_bytes)
        self.draft_cache = PrefixCache(draft_cache_bytes)
        self.cost = cost  # measured forward cost by rows; caps draft lengths where it is known
        self.draft_length = self.new_draft_length()

    def new_draft_length(self) -> DraftLength:
        return DraftLength(cost=self.cost)

    # --- drafters -------------------------------------------------------------------

    def make_drafter(self, req: GenerateRequest, generator: torch.Generator | None) -> Drafter:
        name = req.drafter
        if name not in DRAFTERS:
            raise ValueError(f"unknown drafter {name!r}; choose one of {', '.join(DRAFTERS)}")
        suggestion = SuggestionDrafter(req.suggestion or [], len(req.prompt))
        model = None
        if self.draft_model is not None:
            model = ModelDrafter(self.draft_model, self.draft_cache, req.temperature, generator)
        if name == "none":
            return NoDrafter()
        if name == "ngram":
            return NGramDrafter()
        if name == "suggestion":
            return suggestion
        if name == "retrieval":
            if self.retrieval is None:
                raise ValueError("drafter 'retrieval' needs a retrieval index (setting retrieval: stdlib)")
            return RetrievalDrafter(self.retrieval)
        if name == "model":
            if model is None:
                raise ValueError("drafter 'model' needs a draft model (set draftModel / --draft-model)")
            return model
        assistant = None
        if self.assistant is not None:
            assistant = AssistantDrafter(self.assistant, self.model.get_input_embeddings())
        if name == "gemma4-assistant":
            if assistant is None:
                raise ValueError("drafter 'gemma4-assistant' needs a Gemma 4 assistant as draftModel (preset gemma4-31b-mtp)")
            return assistant
        retrieval = RetrievalDrafter(self.retrieval) if self.retrieval is not None and req.retrieval else None
        chain: list[Drafter] = [suggestion, NGramDrafter()] + [d for d in (retrieval, assistant, model) if d is not None]
        lang = req.language or "text"
        return AutoDrafter(chain, lambda sub: self.draft_length.get((lang, sub)))

    # --- forward passes ---------------------------------------------------------------

    def _forward(self, ids: Sequence[int], cache, all_logits: bool) -> torch.Tensor:
        faults.hit("forward")
        x = torch.tensor([list(ids)], device=self.device)
        start = cache.get_seq_length()
        if self._observer is None:
            out = self.model(input_ids=x, cache=cache, use_cache=True, logits_to_keep=0 if all_logits else 1)
        else:  # the MTP assistant drafts from the target's last hidden states and shared KV
            out = self.model(input_ids=x, cache=cache, use_cache=True, logits_to_keep=0 if all_logits else 1,
                             output_hidden_states=True, return_shared_kv_states=True)
            self._observer.observe(start, len(ids), out.hidden_states[-1][0], out.shared_kv_states)
        return out.logits[0].float()

    # --- the prompt pass ---------------------------------------------------------------

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
                logits = self._forward(ids, cache, all_logits=False)[-1]
                cached.extend(ids)
                stats.target_forwards += 1
                stats.prefill_forwards += 1
        except BaseException:  # keep the reused prefix and the chunks done: the next request needs them
            if restore(cache, len(cached)):
                self.cache.put(cached, cache)
            raise
        return cache, cached, logits, None

    @torch.inference_mode()
    def warm(self, prompt: list[int], stop: threading.Event | None = None) -> Stats:
        """Run the prompt pass of a likely next request and cache its KV, nothing else.

        Background work: it stops between chunks when `stop` is set (keeping what it
        computed), and stores its entry only where that evicts nothing."""
        stats = Stats(prompt_tokens=len(prompt))
        if not prompt:
            return stats
        t0 = time.perf_counter()
        if (reused := self.cache.longest(prompt)) >= len(prompt) - 1:
            stats.reused_tokens = reused  # already there (a request just ran here): nothing to do
            return stats
        cache, cached, _, _ = self._prefill(prompt, stop, stats, WARM_CHUNK)
        stats.prefill_ms = (time.perf_counter() - t0) * 1e3
        stats.tokens = len(cached) - stats.reused_tokens  # prompt tokens computed (less if preempted)
        self.cache.put(cached, cache, evict=False)
        return stats

    # --- the loop ------------------------------------------------------------------

    @torch.inference_mode()
    def generate(self, req: GenerateRequest) -> GenerateResult:
        if not req.prompt:
            raise ValueError("empty prompt")
        stats = Stats(prompt_tokens=len(req.prompt))
        generator = None
        if req.temperature > 0:
            generator = torch.Generator(device="cpu")
            generator.manual_seed(req.seed if req.seed is not None else int(time.time_ns() % (1 << 63)))
        drafter = self.make_drafter(req, generator)
        stats.drafter = drafter.name
        subs = drafter.drafters if isinstance(drafter, AutoDrafter) else [drafter]
        self._observer = next((d for d in subs if isinstance(d, AssistantDrafter)), None)

        t0 = time.perf_counter()
        cache, cached, logits, reason = self._prefill(req.prompt, req.stop_event, stats)
        stats.prefill_ms = (time.perf_counter() - t0) * 1e3

        out: list[int] = []
        t1 = time.perf_counter()
        try:
            if reason is None:
                assert logits is not None
                reason = self._decode(req, drafter, generator, cache, cached, logits, out, stats, DecodeClock(req, t1))
        finally:
            # Whatever happens in decoding (a drafter or a forward raising), the entry taken
            # from the cache goes back holding exactly `cached`: a failed request costs the
            # next one nothing. A forward that raised may have appended to some layers only.
            drafter.finish()
            self._observer = None
            if restore(cache, len(cached)):
                self.cache.put(cached, cache)
        if isinstance(drafter, (ModelDrafter, AutoDrafter)):
            stats.draft_reused_tokens = _draft_reuse(drafter)
        stats.decode_ms = (time.perf_counter() - t1) * 1e3
        stats.tokens = len(out)
        return GenerateResult(out, reason, stats)

    def _decode(self, req, drafter, generator, cache, cached, logits, out, stats, clock: "DecodeClock") -> str:
        """Append tokens to `out` until a stop; keep `cache` holding exactly `cached`."""
        ctx = list(req.prompt)
        lang = req.language or "text"
        nxt = self._pick(logits, req, generator, out)
        step_s = 0.0
        while True:
            # Emit the target's chosen token.
            if (reason := emit(req, out, nxt) or clock.stopped(nxt, step_s)) is not None:
                return reason
            ctx.append(nxt)
            # Draft (never while a constraint is active, nor past max_tokens).
            draft = Draft([])
            room = req.max_tokens - len(out)
            if self.cost is not None and self.cost.max_rows:
                # Verify on the same quantized kernel as a one-token step (never the dense
                # prefill path), so every position computes what plain decoding computes.
                room = min(room, self.cost.max_rows - 1)
            constrained = req.constraint is not None and req.constraint(out) is not None
            name = getattr(drafter, "last", drafter.name)
            if not constrained:
                # auto picks each sub-drafter's own length; it only needs the room left
                k = room if isinstance(drafter, AutoDrafter) else min(self.draft_length.get((lang, drafter.name)), room)
                faults.hit("drafter")
                draft = drafter.propose(ctx, k) if k > 0 else Draft([])
                name = getattr(drafter, "last", drafter.name)
            # Verify [nxt, d1..dk] in one forward.
            feed = [nxt] + draft.tokens
            t_step = time.perf_counter()
            logits = self._forward(feed, cache, all_logits=True)
            step_s = time.perf_counter() - t_step  # the budget check predicts the next forward with it
            cached.extend(feed)
            stats.target_forwards += 1
            n_acc, nxt = self._accept(logits, draft, req, generator, out)
            if draft.tokens:
                stats.drafted += len(draft.tokens)
                stats.accepted += n_acc
                by = stats.drafted_by.setdefault(name, [0, 0])
                by[0] += len(draft.tokens)
                by[1] += n_acc
                self.draft_length.update((lang, name), len(draft.tokens), n_acc)
            # Drop the KV of rejected draft tokens.
            keep = len(cached) - (len(draft.tokens) - n_acc)
            if keep < len(cached):
                truncate(cache, keep)
                del cached[keep:]
            # Emit accepted draft tokens; they are the target's own choices, so they
            # may hit a stop. Extra KV beyond `out` is harmless: `cached` names it exactly.
            for t in draft.tokens[:n_acc]:
                if (reason := emit(req, out, t) or ("budget" if clock.line_done(t) else None)) is not None:
                    return reason
                ctx.append(t)

    def _pick(self, logits: torch.Tensor, req: GenerateRequest, generator, out: list[int]) -> int:
        """The target's own next token from one row of logits (greedy or sampled)."""
        logits = self._constrain(logits, req, out)
        if req.temperature <= 0:
            return int(torch.argmax(logits))
        return int(torch.multinomial(self._probs(logits, req), 1, generator=generator))

    def _accept(self, logits: torch.Tensor, draft: Draft, req, generator, out: list[int]) -> tuple[int, int]:
        """Return (number of draft tokens accepted, the target's next token)."""
        d = draft.tokens
        if req.temperature <= 0:
            # Greedy: the target's argmax at every verified position, compared at once.
            if not d:
                return 0, self._pick(logits[0], req, generator, out)
            preds = torch.argmax(logits, dim=-1).tolist()
            n = 0
            while n < len(d) and d[n] == preds[n]:
                n += 1
            return n, self._pick(logits[n], req, generator, out + d[:n])
        for i, t in enumerate(d):
            p = self._probs(logits[i], req)
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
        return len(d), self._pick(logits[len(d)], req, generator, out + d)

    def _constrain(self, logits: torch.Tensor, req: GenerateRequest, out: list[int]) -> torch.Tensor:
        if req.constraint is None:
            return logits
        mask = req.constraint(out)
        if mask is None:
            return logits
        n = logits.shape[-1]  # the model may have more output rows than the tokenizer has tokens
        if mask.shape[0] < n:
            mask = torch.cat([mask, mask.new_zeros(n - mask.shape[0])])
        return logits.masked_fill(~mask[:n].to(logits.device), float("-inf"))

    @staticmethod
    def _probs(logits: torch.Tensor, req: GenerateRequest) -> torch.Tensor:
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


def _draft_reuse(drafter: Drafter) -> int:
    ds = drafter.drafters if isinstance(drafter, AutoDrafter) else [drafter]
    return sum(d.reused_tokens for d in ds if isinstance(d, ModelDrafter))
