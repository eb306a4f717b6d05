"""The engine: token ids in, token ids and stats out. It knows nothing of LSP or text."""

from .speculative import Engine, GenerateRequest, GenerateResult, Stats

__all__ = ["Engine", "GenerateRequest", "GenerateResult", "Stats"]
