"""Settings: one object, merged from initializationOptions < didChangeConfiguration < CLI flags.

Keys are camelCase on the wire (the `gemmaLsp` section); a flat object is accepted too.
Unknown keys are ignored; a known key with a bad value is a clear error.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

from .errors import GemmaLspError
from .names import DRAFTERS

SINGLE_LINE = ("auto", "always", "never")
BACKENDS = ("inprocess", "local")
RETRIEVAL = ("stdlib", "none")
COMPLETE_BUDGET_MS = 120_000  # `gemma-lsp complete` (and its benchmark reference) is not interactive: let the model finish
DTYPES = ("auto", "gguf", "bfloat16", "bf16", "float32", "fp32", "float16", "fp16")  # what engine.models.pick_dtype takes


@dataclass(frozen=True)
class Settings:
    model: str | None = None  # path to a HF dir or .gguf, a preset name, or None for the default
    draft_model: str | None = None
    drafter: str = "auto"
    max_tokens: int = 64
    single_line: str = "auto"
    time_budget_ms: int = 1800  # per completion: keeps keystroke latency p95 near 2 s on a 2-core CPU
    temperature: float = 0.0
    top_p: float = 1.0
    prefix_tokens: int = 1024
    suffix_tokens: int = 256
    extra_tokens: int = 512
    dtype: str = "auto"  # auto (CPU: a GGUF's own weights; GPU: bf16) | gguf | bfloat16 | float32 | float16
    device: str = "auto"  # auto | cpu | cuda
    cache_mb: int = 2048
    log_prompts: bool = False
    stop_at_block_end: bool = True  # multi-line: stop decoding once the text leaves the cursor's block
    retrieval: str = "stdlib"  # retrieval drafts for Python from the standard library | "none"
    # Who runs the model: "inprocess" (this process), "local" (one shared engine daemon per user,
    # machine and model), or the base URL of an OpenAI-compatible server ("http://127.0.0.1:8000/v1").
    backend: str = "inprocess"
    backend_model: str | None = None  # the model name a server serves; None: the first of its /v1/models
    api_key_env: str | None = None  # name of the environment variable holding the server's API key

    def merged(self, obj: Any) -> "Settings":
        """A copy with the keys of `obj` (camelCase, optionally under "gemmaLsp") applied."""
        if obj is None:
            return self
        if not isinstance(obj, dict):
            raise GemmaLspError(f"settings must be an object, got {type(obj).__name__}")
        if isinstance(obj.get("gemmaLsp"), dict):
            obj = obj["gemmaLsp"]
        changes: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            key = _camel(f.name)
            if key in obj or f.name in obj:
                changes[f.name] = _check(f.name, obj[key] if key in obj else obj[f.name])
        return dataclasses.replace(self, **changes)

    def merged_lenient(self, obj: Any) -> tuple["Settings", list[str]]:
        """Like `merged`, but a bad value drops only its own key; returns the errors to report."""
        try:
            return self.merged(obj), []
        except GemmaLspError:
            pass
        if isinstance(obj, dict) and isinstance(obj.get("gemmaLsp"), dict):
            obj = obj["gemmaLsp"]
        if not isinstance(obj, dict):
            return self, [f"settings must be an object, got {type(obj).__name__}"]
        out, errors = self, []
        for key, value in obj.items():
            try:
                out = out.merged({key: value})
            except GemmaLspError as e:
                errors.append(str(e))
        return out, errors

    def changed(self) -> dict[str, Any]:
        """The settings that differ from the defaults, by wire name: what a user set, for the
        log (so "did my setting reach the server?" has an answer). Values only, never text."""
        default = Settings()
        return {_camel(f.name): getattr(self, f.name) for f in dataclasses.fields(self)
                if getattr(self, f.name) != getattr(default, f.name)}

    def engine_key(self) -> tuple[Any, ...]:
        """Settings that need a model reload when they change."""
        return (self.model, self.draft_model, self.dtype, self.device, self.backend, self.backend_model, self.api_key_env)


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(w.title() for w in rest)


def _check(name: str, value: Any) -> Any:
    key = _camel(name)
    if name in ("model", "draft_model", "backend_model"):
        if value is not None and not isinstance(value, str):
            raise GemmaLspError(f"{key} must be a string or null")
        return value or None
    if name == "backend":
        if not isinstance(value, str) or not (value in BACKENDS or value.startswith(("http://", "https://"))):
            raise GemmaLspError(f"backend must be {' or '.join(map(repr, BACKENDS))} or an http(s):// base URL; got {value!r}")
        return value.rstrip("/") if value.startswith("http") else value
    if name == "api_key_env":
        if value is not None and not (isinstance(value, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value)):
            raise GemmaLspError(f"apiKeyEnv must name an environment variable (the key itself never goes in settings); got {value!r}")
        return value or None
    if name == "drafter":
        if value not in DRAFTERS:
            raise GemmaLspError(f"drafter must be one of {', '.join(DRAFTERS)}; got {value!r}")
        return value
    if name == "retrieval":
        if value not in RETRIEVAL:
            raise GemmaLspError(f"retrieval must be one of {', '.join(RETRIEVAL)}; got {value!r}")
        return value
    if name == "single_line":
        if value not in SINGLE_LINE:
            raise GemmaLspError(f"singleLine must be one of {', '.join(SINGLE_LINE)}; got {value!r}")
        return value
    if name in ("dtype", "device"):
        if not isinstance(value, str):
            raise GemmaLspError(f"{key} must be a string")
        if name == "dtype" and value not in DTYPES:
            raise GemmaLspError(f"dtype must be one of {', '.join(DTYPES)}; got {value!r}")
        return value
    if name in ("log_prompts", "stop_at_block_end"):
        if not isinstance(value, bool):
            raise GemmaLspError(f"{key} must be true or false")
        return value
    if name in ("temperature", "top_p"):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise GemmaLspError(f"{key} must be a non-negative number")
        if name == "top_p" and not 0 < value <= 1:
            raise GemmaLspError("topP must be in (0, 1]")
        return float(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise GemmaLspError(f"{key} must be a positive integer; got {value!r}")
    if name == "max_tokens" and value > 1024:
        raise GemmaLspError("maxTokens must be at most 1024")
    return value
