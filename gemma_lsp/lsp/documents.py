"""Open documents, kept here rather than in pygls' workspace: pygls splits lines like
`str.splitlines` (form feed, U+2028...) and LSP does not (text.py)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlparse

from ..text import apply_change, offset_at

log = logging.getLogger(__name__)


@dataclass
class Doc:
    text: str
    language: str
    last_line: int = 0
    cursor: int | None = None  # offset of the cursor as last seen (a change's end, a request); None: unknown


def path_of(uri: str) -> str:
    """The file path of a file: URI (what secret-file rules and prompts see), else the URI."""
    p = urlparse(uri)
    return unquote(p.path) if p.scheme == "file" else uri


def apply_changes(doc: Doc, changes: list[Any], encoding: str) -> bool:
    """Apply a didChange's changes in order, all or nothing: a change the text cannot take
    (a reversed range, a negative position) leaves the document as it was, rather than half
    of the edit applied. The cursor ends where typing leaves it."""
    text, cursor, last_line = doc.text, doc.cursor, doc.last_line
    for i, ch in enumerate(changes):
        rng = getattr(ch, "range", None)
        if rng is None:
            text, cursor = ch.text, None
            continue
        try:
            start = offset_at(text, rng.start.line, rng.start.character, encoding)
            text = apply_change(text, (rng.start.line, rng.start.character),
                                (rng.end.line, rng.end.character), ch.text, encoding)
        except ValueError as e:
            log.warning("didChange: change %d of %d refused (%s); the document is unchanged", i + 1, len(changes), e)
            return False
        cursor = start + len(ch.text)
        last_line = rng.start.line + ch.text.count("\n")
    doc.text, doc.cursor, doc.last_line = text, cursor, last_line
    return True
