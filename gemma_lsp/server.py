"""The language server: thin async handlers over the scheduler and the completer.

Documents are kept here, not in pygls' workspace, because pygls splits lines
like `str.splitlines` (form feed, U+2028...) and LSP does not: see text.py.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
from dataclasses import dataclass
from functools import partial
from typing import Any
from urllib.parse import unquote, urlparse

from lsprotocol import types as lsp
from pygls.exceptions import JsonRpcException
from pygls.io_ import StdoutWriter, run_async
from pygls.lsp.server import LanguageServer
from pygls.protocol import LanguageServerProtocol

from . import __version__, faults, threads
from .completer import Completer, Completion, Snapshot
from .config import Settings
from .context import ContextRing
from .errors import BackendError, GemmaLspError
from .framing import Frames, StdinReader
from .scheduler import Overdue, Scheduler, Superseded
from .stats import ServerStats
from .text import UTF16, apply_change, offset_at, position_at

log = logging.getLogger("gemma_lsp.server")
wire_log = logging.getLogger("pygls.io_")  # pygls' reader loop logs as pygls: logs.Withhold covers it
INVALID_PARAMS = -32602
REQUEST_FAILED = -32803
STATS = "gemma/stats"
DOCUMENT = "gemma/document"  # request {textDocument: {uri}} -> {uri, text}


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

    def _forget_future(self, msg_id, future) -> None:
        if self._request_futures.get(msg_id) is future:
            del self._request_futures[msg_id]


# A request still not answered after this long gets an error instead (a stuck forward pass,
# an overloaded machine): a cold 1,500-token prompt on a busy 2-core CPU takes ~25 s, the
# editors' own limits are 10 s (eglot, lsp-mode; gemma-lsp.el raises them to 30 s) or none.
REQUEST_LIMIT_S = float(os.environ.get("GEMMA_LSP_REQUEST_LIMIT_S", "28"))
# ... not counting a model load queued ahead of it, which is bounded apart: ~15 s here at
# start-up, minutes the first time (when `prepare` assembles and converts the model).
LOAD_LIMIT_S = float(os.environ.get("GEMMA_LSP_LOAD_LIMIT_S", "300"))

# A pause this long after the last change warms the KV cache at the cursor (one job at a
# time, preempted by any request): typing never waits for it, a pause pays for it.
WARM_IDLE_S = 0.15
CURSOR = "gemma/cursor"  # notification {textDocument, position}: the cursor moved (optional)


@dataclass
class Doc:
    text: str
    language: str
    last_line: int = 0
    cursor: int | None = None  # offset of the cursor as last seen (a change's end, a request); None: unknown


class GemmaServer(LanguageServer):
    def __init__(self, cli_overrides: dict[str, Any] | None = None) -> None:
        super().__init__("gemma-lsp", __version__, protocol_cls=GemmaProtocol,
                         text_document_sync_kind=lsp.TextDocumentSyncKind.Incremental)
        self.cli_overrides = cli_overrides or {}
        self.init_options: Any = None
        self.client_settings: Any = None
        self.settings = Settings().merged(self.cli_overrides)
        self.docs: dict[str, Doc] = {}
        self.ring = ContextRing()
        self.last_uri: str | None = None
        self.scheduler = Scheduler()
        self.stats = ServerStats()
        self.completer: Completer | None = None
        self._engine_key: tuple | None = None
        self.encoding = UTF16
        self._tasks: set[asyncio.Future] = set()  # background tasks, referenced until they end
        self._warm_timer: asyncio.TimerHandle | None = None
        self._warmed: tuple | None = None  # what the last warm-up prefilled
        self._down: str | None = None  # the backend's error while it is not answering
        self.count_engine = False  # `serve` sets it: its engine counts among this machine's (threads.py)

    def report_server_error(self, error: Exception, source) -> None:
        log.error("internal error: %s", error)  # never a window/showMessage popup

    # --- transports: pygls' loops over framing.Frames, which answers what pygls would drop --

    def frames(self, raw) -> Frames:
        def reply(rid: Any, code: int, message: str) -> None:
            self.protocol._send_data({"jsonrpc": "2.0", "id": rid, "error": {"code": code, "message": message}})

        def ack(rid: Any) -> None:
            self.protocol._send_data({"jsonrpc": "2.0", "id": rid, "result": None})

        return Frames(raw, reply, ack)

    def start_io(self, stdin=None, stdout=None) -> None:
        self._stop_event = threading.Event()
        self.protocol.set_writer(StdoutWriter(stdout or sys.stdout.buffer))
        reader = self.frames(StdinReader(stdin or sys.stdin.buffer, self.thread_pool))
        try:
            asyncio.run(run_async(stop_event=self._stop_event, reader=reader, protocol=self.protocol,
                                  logger=wire_log, error_handler=self.report_server_error))
        except BrokenPipeError:
            log.error("the client closed the connection: shutting down")
        except (KeyboardInterrupt, SystemExit):
            pass
        finally:
            self.shutdown()

    def start_tcp(self, host: str, port: int) -> None:
        self._stop_event = stop = threading.Event()

        async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.protocol.set_writer(writer)  # type: ignore[arg-type]
            await run_async(stop_event=stop, reader=self.frames(reader), protocol=self.protocol,
                            logger=wire_log, error_handler=self.report_server_error)
            self.shutdown()

        async def main() -> None:
            self._server = await asyncio.start_server(connection, host, port)
            log.info("listening on %s:%d", host, port)
            async with self._server:
                await self._server.serve_forever()

        try:
            asyncio.run(main())
        except (KeyboardInterrupt, SystemExit, asyncio.CancelledError):
            pass
        finally:
            self.shutdown()

    # --- settings -----------------------------------------------------------------

    def refresh_settings(self) -> None:
        """initializationOptions < didChangeConfiguration/workspace/configuration < CLI flags.

        A bad value drops only its own key, and the user is told which and why."""
        s, errors = Settings().merged_lenient(self.init_options)
        s, more = s.merged_lenient(self.client_settings)
        before, self.settings = self.settings, s.merged(self.cli_overrides)
        if self.settings != before:
            log.info("settings in effect (non-default): %s", self.settings.changed() or "none")
        for e in errors + more:
            log.warning("ignoring setting: %s", e)
            self.window_show_message(lsp.ShowMessageParams(lsp.MessageType.Warning, f"gemma-lsp: ignoring setting: {e}"))

    def ensure_completer(self) -> Completer:
        """Load (or reload after a model change) on the engine thread only."""
        key = self.settings.engine_key()
        if self.completer is None or key != self._engine_key:
            self.completer = None
            log.info("loading model %s", self.settings.model or "(default)")
            faults.hit("load")
            self.completer = Completer.from_settings(self.settings)
            self._engine_key = key
            if self.completer.engine is not None and self.count_engine:  # `serve`: share the cores
                threads.register()
            log.info("model ready: %s (backend %s)", self.completer.name, self.completer.backend.name)
        self.completer.apply(self.settings)
        return self.completer

    def spawn(self, coro) -> None:
        """Run background work, keeping a reference so it is not collected mid-run."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- warming the cache while the user pauses -------------------------------------

    def schedule_warm(self, uri: str) -> None:
        """(Re)start the idle timer: a burst of changes (a paste, 1,000 edits) costs one warm-up."""
        if self._warm_timer is not None:
            self._warm_timer.cancel()
        self._warm_timer = asyncio.get_running_loop().call_later(WARM_IDLE_S, self._start_warm, uri)

    def _start_warm(self, uri: str) -> None:
        self._warm_timer = None
        doc = self.docs.get(uri)
        if doc is None or self.scheduler.busy:
            return
        offset = len(doc.text) if doc.cursor is None else min(doc.cursor, len(doc.text))
        settings = self.settings
        key = (uri, doc.text, offset, settings)
        if key == self._warmed:
            return
        self._warmed = key
        snap = Snapshot(uri, doc.text, offset, doc.language, _path(uri), chunks=self.ring.chunks(uri))

        def work(stop: threading.Event):
            if self.completer is None or settings.engine_key() != self._engine_key:
                return None  # never load a model for a warm-up; the preload or a request does
            self.completer.apply(settings)
            threads.share()
            return self.completer.warm(snap, settings, stop)

        async def run() -> None:
            try:
                st = await self.scheduler.run_background(work)
                if st is not None and st.tokens:
                    self.stats.add_warmup(st)
                    log.debug("warm-up: %d prompt tokens, %d reused, %.0f ms", st.prompt_tokens,
                              st.reused_tokens, st.prefill_ms)
            except Exception as e:  # background work: never surfaces to the client
                log.debug("warm-up ended: %r", e)

        self.spawn(run())

    # --- requests -----------------------------------------------------------------

    def focus(self, uri: str) -> None:
        """The user works in `uri` now (a request, an edit, a cursor move there): the file they
        left becomes context for the others, so a warm-up builds the prompt a request will."""
        if self.last_uri is not None and self.last_uri != uri and self.last_uri in self.docs:
            prev = self.docs[self.last_uri]  # remember where they were
            self.ring.offer(self.last_uri, _path(self.last_uri), prev.language, prev.text, prev.last_line)
        self.last_uri = uri

    def snapshot(self, uri: str, position: lsp.Position) -> Snapshot:
        doc = self.docs.get(uri)
        if doc is None:
            raise GemmaLspError(f"document {uri} is not open (send textDocument/didOpen first)")
        offset = offset_at(doc.text, position.line, position.character, self.encoding)
        doc.last_line = position.line
        doc.cursor = offset
        self.focus(uri)
        # Only copy the chunks here: tokenizing happens on the engine thread, the
        # tokenizer's only user (a fast tokenizer must not be used from two threads).
        return Snapshot(uri, doc.text, offset, doc.language, _path(uri), chunks=self.ring.chunks(uri))

    async def complete(self, uri: str, position: lsp.Position) -> tuple[Completion | None, Snapshot]:
        """Run one completion; None when superseded or cancelled. Also returns the snapshot it
        answers for: the document may change while the engine works."""
        snap = self.snapshot(uri, position)
        settings = self.settings
        if self.completer is not None and settings.engine_key() == self._engine_key:
            fast = self.completer.instant(snap)  # typed through the suggestion: no queue, no model
            if fast is not None:
                self.scheduler.supersede(uri)
                self.stats.add(fast.stats, fast.latency_ms, True)
                self.spawn(self._verify(snap, settings))
                return fast, snap

        def work(stop: threading.Event) -> Completion:
            completer = self.ensure_completer()
            threads.share()
            return completer.complete(snap, settings, stop, instant=False)

        try:
            c = await self.scheduler.run(uri, work, REQUEST_LIMIT_S, LOAD_LIMIT_S)
        except Overdue as e:
            self.stats.errors += 1
            if e.loading:
                log.error("the model was still loading after %.0f s: a completion for %s answered with an error",
                          LOAD_LIMIT_S, uri)
                raise GemmaLspError(f"the model is still loading after {LOAD_LIMIT_S:.0f} s; this request is "
                                    "dropped, the next one may work (see the server log)") from None
            log.error("a completion for %s was not done within %.0f s: answered with an error", uri, REQUEST_LIMIT_S)
            raise GemmaLspError(f"the engine did not finish within {REQUEST_LIMIT_S:.0f} s (a forward pass is stuck "
                                "or the machine is overloaded); this request is dropped, the next one may work") from None
        except Superseded:
            self.stats.cancelled += 1
            return None, snap
        except asyncio.CancelledError:
            self.stats.cancelled += 1
            raise
        except BackendError as e:  # the model server is away: answer nothing, say so once
            self.stats.errors += 1
            self.backend_down(str(e))
            return None, snap
        except GemmaLspError:
            self.stats.errors += 1
            raise
        except Exception as e:  # a bug or a fault in one completion: this request fails, the server goes on
            self.stats.errors += 1
            log.exception("completion failed for %s", uri)
            raise GemmaLspError(f"the completion failed ({type(e).__name__}: {e}); the server is still running") from None
        self.backend_down(None)
        if c.stop_reason == "cancelled":
            self.stats.cancelled += 1
            return None, snap
        self.stats.add(c.stats, c.latency_ms, c.typed_through, c.backend)
        return c, snap

    def backend_down(self, error: str | None) -> None:
        """Tell the user once when the backend stops answering, and once when it is back."""
        if error is not None and self._down is None:
            log.error("backend failed: %s", error)
            self.window_show_message(lsp.ShowMessageParams(lsp.MessageType.Error, f"gemma-lsp: {error}"))
        elif error is None and self._down is not None:
            self.window_show_message(lsp.ShowMessageParams(lsp.MessageType.Info, "gemma-lsp: the backend answers again"))
        self._down = error


    async def _verify(self, snap: Snapshot, settings: Settings) -> None:
        """After an instant answer, let the model verify (and extend) the remembered suggestion
        in one forward through the suggestion drafter; this also keeps the KV cache at the
        cursor. The next keystroke supersedes it."""
        def work(stop: threading.Event) -> None:
            if self.completer is not None:
                self.completer.complete(snap, settings, stop, instant=False)
        try:
            await self.scheduler.run(snap.uri, work)
        except Exception as e:  # background work: never surfaces to the client
            log.debug("background verify ended: %r", e)


