"""A small HTTP/1.1 client for model servers: TCP, TLS (verified) or a Unix socket, JSON in,
JSON or server-sent events out, and a stop event that closes the connection at once.

Closing is the only cancel every OpenAI-compatible server understands: vLLM, SGLang,
llama-server and our daemon all abort a streamed completion when its client goes away.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse

from ..errors import BackendError

CONNECT_TIMEOUT_S = 5.0
# The longest silence between two chunks of an answer (a prompt pass on a busy server
# included) before the request is given up as hung.
READ_TIMEOUT_S = 120.0


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class HttpStatusError(BackendError):
    def __init__(self, status: int, body: str, what: str) -> None:
        super().__init__(f"{what} answered HTTP {status}: {body[:300]}")
        self.status = status
        self.body = body


class Http:
    """Requests to one server: `base` is "http(s)://host:port/v1" (OpenAI's convention: the
    API's paths are under it) or "unix:/path/to.sock" (our daemon, whose API is at /v1).
    A path that starts with "~/" is at the server's root instead (/tokenize, /gemma/...)."""

    def __init__(self, base: str, headers: dict[str, str] | None = None) -> None:
        self.base = base
        self.headers = dict(headers or {})
        if base.startswith("unix:"):
            self._unix, self._prefix, self._tls, self._host = base[5:], "/v1", False, ""
        else:
            u = urlparse(base)
            if u.scheme not in ("http", "https") or not u.hostname:
                raise BackendError(f"backend URL {base!r} is not an http(s):// URL")
            self._unix, self._tls = None, u.scheme == "https"
            self._host, self._port = u.hostname, u.port or (443 if self._tls else 80)
            self._prefix = u.path.rstrip("/")

    def _connect(self, timeout: float) -> http.client.HTTPConnection:
        if self._unix is not None:
            return _UnixConnection(self._unix, timeout)
        if self._tls:  # certificates and host names verified, always
            return http.client.HTTPSConnection(self._host, self._port, timeout=timeout,
                                               context=ssl.create_default_context())
        return http.client.HTTPConnection(self._host, self._port, timeout=timeout)

    def get(self, path: str, timeout: float = CONNECT_TIMEOUT_S) -> Any:
        with self._open("GET", path, None, timeout, None) as resp:
            return _json(resp.read(), self.base)

    def post(self, path: str, body: dict[str, Any], stop: threading.Event | None = None,
             timeout: float = READ_TIMEOUT_S) -> Any:
        with self._open("POST", path, body, timeout, stop) as resp:
            return _json(resp.read(), self.base)

    def stream(self, path: str, body: dict[str, Any] | None, stop: threading.Event | None = None,
               timeout: float | None = READ_TIMEOUT_S, method: str = "POST") -> Iterator[dict[str, Any]]:
        """The `data:` events of a server-sent-event answer, as JSON, until `[DONE]`.

        The request is sent, and an HTTP error status raised, here at the call (so a caller
        can retry it in another form); the events then come as it iterates. Leaving the loop
        (a stop rule, `stop` set, an error) closes the connection, which is what tells the
        server to stop decoding."""
        return self._events(self._open(method, path, body, timeout, stop))

    def _events(self, opened: "_Response") -> Iterator[dict[str, Any]]:
        with opened as resp:
            for raw in resp:
                line = raw.strip()
                if not line.startswith(b"data:"):
                    continue  # blank separators, ": ping" comments, event names
                data = line[5:].strip()
                if data == b"[DONE]":
                    return
                event = _json(data, self.base)
                if isinstance(event, dict) and "error" in event:
                    raise BackendError(f"{self.base} stopped with an error: {_message(event['error'])}")
                yield event

    def _url(self, path: str) -> str:
        if path.startswith("~/"):
            root = self._prefix[: -len("/v1")] if self._prefix.endswith("/v1") else self._prefix
            return root + path[1:]
        return self._prefix + path

    def stream_get(self, path: str) -> Iterator[dict[str, Any]]:
        """A long-lived event stream (no read timeout)."""
        return self.stream(path, None, None, None, "GET")

    def _open(self, method: str, path: str, body: dict[str, Any] | None, timeout: float | None,
              stop: threading.Event | None) -> "_Response":
        conn = self._connect(CONNECT_TIMEOUT_S)
        headers = {"Accept": "application/json, text/event-stream", **self.headers}
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            conn.request(method, self._url(path), body=payload, headers=headers)
            if conn.sock is not None:
                conn.sock.settimeout(timeout)
            resp = _Response(conn, stop)
            r = resp.start()
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            if stop is not None and stop.is_set():
                raise Cancelled() from None
            raise BackendError(f"{self.base} is not answering ({_reason(e)})") from None
        if r.status >= 400:
            text = r.read().decode("utf-8", "replace")
            resp.close()
            raise HttpStatusError(r.status, text, f"{self.base} ({path.lstrip('~')})")
        return resp


class Cancelled(Exception):
    """The stop event closed the connection: not an error, the caller stops."""


class _Response:
    """An open response whose connection a watcher closes when `stop` is set."""

    def __init__(self, conn: http.client.HTTPConnection, stop: threading.Event | None) -> None:
        self.conn = conn
        self.stop = stop
        self.done = threading.Event()
        self.resp: http.client.HTTPResponse | None = None
        if stop is not None:
            threading.Thread(target=self._watch, name="http-cancel", daemon=True).start()

    def _watch(self) -> None:
        while not self.done.is_set():
            if self.stop.wait(0.02):
                self._shut()
                return

    def _shut(self) -> None:
        sock = self.conn.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes a blocked read; the server sees EOF
            except OSError:
                pass

    def start(self) -> http.client.HTTPResponse:
        self.resp = self.conn.getresponse()
        return self.resp

    def __enter__(self) -> http.client.HTTPResponse:
        assert self.resp is not None
        return self.resp

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.close()
        if exc_type is not None and issubclass(exc_type, (OSError, http.client.HTTPException, ValueError)):
            if self.stop is not None and self.stop.is_set():
                raise Cancelled() from None
            raise BackendError(f"the model server broke off its answer ({_reason(exc)})") from None
        return False

    def close(self) -> None:
        self.done.set()
        self._shut()
        self.conn.close()


def _json(data: bytes, base: str) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        raise BackendError(f"{base} answered something that is not JSON: {data[:120]!r}") from None


def _message(err: Any) -> str:
    return str(err.get("message", err)) if isinstance(err, dict) else str(err)


def _reason(e: BaseException | None) -> str:
    if isinstance(e, socket.timeout):
        return "timed out"
    if isinstance(e, ConnectionRefusedError):
        return "connection refused"
    if isinstance(e, FileNotFoundError):
        return "no socket there"
    if isinstance(e, ssl.SSLCertVerificationError):
        return f"TLS certificate not trusted: {e.verify_message}"
    return str(e) or type(e).__name__
