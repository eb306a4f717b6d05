"""What may reach a log: no document text, no prompt, unless the user asked for it.

pygls logs the params of a message whose handler failed ("Failed to handle notification
'textDocument/didChange': <params>", the change's text included) and cattrs tracebacks
that quote the offending value ("invalid literal for int(): '<text>'"). These are useful
to a developer and a leak for everyone else, so unless `--log-protocol` is given every
pygls record keeps its message and loses its values: arguments other than numbers and
short one-line strings (ids, method names) read "<withheld>", and a traceback is reduced
to its exception type.
"""

from __future__ import annotations

import logging

WITHHELD = "<withheld>"
SHORT = 64  # characters: a method name or an id, not a document


def _keep(arg: object) -> object:
    if arg is None or isinstance(arg, (int, float)):
        return arg
    if isinstance(arg, str) and len(arg) <= SHORT and "\n" not in arg:
        return arg
    return WITHHELD


class Withhold(logging.Filter):
    """Strip values from pygls' records (see the module docstring)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("pygls"):
            return True
        if isinstance(record.args, tuple):
            record.args = tuple(_keep(a) for a in record.args)
        if record.exc_info and record.exc_info[0] is not None:
            record.msg = f"{record.msg} [{record.exc_info[0].__name__}]"
            record.exc_info, record.exc_text = None, None
        return True


def withhold_protocol_values() -> None:
    """Install `Withhold` on every root handler (a logger's own filters miss its children)."""
    for handler in logging.getLogger().handlers:
        handler.addFilter(Withhold())
