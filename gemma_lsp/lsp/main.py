"""The server put together: every handler registered on a `GemmaServer`, then a transport
(stdio, or TCP on loopback only)."""

from __future__ import annotations

from typing import Any

from .. import faults, threads
from ..config import Settings
from .handlers import HANDLERS
from .server import GemmaServer


def create_server(cli_overrides: dict[str, Any] | None = None) -> GemmaServer:
    ls = GemmaServer(cli_overrides)
    for method, options, handler in HANDLERS:
        ls.feature(method, options)(handler)
    return ls


def serve(settings_overrides: Settings | dict[str, Any] | None = None, tcp_port: int | None = None) -> None:
    faults.announce()
    overrides = settings_overrides if isinstance(settings_overrides, dict) else {}
    ls = create_server(overrides)
    ls.count_engine = True  # an editor's server: its engine shares the cores with the others here
    threads.watch()
    if tcp_port is not None:
        ls.start_tcp("127.0.0.1", tcp_port)  # loopback only, by contract
    else:
        ls.start_io()
