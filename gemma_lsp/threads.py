"""The cores shared out between the engine processes of one user on one machine.

Two editor windows that each run `gemma-lsp serve` in process hold two engines. Each used
every core, their OpenMP threads spun waiting for threads the other process had pushed off
the cores, and each ran 5-10x slower (measured on a 2-core AMD EPYC: decode 43 -> 200-500
ms a token, prompt passes 133 -> 17-41 tok/s). With cores // N threads each they ran at the
machine's speed shared: 81 ms a token, 66 tok/s each. (OMP_WAIT_POLICY=PASSIVE also stops
the spinning, but cost a lone engine ~25 % of its decode speed.) One shared engine for all
windows (`backend: local`) avoids the split altogether; this is for the engines that exist.

Each engine process holds an exclusive flock on `<cache>/engines/<pid>.lock` for its life;
a file nobody holds belongs to a process that died and is removed. Before each request
(`share`, at most once a second) an engine counts the live ones and sets torch's threads,
which our kernels' `at::parallel_for` follows. Engines of other users are not seen: their
files would live in their own cache directories.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from pathlib import Path
from typing import IO

import torch

from .paths import cache_dir

log = logging.getLogger("gemma_lsp.threads")

CORES = torch.get_num_threads()  # torch's default at import: the physical cores this process may use
CHECK_S = 1.0  # how often at most `share` looks at the other engines

_held: IO[str] | None = None  # our lock file, open (and locked) for the process's life
_dir: Path | None = None
_last = -CHECK_S


def directory() -> Path:
    return cache_dir() / "engines"


def register() -> None:
    """Count this process among the engines, until it exits (idempotent)."""
    global _held, _dir
    if _held is not None:
        return
    d = directory()
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{os.getpid()}.lock"
    while True:
        f = open(path, "a+", encoding="utf-8")  # noqa: SIM115 (held for the process's life)
        fcntl.flock(f, fcntl.LOCK_EX)
        try:  # another engine may have removed it as stale between our open and our lock
            if os.fstat(f.fileno()).st_ino == os.stat(path).st_ino:
                break
        except FileNotFoundError:
            pass
        f.close()
    _held, _dir = f, d


def engines(where: Path | None = None) -> int:
    """Engine processes alive now under `where` (default: this user's), this one included."""
    d = where or _dir or directory()
    mine = f"{os.getpid()}.lock" if _held is not None else None
    n = 0
    for p in d.glob("*.lock") if d.is_dir() else ():
        if p.name == mine:
            n += 1
            continue
        try:
            with open(p, "a+", encoding="utf-8") as f:
                try:
                    fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
                except BlockingIOError:
                    n += 1  # held: that engine is alive
                    continue
                p.unlink(missing_ok=True)  # nobody holds it: its process died
        except OSError:
            continue
    return n


def share_for(n: int, cores: int = CORES) -> int:
    """Threads for one of n engines on `cores` cores: an equal share, at least one."""
    return max(1, cores // max(1, n))


def share() -> int:
    """Set torch's threads to this engine's share of the cores now; returns it."""
    global _last
    now = time.monotonic()
    if _held is None or now - _last < CHECK_S:
        return torch.get_num_threads()
    _last = now
    n = engines()
    want = share_for(n)
    if want != torch.get_num_threads():
        torch.set_num_threads(want)
        if n > 1:
            log.warning("%d gemma-lsp engines run on this machine: this one uses %d of %d cores (with "
                        "\"backend\": \"local\" all windows share one engine and all cores)", n, want, CORES)
        else:
            log.info("the only gemma-lsp engine on this machine again: %d cores", want)
    return want
