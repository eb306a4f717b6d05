"""Turn raw model text into what the editor should insert. Pure functions.

Each rule only ever removes text the model wrote past the point where it was
useful: repeated suffix, surplus closing brackets, lines past the end of the
block. It never rewrites the model's characters.
"""

from __future__ import annotations

OPEN, CLOSE = "([{", ")]}"


def single_line_wanted(line_suffix: str, mode: str) -> bool:
    """Mid-line with text after the cursor -> only the rest of this line makes sense."""
    if mode == "always":
        return True
    if mode == "never":
        return False
    return bool(line_suffix.strip())


def _indent(s: str) -> int:
    return len(s) - len(s.lstrip(" \t"))


def _cut_suffix_overlap(text: str, suffix: str) -> str:
    lines = text.split("\n")
    line_rest = suffix.split("\n", 1)[0].strip()
    # Same line: the model re-typed what already follows the cursor ("a, b)" before ")").
    # Only when that leaves the brackets no less balanced: in `print(|)`, "len(x)" is whole.
    if line_rest and len(lines) == 1 and lines[0].rstrip().endswith(line_rest) and lines[0].strip() != line_rest:
        cut = lines[0].rstrip()[: -len(line_rest)]
        if abs(_depth(cut)) <= abs(_depth(lines[0])):
            return cut
    # Later lines: the model started repeating the suffix's first lines.
    want = [ln.strip() for ln in suffix.split("\n")[1 if line_rest else 0 :] if ln.strip()][:3]
    if not want:
        return text
    # Blank lines are skipped on both sides (`want` has none), so a repeat across a blank line counts.
    solid = [i for i in range(1, len(lines)) if lines[i].strip()]
    for k, i in enumerate(solid):
        if lines[i].strip() != want[0]:
            continue
        run = 1
        while run < len(want) and k + run < len(solid) and lines[solid[k + run]].strip() == want[run]:
            run += 1
        if run >= 2 or len(want[0]) >= 4 or run == len(want):
            return "\n".join(lines[:i])
    return text


def _depth(text: str) -> int:
    """Openers minus closers."""
    return sum(c in OPEN for c in text) - sum(c in CLOSE for c in text)


def _cut_surplus_closers(text: str, line_rest: str) -> str:
    """Drop trailing closers that have no opener in the completion when the suffix already closes."""
    depth = _depth(text)
    rest = line_rest.lstrip()
    while depth < 0 and text.rstrip() and text.rstrip()[-1] in CLOSE and rest[:1] == text.rstrip()[-1]:
        text = text.rstrip()[:-1]
        depth += 1
    return text


def _block_indent(first_line: str, line_prefix: str, suffix: str) -> int:
    """The indentation below which a line leaves the block being written.

    On an indented blank line with code after it (a gap), that is the cursor's own
    indentation: the code that follows already says how the outer blocks go on, and a
    completion that dedents starts writing them a second time. After code on the line or
    at column 0, the model's first line says where the block is, and the suffix may be
    shallower: finishing a loop and going on at function level is fine when the suffix is
    at function level (or empty); starting a new top-level `def` inside a body is not.
    """
    after = [ln for ln in suffix.split("\n")[1:] if ln.strip()]
    gap = bool(line_prefix) and not line_prefix.strip()
    if gap:
        base = len(line_prefix)  # the editor's auto-indent says where the block is
        if after:
            return base
    else:  # at column 0 or after code on the line: the model's first line says it
        base = _indent(line_prefix + first_line) if (line_prefix + first_line).strip() else _indent(line_prefix)
    if after:
        base = min(base, _indent(after[0]))
    elif not suffix.split("\n")[0].strip() and base > 0:
        base = 1  # end of file: close inner blocks freely, but stop at a new top-level statement
    return base


def _first_dedent(lines: list[str], base: int) -> int | None:
    for i in range(1, len(lines)):
        if lines[i].strip() and _indent(lines[i]) < base:
            return i
    return None


def _cut_dedent(text: str, line_prefix: str, suffix: str = "") -> str:
    """Stop at the first non-blank line indented less than the block (see _block_indent)."""
    lines = text.split("\n")
    i = _first_dedent(lines, _block_indent(lines[0], line_prefix, suffix))
    return text if i is None else "\n".join(lines[:i])


def block_ended(text: str, line_prefix: str, suffix: str) -> bool:
    """True once the generated text has a whole line that postprocess would cut: a dedent
    out of the block, or a line that starts repeating the suffix. Decoding further cannot
    change the answer, so generation may stop there."""
    lines = text.replace("\r\n", "\n").split("\n")
    if len(lines) < 2:
        return False
    # A started line's indentation is final once it has a non-blank character.
    if _first_dedent(lines, _block_indent(lines[0], line_prefix, suffix)) is not None:
        return True
    whole = "\n".join(lines[:-1])  # finished lines only: a half-written one may still differ
    return _cut_suffix_overlap(whole, suffix) != whole


def postprocess(raw: str, line_prefix: str, suffix: str, single_line: bool, truncated: bool = False,
                timed_out: bool = False) -> str:
    """Clean `raw` (the text generated at the cursor) for insertion; "" means nothing worth showing.

    `line_prefix` is the cursor line's text before the cursor. `truncated`: generation was
    cut by max tokens, so a multi-line answer's last line is unfinished and is dropped (a
    single line keeps what the user's maxTokens allowed). `timed_out`: it was cut by time,
    and then any unfinished line is dropped, in every mode: an answer is whole lines or
    nothing, never a fragment like `fib` of `fib(n - 1) + fib(n - 2)`.
    """
    text = raw.replace("\r\n", "\n")
    if not text.endswith("\n") and (timed_out or (truncated and not single_line and "\n" in text)):
        text = text[: text.rfind("\n") + 1]  # a text ending in a newline has no unfinished line
    line_rest = suffix.split("\n", 1)[0]
    if single_line:
        text = text.split("\n", 1)[0]
    text = _cut_suffix_overlap(text, suffix)
    text = _cut_surplus_closers(text, line_rest)
    if "\n" in text:
        text = _cut_dedent(text, line_prefix, suffix)
    text = "\n".join(ln.rstrip() for ln in text.split("\n")).rstrip("\n ")
    if single_line or line_rest.strip():
        text = text.rstrip()
    return text if text.strip() else ""
