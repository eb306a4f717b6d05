"""The `openai` backend: any server with OpenAI's `/v1/completions` (vLLM, SGLang,
llama-server, llama-cpp-python's server, our own engine daemon).

What crosses the wire and why:
  prompt     token ids where the server takes them (vLLM, SGLang, llama-server, the daemon),
             else the same ids as text (special tokens spelled out, re-tokenized there);
             learned from the first refusal, once per server.
  stream     always: each token is checked here against the request's stop rules
             (`emit`) and time policy (`DecodeClock`), and a stop closes the connection,
             which is how every such server is told to stop decoding.
  healing    optimistic: the first tokens stream unconstrained; one that breaks the
             healing constraint is not emitted, and that position is asked again, one
             token, with `logit_bias` +100 on the allowed ids; so is the position where the
             server ends the stream before the healed text is spelled. Under greedy that is the
             masked argmax (the unconstrained argmax, when allowed, is also the masked
             one); under sampling, reject-then-resample is sampling from p restricted to
             the allowed set. So the rule is the in-process one, for any server.
  failures   a clear BackendError; after one, requests fail fast for a back-off that
             doubles (1 s .. 30 s) until the server answers again: never a retry storm.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..engine import GenerateRequest, GenerateResult, Stats
from ..engine.request import Backend, DecodeClock, emit
from ..errors import BackendError
from .http import Cancelled, Http, HttpStatusError

log = logging.getLogger(__name__)

BIAS = 100.0  # OpenAI's largest logit bias: far above any logit gap of a real model
BACKOFF_S = (1.0, 30.0)  # first and longest wait after a failure
PROBE = "def f(x):\n    return x  # é ✓\n"  # what the tokenizer check compares


class OpenAIBackend(Backend):
    """One server; thread-compatible like the engine (the scheduler calls it from one thread)."""

    def __init__(self, http: Http, tokenizer: Any, model: str | None = None, label: str = "",
                 extensions: bool = False) -> None:
        self.http = http
        self.tokenizer = tokenizer
        self.model = model
        self.name = label or http.base
        self.extensions = extensions  # the daemon's own fields (drafter, suggestion, ...)
        self.ids_ok: bool | None = None  # does the server take token-id prompts? None: not known yet
        self._ready = False
        self._down_until = 0.0
        self._wait = 0.0
        self.last_error: str | None = None

    # --- connecting -----------------------------------------------------------------------

    def connect(self) -> None:
        """Find the model name and check that the server tokenizes like we do."""
        models = self.http.get("/models", timeout=60.0)  # a one-slot server answers it after its current request
        served = [m.get("id") for m in (models.get("data") or []) if isinstance(m, dict)]
        if self.model is None:
            if not served:
                raise BackendError(f"{self.http.base} lists no model at /models; set backendModel")
            self.model = served[0]
        elif served and self.model not in served:
            raise BackendError(f"{self.http.base} does not serve model {self.model!r} (it serves: {', '.join(map(str, served))}); "
                               "fix backendModel")
        self._check_tokenizer()
        self._ready = True
        log.info("backend %s: model %s, token-id prompts %s", self.name, self.model,
                 {None: "not tried yet", True: "yes", False: "no (text)"}[self.ids_ok])

    def _check_tokenizer(self) -> None:
        ours = list(self.tokenizer.encode(PROBE, add_special_tokens=False))
        theirs = None
        for path, body in (("~/tokenize", {"model": self.model, "prompt": PROBE, "add_special_tokens": False}),
                           ("~/extras/tokenize", {"input": PROBE, "model": self.model})):
            try:
                got = self.http.post(path, body, timeout=10)
            except HttpStatusError:
                continue  # this server has no such endpoint
            theirs = got.get("tokens") if isinstance(got, dict) else None
            if theirs is not None:
                break
        if theirs is None:
            log.warning("backend %s has no tokenize endpoint: cannot check that its tokenizer is ours", self.name)
            return
        theirs = [t for t in theirs if t not in (self.tokenizer.bos_token_id,)]
        if theirs != ours:
            raise BackendError(f"{self.http.base} tokenizes differently from the local tokenizer of model setting "
                               f"{self.tokenizer.name_or_path!r}: the server must serve the same model family")

    # --- the Backend interface -----------------------------------------------------------

    def generate(self, req: GenerateRequest) -> GenerateResult:
        if not req.prompt:
            raise ValueError("empty prompt")
        self._gate()
        try:
            if not self._ready:
                self.connect()
            res = self._generate(req)
        except BackendError as e:
            self._failed(e)
            raise
        self._ok()
        return res

    def warm(self, prompt: list[int], stop: threading.Event | None = None, cuts: Sequence[int] = ()) -> Stats:
        """A one-token request: servers with prefix caching (vLLM, SGLang, llama-server's
        `cache_prompt`, the daemon) keep the prompt's KV for the request that follows. Only
        the daemon reads `cuts`; other servers get the whole prompt."""
        stats = Stats(prompt_tokens=len(prompt), drafter="remote")
        if not prompt or time.monotonic() < self._down_until:
            return stats
        t0 = time.perf_counter()
        body = self._body(prompt, 1, GenerateRequest(prompt=prompt), stream=False)
        if self.extensions:
            body["gemma"] = {"warm": True, "cuts": list(cuts)}
        try:
            if not self._ready:
                self.connect()
            self._send(self.http.post, body, prompt, stop)
        except (BackendError, Cancelled) as e:
            log.debug("warm-up on %s ended: %s", self.name, e)
            return stats
        stats.prefill_ms = (time.perf_counter() - t0) * 1e3
        stats.tokens = len(prompt)
        return stats

    # --- one request -----------------------------------------------------------------------

    def _generate(self, req: GenerateRequest) -> GenerateResult:
        stats = Stats(prompt_tokens=len(req.prompt), drafter="remote")
        out: list[int] = []
        t0 = time.perf_counter()
        timing = _Timing(t0)
        reason: str | None = None
        biased = False  # ask the next position with the healing mask as logit bias
        while reason is None:
            mask = req.constraint(out) if req.constraint is not None else None
            left = req.max_tokens - len(out)
            body = self._body(req.prompt + out, 1 if biased else left, req, stream=True)
            if biased and mask is not None:
                body["logit_bias"] = {str(i): BIAS for i in mask.nonzero().flatten().tolist()}
            try:
                reason, got_any, broke = self._read(body, req, out, timing, stats)
            except Cancelled:
                reason = "cancelled"
                break
            if broke:
                if biased:
                    raise BackendError(f"{self.name} ignored logit_bias: cannot keep the token-healing rule")
                biased = True
                continue
            if reason is None:
                reason, biased = _after_stream(req, out, got_any, biased)
                if reason is None:
                    continue
            if req.stop_event is not None and req.stop_event.is_set():
                reason = "cancelled"
        t1 = time.perf_counter()
        stats.prefill_ms = stats.prefill_ms or (t1 - t0) * 1e3
        stats.decode_ms = (t1 - t0) * 1e3 - stats.prefill_ms
        stats.tokens = len(out)
        return GenerateResult(out, reason, stats)

    def _read(self, body: dict[str, Any], req: GenerateRequest, out: list[int], timing: "_Timing",
              stats: Stats) -> tuple[str | None, bool, bool]:
        """Ask once and emit the streamed tokens under the engine's stop rules: (the stop
        reason or None, whether any token came, whether one broke the healing rule)."""
        got_any = False
        for ids in self._tokens(body, req):
            now = time.perf_counter()
            if timing.clock is None:
                timing.clock = DecodeClock(req, now)  # the prompt pass ended: the budget starts
                stats.prefill_ms = (now - timing.t0) * 1e3
                timing.last = now  # the gap to the next token predicts a step; the prompt pass does not
            step, timing.last = now - timing.last, now
            for tok in ids:
                mask = req.constraint(out) if req.constraint is not None else None
                if mask is not None and not (tok < mask.shape[0] and bool(mask[tok])):
                    return None, got_any, True  # breaks the healing rule: ask this position again, biased
                got_any = True
                reason = emit(req, out, tok) or timing.clock.stopped(tok, step)
                if reason is not None:
                    return reason, got_any, False
        return None, got_any, False

    def _tokens(self, body: dict[str, Any], req: GenerateRequest):
        """The ids of each streamed chunk: the server's own ids where it sends them
        (vLLM's `token_ids`, the daemon), else our tokenizer's ids of the chunk's text."""
        prompt = body["prompt"]
        for event in self._send(self.http.stream, body, prompt, req.stop_event):
            for choice in event.get("choices") or []:
                ids = choice.get("token_ids")
                if ids is None:
                    text = choice.get("text") or ""
                    ids = list(self.tokenizer.encode(text, add_special_tokens=False)) if text else []
                if ids:
                    yield [int(i) for i in ids]

    def _body(self, ids: list[int], max_tokens: int, req: GenerateRequest, stream: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model, "prompt": ids, "max_tokens": max(1, max_tokens), "stream": stream,
            "temperature": req.temperature, "top_p": req.top_p,
            "repeat_penalty": 1.0, "stop_token_ids": sorted(req.stop_ids), "return_token_ids": True,
        }
        if req.seed is not None:
            body["seed"] = req.seed
        if self.extensions:
            body["gemma"] = {"drafter": req.drafter, "suggestion": req.suggestion, "language": req.draft_group,
                             "retrieval": req.retrieval, "cuts": list(req.cuts)}
        return body

    def _send(self, call, body: dict[str, Any], ids: list[int], stop):
        """`call("/completions", body, stop)` with token ids, or with the same ids as text
        once the server has refused ids (learned at its first refusal)."""
        if self.ids_ok is not False:
            try:
                result = call("/completions", body, stop)
                self.ids_ok = True
                return result
            except HttpStatusError as e:
                if not _refused_ids(e):
                    raise
                self.ids_ok = False
                log.info("backend %s takes no token-id prompts: sending text", self.name)
        return call("/completions", {**body, "prompt": self._text(ids)}, stop)

    def _text(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    # --- back-off ------------------------------------------------------------------------

    def _gate(self) -> None:
        if time.monotonic() < self._down_until:
            raise BackendError(self.last_error or f"{self.name} is down")

    def _failed(self, e: BackendError) -> None:
        self._wait = min(BACKOFF_S[1], self._wait * 2 if self._wait else BACKOFF_S[0])
        self._down_until = time.monotonic() + self._wait
        self._ready = False  # find the model and check the tokenizer again when it is back
        self.last_error = str(e)

    def _ok(self) -> None:
        if self.last_error is not None:
            log.info("backend %s answers again", self.name)
        self._wait, self._down_until, self.last_error = 0.0, 0.0, None


def _refused_ids(e: HttpStatusError) -> bool:
    """A refusal about the prompt's type: the server wants text (llama-cpp-python's server
    answers a validation error with 500, others with 400 or 422)."""
    return e.status in (400, 422, 500) and "prompt" in e.body and "str" in e.body


def api_headers(env_name: str | None) -> dict[str, str]:
    """The Authorization header from the environment variable named in settings (the key
    itself is never in settings, logs or stats)."""
    if not env_name:
        return {}
    key = os.environ.get(env_name)
    if not key:
        raise BackendError(f"apiKeyEnv names {env_name}, but that environment variable is not set for gemma-lsp")
    return {"Authorization": f"Bearer {key}"}


@dataclass
class _Timing:
    """When the request started, and once tokens stream, its DecodeClock and the last token's time."""

    t0: float
    clock: DecodeClock | None = None
    last: float = 0.0


def _after_stream(req: GenerateRequest, out: list[int], got_any: bool, biased: bool) -> tuple[str | None, bool]:
    """The server ended a stream with no stop of ours: (the stop reason, or None to ask again;
    whether that ask is biased)."""
    if biased:
        # nothing came: the healed position has no token (a stop); else it is done and the
        # rest streams unconstrained
        return ("stop", True) if not got_any else (None, False)
    if len(out) < req.max_tokens and req.constraint is not None and req.constraint(out) is not None:
        # The server stopped (a stop token it does not stream) before the healed text was
        # spelled; in-process the healing mask allows no stop there. Ask the position again,
        # biased: a cold llama.cpp wrote 23 of a line's 24 spaces and stopped, an empty
        # answer where the engine writes the line.
        return None, True
    return ("max_tokens" if len(out) >= req.max_tokens else "stop"), False  # a stop token or its max_tokens
