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

import json
import logging
import os
import select
import socket
import socketserver
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import torch

from .. import threads
from ..engine import Engine, GenerateRequest, Stats
from ..names import DRAFTERS

log = logging.getLogger(__name__)

MAX_BODY = 64 << 20  # a prompt of token ids is far below this


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
        self.server: _Server | None = None

    # --- lifetime -----------------------------------------------------------------------

    def bind(self) -> "_Server":
        old = os.umask(0o177)  # the socket is born 0600: no window where others may connect
        try:
            if self.path.exists():
                self.path.unlink()  # a stale socket: the caller holds the lock, no daemon owns it
            self.server = _Server(str(self.path), _Handler, self)
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
            language=str(ext.get("language") or ""), retrieval=bool(ext.get("retrieval", True)),
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
                    return self.engine.warm(req.prompt, req.stop_event)
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


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, path: str, handler, daemon: Daemon) -> None:
        self.daemon = daemon
        super().__init__(path, handler)

    def verify_request(self, request, client_address) -> bool:
        """Only this user's processes: the kernel says who is at the other end."""
        try:
            _pid, uid, _gid = struct.unpack("3i", request.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                                      struct.calcsize("3i")))
        except OSError:
            return False
        if uid != os.getuid():
            log.warning("refused a connection from uid %d", uid)
            return False
        return True


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # never request lines in logs
        pass

    @property
    def daemon(self) -> Daemon:
        return self.server.daemon

    # --- routes ---------------------------------------------------------------------------

    def do_GET(self) -> None:
        if self.path == "/v1/models":
            self._json(200, {"object": "list", "data": [{"id": self.daemon.model_name, "object": "model",
                                                         "owned_by": "gemma-lsp"}]})
        elif self.path == "/gemma/stats":
            self._json(200, self.daemon.stats())
        elif self.path == "/gemma/session":
            self._session()
        else:
            self._json(404, {"error": {"message": f"no route {self.path}"}})

    def do_POST(self) -> None:
        try:
            body = self._body()
        except ValueError as e:
            self._json(400, {"error": {"message": str(e)}})
            return
        if self.path == "/tokenize":
            text = body.get("prompt")
            if not isinstance(text, str):
                self._json(400, {"error": {"message": "prompt must be a string"}})
                return
            with self.daemon.tok_lock:
                ids = list(self.daemon.tokenizer.encode(text, add_special_tokens=False))
            self._json(200, {"tokens": ids, "count": len(ids)})
        elif self.path == "/v1/completions":
            self._complete(body)
        else:
            self._json(404, {"error": {"message": f"no route {self.path}"}})

    # --- completions -------------------------------------------------------------------

    def _complete(self, body: dict[str, Any]) -> None:
        stop = threading.Event()
        try:
            req = self.daemon.request(body, stop)
        except ValueError as e:
            self._json(400, {"error": {"message": str(e)}})
            return
        warm = bool((body.get("gemma") or {}).get("warm"))
        stream = bool(body.get("stream")) and not warm
        self.daemon.busy(+1)
        watcher = threading.Thread(target=self._watch, args=(stop,), daemon=True)
        watcher.start()
        try:
            if stream:
                self._stream(req)
            else:
                res = self.daemon.run(req, warm)
                if isinstance(res, Stats) or res is None:
                    self._json(200, {"choices": [{"index": 0, "text": "", "token_ids": [], "finish_reason": "length"}]})
                else:
                    self._json(200, {"choices": [{"index": 0, "text": self.daemon.decode(res.tokens), "token_ids": res.tokens,
                                                  "finish_reason": _finish(res.stop_reason)}],
                                     "usage": _usage(res.stats)})
        except Exception as e:  # one request's failure: answered, the daemon lives on
            log.exception("completion failed")
            if stream:
                self._try_event({"error": {"message": f"engine error: {e}"}})
            else:
                self._json(500, {"error": {"message": f"engine error: {e}"}})
        finally:
            stop.set()  # ends the watcher
            self.daemon.busy(-1)

    def _stream(self, req: GenerateRequest) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        sent = [0]
        user_stop = req.stop_after

        def send_new(out) -> bool:  # the engine calls this after every emitted token
            new = list(out[sent[0]:])
            sent[0] = len(out)
            if new and not self._try_event({"choices": [{"index": 0, "text": self.daemon.decode(new), "token_ids": new,
                                                         "finish_reason": None}]}):
                req.stop_event.set()  # the client is gone: the engine stops at its next check, "cancelled"
                return False
            return user_stop(out) if user_stop is not None else False

        req.stop_after = send_new
        res = self.daemon.run(req, warm=False)
        if res is None or res.stop_reason == "cancelled":
            self.daemon.cancelled += 1
            return
        self._try_event({"choices": [{"index": 0, "text": "", "token_ids": [], "finish_reason": _finish(res.stop_reason)}],
                         "usage": _usage(res.stats), "gemma": res.stats.as_dict()})
        self._try_raw(b"data: [DONE]\n\n")

    def _watch(self, stop: threading.Event) -> None:
        """Set `stop` when the client closes its end (it sends nothing after its body)."""
        sock = self.connection
        while not stop.is_set():
            try:
                readable, _, _ = select.select([sock], [], [], 0.05)
                if readable and not sock.recv(1, socket.MSG_PEEK):
                    stop.set()
                    return
            except (OSError, ValueError):
                stop.set()
                return

    def _session(self) -> None:
        """Held open by each `gemma-lsp serve`; its end (even a killed process's) counts it out."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        self._try_raw(b"data: {}\n\n")
        self.daemon.busy(0, +1)
        try:
            while self.connection.recv(64):
                pass
        except OSError:
            pass
        finally:
            self.daemon.busy(0, -1)

    # --- plumbing ------------------------------------------------------------------------

    def _body(self) -> dict[str, Any]:
        try:
            n = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            raise ValueError("bad Content-Length") from None
        if not 0 <= n <= MAX_BODY:
            raise ValueError(f"body must be at most {MAX_BODY} bytes")
        try:
            body = json.loads(self.rfile.read(n) or b"{}")
        except ValueError:
            raise ValueError("body is not JSON") from None
        if not isinstance(body, dict):
            raise ValueError("body must be a JSON object")
        return body

    def _json(self, status: int, obj: Any) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _try_event(self, obj: Any) -> bool:
        return self._try_raw(b"data: " + json.dumps(obj).encode() + b"\n\n")

    def _try_raw(self, data: bytes) -> bool:
        try:
            self.wfile.write(data)
            self.wfile.flush()
            return True
        except OSError:
            return False


def _finish(reason: str) -> str:
    return "length" if reason == "max_tokens" else "stop"


def _usage(s: Stats) -> dict[str, Any]:
    return {"prompt_tokens": s.prompt_tokens, "completion_tokens": s.tokens,
            "total_tokens": s.prompt_tokens + s.tokens, "prompt_tokens_details": {"cached_tokens": s.reused_tokens}}


def _int(v: Any, name: str, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ValueError(f"{name} must be an integer in [{lo}, {hi}]")
    return v


def _num(v: Any, name: str, lo: float, hi: float) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
        raise ValueError(f"{name} must be a number in [{lo}, {hi}]")
    return float(v)
