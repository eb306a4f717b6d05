"""The backend the settings name, opened: the one place that knows every kind of backend.

`inprocess` loads the models here (the engine is the backend); `local` and a URL load only
the tokenizer, since prompts are built here and the ids computed there.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import Settings
from ..models.loader import load_tokenizer
from . import Backend, inprocess
from .http import Http
from .local import LocalBackend
from .openai import OpenAIBackend, api_headers


@dataclass
class Opened:
    tokenizer: object
    backend: Backend
    name: str  # the model, as completions report it
    built: inprocess.Built | None = None  # set only in-process


def open_backend(settings: Settings) -> Opened:
    if settings.backend == "inprocess":
        built = inprocess.from_settings(settings)
        return Opened(built.target.tokenizer, built.engine, built.target.name, built)
    tokenizer, name = load_tokenizer(settings.model)
    if settings.backend == "local":
        return Opened(tokenizer, LocalBackend(settings, tokenizer), name)
    http = Http(settings.backend, api_headers(settings.api_key_env))
    return Opened(tokenizer, OpenAIBackend(http, tokenizer, settings.backend_model), name)
