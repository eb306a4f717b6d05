"""The seam below the completer: who runs the model.

The completer builds a `GenerateRequest` (token ids, stop rules, time policy) and hands
it to a `Backend`; it never knows whether the ids go to an engine in this process, to the
shared engine daemon of this user (`local`), or to an OpenAI-compatible server (vLLM,
SGLang, llama-server). Every backend applies the same stop rules (`engine.request.emit`)
and time policy (`DecodeClock`), so an answer means the same thing whoever computed it.
"""

from __future__ import annotations

from ..engine.request import Backend

__all__ = ["Backend"]
