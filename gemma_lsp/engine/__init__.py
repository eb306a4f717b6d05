"""The engine: token ids in, token ids and stats out. It knows nothing of LSP or text."""

from .request import GenerateRequest, GenerateResult, Stats
from .speculative import Engine

__all__ = ["Engine", "GenerateRequest", "GenerateResult", "Stats"]
