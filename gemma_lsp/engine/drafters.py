"""Drafters propose the next tokens; the target model decides.

A drafter never affects *what* is generated, only how many target forwards it
takes: every proposal is verified by the target (see speculative.py).
`ctx` is always the full token sequence so far: prompt + generated, ending with
the token the target chose last (not yet fed to the model).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch

from .cache import PrefixCache, common_prefix, truncate
from .costs import CostCurve


@dataclass
class Draft:
    tokens: list[int]
    # q(x) for each proposed position, shape [len(tokens), vocab]; None means one-hot
    # (n-gram and suggestion drafts are deterministic: q = 1 on the proposed token).
    probs: torch.Tensor | None = None


class Drafter(Protocol):
    name: str

    def propose(self, ctx: Sequence[int], k: int) -> Draft: ...

    def finish(self) -> None: ...


class NoDrafter:
    name = "none"

    def propose(self, ctx: Sequence[int], k: int) -> Draft:
        return Draft([])

    def finish(self) -> None:
        pass


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


class AutoDrafter:
    """Ask each drafter in order (cheapest first); the first with a proposal drafts this step.

    Each sub-drafter drafts with its own adaptive length `k_for(name)`, capped by `k` (the room left).
    """

    name = "auto"

    def __init__(self, drafters: Sequence[Drafter], k_for: Callable[[str], int]) -> None:
        self.drafters = list(drafters)
        self.k_for = k_for
        self.last = "none"

    def propose(self, ctx: Sequence[int], k: int) -> Draft:
        for d in self.drafters:
            n = min(k, self.k_for(d.name))
            if n <= 0:
                continue
            draft = d.propose(ctx, n)
            if draft.tokens:
                self.last = d.name
                return draft
        self.last = "none"
        return Draft([])

    def finish(self) -> None:
        for d in self.drafters:
            d.finish()


@dataclass
class DraftLength:
    """Per-(language, drafter) draft length from measured acceptance.

    All k accepted -> k += 2 (code earns long drafts); otherwise k shrinks to what was
    accepted + 1 (at most k - 1), within [k_min, k_max]. `acceptance` is an exponential
    moving average of accepted/proposed.

    With a measured cost curve (costs.py), k is further capped at the length that
    maximizes expected tokens per millisecond; when no draft pays (best length 0), the
    drafter is skipped and only probed with one token now and then, so its acceptance can
    recover. A failed probe costs cost(2)/cost(1) − 1 of a step (13 % on the Intel machine's
    curve, 19–39 % on the AMD EPYC's), so a probe every n skipped steps costs that / n of
    plain decoding's time: n (`probe_interval`) keeps it within `probe_loss`, and n doubles
    after each failed probe in a row (up to 16×), so where a drafter never pays its probes
    cost next to nothing. A fixed n = 4 ran at 0.91 of plain on the steep AMD curve, where no
    draft ever pays. A drafter not measured yet is assumed to be right half the time
    (`prior`): its first proposal is as long as that pays, not k_init.
    """

    k_init: int = 8
    k_min: int = 1
    k_max: int = 16
    decay: float = 0.8
    k: dict[tuple[str, str], int] = field(default_factory=dict)
    acceptance: dict[tuple[str, str], float] = field(default_factory=dict)
    cost: CostCurve | None = None
    probe_every: int = 4  # the shortest interval (measured on free generation: 8 → 4 saved 2–7 % of the forwards)
    probe_loss: float = 0.02  # the most a skipped drafter's failed probes may cost, against plain decoding
    prior: float = 0.5  # acceptance assumed for a drafter not yet measured (with a cost curve)
    skipped: dict[tuple[str, str], int] = field(default_factory=dict)
    failed_probes: dict[tuple[str, str], int] = field(default_factory=dict)  # in a row, while skipped

    def base(self, key: tuple[str, str]) -> int:
        """The length earned from acceptance so far, before the cost cap."""
        # The suggestion is the model's own earlier output: bet on all of it from the start.
        return self.k.get(key, self.k_max if key[1] == "suggestion" else self.k_init)

    def capped(self, key: tuple[str, str]) -> int:
        """base(), capped at the length that pays most on the cost curve (0: none pays)."""
        k = self.base(key)
        if self.cost is None or (key[1] == "suggestion" and key not in self.acceptance):
            return k
        # Not measured yet: assume `prior`, so a first proposal costs what an average one pays.
        return self.cost.best_k(self.acceptance.get(key, self.prior), k)

    def get(self, key: tuple[str, str]) -> int:
        best = self.capped(key)
        if best > 0:
            return best
        self.skipped[key] = self.skipped.get(key, 0) + 1
        if self.skipped[key] < self.probe_interval() << min(self.failed_probes.get(key, 0), 4):
            return 0
        self.skipped[key] = 0
        return 1

    def probe_interval(self) -> int:
        """Skipped steps per one-token probe: (cost(2)/cost(1) − 1) / n ≤ probe_loss."""
        if self.cost is None:
            return self.probe_every
        return max(self.probe_every, math.ceil((self.cost(2) / self.cost(1) - 1) / self.probe_loss - 1e-9))

    def update(self, key: tuple[str, str], proposed: int, accepted: int) -> None:
        if proposed <= 0:
            return
        k = self.capped(key)
        if k <= 0:  # a probe: back off while they fail
            self.failed_probes[key] = self.failed_probes.get(key, 0) + 1 if accepted == 0 else 0
        self.k[key] = min(self.k_max, k + 2) if accepted == proposed else max(self.k_min, min(k - 1, accepted + 1))
        rate = accepted / proposed
        self.acceptance[key] = self.decay * self.acceptance.get(key, rate) + (1 - self.decay) * rate
