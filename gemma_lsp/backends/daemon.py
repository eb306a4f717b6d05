"""The shared engine daemon (`gemma-lsp engine`): one model in memory for every editor
window of this user on this machine, behind the OpenAI `/v1/completions` protocol on a
Unix socket, so that one client (backends/openai.py) serves it and any remote server.

  socket     0600 in a 0700 directory of the user's; a peer of another uid (SO_PEERCRED)
             is dropped before it can send anything
  engine     one, used by one request at a time (a lock); a request preempts a warm-up
             between its chunks; a client that closes its connection stops its request
             (the engine's stop event), queued or running
  sessions   each `gemma-lsp serve` holds one open `GET /gemma/session`; the daemon exits
             `idle_s` after the last one closes
  extension  a request may carry {"gemma": {drafter, suggestion, language, retrieval, warm}};
             `logit_bias` takes only +100 entries (an allow-list, what token healing sends)
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import torch

from .. import threads
from ..engine import Engine, GenerateRequest
from ..engine.deferral import check_cuts
from ..names import DRAFTERS
from .daemon_wire import Handler, PeerCheckedServer

log = logging.getLogger(__name__)

class Daemon:
    """The engine and its bookkeeping; `serve_forever` runs the socket server."""

    def __init__(self, engine: Engine, tokenizer: Any, model_name: str, path: Path, idle_s: float = 300.0) -> None:
        self.engine = engine
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.path = path
        self.idle_s = idle_s
        self.engine_lock = threading.Lock()
        self.tok_lock = threading.Lock()  # a fast tokenizer must not run on two threads at once
        self.warms: set[threading.Event] = set()  # stop events of warm-ups, running or waiting
        self.sessions = 0
        self.active = 0
        self.requests = 0
        self.cancelled = 0
        self.started = time.time()
        self.last_busy = time.monotonic()
        self.state_lock = threading.Lock()
        self.vocab = int(engine.model.config.get_text_config().vocab_size)
        self.server: PeerCheckedServer | None = None

    # --- lifetime -----------------------------------------------------------------------

    def bind(self) -> PeerCheckedServer:
        old = os.umask(0o177)  # the socket is born 0600: no window where others may connect
        try:
            if self.path.exists():
                self.path.unlink()  # a stale socket: the caller holds the lock, no daemon owns it
            self.server = PeerCheckedServer(str(self.path), Handler, self)
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        return self.server

    def serve_forever(self) -> None:
        assert self.server is not None
        threading.Thread(target=self._idle_watch, name="idle-watch", daemon=True).start()
        try:
            self.server.serve_forever(poll_interval=0.2)
        finally:
            self.server.server_close()
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass

    def _idle_watch(self) -> None:
        while True:
            time.sleep(0.5)
            with self.state_lock:
                idle = self.sessions == 0 and self.active == 0 and time.monotonic() - self.last_busy > self.idle_s
            if idle:
                log.info("no client for %.0f s: exiting", self.idle_s)
                assert self.server is not None
                self.server.shutdown()
                return

    def busy(self, delta: int, sessions: int = 0) -> None:
        with self.state_lock:
            self.active += delta
            self.sessions += sessions
            self.last_busy = time.monotonic()

    # --- requests ------------------------------------------------------------------------

    def request(self, body: dict[str, Any], stop: threading.Event) -> GenerateRequest:
        """Check a completion body and turn it into the engine's request (ValueError: a 400)."""
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (list, str)):
            prompt = prompt[0]  # OpenAI's batch form with one prompt
        if isinstance(prompt, str):
            with self.tok_lock:
                prompt = list(self.tokenizer.encode(prompt, add_special_tokens=False))
        if not (isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool)
                                                             and 0 <= t < self.vocab for t in prompt)):
            raise ValueError(f"prompt must be a non-empty string or list of token ids in [0, {self.vocab})")
        ext = body.get("gemma") or {}
        if not isinstance(ext, dict):
            raise ValueError("gemma must be an object")
        max_tokens = _int(body.get("max_tokens", 16), "max_tokens", 1, 4096)
        stop_ids = body.get("stop_token_ids") or []
        if not (isinstance(stop_ids, list) and all(isinstance(t, int) for t in stop_ids)):
            raise ValueError("stop_token_ids must be a list of token ids")
        if str(ext.get("drafter") or "auto") not in DRAFTERS:
            raise ValueError(f"gemma.drafter must be one of {', '.join(DRAFTERS)}")
        cuts = ext.get("cuts") or []
        if not isinstance(cuts, list):
            raise ValueError("gemma.cuts must be a list of token offsets")
        check_cuts(cuts, len(prompt))
        suggestion = ext.get("suggestion")
        if suggestion is not None and not (isinstance(suggestion, list) and all(isinstance(t, int) for t in suggestion)):
            raise ValueError("gemma.suggestion must be a list of token ids")
        return GenerateRequest(
            prompt=prompt, max_tokens=max_tokens, stop_ids=frozenset(stop_ids) | self._eos(),
            drafter=str(ext.get("drafter") or "auto"), suggestion=suggestion,
            temperature=_num(body.get("temperature", 0.0), "temperature", 0.0, 10.0),
            top_p=_num(body.get("top_p", 1.0), "top_p", 1e-6, 1.0),
            seed=body.get("seed") if isinstance(body.get("seed"), int) else None,
            stop_event=stop, constraint=self._allow_list(body.get("logit_bias")),
            draft_group=str(ext.get("language") or ""), retrieval=bool(ext.get("retrieval", True)),
            cuts=tuple(cuts),
        )

    def _eos(self) -> frozenset[int]:
        eos = getattr(self.tokenizer, "eos_token_id", None)
        return frozenset() if eos is None else frozenset([int(eos)])

    def _allow_list(self, bias: Any):
        if not bias:
            return None
        if not isinstance(bias, dict):
            raise ValueError("logit_bias must be an object of token id -> bias")
        try:
            ids = [int(k) for k in bias]
        except ValueError:
            raise ValueError("logit_bias keys must be token ids") from None
        if any(not isinstance(v, (int, float)) or v < 100 for v in bias.values()) or not all(0 <= i < self.vocab for i in ids):
            raise ValueError("this engine takes logit_bias only as an allow-list: token ids in range with bias 100")
        mask = torch.zeros(self.vocab, dtype=torch.bool)
        mask[ids] = True
        return lambda out: mask

    def run(self, req: GenerateRequest, warm: bool):
        """One engine call, holding the engine; a request first stops every warm-up, the
        running one and those still waiting for the engine."""
        with self.state_lock:
            if warm:
                self.warms.add(req.stop_event)
            else:
                for ev in self.warms:
                    ev.set()
        try:
            with self.engine_lock:
                if req.stop_event is not None and req.stop_event.is_set():
                    return None  # its client left (or a request preempted it) while it waited
                threads.share()  # this engine's share of the cores, if other engines run here
                if warm:
                    return self.engine.warm(req.prompt, req.stop_event, req.cuts)
                self.requests += 1
                return self.engine.generate(req)
        finally:
            with self.state_lock:
                self.warms.discard(req.stop_event)

    def decode(self, ids: list[int]) -> str:
        with self.tok_lock:
            return self.tokenizer.decode(ids, skip_special_tokens=True)

    def stats(self) -> dict[str, Any]:
        rss = 0
        try:
            rss = int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") >> 20
        except (OSError, ValueError, IndexError):
            pass
        return {"pid": os.getpid(), "model": self.model_name, "sessions": self.sessions, "requests": self.requests,
                "cancelled": self.cancelled, "uptime_s": round(time.time() - self.started, 1), "rss_mb": rss}


def _int(v: Any, name: str, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ValueError(f"{name} must be an integer in [{lo}, {hi}]")
    return v


def _num(v: Any, name: str, lo: float, hi: float) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
        raise ValueError(f"{name} must be a number in [{lo}, {hi}]")
    return float(v)
