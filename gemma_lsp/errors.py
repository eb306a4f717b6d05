"""Errors a user can act on.

Every failure that a user can fix (a missing package, a wrong path, a full disk)
is raised as `GemmaLspError` with the fix in the message, so the CLI can print it
without a traceback and exit non-zero, and the server can answer it as an error.
"""

import errno
import sys
from pathlib import Path
from typing import Callable


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


def exit_status(run: Callable[[], int | None], prog: str = "gemma-lsp") -> int:
    """Run a command's body and turn what a user can act on into a message and exit status 2
    (no traceback): a `GemmaLspError`, or an OSError from a cache directory that cannot be
    written (a file in the way, no space, no rights). Ctrl-C is 130."""
    from .paths import cache_dir

    try:
        return int(run() or 0)
    except GemmaLspError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        where = e.filename or cache_dir()
        print(f"{prog}: error: cannot write {where}: {e.strerror or e}. gemma-lsp keeps its files in "
              f"{cache_dir()}; make it writable, or point GEMMA_LSP_CACHE at a directory that is", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
