"""The `local` backend: find this user's engine daemon for the model, or start it.

One daemon per (user, machine, model settings): its socket name is a hash of the settings
that decide what the engine loads, so two windows with the same model share one engine and
a window with another model gets its own. Starting is race-free: the daemon holds an
exclusive lock on `<socket>.lock` for its whole life, so a second one started at the same
moment sees the lock taken and leaves the first to serve.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from ..config import Settings
from ..engine import Stats
from ..errors import BackendError
from ..paths import cache_dir
from .http import Http
from .openai import OpenAIBackend

log = logging.getLogger(__name__)

START_TIMEOUT_S = 900.0  # a first start may prepare the default model (~4 min on 2 cores)
IDLE_EXIT_S = 300.0  # how long the daemon outlives its last client
LOG_KEEP_BYTES = 4 << 20  # a daemon log past this at a start moves to `.log.1` (one older copy kept)


def runtime_dir() -> Path:
    """A directory only this user can enter: $XDG_RUNTIME_DIR/gemma-lsp, else the cache dir's run/."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    d = Path(base) / "gemma-lsp" if base and Path(base).is_dir() else cache_dir() / "run"
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    st = d.stat()
    if st.st_uid != os.getuid():
        raise BackendError(f"{d} belongs to another user: refusing to put the engine's socket there")
    if st.st_mode & 0o077:
        os.chmod(d, 0o700)
    return d


def engine_args(settings: Settings) -> list[str]:
    """The `gemma-lsp engine` flags that decide what it loads and keeps."""
    args = ["--cache-mb", str(settings.cache_mb), "--retrieval", settings.retrieval,
            "--dtype", settings.dtype, "--device", settings.device]
    if settings.model:
        args += ["--model", settings.model]
    if settings.draft_model:
        args += ["--draft-model", settings.draft_model]
    return args


def socket_path(settings: Settings) -> Path:
    key = hashlib.sha256("\0".join(engine_args(settings)).encode()).hexdigest()[:12]
    return runtime_dir() / f"engine-{key}.sock"


def hold_lock(path: Path):
    """The daemon's life lock, or None when another daemon holds it."""
    f = open(str(path) + ".lock", "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        return None
    return f


class LocalBackend(OpenAIBackend):
    """The daemon's client: an OpenAI client on its socket that (re)starts the daemon when
    nobody answers, and holds a session open so the daemon knows it is used."""

    def __init__(self, settings: Settings, tokenizer: Any) -> None:
        self.settings = settings
        self.path = socket_path(settings)
        super().__init__(Http(f"unix:{self.path}"), tokenizer, label="local", extensions=True)
        self._session: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._seen = False  # a daemon answered this client before

    def generate(self, req):
        if not self._seen:
            self.ensure()  # the first request finds or starts the daemon; later ones just ask
        try:
            return super().generate(req)
        except BackendError:
            if (req.stop_event is not None and req.stop_event.is_set()) or self._alive():
                raise
            self._down_until = 0.0  # it died under this request: start it and ask once more
            self.ensure()
            return super().generate(req)

    def warm(self, prompt, stop=None, cuts=()):
        if self._session is None or not self._session.is_alive():  # no daemon: never start one for a warm-up
            return Stats(prompt_tokens=len(prompt))
        return super().warm(prompt, stop, cuts)

    def ensure(self) -> None:
        """Connect to the daemon, starting it first if no one answers."""
        with self._start_lock:
            if not self._alive():
                self._start()
            self._seen = True
            self._hold_session()

    def _alive(self) -> bool:
        try:
            self.http.get("/models", timeout=2.0)
            return True
        except BackendError:
            return False

    def _start(self) -> None:
        log_path = self.path.with_suffix(".log")
        cmd = [sys.executable, "-m", "gemma_lsp", "engine", "--socket", str(self.path), *engine_args(self.settings)]
        if self._seen:
            log.warning("the shared engine (%s) went away: starting it again (log: %s)", self.path.name, log_path)
        else:
            log.info("starting the shared engine: %s (log: %s)", self.path.name, log_path)
        rotate(log_path)
        with open(log_path, "ab") as out:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True, close_fds=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._alive():
                log.info("shared engine ready (pid %d)", proc.pid)
                self._ready = False
                return
            code = proc.poll()
            if code not in (None, 0):
                raise BackendError(f"the shared engine failed to start (exit {code}): {_tail(log_path)}")
            time.sleep(0.25)  # exit 0: another daemon took the lock first; it will answer
        raise BackendError(f"the shared engine did not answer within {START_TIMEOUT_S:.0f} s; see {log_path}")

    def _hold_session(self) -> None:
        if self._session is not None and self._session.is_alive():
            return

        def hold() -> None:
            try:
                for _ in self.http.stream_get("~/gemma/session"):
                    pass
            except Exception as e:  # the daemon went away; the next request restarts it
                log.debug("engine session ended: %r", e)

        self._session = threading.Thread(target=hold, name="engine-session", daemon=True)
        self._session.start()


def rotate(path: Path, keep: int = LOG_KEEP_BYTES) -> None:
    """Every start appends to the daemon's log; a machine that runs for months must not
    fill its disk with it. Past `keep` bytes the log becomes `<log>.1` (replacing the last
    one), so at most ~2 × `keep` stays, and the newest start's lines are always whole."""
    try:
        if path.stat().st_size > keep:
            os.replace(path, path.with_name(path.name + ".1"))
    except FileNotFoundError:
        pass


def _tail(path: Path, n: int = 600) -> str:
    try:
        return path.read_text(errors="replace")[-n:].strip() or "(empty log)"
    except OSError:
        return "(no log)"
