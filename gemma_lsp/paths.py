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