# --- one handler per LSP method (registered by create_server) ---------------------

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
        ls.scheduler.submit(_preload(ls))

def did_change_configuration(ls: GemmaServer, params: lsp.DidChangeConfigurationParams) -> None:
    s = params.settings
    if isinstance(s, dict):
        ls.client_settings = s.get("gemmaLsp", s)
        ls.refresh_settings()

def did_open(ls: GemmaServer, params: lsp.DidOpenTextDocumentParams) -> None:
    d = params.text_document
    ls.docs[d.uri] = Doc(d.text, d.language_id)
    ls.focus(d.uri)
    ls.schedule_warm(d.uri)

def did_change(ls: GemmaServer, params: lsp.DidChangeTextDocumentParams) -> None:
    doc = ls.docs.get(params.text_document.uri)
    if doc is None:
        log.warning("didChange for a document that is not open")
        return
    # All or nothing: a change the text cannot take (a reversed range, a negative
    # position) leaves the document as it was, rather than half of the edit applied.
    text, cursor, last_line = doc.text, doc.cursor, doc.last_line
    for i, ch in enumerate(params.content_changes):
        rng = getattr(ch, "range", None)
        if rng is None:
            text, cursor = ch.text, None
            continue
        try:
            start = offset_at(text, rng.start.line, rng.start.character, ls.encoding)
            text = apply_change(text, (rng.start.line, rng.start.character),
                                (rng.end.line, rng.end.character), ch.text, ls.encoding)
        except ValueError as e:
            log.warning("didChange: change %d of %d refused (%s); the document is unchanged",
                        i + 1, len(params.content_changes), e)
            return
        cursor = start + len(ch.text)  # where typing leaves the cursor
        last_line = rng.start.line + ch.text.count("\n")
    doc.text, doc.cursor, doc.last_line = text, cursor, last_line
    ls.focus(params.text_document.uri)
    ls.schedule_warm(params.text_document.uri)

