"""Settings: one object, merged from initializationOptions < didChangeConfiguration < CLI flags.

Keys are camelCase on the wire (the `gemmaLsp` section); a flat object is accepted too.
Unknown keys are ignored; a known key with a bad value is a clear error.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import GemmaLspError
from .names import DRAFTERS

SINGLE_LINE = ("auto", "always", "never")
BACKENDS = ("inprocess", "local")
RETRIEVAL = ("stdlib", "none")
COMPLETE_BUDGET_MS = 120_000  # `gemma-lsp complete` (and its benchmark reference) is not interactive: let the model finish
DTYPES = ("auto", "gguf", "bfloat16", "bf16", "float32", "fp32", "float16", "fp16")  # what models.loader.pick_dtype takes


# --- checks: each takes (wire key, value) and returns the value to keep, or raises --------

Check = Callable[[str, Any], Any]


def optional_str(key: str, value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise GemmaLspError(f"{key} must be a string or null")
    return value or None


def choice(*allowed: str) -> Check:
    def check(key: str, value: Any) -> str:
        if value not in allowed:
            raise GemmaLspError(f"{key} must be one of {', '.join(allowed)}; got {value!r}")
        return value
    check.choices = allowed  # type: ignore[attr-defined]  # the CLI's choices and the editors' enums
    return check


def positive_int(most: int | None = None) -> Check:
    def check(key: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise GemmaLspError(f"{key} must be a positive integer; got {value!r}")
        if most is not None and value > most:
            raise GemmaLspError(f"{key} must be at most {most}")
        return value
    check.kind = int  # type: ignore[attr-defined]
    return check


def number(most: float | None = None) -> Check:
    """A non-negative number; with `most`, in (0, most]."""
    def check(key: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise GemmaLspError(f"{key} must be a non-negative number")
        if most is not None and not 0 < value <= most:
            raise GemmaLspError(f"{key} must be in (0, {most:g}]")
        return float(value)
    check.kind = float  # type: ignore[attr-defined]
    return check


def boolean(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise GemmaLspError(f"{key} must be true or false")
    return value


def device_name(key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise GemmaLspError(f"{key} must be a string")
    return value


def backend_value(key: str, value: Any) -> str:
    if not isinstance(value, str) or not (value in BACKENDS or value.startswith(("http://", "https://"))):
        raise GemmaLspError(f"backend must be {' or '.join(map(repr, BACKENDS))} or an http(s):// base URL; got {value!r}")
    return value.rstrip("/") if value.startswith("http") else value


def env_name(key: str, value: Any) -> str | None:
    if value is not None and not (isinstance(value, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value)):
        raise GemmaLspError(f"apiKeyEnv must name an environment variable (the key itself never goes in settings); got {value!r}")
    return value or None


def setting(default: Any, check: Check, doc: str, *, flag: bool = False, reload: bool = False) -> Any:
    """One setting's whole schema: default, check, what it means (the CLI's help), whether
    the commands take it as a flag, and whether changing it reloads the model (engine key)."""
    return dataclasses.field(default=default, metadata={"check": check, "doc": doc, "flag": flag, "reload": reload})


@dataclass(frozen=True)
class Settings:
    model: str | None = setting(None, optional_str, "HF model directory, .gguf file, or preset "
                                "(default: the embedded Qwen2.5-Coder-1.5B)", flag=True, reload=True)
    draft_model: str | None = setting(None, optional_str, "draft model (same tokenizer as the model) for the "
                                      "model drafter", flag=True, reload=True)
    drafter: str = setting("auto", choice(*DRAFTERS), "speculative drafter", flag=True)
    max_tokens: int = setting(64, positive_int(1024), "maximum new tokens", flag=True)
    single_line: str = setting("auto", choice(*SINGLE_LINE), "auto: only the current line when text follows the "
                               "cursor", flag=True)
    # per completion: keeps keystroke latency p95 near 2 s on a 2-core CPU
    time_budget_ms: int = setting(1800, positive_int(), "decoding time budget, the prompt pass not counted", flag=True)
    temperature: float = setting(0.0, number(), "0 is greedy")
    top_p: float = setting(1.0, number(1.0), "nucleus sampling")
    prefix_tokens: int = setting(1024, positive_int(), "prompt budget before the cursor")
    suffix_tokens: int = setting(256, positive_int(), "prompt budget after the cursor")
    extra_tokens: int = setting(512, positive_int(), "prompt budget for other open files")
    dtype: str = setting("auto", choice(*DTYPES), "auto (CPU: a GGUF model runs its own int4/int8 weights) | gguf | "
                         "bfloat16 | float32 | float16", flag=True, reload=True)
    device: str = setting("auto", device_name, "auto | cpu | cuda", flag=True, reload=True)
    cache_mb: int = setting(2048, positive_int(), "KV prefix cache size in MiB", flag=True)
    log_prompts: bool = setting(False, boolean, "log prompt text at debug level")
    stop_at_block_end: bool = setting(True, boolean, "multi-line: stop once the text leaves the cursor's block")
    retrieval: str = setting("stdlib", choice(*RETRIEVAL), "retrieval drafts for Python from the standard library, "
                             "or none", flag=True)
    # Who runs the model: "inprocess" (this process), "local" (one shared engine daemon per user,
    # machine and model), or the base URL of an OpenAI-compatible server ("http://127.0.0.1:8000/v1").
    backend: str = setting("inprocess", backend_value, "inprocess | local (one shared engine per user and model) | "
                           "an OpenAI-compatible server's base URL, e.g. http://127.0.0.1:8000/v1", flag=True,
                           reload=True)
    backend_model: str | None = setting(None, optional_str, "the model name the server serves (default: the first "
                                        "of /v1/models)", flag=True, reload=True)
    api_key_env: str | None = setting(None, env_name, "name of the environment variable that holds the server's "
                                      "API key", flag=True, reload=True)

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
            key = wire_name(f.name)
            if key in obj or f.name in obj:
                changes[f.name] = f.metadata["check"](key, obj[key] if key in obj else obj[f.name])
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
        return {wire_name(f.name): getattr(self, f.name) for f in dataclasses.fields(self)
                if getattr(self, f.name) != getattr(default, f.name)}

    def engine_key(self) -> tuple[Any, ...]:
        """Settings that need a model reload when they change (`reload=True`)."""
        return tuple(getattr(self, f.name) for f in dataclasses.fields(self) if f.metadata["reload"])


def wire_name(name: str) -> str:
    """The camelCase key of a field (`time_budget_ms` -> `timeBudgetMs`)."""
    head, *rest = name.split("_")
    return head + "".join(w.title() for w in rest)


FIELDS = {wire_name(f.name): f for f in dataclasses.fields(Settings)}  # the schema, by wire name
