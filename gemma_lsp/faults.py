"""Injected faults, for the reliability tests only: off unless GEMMA_LSP_FAULTS is set.

    GEMMA_LSP_FAULTS="forward:raise@3,postprocess:raise@1,forward:hang=2.5@7,drafter:raise@2"

Each item arms one site (`forward`: a model forward pass on the engine thread, `drafter`:
a draft proposal, `postprocess`: cleaning a completion's text, `load`: loading the model)
to raise `InjectedFault` or to sleep for the given seconds at its N-th call, counted per
site from the start of the process. Without the variable every `hit()` is a single check
of a module flag: nothing is armed, nothing is counted. A server with faults armed says so at start-up, loudly.
"""

from __future__ import annotations

import logging
import os
import threading
import time

log = logging.getLogger("gemma_lsp.faults")
SITES = ("forward", "drafter", "postprocess", "load")


class InjectedFault(RuntimeError):
    """The exception an armed site raises."""


def _parse(spec: str) -> dict[tuple[str, int], float | None]:
    armed: dict[tuple[str, int], float | None] = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        try:
            what, at = item.rsplit("@", 1)
            site, action = what.split(":", 1)
            hang = float(action.split("=", 1)[1]) if action.startswith("hang=") else None
            if site not in SITES or (hang is None and action != "raise"):
                raise ValueError
            armed[(site, int(at))] = hang
        except ValueError:
            raise ValueError(f"GEMMA_LSP_FAULTS: cannot read {item!r} (site:raise@N or site:hang=SECONDS@N, "
                             f"sites {', '.join(SITES)})") from None
    return armed


_armed = _parse(os.environ.get("GEMMA_LSP_FAULTS", ""))
ACTIVE = bool(_armed)
_calls: dict[str, int] = {}
_lock = threading.Lock()


def announce() -> None:
    if ACTIVE:
        log.warning("FAULT INJECTION IS ON (GEMMA_LSP_FAULTS=%s): for tests only", os.environ["GEMMA_LSP_FAULTS"])


def hit(site: str) -> None:
    """Raise or hang here if this call of `site` is armed."""
    if not ACTIVE:
        return
    with _lock:
        n = _calls[site] = _calls.get(site, 0) + 1
    if (site, n) not in _armed:
        return
    hang = _armed[(site, n)]
    if hang is None:
        raise InjectedFault(f"injected fault: {site} call {n}")
    log.warning("injected hang: %s call %d sleeps %.1f s", site, n, hang)
    time.sleep(hang)
