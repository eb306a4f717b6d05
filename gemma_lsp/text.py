"""LSP text positions, exactly as the protocol defines them.

Lines end only at "\\n", "\\r\\n" or "\\r" (not at form feed or U+2028, which
`str.splitlines` also splits on). A column counts code units of the negotiated
encoding: UTF-8 bytes, UTF-16 units, or UTF-32 code points (= Python characters).
"""

from __future__ import annotations

from bisect import bisect_right

UTF8, UTF16, UTF32 = "utf-8", "utf-16", "utf-32"


def line_starts(text: str) -> list[int]:
    """Offsets at which each line begins (always starts with 0)."""
    starts = [0]
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "\r":
            if i + 1 < n and text[i + 1] == "\n":
                i += 1
            starts.append(i + 1)
        elif c == "\n":
            starts.append(i + 1)
        i += 1
    return starts


def _units(ch: str, encoding: str) -> int:
    if encoding == UTF32:
        return 1
    cp = ord(ch)
    if encoding == UTF16:
        return 2 if cp > 0xFFFF else 1
    return 1 if cp < 0x80 else 2 if cp < 0x800 else 3 if cp < 0x10000 else 4


def _line_bounds(text: str, starts: list[int], line: int) -> tuple[int, int]:
    begin = starts[line]
    end = starts[line + 1] if line + 1 < len(starts) else len(text)
    while end > begin and text[end - 1] in "\r\n":
        end -= 1
    return begin, end


def offset_at(text: str, line: int, character: int, encoding: str = UTF16, starts: list[int] | None = None) -> int:
    """Python index of an LSP position. Past the end of a line clamps to its end (as the spec says);
    past the last line clamps to the end of the text; inside a character snaps to its start."""
    starts = starts if starts is not None else line_starts(text)
    if line < 0 or character < 0:
        raise ValueError(f"negative position ({line}, {character})")
    if line >= len(starts):
        return len(text)
    begin, end = _line_bounds(text, starts, line)
    if encoding == UTF32:
        return min(begin + character, end)
    units, i = 0, begin
    while i < end:
        u = _units(text[i], encoding)
        if units + u > character:
            break
        units += u
        i += 1
    return i


def position_at(text: str, offset: int, encoding: str = UTF16, starts: list[int] | None = None) -> tuple[int, int]:
    """LSP (line, character) of a Python index."""
    starts = starts if starts is not None else line_starts(text)
    offset = max(0, min(offset, len(text)))
    line = bisect_right(starts, offset) - 1
    begin = starts[line]
    if encoding == UTF32:
        return line, offset - begin
    return line, sum(_units(c, encoding) for c in text[begin:offset])


def apply_change(text: str, start: tuple[int, int] | None, end: tuple[int, int] | None, new_text: str, encoding: str) -> str:
    """Apply one content change; start/end None means the whole document is replaced."""
    if start is None or end is None:
        return new_text
    starts = line_starts(text)
    a = offset_at(text, *start, encoding, starts)
    b = offset_at(text, *end, encoding, starts)
    if b < a:
        raise ValueError("change range ends before it starts")
    return text[:a] + new_text + text[b:]
