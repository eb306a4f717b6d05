"""Warming the KV cache while the user pauses (invariant 9): the prompt the next request
will most likely need, prefilled on the engine thread at the lowest priority.

A burst of changes (a paste, 1,000 edits) restarts one idle timer, so it costs one warm-up;
a request preempts it between prefill chunks; it never loads a model.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any, Protocol

from .. import threads
from ..complete.completer import Completer, Snapshot
from ..complete.context import ContextRing
from ..config import Settings
from .documents import Doc, path_of
from .scheduler import Scheduler
from .stats import ServerStats

log = logging.getLogger(__name__)

# A pause this long after the last change warms the KV cache at the cursor (one job at a
# time, preempted by any request): typing never waits for it, a pause pays for it.
WARM_IDLE_S = 0.15


class Host(Protocol):
    """What a warm-up reads of the server (`GemmaServer` is one)."""

    docs: dict[str, Doc]
    settings: Settings
    completer: Completer | None
    ring: ContextRing
    scheduler: Scheduler
    stats: ServerStats

    def loaded_for(self, settings: Settings) -> bool: ...

    def spawn(self, coro: Any) -> None: ...


class Warmer:
    def __init__(self, ls: Host) -> None:
        self.ls = ls
        self._timer: asyncio.TimerHandle | None = None
        self._warmed: tuple | None = None  # what the last warm-up prefilled

    def schedule(self, uri: str) -> None:
        """(Re)start the idle timer."""
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(WARM_IDLE_S, self.start, uri)

    def start(self, uri: str) -> None:
        ls = self.ls
        self._timer = None
        doc = ls.docs.get(uri)
        if doc is None or ls.scheduler.busy:
            return
        offset = len(doc.text) if doc.cursor is None else min(doc.cursor, len(doc.text))
        settings = ls.settings
        key = (uri, doc.text, offset, settings)
        if key == self._warmed:
            return
        self._warmed = key
        snap = Snapshot(uri, doc.text, offset, doc.language, path_of(uri), chunks=ls.ring.chunks(uri))

        def work(stop: threading.Event):
            if ls.completer is None or not ls.loaded_for(settings):
                return None  # never load a model for a warm-up; the preload or a request does
            ls.completer.apply(settings)
            threads.share()
            return ls.completer.warm(snap, settings, stop)

        async def run() -> None:
            try:
                st = await ls.scheduler.run_background(work)
                if st is not None and st.tokens:
                    ls.stats.add_warmup(st)
                    log.debug("warm-up: %d prompt tokens, %d reused, %.0f ms", st.prompt_tokens,
                              st.reused_tokens, st.prefill_ms)
            except Exception as e:  # background work: never surfaces to the client
                log.debug("warm-up ended: %r", e)

        ls.spawn(run())
