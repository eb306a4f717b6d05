"""Where gemma-lsp keeps its files.

Everything lives under the user cache dir (platformdirs), overridable with
GEMMA_LSP_CACHE so tests and CI can use a scratch location.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Callable

import platformdirs


def cache_dir() -> Path:
    env = os.environ.get("GEMMA_LSP_CACHE")
    return Path(env) if env else Path(platformdirs.user_cache_dir("gemma-lsp"))


def models_dir() -> Path:
    return cache_dir() / "models"


def replace_atomically(path: Path, write: Callable[[Path], None], suffix: str = "") -> None:
    """Make `path` by `write(tmp)` on a temporary name in the same folder, then one rename:
    a reader sees the old file or the whole new one, never a half-written one (a kill or a
    full disk mid-write leaves at most the temporary file, and an error removes it)."""
    import tempfile

    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        try:
            write(tmp)
        except Exception as e:
            found = os_error_in(e, path)
            if found is None or found is e:
                raise
            raise found from e
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


_OS_ERROR = re.compile(r"\(os error (\d+)\)")


def os_error_in(e: BaseException, where: Path) -> OSError | None:
    """The OS error behind a library's own exception, so that callers need one `except
    OSError`: safetensors' Rust writer reports a full disk (found by a real one, see
    tests/full_disk.py) as `SafetensorError: ... No space left on device (os error 28)`."""
    if isinstance(e, OSError):
        return e
    m = _OS_ERROR.search(str(e))
    return OSError(int(m[1]), os.strerror(int(m[1])), str(where)) if m else None


def write_atomic(path: Path, text: str) -> None:
    """`text` into `path`, atomically (see replace_atomically)."""
    replace_atomically(path, lambda tmp: tmp.write_text(text))
