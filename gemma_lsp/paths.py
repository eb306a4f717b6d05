"""Where gemma-lsp keeps its files.

Everything lives under the user cache dir (platformdirs), overridable with
GEMMA_LSP_CACHE so tests and CI can use a scratch location.
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs


def cache_dir() -> Path:
    env = os.environ.get("GEMMA_LSP_CACHE")
    return Path(env) if env else Path(platformdirs.user_cache_dir("gemma-lsp"))


def models_dir() -> Path:
    return cache_dir() / "models"


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` so that a reader sees the old file or the whole new one, never a
    half-written one (a kill or a full disk mid-write leaves at most a temporary file)."""
    import tempfile

    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
