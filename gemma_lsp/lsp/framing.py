"""Reading JSON-RPC messages off the wire: garbage skipped, every request we can identify answered.

pygls 2.1.1's reader loop trusts its input: a body that is not UTF-8 or not JSON, a JSON
array, an object without `jsonrpc`, an id that is an object, a request before `initialize`
or after `shutdown`, a notification that carries an id: each of these got no answer at all
(the client waits forever), and some went on to raise inside pygls. `Frames` sits between
the byte stream and that loop and hands it well-formed frames only. What it refuses is
answered here, following JSON-RPC 2.0 and LSP 3.17:

  body not UTF-8, not JSON, nested too deep   -32700 Parse error (the id when it can be read)
  not an object, bad `jsonrpc`, bad id/method -32600 Invalid Request
  a request before `initialize`               -32002 ServerNotInitialized (notifications dropped, `exit` kept)
  a request after `shutdown`                  -32600 Invalid Request (notifications dropped, `exit` kept)
  a notification sent with an id              applied as the notification, and answered `null`
  a body over MAX_BODY bytes                  read and thrown away in pieces (memory stays bounded), -32600
                                              when its id is at the top, else no answer

Framing itself is the client's to get right: a `Content-Length` that lies consumes or
leaves bytes that belong to the next message. Header lines that are not headers are
skipped, so the stream resynchronizes at the next `Content-Length` line. Nothing here
logs message content: only sizes, methods and what was wrong.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Callable
from typing import Any, BinaryIO

from lsprotocol.types import METHOD_TO_TYPES

log = logging.getLogger("gemma_lsp.lsp.framing")

MAX_HEADER = 8 * 1024  # bytes in one header line; longer ones are garbage
MAX_BODY = 128 * 1024 * 1024  # bytes in one message: a 20 MB document fits with room to spare
PIECE = 1 << 20  # an oversized body is read and dropped this many bytes at a time
SALVAGE = 4096  # bytes of an unusable body searched for its id

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
NOT_INITIALIZED = -32002

NOTIFICATIONS = frozenset(m for m, types in METHOD_TO_TYPES.items() if types[0].__name__.endswith("Notification"))
# The id of a request that is otherwise unusable, when it comes before its params (clients
# write jsonrpc, id, method first): `"id": 12` or `"id": "abc"` at the top of the object.
_ID = re.compile(rb'^\s*\{(?:[^{}\[\]]*?,)?\s*"id"\s*:\s*(-?\d+|"(?:[^"\\]|\\.){0,200}")')

Reply = Callable[[Any, int, str], None]  # (id or None, code, message): send an error response
Ack = Callable[[Any], None]  # (id): send a `null` result


class StdinReader:
    """Async line and block reads of a binary stream on a worker thread, lines bounded."""

    def __init__(self, stream: BinaryIO, pool) -> None:
        self.stream, self.pool = stream, pool

    async def readline(self) -> bytes:
        line = await asyncio.get_running_loop().run_in_executor(self.pool, self.stream.readline, MAX_HEADER + 1)
        if len(line) > MAX_HEADER and not line.endswith(b"\n"):
            while line and not line.endswith(b"\n"):  # drop the rest of an over-long line
                line = await asyncio.get_running_loop().run_in_executor(self.pool, self.stream.readline, PIECE)
            raise ValueError("header line too long")
        return line

    async def readexactly(self, n: int) -> bytes:
        loop = asyncio.get_running_loop()
        parts, left = [], n
        while left:
            part = await loop.run_in_executor(self.pool, self.stream.read, min(left, PIECE))
            if not part:
                raise asyncio.IncompleteReadError(b"".join(parts), n)
            parts.append(part)
            left -= len(part)
        return b"".join(parts)


def salvage_id(head: bytes) -> Any:
    """The id at the top of a body we cannot use, or None. Only a request's: an error sent
    back for the id of one of the client's responses would answer a request of its own."""
    m = _ID.match(head)
    if m is None or b'"method"' not in head:
        return None
    try:
        return json.loads(m.group(1))
    except ValueError:
        return None


