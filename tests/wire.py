"""A raw LSP client: exact bytes in, every message out, nothing smoothed over.

The typed clients (pytest-lsp, pygls) refuse to send a malformed message and hide what
comes back; the fuzz, soak and fault tests need both. `Wire` starts `gemma-lsp serve`
(stdio, or `--tcp` on a free loopback port), writes whatever bytes it is given, and a
reader thread parses every frame the server writes, strictly (a bad frame from the server
is itself a failure), so a test can check that each request got exactly one answer.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any


def frame(body: bytes) -> bytes:
    return b"Content-Length: %d\r\n\r\n" % len(body) + body


def encode(msg: Any) -> bytes:
    return frame(json.dumps(msg, ensure_ascii=False).encode("utf-8", "surrogatepass"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid: int) -> int:
    """Resident memory of a process, from the OS (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Wire:
    """One `gemma-lsp serve` process and its raw byte streams."""

    def __init__(self, args: list[str] | None = None, tcp: bool = False, env: dict[str, str] | None = None,
                 stderr: Path | None = None) -> None:
        cmd = [sys.executable, "-m", "gemma_lsp", "serve", *(args or [])]
        self.port = free_port() if tcp else None
        if self.port is not None:
            cmd += ["--tcp", str(self.port)]
        err = open(stderr, "wb") if stderr is not None else subprocess.DEVNULL  # the server's log
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                                     env={**os.environ, **(env or {})})
        if stderr is not None:
            err.close()
        self.pid = self.proc.pid
        if self.port is not None:
            self.sock = self._connect()
            self._out = self.sock.makefile("rb")
        else:
            self.sock = None
            self._out = self.proc.stdout
        self.messages: list[dict] = []  # everything the server wrote, in order
        self.responses: dict[Any, list[dict]] = defaultdict(list)  # by id (json.dumps'd)
        self.bad_frames: list[str] = []
        self._cv = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._next = 0

    def _connect(self) -> socket.socket:
        deadline = time.monotonic() + 60
        while True:
            try:
                return socket.create_connection(("127.0.0.1", self.port), timeout=None)
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise
                time.sleep(0.1)

    # --- writing -------------------------------------------------------------------------

    def send_bytes(self, data: bytes) -> None:
        if self.sock is not None:
            self.sock.sendall(data)
        else:
            self.proc.stdin.write(data)
            self.proc.stdin.flush()

    def send(self, msg: Any) -> None:
        self.send_bytes(encode(msg))

    def new_id(self) -> str:
        """The harness's own ids ("h1", "h2", ...): never equal to an id a test makes up."""
        self._next += 1
        return f"h{self._next}"

    def request(self, method: str, params: Any = None, timeout: float = 60) -> dict:
        """Send a well-formed request and wait for its one answer."""
        rid = self.new_id()
        msg = {"jsonrpc": "2.0", "id": rid, "method": method}
        if params is not None:
            msg["params"] = params
        self.send(msg)
        return self.wait(rid, timeout)

    def notify(self, method: str, params: Any = None) -> None:
        msg = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            msg["params"] = params
        self.send(msg)

    def initialize(self, options: dict | None = None, encodings: list[str] | None = None) -> dict:
        caps: dict = {"general": {"positionEncodings": encodings or ["utf-16"]}}
        res = self.request("initialize", {"processId": os.getpid(), "rootUri": "file:///tmp", "capabilities": caps,
                                          "initializationOptions": {"gemmaLsp": options or {}}})
        self.notify("initialized", {})
        return res

    # --- reading -------------------------------------------------------------------------

    def _read(self) -> None:
        out = self._out
        while True:
            length = None
            while True:
                line = out.readline()
                if not line:
                    with self._cv:
                        self._cv.notify_all()
                    return
                if line in (b"\r\n", b"\n"):
                    break
                name, _, value = line.decode("ascii", "replace").partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            if length is None:
                self.bad_frames.append("a frame without Content-Length")
                continue
            body = out.read(length)
            try:
                msg = json.loads(body.decode("utf-8"))
            except (UnicodeDecodeError, ValueError) as e:
                self.bad_frames.append(f"unparseable body from the server: {e}")
                continue
            with self._cv:
                self.messages.append(msg)
                if isinstance(msg, dict) and "method" not in msg and ("result" in msg or "error" in msg):
                    self.responses[json.dumps(msg.get("id"))].append(msg)
                elif isinstance(msg, dict) and "method" in msg and "id" in msg:
                    self._answer_server_request(msg)
                self._cv.notify_all()

    def _answer_server_request(self, msg: dict) -> None:
        """The server may ask things (workspace/configuration, ...): answer as a plain client would."""
        result: Any = None
        if msg["method"] == "workspace/configuration":
            result = [None for _ in (msg.get("params") or {}).get("items", [])]
        threading.Thread(target=self.send, args=({"jsonrpc": "2.0", "id": msg["id"], "result": result},),
                         daemon=True).start()

    def wait(self, rid: Any, timeout: float = 60) -> dict:
        key = json.dumps(rid)
        deadline = time.monotonic() + timeout
        with self._cv:
            while not self.responses.get(key):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no answer to request {rid!r} within {timeout} s")
                if self.proc.poll() is not None:
                    raise RuntimeError(f"the server exited (rc {self.proc.returncode}) before answering {rid!r}")
                self._cv.wait(min(left, 0.5))
            return self.responses[key][0]

    def answers(self, rid: Any) -> list[dict]:
        with self._cv:
            return list(self.responses.get(json.dumps(rid), []))

    # --- ending --------------------------------------------------------------------------

    def close(self, timeout: float = 30) -> int:
        """shutdown + exit when it still answers; the process's exit code."""
        if self.proc.poll() is None:
            try:
                self.request("shutdown", timeout=timeout)
                self.notify("exit")
            except (OSError, TimeoutError, RuntimeError):
                pass
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def __enter__(self) -> "Wire":
        return self

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.sock is not None:
            self.sock.close()
