"""llama.cpp (through llama-cpp-python) behind our Engine's interface, for side-by-side runs.

It takes the very GenerateRequest our pipeline builds (prompt ids, stop and newline
ids, max tokens, the token-healing constraint, the block-end check) and returns a
GenerateResult, so both engines see the same prompts, stops and post-processing.
llama.cpp keeps its own prompt cache: `generate` reuses the longest common prefix of
the previous call's tokens, which is what a keystroke costs there.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from gemma_lsp.engine.cache import common_prefix
from gemma_lsp.engine.request import Backend, DecodeClock, GenerateRequest, GenerateResult, Stats, emit


class _NoCache:
    def __init__(self, on_clear=None) -> None:
        self._on_clear = on_clear

    def clear(self) -> None:
        if self._on_clear:
            self._on_clear()


class LlamaCppEngine(Backend):
    """A `backends.Backend` (generate, warm) over llama.cpp's own engine in this process."""

    name = "llama.cpp"

    def __init__(self, gguf: Path, n_ctx: int = 4096, threads: int | None = None) -> None:
        try:
            from llama_cpp import Llama
        except ImportError:
            raise SystemExit("bench vs-llama-cpp needs llama-cpp-python: pip install 'gemma-lsp[llama-cpp]' "
                             "(it builds llama.cpp from source, ~5 min)") from None
        threads = threads or os.cpu_count() or 1
        self.llm = Llama(str(gguf), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads, verbose=False)
        self.threads = threads
        self.cache = _NoCache(self.reset)  # the bench clears caches between cold tasks
        self.draft_cache = _NoCache()

    def reset(self) -> None:
        self.llm.reset()

    def held(self) -> list[int]:
        """The tokens whose KV llama.cpp holds (its `input_ids` up to `n_tokens`)."""
        return self.llm.input_ids[: self.llm.n_tokens].tolist()

    def warm(self, prompt: list[int], stop=None, cuts=()) -> Stats:
        """Evaluate `prompt` past the prefix llama.cpp already holds, as `generate` would
        (whole: llama.cpp's engine has no deferral, `cuts` is ignored)."""
        stats = Stats(prompt_tokens=len(prompt), drafter="none")
        n = min(common_prefix(self.held(), prompt), max(len(prompt) - 1, 0))
        t0 = time.perf_counter()
        self.llm.n_tokens = n
        self.llm.eval(prompt[n:])
        stats.reused_tokens, stats.tokens = n, len(prompt) - n
        stats.prefill_ms = (time.perf_counter() - t0) * 1e3
        return stats

    def generate(self, req: GenerateRequest) -> GenerateResult:
        """Greedy only (temperature 0): the comparison is about speed at equal output rules."""
        llm = self.llm
        stats = Stats(prompt_tokens=len(req.prompt), drafter="none")
        prev = self.held()  # what llama.cpp holds before this call
        stats.reused_tokens = common_prefix(prev, req.prompt)
        out: list[int] = []
        processors = None
        if req.constraint is not None:
            constraint = req.constraint

            def healed(_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
                mask = constraint(out)
                if mask is None:
                    return scores
                m = mask.numpy()
                allowed = np.zeros(scores.shape[0], dtype=bool)
                allowed[: min(len(m), scores.shape[0])] = m[: scores.shape[0]]
                return np.where(allowed, scores, -np.inf).astype(scores.dtype)

            processors = [healed]

        t0 = time.perf_counter()
        t_first = None
        clock: DecodeClock | None = None
        reason = "max_tokens"
        gen = llm.generate(req.prompt, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0,
                           logits_processor=processors)
        for tok in gen:
            if t_first is None:
                t_first = time.perf_counter()
                clock = DecodeClock(req, t_first)  # the same time policy as ours
            if tok == llm.token_eos():
                reason = "stop"
                break
            # The stop rules and time policy every backend applies (engine/request.py).
            if (why := emit(req, out, int(tok)) or clock.stopped(int(tok), 0.0)) is not None:
                reason = why
                break
        gen.close()
        t1 = time.perf_counter()
        t_first = t_first or t1
        stats.prefill_ms = (t_first - t0) * 1e3  # new prompt tokens + the first token
        stats.decode_ms = (t1 - t_first) * 1e3
        stats.tokens = len(out)
        stats.target_forwards = 1 + len(out)
        return GenerateResult(out, reason, stats)

