"""The daemon's wire: HTTP/1.1 on a Unix socket whose peers are checked by uid, and the
routes of the OpenAI `/v1/completions` protocol (streamed or not) plus gemma's own
(`/gemma/stats`, `/gemma/session`). What it serves is the `Daemon` (daemon.py), reached
as `server.daemon`: this module knows only the methods it calls (`Host`).
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
from http.server import BaseHTTPRequestHandler
from typing import Any, Protocol

from ..engine import GenerateRequest, Stats

log = logging.getLogger("gemma_lsp.backends.daemon")

MAX_BODY = 64 << 20  # a prompt of token ids is far below this


class Host(Protocol):
    """What the handler calls on the daemon."""

    model_name: str
    tokenizer: Any
    tok_lock: threading.Lock
    cancelled: int

    def stats(self) -> dict[str, Any]: ...

    def busy(self, delta: int, sessions: int = 0) -> None: ...

    def request(self, body: dict[str, Any], stop: threading.Event) -> GenerateRequest: ...

    def run(self, req: GenerateRequest, warm: bool): ...

    def decode(self, ids: list[int]) -> str: ...


class PeerCheckedServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, path: str, handler, daemon: Host) -> None:
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


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: PeerCheckedServer

    def log_message(self, format: str, *args: Any) -> None:  # never request lines in logs
        pass

    @property
    def daemon(self) -> Host:
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
                                                  "finish_reason": finish_reason(res.stop_reason)}],
                                     "usage": usage(res.stats)})
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
        self._try_event({"choices": [{"index": 0, "text": "", "token_ids": [], "finish_reason": finish_reason(res.stop_reason)}],
                         "usage": usage(res.stats), "gemma": res.stats.as_dict()})
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


def finish_reason(reason: str) -> str:
    return "length" if reason == "max_tokens" else "stop"


def usage(s: Stats) -> dict[str, Any]:
    return {"prompt_tokens": s.prompt_tokens, "completion_tokens": s.tokens,
            "total_tokens": s.prompt_tokens + s.tokens, "prompt_tokens_details": {"cached_tokens": s.reused_tokens}}
