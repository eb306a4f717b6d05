"""One engine thread, a cancel event per request, newest request per document wins.

Handlers are async and await `Scheduler.run`; the stdin loop never blocks.
A request's event is set when (a) the client sends $/cancelRequest (the handler's
task is cancelled), (b) a newer request arrives for the same document, or (c)
the server shuts down. The engine checks the event between forward passes.

Background work (warming the KV cache while the user pauses) has the lowest priority:
at most one such job is pending, a newer one replaces it, and any real request sets its
event, so a request never waits for more than the one forward (a prefill chunk) that is
running when it arrives.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


class Superseded(Exception):
    """A newer request for the same document replaced this one."""


class Overdue(Exception):
    """The request was not done within its limit (a forward pass stuck, a machine overloaded).

    Its stop event is set, so the engine drops it at the next forward it finishes. `loading`:
    a model load ahead of it had not ended."""

    def __init__(self, loading: bool = False) -> None:
        super().__init__()
        self.loading = loading


class Scheduler:
    def __init__(self) -> None:
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gemma-engine")
        self._latest: dict[str, threading.Event] = {}
        self._all: set[threading.Event] = set()
        self._background: threading.Event | None = None  # the pending or running low-priority job
        self._loads: set[asyncio.Future] = set()  # model loads queued or running (submit)

    async def run(self, key: str, fn: Callable[[threading.Event], T], limit_s: float | None = None,
                  load_limit_s: float | None = None) -> T:
        """Run fn(stop_event) on the engine thread; supersede the previous request for `key`.
        Past `limit_s` (counted from now, queueing included, but not a model load ahead of it,
        which `load_limit_s` bounds) raise Overdue instead of waiting: the client gets its
        answer even when the engine thread cannot give one. A first request queued behind a
        15 s model load is not late: counting the load answered it with an error on a slow or
        busy machine. A request queued behind a stuck forward still is."""
        self.preempt()
        stop = threading.Event()
        old = self._latest.get(key)
        if old is not None:
            old.set()
        self._latest[key] = stop
        self._all.add(stop)
        loads = list(self._loads)

        def guarded(ev: threading.Event) -> T:
            if ev.is_set():  # superseded or cancelled while queued: skip the work
                raise Superseded()
            return fn(ev)

        job = asyncio.get_running_loop().run_in_executor(self.executor, guarded, stop)
        try:
            if limit_s is None:
                return await job
            try:
                if loads:  # the job waits behind them in the queue
                    await asyncio.wait_for(asyncio.shield(asyncio.wait(loads)), load_limit_s)
                return await asyncio.wait_for(asyncio.shield(job), limit_s)
            except asyncio.TimeoutError:
                stop.set()
                job.add_done_callback(lambda f: f.cancelled() or f.exception())  # its outcome is nobody's now
                raise Overdue(loading=not all(f.done() for f in loads)) from None
        except asyncio.CancelledError:
            stop.set()  # $/cancelRequest: the engine stops within one forward
            raise
        finally:
            self._all.discard(stop)
            if self._latest.get(key) is stop:
                del self._latest[key]

    def supersede(self, key: str) -> None:
        """Stop the running or queued request for `key` (it will be answered empty)."""
        old = self._latest.pop(key, None)
        if old is not None:
            old.set()

    def preempt(self) -> None:
        """Stop the background job, if any: a real request is coming."""
        if self._background is not None:
            self._background.set()
            self._background = None

    async def run_background(self, fn: Callable[[threading.Event], T]) -> T | None:
        """Run fn(stop_event) on the engine thread at the lowest priority; None if it was
        preempted before it started. fn itself must return soon after the event is set."""
        self.preempt()
        stop = self._background = threading.Event()
        self._all.add(stop)

        def guarded(ev: threading.Event) -> T | None:
            return None if ev.is_set() else fn(ev)

        try:
            return await asyncio.get_running_loop().run_in_executor(self.executor, guarded, stop)
        except asyncio.CancelledError:
            stop.set()
            raise
        finally:
            self._all.discard(stop)
            if self._background is stop:
                self._background = None

    @property
    def busy(self) -> bool:
        """A request is queued or running."""
        return bool(self._latest)

    def submit(self, fn: Callable[[], T]) -> "asyncio.Future[T]":
        """A model load on the engine thread, in queue order with requests (which do not
        count the time they wait for it against their limit)."""
        job = asyncio.get_running_loop().run_in_executor(self.executor, fn)
        self._loads.add(job)
        job.add_done_callback(self._loads.discard)
        return job

    def shutdown(self) -> None:
        for ev in list(self._all):
            ev.set()
        self.executor.shutdown(wait=False, cancel_futures=True)
