"""The seam below the completer: who runs the model.

The completer builds a `GenerateRequest` (token ids, stop rules, time policy) and hands
it to a `Backend`; it never knows whether the ids go to an engine in this process, to the
shared engine daemon of this user (`local`), or to an OpenAI-compatible server (vLLM,
SGLang, llama-server). Every backend applies the same stop rules (`engine.request.emit`)
and time policy (`DecodeClock`), so an answer means the same thing whoever computed it.
"""

from __future__ import annotations

import threading
from typing import Protocol, runtime_checkable

from ..engine import GenerateRequest, GenerateResult, Stats


@runtime_checkable
class Backend(Protocol):
    name: str  # what `gemma/stats` and `--json` report as the backend that answered

    def generate(self, req: GenerateRequest) -> GenerateResult:
        """Run one request to a stop; `req.stop_event` ends it early (reason "cancelled")."""
        ...

    def warm(self, prompt: list[int], stop: threading.Event | None = None) -> Stats:
        """Compute and keep the KV of `prompt` where the backend can; background work."""
        ...