class Frames:
    """The reader pygls' loop reads from: `readline()` and `readexactly(n)` of good frames only."""

    def __init__(self, raw, reply: Reply, ack: Ack) -> None:
        self.raw = raw
        self.reply = reply
        self.ack = ack
        self.initialized = False
        self.shut_down = False
        self._lines: list[bytes] = []
        self._body = b""

    async def readline(self) -> bytes:
        if not self._lines:
            body = await self._next()
            if body is None:
                return b""  # end of stream
            self._lines, self._body = [b"Content-Length: %d\r\n" % len(body), b"\r\n"], body
        return self._lines.pop(0)

    async def readexactly(self, n: int) -> bytes:
        body, self._body = self._body, b""
        return body

    # --- reading one frame --------------------------------------------------------------

    async def _next(self) -> bytes | None:
        """The next body pygls may handle; None at the end of the stream."""
        while True:
            length = await self._headers()
            if length is None:
                return None
            if length > MAX_BODY:
                await self._drop(length)
                continue
            try:
                body = await self.raw.readexactly(length)
            except asyncio.IncompleteReadError:
                log.warning("the stream ended inside a message (%d bytes announced)", length)
                return None
            body = self._check(body)
            if body is not None:
                return body

    async def _headers(self) -> int | None:
        """Read header lines up to the blank line; the Content-Length, or None at the end."""
        length: int | None = None
        skipped = 0
        while True:
            try:
                line = await self.raw.readline()
            except ValueError:  # an over-long line: garbage
                skipped += 1
                continue
            except (asyncio.IncompleteReadError, ConnectionError):
                return None
            if not line:
                return None
            if not line.strip():
                if length is not None:
                    if skipped:
                        log.warning("skipped %d lines that were not message headers", skipped)
                    return length
                continue  # blank lines between messages
            name, sep, value = line.partition(b":")
            if sep and name.strip().lower() == b"content-length" and value.strip().isdigit():
                length = int(value.strip())
            elif not (sep and name.strip().lower() == b"content-type"):
                skipped += 1
                length = None  # a header block with garbage in it starts over at the next Content-Length

    async def _drop(self, length: int) -> None:
        head = b""
        left = length
        try:
            while left:
                part = await self.raw.readexactly(min(left, PIECE))
                if len(head) < SALVAGE:
                    head += part[: SALVAGE - len(head)]
                left -= len(part)
        except asyncio.IncompleteReadError:
            pass
        log.warning("dropped a message of %d bytes (the limit is %d)", length, MAX_BODY)
        rid = salvage_id(head)
        if rid is not None:  # a request whose id we can read; a notification gets no answer
            self.reply(rid, INVALID_REQUEST, f"message of {length} bytes is over the limit of {MAX_BODY}")

    # --- checking one body --------------------------------------------------------------

    def _check(self, body: bytes) -> bytes | None:
        """The body if pygls may have it (possibly rewritten); None when answered here."""
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as e:
            self._refuse(body, PARSE_ERROR, f"Parse error: the message is not UTF-8 (byte {e.start})")
            return None
        try:
            msg = json.loads(text)
        except RecursionError:
            self._refuse(body, PARSE_ERROR, "Parse error: the message is nested too deeply")
            return None
        except ValueError as e:
            self._refuse(body, PARSE_ERROR, f"Parse error: {e.msg} (character {e.pos})")  # type: ignore[attr-defined]
            return None
        if not isinstance(msg, dict):
            self._refuse(body, INVALID_REQUEST, "Invalid Request: a message is a JSON object (LSP has no batches)")
            return None
        rid, method = msg.get("id"), msg.get("method")
        is_request = "id" in msg and "method" in msg
        if "id" in msg and not (rid is None or isinstance(rid, str) or (isinstance(rid, (int, float)) and not isinstance(rid, bool))):
            if "method" in msg:
                self._refuse(body, INVALID_REQUEST, "Invalid Request: an id is a string or a number")
            else:
                log.warning("dropped a response of %d bytes: its id is not a string or a number", len(body))
            return None
        problem = ('"jsonrpc" must be "2.0"' if msg.get("jsonrpc") != "2.0" else
                   "a method is a string" if "method" in msg and not isinstance(method, str) else None)
        if problem is not None:
            if is_request:  # a notification or a response gets no answer, even a bad one
                self._refuse(body, INVALID_REQUEST, f"Invalid Request: {problem}", rid)
            else:
                log.warning("dropped a message of %d bytes: %s", len(body), problem)
            return None
        if method is None:
            return body  # a response to one of our requests
        if method == "exit":
            return body
        if not self.initialized and method != "initialize":
            if is_request:
                self.reply(rid, NOT_INITIALIZED, f"{method}: the server is not initialized yet (send initialize first)")
            return None
        if self.shut_down:
            if is_request:
                self.reply(rid, INVALID_REQUEST, f"{method}: the server is shutting down (after shutdown only exit)")
            return None
        if method == "initialize":
            if self.initialized and is_request:
                self.reply(rid, INVALID_REQUEST, "initialize: the server is already initialized")
                return None
            self.initialized = True
        elif method == "shutdown":
            self.shut_down = True
        if is_request and method in NOTIFICATIONS:  # a notification with an id: apply it, answer it
            del msg["id"]
            self.ack(rid)
            return json.dumps(msg).encode()
        return body

    def _refuse(self, body: bytes, code: int, message: str, rid: Any = None) -> None:
        """Answer a message pygls will not see. A body that does not parse is searched for its id."""
        if rid is None and code == PARSE_ERROR:
            rid = salvage_id(body[:SALVAGE])
        log.warning("refused a message of %d bytes: %s", len(body), message)
        self.reply(rid, code, message)
