"""Property: an edit sent as LSP positions lands exactly where the client meant, in every
encoding, whatever the text (emoji, CJK, CRLF, lone CR, form feed, U+2028). The client's
positions come from an oracle written independently of gemma_lsp.text (regex line breaks,
code units counted by encoding the line). Hypothesis shrinks any failure to a minimal text."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from gemma_lsp.text import apply_change, offset_at

_BREAK = re.compile(r"\r\n|\r|\n")
CODEC = {"utf-8": "utf-8", "utf-16": "utf-16-le", "utf-32": "utf-32-le"}
WIDTH = {"utf-8": 1, "utf-16": 2, "utf-32": 4}
texts = st.lists(st.sampled_from(list("ab \t") + ["😀", "中", "é", "\r\n", "\r", "\n", "\x0c", "\u2028"]),
                 max_size=25).map("".join)


def position(text: str, offset: int, enc: str) -> tuple[int, int]:
    starts = [0] + [m.end() for m in _BREAK.finditer(text[:offset])]
    return len(starts) - 1, len(text[starts[-1]:offset].encode(CODEC[enc])) // WIDTH[enc]


def _clean(text: str, offset: int) -> int:
    return offset - 1 if 0 < offset < len(text) and text[offset - 1:offset + 1] == "\r\n" else offset


@settings(max_examples=400, deadline=None, derandomize=True)
@given(texts, st.integers(0, 40), st.integers(0, 40), st.text(max_size=5), st.sampled_from(list(CODEC)))
def test_an_edit_lands_where_the_client_meant(text, a, b, new, enc):
    a, b = sorted((_clean(text, min(a, len(text))), _clean(text, min(b, len(text)))))
    got = apply_change(text, position(text, a, enc), position(text, b, enc), new, enc)
    assert got == text[:a] + new + text[b:]


@settings(max_examples=300, deadline=None, derandomize=True)
@given(texts, st.integers(0, 60), st.integers(0, 200), st.sampled_from(list(CODEC)))
def test_any_position_maps_into_the_text(text, line, character, enc):
    """Past the end of a line or the text, or inside a character: clamped, never an error."""
    off = offset_at(text, line, character, enc)
    assert 0 <= off <= len(text)
