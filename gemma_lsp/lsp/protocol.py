"""`GemmaProtocol`: what pygls 2.1.1 gets wrong below the handlers, fixed in one place.

It sends no response to a request whose params fail to parse, and it keeps the future of
every notification forever; `framing.Frames` (made here, since it answers through this
protocol) answers what never reaches pygls' parser.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from lsprotocol import types as lsp
from pygls.exceptions import JsonRpcException
from pygls.protocol import LanguageServerProtocol

from ..errors import GemmaLspError
from .framing import Frames

INVALID_PARAMS = -32602
REQUEST_FAILED = -32803


class _Answered:
    """Marks a message that failed to parse and was already answered with an error."""

    jsonrpc = "2.0"


class GemmaProtocol(LanguageServerProtocol):
    """pygls 2.1.1 sends *no* response when a request's params fail to parse; we send an error."""

    def structure_message(self, data: dict[str, Any]):
        if isinstance(data, dict) and "jsonrpc" in data and "method" in data and "params" not in data:
            data["params"] = None  # JSON-RPC allows omitting params; pygls' types require the key
        try:
            return super().structure_message(data)
        except JsonRpcException as exc:
            if isinstance(data, dict) and "id" in data and "method" in data:
                self._send_response(data["id"], error=lsp.ResponseError(
                    code=INVALID_PARAMS, message=f"invalid params for {data.get('method')}: {exc}"))
            return _Answered()

    def handle_message(self, message):
        if isinstance(message, _Answered):
            return
        super().handle_message(message)

    def _execute_handler(self, msg_id, handler, callback, args=None, kwargs=None) -> None:
        """pygls 2.1.1 files the future of every generator handler (all its built-in
        notifications: didOpen, didChange, didClose, ...) under a fresh uuid in
        `_request_futures`, and only a request's answer takes one out: a server kept ~1.5 KB
        per didChange forever (the soak's RSS creep, found with tracemalloc). Any finished
        future leaves the table; a request's answer still goes out first (its callback was
        added before this one), and a duplicate id keeps the newer future."""
        super()._execute_handler(msg_id, handler, callback, args=args, kwargs=kwargs)
        future = self._request_futures.get(msg_id)
        if future is not None:
            future.add_done_callback(partial(self._forget_future, msg_id))

    def frames(self, raw) -> Frames:
        """The byte stream `raw` as good frames; what it cannot pass on is answered here."""
        def reply(rid: Any, code: int, message: str) -> None:
            self._send_data({"jsonrpc": "2.0", "id": rid, "error": {"code": code, "message": message}})

        def ack(rid: Any) -> None:
            self._send_data({"jsonrpc": "2.0", "id": rid, "result": None})

        return Frames(raw, reply, ack)

    def _forget_future(self, msg_id, future) -> None:
        if self._request_futures.get(msg_id) is future:
            del self._request_futures[msg_id]


async def checked(coro):
    """Turn user-actionable errors into a JSON-RPC error response, not an internal error."""
    try:
        return await coro
    except GemmaLspError as e:
        raise JsonRpcException.from_error(lsp.ResponseError(code=REQUEST_FAILED, message=str(e))) from None


def field(obj: Any, name: str) -> Any:
    """A field of untyped params, which pygls hands over as an object or a dict."""
    return obj[name] if isinstance(obj, dict) else getattr(obj, name)
