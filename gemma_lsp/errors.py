"""Errors a user can act on.

Every failure that a user can fix (a missing package, a wrong path, a full disk)
is raised as `GemmaLspError` with the fix in the message, so the CLI can print it
without a traceback and exit non-zero, and the server can answer it as an error.
"""

import errno
from pathlib import Path


class GemmaLspError(Exception):
    """An error whose message tells the user what to do."""


class ModelError(GemmaLspError):
    """A model could not be found, verified, converted or loaded."""


class BackendError(GemmaLspError):
    """The model server could not answer (down, refused, timed out, wrong model).

    The server answers the request with nothing and tells the user once per outage."""


def first_line(e: BaseException) -> str:
    """`Type: first line of the message`: what a user needs of a library's long error."""
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def write_failed(e: OSError, where: Path) -> "ModelError":
    """What to do when a file of the model cache cannot be written: a full disk says how much
    room `prepare` needs and where else it can go."""
    if e.errno == errno.ENOSPC:
        return ModelError(
            f"Disk full while writing {where}. Free a few GB (`prepare` needs ~5.7 GB while it works, "
            "~4.6 GB after) or point GEMMA_LSP_CACHE at a larger disk, then rerun `gemma-lsp prepare`."
        )
    return ModelError(f"Could not write {where}: {e.strerror or e}")
