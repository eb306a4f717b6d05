"""Drafters that run a model: a small draft model with its own prefix cache, and Gemma 4's
MTP assistant, which drafts from the target's own hidden state and KV."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..cache import PrefixCache, common_prefix, truncate
from .base import AutoDrafter, Draft, Drafter


class ModelDrafter:
    """A small model with the same tokenizer drafts greedily (or by sampling), k forwards per proposal.

    It keeps its own KV state and its own prefix cache beside the target's.
    """

    name = "model"

    def __init__(
        self,
        model: torch.nn.Module,
        prefix_cache: PrefixCache,
        temperature: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> None:
        self.model = model
        self.prefix_cache = prefix_cache
        self.temperature = temperature
        self.generator = generator
        self.device = next(model.parameters()).device
        self._cache = None
        self._ids: list[int] = []  # tokens whose KV is in self._cache
        self.reused_tokens = 0

    def _sync(self, ctx: Sequence[int]) -> torch.Tensor:
        """Bring the draft KV to ctx[:-1] and return the draft logits after ctx."""
        if self._cache is None:
            self._cache, n = self.prefix_cache.take(ctx[:-1])
            self._ids = list(ctx[:n])
            self.reused_tokens = n
        n = min(common_prefix(self._ids, ctx), len(ctx) - 1)
        if len(self._ids) > n:
            truncate(self._cache, n)
            self._ids = self._ids[:n]
        new = list(ctx[n:])
        logits = self._forward(new)
        self._ids.extend(new)
        return logits

    def _forward(self, ids: list[int]) -> torch.Tensor:
        x = torch.tensor([ids], device=self.device)
        out = self.model(input_ids=x, cache=self._cache, use_cache=True, logits_to_keep=1)
        return out.logits[0, -1].float()

    def propose(self, ctx: Sequence[int], k: int) -> Draft:
        if k <= 0:
            return Draft([])
        logits = self._sync(ctx)
        tokens: list[int] = []
        probs: list[torch.Tensor] = []
        for i in range(k):
            if self.temperature > 0:
                q = torch.softmax(logits / self.temperature, -1)
                t = int(torch.multinomial(q, 1, generator=self.generator))
                probs.append(q)
            else:
                t = int(torch.argmax(logits))
            tokens.append(t)
            if i + 1 < k:
                logits = self._forward([t])
                self._ids.append(t)
        return Draft(tokens, torch.stack(probs) if probs else None)

    def finish(self) -> None:
        if self._cache is not None and self._ids:
            self.prefix_cache.put(self._ids, self._cache)
        self._cache, self._ids = None, []


class AssistantDrafter:
    """Gemma 4's MTP assistant: a small head that drafts from the *target's* own state.

    Each step it reads the target's last hidden state at the last verified position
    and the target's shared KV (the keys/values of the target's KV-producing layers),
    so it needs no prefill and no cache of its own. The engine feeds it after every
    target forward through `observe` (the same inputs transformers' assisted decoding
    gives it; see Gemma4AssistantCandidateGenerator).
    """

    name = "gemma4-assistant"

    def __init__(self, assistant: torch.nn.Module, embed: torch.nn.Module) -> None:
        self.assistant = assistant
        self.embed = embed  # the target's (scaled) input embedding
        self.device = next(assistant.parameters()).device
        self._hidden: torch.Tensor | None = None  # [rows, H]: positions end-rows+1 .. end
        self._end = -1
        self._kv: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def observe(self, start: int, n: int, hidden: torch.Tensor, shared_kv) -> None:
        """The target just ran positions start..start+n-1 (`hidden` may hold only the last rows)."""
        self._hidden, self._end = hidden, start + n - 1
        self._kv = dict(shared_kv) if shared_kv is not None else {}

    def propose(self, ctx: Sequence[int], k: int) -> Draft:
        pos = len(ctx) - 1  # position of the target's newest token (not yet fed)
        if k <= 0 or self._hidden is None or not self._kv:
            return Draft([])
        row = (pos - 1) - (self._end - self._hidden.shape[0] + 1)  # the state that predicted ctx[-1]
        if not 0 <= row < self._hidden.shape[0]:
            return Draft([])
        h = self._hidden[row : row + 1].unsqueeze(0).to(self.device)
        kv = {t: (kk[:, :, :pos, :], vv[:, :, :pos, :]) for t, (kk, vv) in self._kv.items()}
        position = torch.tensor([[pos]], device=self.device)  # constant across the draft, as in transformers
        tok, tokens = ctx[-1], []
        for _ in range(k):
            e = self.embed(torch.tensor([[tok]], device=self.embed.weight.device)).to(self.device)
            out = self.assistant(inputs_embeds=torch.cat([e, h.to(e.dtype)], -1), position_ids=position,
                                 shared_kv_states=kv)
            tok = int(torch.argmax(out.logits[0, -1]))
            h = out.last_hidden_state
            tokens.append(tok)
        return Draft(tokens)

    def finish(self) -> None:
        self._hidden, self._kv = None, {}


def draft_reuse(drafter: Drafter) -> int:
    """Prompt tokens the draft models of `drafter` (itself, or auto's) found in their own cache."""
    ds = drafter.drafters if isinstance(drafter, AutoDrafter) else [drafter]
    return sum(d.reused_tokens for d in ds if isinstance(d, ModelDrafter))
