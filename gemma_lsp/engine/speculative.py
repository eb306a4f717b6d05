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

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .. import faults
from ..names import DRAFTERS
from .accept import accept, pick
from .cache import PrefixCache, restore, truncate
from .costs import CostCurve
from .draft_length import DraftLength
from .drafters import (
    AssistantDrafter,
    AutoDrafter,
    Draft,
    Drafter,
    ModelDrafter,
    NGramDrafter,
    NoDrafter,
    RetrievalDrafter,
    SuggestionDrafter,
    TokenIndex,
    draft_reuse,
)
from .prompt_pass import PromptPass
from .request import Backend, DecodeClock, GenerateRequest, GenerateResult, Stats, emit


class Engine(PromptPass, Backend):
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
        lang = req.draft_group or "text"
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

    # --- the loop ------------------------------------------------------------------

    @torch.inference_mode()
    def generate(self, req: GenerateRequest) -> GenerateResult:
        if not req.prompt:
            raise ValueError("empty prompt")
        prompt, deferred = self._prompt_now(req.prompt, req.cuts)
        if deferred:  # other files' chunks not cached yet: left out of this request (deferral.py)
            req = dataclasses.replace(req, prompt=prompt, cuts=())
        stats = Stats(prompt_tokens=len(req.prompt), deferred_tokens=deferred)
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

        t1 = time.perf_counter()
        run = Run(req, drafter, generator, cache, cached, [], stats, DecodeClock(req, t1), list(req.prompt))
        try:
            if reason is None:
                assert logits is not None
                reason = self._decode(run, logits)
        finally:
            # Whatever happens in decoding (a drafter or a forward raising), the entry taken
            # from the cache goes back holding exactly `cached`: a failed request costs the
            # next one nothing. A forward that raised may have appended to some layers only.
            drafter.finish()
            self._observer = None
            if restore(cache, len(cached)):
                self.cache.put(cached, cache)
        if isinstance(drafter, (ModelDrafter, AutoDrafter)):
            stats.draft_reused_tokens = draft_reuse(drafter)
        stats.decode_ms = (time.perf_counter() - t1) * 1e3
        stats.tokens = len(run.out)
        return GenerateResult(run.out, reason, stats)

    def _decode(self, run: "Run", logits: torch.Tensor) -> str:
        """Append tokens to `run.out` until a stop; keep `run.cache` holding exactly `run.cached`."""
        req, out = run.req, run.out
        nxt = pick(logits, req, run.generator, out)
        step_s = 0.0
        while True:
            # Emit the target's chosen token; stop before a forward that would end too late.
            if (reason := emit(req, out, nxt) or run.clock.stopped(nxt, step_s)) is not None:
                return reason
            run.ctx.append(nxt)
            draft, name = self._draft(run)
            # Verify [nxt, d1..dk] in one forward.
            feed = [nxt] + draft.tokens
            t_step = time.perf_counter()
            logits = self._forward(feed, run.cache, all_logits=True)
            step_s = time.perf_counter() - t_step  # the budget check predicts the next forward with it
            run.cached.extend(feed)
            run.stats.target_forwards += 1
            n_acc, nxt = accept(logits, draft, req, run.generator, out)
            self._record(run, draft, name, n_acc)
            # Drop the KV of rejected draft tokens.
            keep = len(run.cached) - (len(draft.tokens) - n_acc)
            if keep < len(run.cached):
                truncate(run.cache, keep)
                del run.cached[keep:]
            # Emit accepted draft tokens; they are the target's own choices, so they
            # may hit a stop. Extra KV beyond `out` is harmless: `cached` names it exactly.
            for t in draft.tokens[:n_acc]:
                if (reason := emit(req, out, t) or ("budget" if run.clock.line_done(t) else None)) is not None:
                    return reason
                run.ctx.append(t)

    def _draft(self, run: "Run") -> tuple[Draft, str]:
        """This step's draft and the drafter that made it: never while a healing constraint
        is active, never past max_tokens, and never more rows than the few-row kernel takes."""
        req, drafter = run.req, run.drafter
        room = req.max_tokens - len(run.out)
        if self.cost is not None and self.cost.max_rows:
            # Verify on the same quantized kernel as a one-token step (never the dense
            # prefill path), so every position computes what plain decoding computes.
            room = min(room, self.cost.max_rows - 1)
        if req.constraint is not None and req.constraint(run.out) is not None:
            return Draft([]), getattr(drafter, "last", drafter.name)
        # auto picks each sub-drafter's own length; it only needs the room left
        lang = req.draft_group or "text"
        k = room if isinstance(drafter, AutoDrafter) else min(self.draft_length.get((lang, drafter.name)), room)
        faults.hit("drafter")
        draft = drafter.propose(run.ctx, k) if k > 0 else Draft([])
        return draft, getattr(drafter, "last", drafter.name)

    def _record(self, run: "Run", draft: Draft, name: str, n_acc: int) -> None:
        """Count a verified draft and teach the adaptive draft length its acceptance."""
        if not draft.tokens:
            return
        stats = run.stats
        stats.drafted += len(draft.tokens)
        stats.accepted += n_acc
        by = stats.drafted_by.setdefault(name, [0, 0])
        by[0] += len(draft.tokens)
        by[1] += n_acc
        self.draft_length.update((run.req.draft_group or "text", name), len(draft.tokens), n_acc)


@dataclass
class Run:
    """One request's decoding state: what `_decode` and its steps read and extend."""

    req: GenerateRequest
    drafter: Drafter
    generator: torch.Generator | None
    cache: Any  # the KV cache taken from the prefix cache, holding exactly `cached`
    cached: list[int]  # the ids whose KV is in `cache`
    out: list[int]  # the answer so far
    stats: Stats
    clock: DecodeClock
    ctx: list[int]  # prompt + the emitted tokens: what drafters look at