def did_close(ls: GemmaServer, params: lsp.DidCloseTextDocumentParams) -> None:
    uri = params.text_document.uri
    doc = ls.docs.pop(uri, None)
    if doc is not None:
        ls.ring.offer(uri, _path(uri), doc.language, doc.text, doc.last_line)
    if ls.completer is not None:
        ls.completer.forget(uri)

def cursor(ls: GemmaServer, params: Any) -> None:
    """A client that reports cursor moves (the editor plugins do) lets a pause warm the
    cache where the user is, before the first request there."""
    try:
        uri = str(_field(_field(params, "textDocument"), "uri"))
        pos = _field(params, "position")
        line, character = int(_field(pos, "line")), int(_field(pos, "character"))
    except (KeyError, AttributeError, TypeError, ValueError):
        log.warning("%s: expected {textDocument: {uri}, position: {line, character}}", CURSOR)
        return
    doc = ls.docs.get(uri)
    if doc is None or line < 0 or character < 0:
        return
    doc.cursor = offset_at(doc.text, line, character, ls.encoding)
    doc.last_line = line
    ls.focus(uri)
    ls.schedule_warm(uri)

async def inline_completion(ls: GemmaServer, params: lsp.InlineCompletionParams) -> lsp.InlineCompletionList | None:
    c, _ = await _checked(ls.complete(params.text_document.uri, params.position))
    if c is None or not c.text:
        return lsp.InlineCompletionList(items=[])
    pos = params.position
    return lsp.InlineCompletionList(items=[lsp.InlineCompletionItem(insert_text=c.text, range=lsp.Range(pos, pos))])

