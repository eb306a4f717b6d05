"""A benchmark's LSP client: `gemma-lsp serve` as a subprocess, driven as an editor would.

`lsp_session(args)` starts the server with the bench's server options, initializes with
utf-16 positions and inline completion, waits for the model in a throwaway document, and
yields a small handle: open / change / inline / stats. Its stderr is drained (a full pipe
would stall the server) and its tail is shown when a call fails.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import os
import sys
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from gemma_lsp.config import FIELDS

UTF16 = "utf-16"
IO_TIMEOUT_S = 600.0  # a single answer never takes this long; a hung server must not hang the bench


def plain(x: Any) -> Any:
    """pygls' client turns untyped results into namedtuples; make them dicts."""
    if hasattr(x, "_asdict"):
        return {k: plain(v) for k, v in x._asdict().items()}
    if isinstance(x, list):
        return [plain(v) for v in x]
    return x


@dataclass
class Session:
    client: Any
    encoding: str = UTF16
    ready_s: float = 0.0
    stderr_tail: collections.deque = field(default_factory=lambda: collections.deque(maxlen=40))
    process: asyncio.subprocess.Process | None = None  # the server: a call fails at once if it exits

    async def call(self, coro, what: str):
        task = asyncio.ensure_future(coro)
        exited = asyncio.ensure_future(self.process.wait()) if self.process is not None else None
        try:
            done, _ = await asyncio.wait([task, *([exited] if exited else [])], timeout=IO_TIMEOUT_S,
                                         return_when=asyncio.FIRST_COMPLETED)
            if task not in done:
                task.cancel()
                raise TimeoutError(f"no answer in {IO_TIMEOUT_S:.0f} s" if not done else
                                   f"the server exited with status {self.process.returncode}")
            return task.result()
        except Exception as e:
            tail = "".join(self.stderr_tail)[-3000:]
            raise RuntimeError(f"{what} failed: {e!r}\n--- server stderr (tail) ---\n{tail}") from e
        finally:
            if exited is not None:
                exited.cancel()

    async def stats(self) -> dict[str, Any]:
        return plain(await self.call(self.client.protocol.send_request_async("gemma/stats", None), "gemma/stats"))

    def open(self, uri: str, text: str, language: str = "python") -> None:
        from lsprotocol import types as lsp

        self.client.text_document_did_open(lsp.DidOpenTextDocumentParams(lsp.TextDocumentItem(uri, language, 1, text)))

    def change(self, uri: str, version: int, at, text: str) -> None:
        """Insert `text` at position `at` (an lsp.Position)."""
        from lsprotocol import types as lsp

        self.client.text_document_did_change(lsp.DidChangeTextDocumentParams(
            lsp.VersionedTextDocumentIdentifier(uri=uri, version=version),
            [lsp.TextDocumentContentChangePartial(range=lsp.Range(at, at), text=text)]))

    def inline_request(self, uri: str, pos):
        from lsprotocol import types as lsp

        return self.client.text_document_inline_completion_async(lsp.InlineCompletionParams(
            context=lsp.InlineCompletionContext(trigger_kind=lsp.InlineCompletionTriggerKind.Automatic),
            text_document=lsp.TextDocumentIdentifier(uri), position=pos))

    async def inline(self, uri: str, pos):
        return await self.call(self.inline_request(uri, pos), f"completion in {uri}")


def server_options(args: argparse.Namespace) -> dict[str, Any]:
    """The settings a bench passes to the server: those of the schema given on its command
    line (a bench's flag has the setting's field name as its dest)."""
    return {key: getattr(args, f.name) for key, f in FIELDS.items() if getattr(args, f.name, None) is not None}


async def start_child(client: Any, *argv: str) -> tuple[asyncio.subprocess.Process, threading.Event, asyncio.Task]:
    """Start the server as our own child process and connect `client` to its stdio, with
    pygls' public pieces (its own `start_io` keeps the process in a private field, and the
    benchmark needs the stderr and the pid). Returns the process, the reader loop's stop
    event and the loop's task."""
    from pygls.io_ import run_async

    PIPE = asyncio.subprocess.PIPE
    server = await asyncio.create_subprocess_exec(*argv, stdin=PIPE, stdout=PIPE, stderr=PIPE)
    assert server.stdin is not None and server.stdout is not None
    client.protocol.set_writer(server.stdin)
    stop = threading.Event()
    reading = asyncio.create_task(run_async(stop_event=stop, reader=server.stdout, protocol=client.protocol,
                                            error_handler=client.report_server_error))
    return server, stop, reading


@contextlib.asynccontextmanager
async def lsp_session(args: argparse.Namespace) -> AsyncIterator[Session]:
    from lsprotocol import types as lsp
    from pygls.lsp.client import LanguageClient

    client = LanguageClient("gemma-lsp-bench", "0")
    s = Session(client)
    log = open(args.server_log, "w", encoding="utf-8") if getattr(args, "server_log", None) else None
    t_start = time.perf_counter()
    server, stop, reading = await start_child(client, sys.executable, "-m", "gemma_lsp", "serve")
    s.process = server

    async def drain() -> None:
        assert server is not None and server.stderr is not None
        while line := await server.stderr.readline():
            text = line.decode("utf-8", "replace")
            s.stderr_tail.append(text)
            if log is not None:
                log.write(text)

    drainer = asyncio.create_task(drain())
    caps = lsp.ClientCapabilities(
        general=lsp.GeneralClientCapabilities(position_encodings=[UTF16]),
        text_document=lsp.TextDocumentClientCapabilities(
            synchronization=lsp.TextDocumentSyncClientCapabilities(did_save=False),
            inline_completion=lsp.InlineCompletionClientCapabilities()))
    try:
        init = await s.call(client.initialize_async(lsp.InitializeParams(
            capabilities=caps, process_id=os.getpid(), root_uri="file:///bench",
            initialization_options={"gemmaLsp": server_options(args)})), "initialize")
        enc = init.capabilities.position_encoding or UTF16
        s.encoding = str(getattr(enc, "value", enc))
        client.initialized(lsp.InitializedParams())
        s.open("file:///bench/load.py", "def add(a, b):\n    ")  # waits for the model load
        await s.inline("file:///bench/load.py", lsp.Position(1, 4))
        client.text_document_did_close(lsp.DidCloseTextDocumentParams(lsp.TextDocumentIdentifier("file:///bench/load.py")))
        s.ready_s = time.perf_counter() - t_start
        yield s
    finally:
        try:
            await asyncio.wait_for(client.shutdown_async(None), 30)
            client.exit(None)
            await asyncio.wait_for(server.wait(), 30)
        except Exception:
            if server.returncode is None:
                server.kill()
                await server.wait()
        stop.set()
        await asyncio.wait_for(reading, 30)  # the server's stdout ended with it
        drainer.cancel()
        if log is not None:
            log.close()
