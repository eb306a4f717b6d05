"""`GemmaServer`: the state behind the handlers (documents, settings, the completer, the
scheduler, counters) and the one way a completion runs: `complete`, which maps every way
it can end to an answer (invariant 6). Handlers are in handlers.py, the wiring in main.py.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
from typing import Any

from lsprotocol import types as lsp
from pygls.io_ import StdoutWriter, run_async
from pygls.lsp.server import LanguageServer

from .. import __version__, faults, threads
from ..complete.completer import Completer, Completion, Snapshot
from ..complete.context import ContextRing
from ..config import Settings
from ..errors import BackendError, GemmaLspError
from ..text import UTF16, offset_at
from .documents import Doc, path_of
from .framing import StdinReader
from .protocol import GemmaProtocol
from .scheduler import Overdue, Scheduler, Superseded
from .stats import ServerStats
from .warmup import Warmer

log = logging.getLogger(__name__)
wire_log = logging.getLogger("pygls.io_")  # pygls' reader loop logs as pygls: logs.Withhold covers it

# A request still not answered after this long gets an error instead (a stuck forward pass,
# an overloaded machine): a cold 1,500-token prompt on a busy 2-core CPU takes ~25 s, the
# editors' own limits are 10 s (eglot, lsp-mode; gemma-lsp.el raises them to 30 s) or none.
REQUEST_LIMIT_S = float(os.environ.get("GEMMA_LSP_REQUEST_LIMIT_S", "28"))
# ... not counting a model load queued ahead of it, which is bounded apart: ~15 s here at
# start-up, minutes the first time (when `prepare` assembles and converts the model).
LOAD_LIMIT_S = float(os.environ.get("GEMMA_LSP_LOAD_LIMIT_S", "300"))


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
        self.warmer = Warmer(self)
        self._down: str | None = None  # the backend's error while it is not answering
        self.count_engine = False  # `serve` sets it: its engine counts among this machine's (threads.py)

    def report_server_error(self, error: Exception, source) -> None:
        log.error("internal error: %s", error)  # never a window/showMessage popup

    # --- transports: pygls' loops over framing.Frames, which answers what pygls would drop

    def start_io(self, stdin=None, stdout=None) -> None:
        self._stop_event = threading.Event()
        self.protocol.set_writer(StdoutWriter(stdout or sys.stdout.buffer))
        reader = self.protocol.frames(StdinReader(stdin or sys.stdin.buffer, self.thread_pool))
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
            await run_async(stop_event=stop, reader=self.protocol.frames(reader), protocol=self.protocol,
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

    def loaded_for(self, settings: Settings) -> bool:
        """Whether the completer loaded is the one `settings` ask for (no reload needed)."""
        return settings.engine_key() == self._engine_key

    def preload(self) -> None:
        """Load the model at start-up, on the engine thread, so the first request finds it."""
        try:
            self.ensure_completer()
        except Exception as e:  # reported again, per request, when a completion needs the model
            log.error("model load failed: %s", e)

    def spawn(self, coro) -> None:
        """Run background work, keeping a reference so it is not collected mid-run."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- requests -----------------------------------------------------------------

    def focus(self, uri: str) -> None:
        """The user works in `uri` now (a request, an edit, a cursor move there): the file they
        left becomes context for the others, so a warm-up builds the prompt a request will."""
        if self.last_uri is not None and self.last_uri != uri and self.last_uri in self.docs:
            prev = self.docs[self.last_uri]  # remember where they were
            self.ring.offer(self.last_uri, path_of(self.last_uri), prev.language, prev.text, prev.last_line)
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
        return Snapshot(uri, doc.text, offset, doc.language, path_of(uri), chunks=self.ring.chunks(uri))

    async def complete(self, uri: str, position: lsp.Position) -> tuple[Completion | None, Snapshot]:
        """Run one completion; None when superseded or cancelled. Also returns the snapshot it
        answers for: the document may change while the engine works."""
        snap = self.snapshot(uri, position)
        settings = self.settings
        if self.completer is not None and self.loaded_for(settings):
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
