"""One handler per LSP method, each a module-level function of (server, params), and the
table `main.create_server` registers. Handlers are thin: documents change in
documents.py, completions run through `GemmaServer.complete` on the scheduler.

(One module per method, as once planned, would make a dozen files of 5-30 lines: the
table below is the index.)
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from lsprotocol import types as lsp
from pygls.exceptions import JsonRpcException

from ..text import UTF16, offset_at, position_at
from .documents import Doc, apply_changes, path_of
from .protocol import INVALID_PARAMS, REQUEST_FAILED, checked, field
from .server import GemmaServer

log = logging.getLogger(__name__)

STATS = "gemma/stats"
DOCUMENT = "gemma/document"  # request {textDocument: {uri}} -> {uri, text}
CURSOR = "gemma/cursor"  # notification {textDocument, position}: the cursor moved (optional)


def initialize(ls: GemmaServer, params: lsp.InitializeParams) -> None:
    enc = ls.workspace.position_encoding or UTF16
    ls.encoding = str(getattr(enc, "value", enc))  # str() of the enum would be its name
    ls.init_options = params.initialization_options
    ls.refresh_settings()


async def initialized(ls: GemmaServer, params: lsp.InitializedParams) -> None:
    caps = ls.client_capabilities.workspace
    if caps is not None and caps.configuration:
        try:
            res = await asyncio.wait_for(ls.workspace_configuration_async(
                lsp.ConfigurationParams(items=[lsp.ConfigurationItem(section="gemmaLsp")])), 5)
            if res and isinstance(res[0], dict):
                ls.client_settings = res[0]
                ls.refresh_settings()
        except Exception as e:  # a client that cannot answer is no reason to fail
            log.info("workspace/configuration unavailable: %s", e)
    if not os.environ.get("GEMMA_LSP_LAZY_LOAD"):
        ls.scheduler.submit(ls.preload)


def did_change_configuration(ls: GemmaServer, params: lsp.DidChangeConfigurationParams) -> None:
    s = params.settings
    if isinstance(s, dict):
        ls.client_settings = s.get("gemmaLsp", s)
        ls.refresh_settings()


def did_open(ls: GemmaServer, params: lsp.DidOpenTextDocumentParams) -> None:
    d = params.text_document
    ls.docs[d.uri] = Doc(d.text, d.language_id)
    ls.focus(d.uri)
    ls.warmer.schedule(d.uri)


def did_change(ls: GemmaServer, params: lsp.DidChangeTextDocumentParams) -> None:
    doc = ls.docs.get(params.text_document.uri)
    if doc is None:
        log.warning("didChange for a document that is not open")
        return
    if apply_changes(doc, params.content_changes, ls.encoding):
        ls.focus(params.text_document.uri)
        ls.warmer.schedule(params.text_document.uri)


def did_close(ls: GemmaServer, params: lsp.DidCloseTextDocumentParams) -> None:
    uri = params.text_document.uri
    doc = ls.docs.pop(uri, None)
    if doc is not None:
        ls.ring.offer(uri, path_of(uri), doc.language, doc.text, doc.last_line)
    if ls.completer is not None:
        ls.completer.forget(uri)


def cursor(ls: GemmaServer, params: Any) -> None:
    """A client that reports cursor moves (the editor plugins do) lets a pause warm the
    cache where the user is, before the first request there."""
    try:
        uri = str(field(field(params, "textDocument"), "uri"))
        pos = field(params, "position")
        line, character = int(field(pos, "line")), int(field(pos, "character"))
    except (KeyError, AttributeError, TypeError, ValueError):
        log.warning("%s: expected {textDocument: {uri}, position: {line, character}}", CURSOR)
        return
    doc = ls.docs.get(uri)
    if doc is None or line < 0 or character < 0:
        return
    doc.cursor = offset_at(doc.text, line, character, ls.encoding)
    doc.last_line = line
    ls.focus(uri)
    ls.warmer.schedule(uri)


async def inline_completion(ls: GemmaServer, params: lsp.InlineCompletionParams) -> lsp.InlineCompletionList | None:
    c, _ = await checked(ls.complete(params.text_document.uri, params.position))
    if c is None or not c.text:
        return lsp.InlineCompletionList(items=[])
    pos = params.position
    return lsp.InlineCompletionList(items=[lsp.InlineCompletionItem(insert_text=c.text, range=lsp.Range(pos, pos))])


async def completion(ls: GemmaServer, params: lsp.CompletionParams) -> lsp.CompletionList:
    """One item. isIncomplete is false once there is an answer: the client then filters
    it as the user types on (a typed-through suggestion stays valid) instead of asking
    again on every keystroke; an empty answer stays incomplete so that typing re-asks."""
    uri = params.text_document.uri
    c, snap = await checked(ls.complete(uri, params.position))
    if c is None or not c.text:
        return lsp.CompletionList(is_incomplete=True, items=[])
    text, offset = snap.text, snap.offset  # the text the answer is for, not the document now
    # Replace the identifier being typed, so the client's filter (the word before the
    # cursor) matches the item; the edit ends at the cursor, never past it.
    start = offset
    while start > 0 and (text[start - 1].isalnum() or text[start - 1] == "_"):
        start -= 1
    word = text[start:offset]
    line, col = position_at(text, start, ls.encoding)
    first = (word + c.text).split("\n", 1)[0].strip()
    item = lsp.CompletionItem(
        label=(first[:60] + "…") if len(first) > 60 else first or c.text.strip()[:60],
        kind=lsp.CompletionItemKind.Text,
        detail="gemma-lsp",
        documentation=word + c.text,
        filter_text=word + c.text,
        sort_text="0",
        insert_text_format=lsp.InsertTextFormat.PlainText,
        text_edit=lsp.TextEdit(range=lsp.Range(lsp.Position(line, col), params.position), new_text=word + c.text),
    )
    return lsp.CompletionList(is_incomplete=False, items=[item])


def stats(ls: GemmaServer, params: Any = None) -> dict[str, object]:
    snap = ls.stats.snapshot()
    engine = ls.completer.engine if ls.completer is not None else None
    snap["cache_bytes"] = engine.cache.bytes if engine is not None else 0  # in-process KV only
    snap["cache_limit_bytes"] = engine.cache.max_bytes if engine is not None else 0
    return snap


def document(ls: GemmaServer, params: Any = None) -> dict[str, object]:
    """The server's copy of an open document: a client (or a test) can check that its
    edits arrived exactly. Only what the client itself sent."""
    try:
        uri = str(field(field(params, "textDocument"), "uri"))
    except (KeyError, AttributeError, TypeError):
        raise JsonRpcException.from_error(lsp.ResponseError(
            code=INVALID_PARAMS, message=f"{DOCUMENT}: expected {{textDocument: {{uri}}}}")) from None
    doc = ls.docs.get(uri)
    if doc is None:
        raise JsonRpcException.from_error(lsp.ResponseError(
            code=REQUEST_FAILED, message=f"document {uri} is not open")) from None
    return {"uri": uri, "text": doc.text}


def shutdown(ls: GemmaServer, params: Any = None) -> None:
    ls.scheduler.shutdown()


HANDLERS = [  # (method, its server options, handler)
    (lsp.INITIALIZE, None, initialize),
    (lsp.INITIALIZED, None, initialized),
    (lsp.WORKSPACE_DID_CHANGE_CONFIGURATION, None, did_change_configuration),
    (lsp.TEXT_DOCUMENT_DID_OPEN, None, did_open),
    (lsp.TEXT_DOCUMENT_DID_CHANGE, None, did_change),
    (lsp.TEXT_DOCUMENT_DID_CLOSE, None, did_close),
    (CURSOR, None, cursor),
    (lsp.TEXT_DOCUMENT_INLINE_COMPLETION, lsp.InlineCompletionOptions(), inline_completion),
    (lsp.TEXT_DOCUMENT_COMPLETION, lsp.CompletionOptions(trigger_characters=[".", "(", " "]), completion),
    (STATS, None, stats),
    (DOCUMENT, None, document),
    (lsp.SHUTDOWN, None, shutdown),
]
