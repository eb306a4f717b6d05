"""The `local` backend end to end: two `gemma-lsp serve` processes (two editor windows)
share ONE engine daemon with the real default model. Slow; CI runs it.

  - both answer, one model resident (the daemon's RSS holds it, the servers' do not)
  - killing one client does not disturb the other
  - killing the daemon: the next request starts it again, with a clear log line
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import pytest
from lsprotocol import types as lsp
from pygls.lsp.client import LanguageClient

pytestmark = pytest.mark.slow

TEXT = "def fib(n):\n    if n < 2:\n        return n\n    return \n\n\nprint(fib(10))\n"
CURSOR = lsp.Position(3, 11)


def rss_mb(pid: int) -> int:
    pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") >> 20


def daemons(run_dir: Path) -> list[int]:
    """Engine daemon processes whose socket is under `run_dir`."""
    out = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"engine" in cmd and any(str(run_dir).encode() in c for c in cmd):
            out.append(int(proc.name))
    return out


class Window:
    """One editor window: a real LSP client over stdio with its own `gemma-lsp serve`."""

    def __init__(self, env: dict[str, str], name: str) -> None:
        self.env, self.name = env, name
        self.client = LanguageClient(name, "0")
        self.stderr: list[str] = []

    async def start(self) -> None:
        await self.client.start_io(sys.executable, "-m", "gemma_lsp", "serve", env=self.env)
        self.proc = self.client._server  # our child process (pygls keeps it there)
        self._drain = asyncio.ensure_future(self._read())
        await self.client.initialize_async(lsp.InitializeParams(
            capabilities=lsp.ClientCapabilities(
                general=lsp.GeneralClientCapabilities(position_encodings=[lsp.PositionEncodingKind.Utf16]),
                text_document=lsp.TextDocumentClientCapabilities(inline_completion=lsp.InlineCompletionClientCapabilities())),
            initialization_options={"gemmaLsp": {"backend": "local", "timeBudgetMs": 60000, "singleLine": "always"}}))
        self.client.initialized(lsp.InitializedParams())

    async def _read(self) -> None:
        while line := await self.proc.stderr.readline():
            self.stderr.append(line.decode("utf-8", "replace"))

    async def ask(self, uri: str) -> str:
        self.client.text_document_did_open(lsp.DidOpenTextDocumentParams(lsp.TextDocumentItem(uri, "python", 1, TEXT)))
        res = await asyncio.wait_for(self.client.text_document_inline_completion_async(lsp.InlineCompletionParams(
            context=lsp.InlineCompletionContext(trigger_kind=lsp.InlineCompletionTriggerKind.Invoked),
            text_document=lsp.TextDocumentIdentifier(uri), position=CURSOR)), 600)
        self.client.text_document_did_close(lsp.DidCloseTextDocumentParams(lsp.TextDocumentIdentifier(uri)))
        return res.items[0].insert_text if res.items else ""

    async def stop(self) -> None:
        try:
            await asyncio.wait_for(self.client.shutdown_async(None), 20)
            self.client.exit(None)
            await asyncio.wait_for(self.client.stop(), 20)
        except Exception:
            if self.proc.returncode is None:
                self.proc.kill()
        self._drain.cancel()


async def test_two_windows_share_one_engine(default_model_dir, tmp_path):
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    env = {**os.environ, "XDG_RUNTIME_DIR": str(run)}
    a, b = Window(env, "window-a"), Window(env, "window-b")
    await a.start()
    await b.start()
    try:
        first, second = await asyncio.gather(a.ask("file:///tmp/a1.py"), b.ask("file:///tmp/b1.py"))
        assert "fib(n - 1)" in first.replace("n-1", "n - 1") and first == second, (first, second)
        engines = daemons(run)
        assert len(engines) == 1, engines  # one model process for both windows
        sock = next((run / "gemma-lsp").glob("engine-*.sock"))
        assert oct(sock.stat().st_mode & 0o777) == "0o600" and oct((run / "gemma-lsp").stat().st_mode & 0o777) == "0o700"
        daemon_mb, a_mb, b_mb = rss_mb(engines[0]), rss_mb(a.proc.pid), rss_mb(b.proc.pid)
        print(f"RSS: engine daemon {daemon_mb} MB, window servers {a_mb} MB and {b_mb} MB")
        assert daemon_mb > 1000 and a_mb < daemon_mb / 2 and b_mb < daemon_mb / 2

        # The second window's same file reuses the first's KV: the prefix cache is shared.
        again = await b.ask("file:///tmp/a1.py")
        assert again == first

        # One window goes away (killed, not shut down): the other does not notice.
        a.proc.send_signal(signal.SIGKILL)
        assert await b.ask("file:///tmp/b2.py") == first

        # The daemon dies: the next request starts it again and says so.
        os.kill(engines[0], signal.SIGKILL)
        deadline = time.monotonic() + 10
        while daemons(run) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert await b.ask("file:///tmp/b3.py") == first
        assert len(daemons(run)) == 1
        log = "".join(b.stderr)
        assert "went away: starting it again" in log, log[-2000:]
    finally:
        await b.stop()
        await a.stop()
        for pid in daemons(run):
            os.kill(pid, signal.SIGTERM)
