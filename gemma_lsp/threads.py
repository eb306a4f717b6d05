"""How many threads an engine uses: the cores that other programs leave it.

Two editor windows that each run `gemma-lsp serve` in process hold two engines. Each used
every core, their OpenMP threads spun waiting for threads the other process had pushed off
the cores, and each ran 5-10x slower (measured on a 2-core AMD EPYC: decode 43 -> 150-390
ms a token, prompt passes 125 -> 19-43 tok/s); with 1 thread each, 72-87 ms and 53-67 tok/s,
the machine's speed shared. Any busy program does the same: beside one busy loop an engine
with 2 threads decoded at 156-179 ms a token, with 1 thread at 60-82 ms. (OMP_WAIT_POLICY=
PASSIVE also stops the spinning, but cost a lone engine 25-45 % of its decode speed.)

So a sampler thread (`Load`, /proc/stat every half second) keeps an average of the cores
that processes other than this one keep busy, and before each request (`share`, at most
once a second) the engine sets torch's threads, which our kernels' `at::parallel_for`
follows, to the cores left. Engines of other windows count while they work and cost
nothing while idle. One shared engine for all windows (`"backend": "local"`) is better
still: one model in memory, all cores for whichever window asks.

Each engine process (`serve`, `engine`; not library use) also holds an exclusive flock on
`<cache>/engines/<pid>.lock` for its life, so doctor and the log can say how many engines
of this user run here; a file nobody holds belongs to a process that died and is removed.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from pathlib import Path
from typing import IO

import torch

from .paths import cache_dir

log = logging.getLogger("gemma_lsp.threads")

CORES = torch.get_num_threads()  # torch's default at import: the physical cores this process may use
CHECK_S = 1.0  # how often at most `share` changes the thread count (a request start reads the load)

_held: IO[str] | None = None  # our lock file, open (and locked) for the process's life
_dir: Path | None = None
_last = -CHECK_S


class Load:
    """The cores that other processes keep busy: an average over the last few seconds.

    Machine-wide busy time from /proc/stat less this process's own CPU time (os.times(),
    every thread of ours), every `SAMPLE_S`, smoothed by `decay`; 0 where /proc/stat is
    not there. Reading two small files twice a second costs nothing next to a forward."""

    SAMPLE_S = 0.5

    def __init__(self, decay: float = 0.6) -> None:
        self.decay = decay
        self.others = 0.0  # cores busy with other processes (EMA)
        self._prev = self._sample()
        self._thread: threading.Thread | None = None

    @staticmethod
    def _sample() -> tuple[float, float, float] | None:
        """(wall s, machine busy core-s, our core-s), or None without /proc/stat."""
        try:
            with open("/proc/stat", encoding="ascii") as f:
                fields = [int(v) for v in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        tick = os.sysconf("SC_CLK_TCK")
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        t = os.times()
        return time.monotonic(), (sum(fields[:8]) - idle) / tick, t.user + t.system

    def update(self) -> float:
        now = self._sample()
        if now is not None and self._prev is not None and now[0] > self._prev[0]:
            wall = now[0] - self._prev[0]
            others = max(0.0, ((now[1] - self._prev[1]) - (now[2] - self._prev[2])) / wall)
            self.others = self.decay * self.others + (1 - self.decay) * others
        self._prev = now
        return self.others

    def since_start(self) -> float:
        """Cores other processes kept busy since this Load was made (one unsmoothed sample)."""
        return self.update() / (1 - self.decay)

    def start(self) -> None:
        if self._thread is None and self._prev is not None:
            self._thread = threading.Thread(target=self._run, name="gemma-load", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            time.sleep(self.SAMPLE_S)
            self.update()


_load: Load | None = None


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
    watch()


def watch() -> None:
    """Start sampling the machine's load (idempotent): `serve` calls it at start-up, so that
    the first request, right after the model load, already knows what else runs."""
    global _load
    if _load is None:
        _load = Load()
        _load.start()


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


def share_for(others: float, cores: int = CORES) -> int:
    """Threads for an engine on `cores` cores while `others` of them are kept busy by other
    programs, other engines included while they work (half a core counts as one: a busy
    loop beside our 2 threads got only 2/3 of a core): the rest, at least one. An idle
    engine in another window costs nothing."""
    return max(1, cores - int(others + 0.5))


def share() -> int:
    """Set torch's threads to this engine's share of the cores now; returns it."""
    global _last
    now = time.monotonic()
    if _held is None or now - _last < CHECK_S:
        return torch.get_num_threads()
    _last = now
    others = _load.others if _load is not None else 0.0
    want = share_for(others)
    if want != torch.get_num_threads():
        torch.set_num_threads(want)
        if want < CORES:
            n = engines()
            log.warning("other programs keep %.1f of %d cores busy (%d gemma-lsp engine%s of this user run here): "
                        "this engine uses %d thread%s%s", others, CORES, n, "s" if n > 1 else "", want,
                        "s" if want > 1 else "",
                        "; with \"backend\": \"local\" all windows share one engine" if n > 1 else "")
        else:
            log.info("the cores are free again: %d threads", want)
    return want
