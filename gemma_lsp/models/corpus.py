"""The retrieval drafter's corpus: Python's own standard library, tokenized once per tokenizer.

Why the standard library: it is on every machine that runs gemma-lsp, it is code (idioms the
model will write), and it holds no user data or secrets. It helps Python; other languages
do not get this drafter (the completer asks for it by language). Built in ~10 s the first
time (`gemma-lsp prepare` does it), then read from the cache directory (~25 MB).
"""

from __future__ import annotations

import hashlib
import json
import sys
import sysconfig
from pathlib import Path

import numpy as np

from ..engine.drafters.retrieval import TokenIndex
from ..paths import models_dir

FORMAT = "gemma-lsp-retrieval/1"
LANGUAGES = frozenset({"python"})  # what the corpus is written in
MAX_BYTES = 16 << 20  # of source text (the 3.11 standard library without its tests: ~13 MB)
SKIP_DIRS = frozenset({"test", "tests", "idlelib", "site-packages", "dist-packages", "turtledemo", "__pycache__"})


def stdlib_files(root: Path | None = None, max_bytes: int = MAX_BYTES) -> list[Path]:
    """The standard library's .py files in a stable order, without tests and third-party code."""
    root = root or Path(sysconfig.get_paths()["stdlib"])
    out, total = [], 0
    for path in sorted(root.rglob("*.py")):
        if SKIP_DIRS.intersection(path.relative_to(root).parts[:-1]):
            continue
        try:
            size = path.stat().st_size
        except OSError:
            continue
        if total + size > max_bytes:
            break
        out.append(path)
        total += size
    return out


def tokenize(tokenizer, files: list[Path]) -> np.ndarray:
    """One token array: each file's ids, then the end-of-text id as a separator."""
    sep = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    parts: list[list[int]] = []
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        parts.append(tokenizer.encode(text, add_special_tokens=False) + [sep])
    return np.fromiter((t for p in parts for t in p), dtype=np.int32)


def index_for(tokenizer, directory: Path | None = None, root: Path | None = None) -> TokenIndex | None:
    """The cached index for this tokenizer and Python, built if missing; None if it cannot be."""
    directory = directory or models_dir()
    vocab = json.dumps(sorted(tokenizer.get_vocab().items())).encode()
    ident = f"{FORMAT}|{sys.version_info[:2]}|{root or 'stdlib'}|{hashlib.sha256(vocab).hexdigest()}"
    path = directory / f"retrieval-{hashlib.sha256(ident.encode()).hexdigest()[:16]}.npz"
    try:
        return TokenIndex.load(path)
    except Exception:  # missing, or damaged (a BadZipFile, a short read): build it again
        pass
    print("Indexing the Python standard library for retrieval drafts (one time)...", file=sys.stderr, flush=True)
    try:
        index = TokenIndex(tokenize(tokenizer, stdlib_files(root)))
    except ValueError as e:  # a vocabulary too large to pack
        print(f"retrieval drafts are off: {e}", file=sys.stderr)
        return None
    if len(index) == 0:
        return None
    try:
        directory.mkdir(parents=True, exist_ok=True)
        index.save(path)
    except OSError:
        pass  # a read-only cache only costs the build next time
    return index
