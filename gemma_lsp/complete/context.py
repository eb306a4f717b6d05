"""What the model sees: windows around the cursor and chunks of other files.

Windows start and end on line boundaries quantized to `STEP` lines, so they do
not move while the user types inside them: the prompt's tokens stay put and the
KV prefix cache keeps hitting. Secret files never become context.
"""

from __future__ import annotations

import bisect
import fnmatch
import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..text import line_starts

STEP = 16  # lines; window edges only move in these jumps

SECRET_NAMES = (
    ".env", ".env.*", "*.env", ".envrc", "*.pem", "*.key", "*.p12", "*.pfx", "*.jks", "*.keystore", "id_rsa*", "id_dsa*",
    "id_ecdsa*", "id_ed25519*", "*.ppk", ".netrc", ".pgpass", ".npmrc", ".pypirc", "credentials", "credentials.json",
    "credentials.y*ml", "secrets.json", "secrets.y*ml", "secrets.toml", "secrets.env", "secrets.ini", "*.secret", "*.secrets", ".git-credentials", "*.kdbx", "*.gpg", "*.asc",
)
SECRET_DIRS = (".ssh", ".gnupg", ".aws", ".docker")


def is_secret(path: str) -> bool:
    """True for files that commonly hold credentials: they must never reach a prompt."""
    norm = path.replace("\\", "/")
    parts = [p for p in norm.split("/") if p]
    if any(p in SECRET_DIRS for p in parts[:-1]):
        return True
    name = parts[-1] if parts else norm
    return any(fnmatch.fnmatchcase(name.lower(), pat) for pat in SECRET_NAMES)


def windows(text: str, offset: int, count: Callable[[str], int], prefix_tokens: int, suffix_tokens: int) -> tuple[str, str]:
    """(prefix, suffix) around `offset`, each within its token budget, edges on STEP-line boundaries."""
    starts = line_starts(text)
    line = bisect.bisect_right(starts, offset) - 1
    # Prefix: the earliest STEP-aligned line start whose text to the cursor fits.
    blocks = list(range(0, line + 1, STEP))
    lo, hi = 0, len(blocks) - 1
    while lo < hi:  # count(prefix from block b) decreases with b: binary search the first that fits
        mid = (lo + hi) // 2
        if count(text[starts[blocks[mid]] : offset]) <= prefix_tokens:
            hi = mid
        else:
            lo = mid + 1
    begin = starts[blocks[lo]]
    if count(text[begin:offset]) > prefix_tokens:  # one huge block: fall back to the cursor line
        # then to the first 256-char step of it that fits (binary search: a huge line must not
        # cost thousands of count() calls, each over the whole line)
        first = starts[line]
        lo, hi = 0, -(-(offset - first) // 256)
        while lo < hi:
            mid = (lo + hi) // 2
            if count(text[min(offset, first + 256 * mid) : offset]) <= prefix_tokens:
                hi = mid
            else:
                lo = mid + 1
        begin = min(offset, first + 256 * lo)
    prefix = text[begin:offset]
    # Suffix: the latest STEP-aligned line end that fits.
    ends = [starts[e] for e in range((line // STEP + 1) * STEP, len(starts), STEP)] + [len(text)]
    end = offset
    for e in ends:
        if e <= offset:
            continue
        if count(text[offset:e]) > suffix_tokens:
            break
        end = e
    if end == offset:  # at least the rest of the cursor line, if it fits
        eol = starts[line + 1] if line + 1 < len(starts) else len(text)
        if count(text[offset:eol]) <= suffix_tokens:
            end = eol
    return prefix, text[offset:end]


@dataclass
class Chunk:
    path: str
    language: str
    text: str


class ContextRing:
    """Chunks of other open or recently edited files, oldest first (a stable prompt head).

    A file's chunk is refreshed only when the user leaves that file, so typing in
    the current file never changes the extras and never invalidates the cache.
    """

    def __init__(self, max_files: int = 6, max_lines: int = 60) -> None:
        self.max_files = max_files
        self.max_lines = max_lines
        self._chunks: OrderedDict[str, Chunk] = OrderedDict()

    def offer(self, uri: str, path: str, language: str, text: str, line: int = 0) -> None:
        """Remember a window of `text` around `line` of another file (no-op for secret files,
        also when the name is innocent and a symlink points at one)."""
        if is_secret(path) or is_secret(os.path.realpath(path)):
            self._chunks.pop(uri, None)
            return
        starts = line_starts(text)  # LSP lines, so `line` (an LSP line number) centres the window
        lines = [text[a:b] for a, b in zip(starts, starts[1:] + [len(text)]) if a < b]
        start = max(0, min(line - self.max_lines // 2, len(lines) - self.max_lines))
        chunk = Chunk(path, language, "".join(lines[start : start + self.max_lines]))
        old = self._chunks.get(uri)
        if old is not None and old.text == chunk.text:
            return
        self._chunks.pop(uri, None)
        self._chunks[uri] = chunk
        while len(self._chunks) > self.max_files:
            self._chunks.popitem(last=False)

    def chunks(self, exclude_uri: str) -> list[Chunk]:
        """A copy of the other files' chunks, oldest first (safe to use on another thread)."""
        return [c for uri, c in self._chunks.items() if uri != exclude_uri and c.text.strip()]


def select_extras(chunks: list[Chunk], count: Callable[[str], int], budget: int,
                  current: str = "", head: Sequence[str] = ()) -> list[tuple[str, str]]:
    """The other files' chunks for the prompt, within the token budget, as (file name, text).

    The extras open the prompt, so every token after the first chunk that changes is a
    prefix-cache miss: a pick that slid by one file each time the user switched files (the
    newest that fit, oldest first) re-ran the whole prompt pass on every first request in a
    file. So `head` (the texts of the previous pick, in order) stays in place for as long as
    its chunks are still offered unchanged; the newest chunk (the file the user just left,
    the most relevant) is always in, taking the place of the head's last chunks when the
    budget demands; what is left of the budget goes to the newest of the rest. With no head:
    the newest chunks that fit, oldest first. The pick is a fixed point: given its own
    result as head and the same chunks, it returns the same pick (a warm-up and the request
    after it build the same prompt).

    A chunk already in the current document (a copy of this file open elsewhere, a diff
    view) or already picked is left out: it tells the model nothing new, and repeated
    text pulls it into copying (measured: a copy of the file as context turned
    `fib(n-1) + fib(n-2)` into an empty answer)."""
    offered: dict[str, tuple[Chunk, int]] = {}  # text -> (chunk, tokens), newest first
    seen: set[str] = set()
    for c in reversed(chunks):
        body = c.text.strip()
        if not body or body in seen or body in current:
            continue
        seen.add(body)
        offered[c.text] = (c, count(c.text) + 8)
    kept: list[str] = []
    for text in head:  # the previous pick's longest run that is still offered unchanged
        if text not in offered or text in kept:
            break
        kept.append(text)
    newest = next(iter(offered), None)
    need = offered[newest][1] if newest is not None and newest not in kept and offered[newest][1] <= budget else 0
    while kept and sum(offered[t][1] for t in kept) + need > budget:
        kept.pop()
    used = sum(offered[t][1] for t in kept)
    added: list[str] = []
    for text, (_, n) in offered.items():  # newest first
        if text in kept or used + n > budget:
            continue
        used += n
        added.append(text)
    return [(os.path.basename(offered[t][0].path), t) for t in kept + added[::-1]]  # no home directories in prompts