async def completion(ls: GemmaServer, params: lsp.CompletionParams) -> lsp.CompletionList:
    """One item. isIncomplete is false once there is an answer: the client then filters
    it as the user types on (a typed-through suggestion stays valid) instead of asking
    again on every keystroke; an empty answer stays incomplete so that typing re-asks."""
    uri = params.text_document.uri
    c, snap = await _checked(ls.complete(uri, params.position))
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
        uri = str(_field(_field(params, "textDocument"), "uri"))
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


def create_server(cli_overrides: dict[str, Any] | None = None) -> GemmaServer:
    ls = GemmaServer(cli_overrides)
    for method, options, handler in HANDLERS:
        ls.feature(method, options)(handler)
    return ls


def _preload(ls: GemmaServer):
    def load() -> None:
        try:
            ls.ensure_completer()
        except Exception as e:  # reported again, per request, when a completion needs the model
            log.error("model load failed: %s", e)
    return load


async def _checked(coro):
    """Turn user-actionable errors into a JSON-RPC error response, not an internal error."""
    try:
        return await coro
    except GemmaLspError as e:
        raise JsonRpcException.from_error(lsp.ResponseError(code=REQUEST_FAILED, message=str(e))) from None


def _field(obj: Any, name: str) -> Any:
    """A field of untyped params, which pygls hands over as an object or a dict."""
    return obj[name] if isinstance(obj, dict) else getattr(obj, name)


def _path(uri: str) -> str:
    p = urlparse(uri)
    return unquote(p.path) if p.scheme == "file" else uri


def serve(settings_overrides: Settings | dict[str, Any] | None = None, tcp_port: int | None = None) -> None:
    from . import faults

    faults.announce()
    overrides = settings_overrides if isinstance(settings_overrides, dict) else {}
    ls = create_server(overrides)
    ls.count_engine = True  # an editor's server: its engine shares the cores with the others here
    threads.watch()
    if tcp_port is not None:
        ls.start_tcp("127.0.0.1", tcp_port)  # loopback only, by contract
    else:
        ls.start_io()
