"""Keep a GGUF's own quantized weights next to its bf16 copy, and run them.

`build()` runs once per model (at `prepare`, ~30 s): every Linear weight of the GGUF is
saved in one safetensors file inside the prepared directory: the blocks of the types they run as
gemma-lsp's kernels read them (native.py), other types in torch's int4 / int8 CPU form
(blocks.py). Where the kernels cannot run at build time, the blocks get torch's form as
well; where they stop running later (GEMMA_LSP_NATIVE=0, another CPU), attach converts.
Before saving, each weight is checked against the bf16 copy transformers made of the same tensor: equal after rounding to
bf16, or the build stops. That proves the name mapping and the block decoding, and
refuses architectures whose GGUF stores weights permuted.

`attach()` swaps each Linear of a loaded bf16 model for a HybridLinear: the quantized
kernel for a few rows (the block kernels where they run, else torch's), the dense bf16
weight for prefill. For Llama-family models it also routes few-token forwards through
lean.py (fused siblings, row-by-row attention).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import ModelError, write_failed
from ..paths import replace_atomically
from . import blocks, lean, native
from .formats import BY_GGUF, BY_KIND, KERNEL_ROWS, KINDS
from .linear import BlockLinear, HybridLinear, Int4Linear, Int8Linear, nibbles, unnibble

QUANT_FILE = "gguf-weights.safetensors"
# /2 added Q4_K and Q6_K blocks, /3 Q5_K, Q8_0, Q5_0, Q4_0, Q4_1 and Q5_1. An older file still
# runs (types it holds no blocks for on torch's kernels); `prepare` and the first load rebuild it.
FORMAT = "gemma-lsp-gguf-weights/3"
READS = ("gemma-lsp-gguf-weights/1", "gemma-lsp-gguf-weights/2", FORMAT)
COUNTED = {"q4": "int4", "q8": "int8", **{kind: kind for kind in KINDS}}  # entry suffix -> what `kinds` counts
INT4_ROWS = 16  # _convert_weight_to_int4pack_for_cpu: "expect N to be dividable by 16"


def quant_path(model_dir: Path) -> Path:
    return model_dir / QUANT_FILE


def build(gguf: Path, model_dir: Path) -> Path:
    """Convert `gguf`'s Linear weights for the bf16 model in `model_dir`; write them atomically."""
    from gguf import GGUFReader
    from safetensors import safe_open
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.modeling_gguf_pytorch_utils import TensorProcessor, get_gguf_hf_weights_map

    print(f"Extracting the quantized weights of {gguf.name} (one time)...", flush=True)
    reader = GGUFReader(gguf)
    tensors = {t.name: t for t in reader.tensors}
    config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    hf_to_gguf = {hf: g for g, hf in get_gguf_hf_weights_map(skeleton, TensorProcessor()).items()}
    out: dict[str, torch.Tensor] = {}
    kinds = {"int4": 0, "int8": 0, "dense": 0, **dict.fromkeys(KINDS, 0)}
    shards = sorted(model_dir.glob("*.safetensors"))
    handles = [safe_open(s, "pt") for s in shards if s.name != QUANT_FILE]
    kernels = native.available()
    for name, mod in skeleton.named_modules():
        if not isinstance(mod, nn.Linear):
            continue
        g = tensors.get(hf_to_gguf.get(f"{name}.weight", ""))
        if g is None or g.tensor_type in blocks.FLOAT_TYPES:  # e.g. an lm_head tied to the embeddings
            kinds["dense"] += 1
            continue
        for key, tensor in _entries(g, name, _bf16_weight(handles, f"{name}.weight"), gguf.name, kernels).items():
            out[key] = tensor
            if (label := COUNTED.get(key.rsplit(".", 1)[1])) is not None:  # weights, not their scales
                kinds[label] += 1
    dest = quant_path(model_dir)
    meta = {"format": FORMAT, "source": gguf.name, "kinds": json.dumps(kinds)}
    try:
        replace_atomically(dest, lambda tmp: save_file(out, str(tmp), metadata=meta))
    except OSError as e:  # replace_atomically turns safetensors' own disk-full error into one
        raise write_failed(e, dest) from e
    return dest


def _entries(g, name: str, ref: torch.Tensor | None, source: str, kernels: bool) -> dict[str, torch.Tensor]:
    """The weights file's entries for one GGUF tensor `g` of Linear `name`: its blocks as the
    kernels read them (where a format of formats.py has it), and torch's int4/int8 form where
    our kernels cannot run. Checked first against `ref`, the bf16 copy's dequantization."""
    k, n = (int(d) for d in g.shape)
    raw = np.asarray(g.data)
    fmt = BY_GGUF.get(g.tensor_type)
    w: blocks.Int4Weight | blocks.Int8Weight
    if fmt is not None and fmt.int4 and n % INT4_ROWS == 0:  # torch packs int4 by 16 rows
        w = blocks.convert(raw, g.tensor_type, n, k)
        exact = w.dequantize()
    else:
        exact = blocks.dequantize(raw, g.tensor_type, n, k)
        w = blocks.int8_from(exact)
    if ref is None or ref.shape != (n, k) or not torch.equal(torch.from_numpy(exact).bfloat16(), ref):
        raise ModelError(
            f"{source}: tensor {g.name} does not match {name}.weight of the converted model; this "
            "architecture stores its weights differently in GGUF. Run it with dtype bfloat16 instead"
        )
    out: dict[str, torch.Tensor] = {}
    if fmt is not None:  # (the format makes K a multiple of the block's weights)
        out[f"{name}.{fmt.kind}"] = torch.from_numpy(fmt.repack(raw, n, k))
        if kernels:  # torch's form too only where the kernels cannot run (attach converts if need be)
            return out
    if isinstance(w, blocks.Int4Weight):
        out[f"{name}.q4"] = nibbles(torch.from_numpy(w.q))
        out[f"{name}.q4_scale"] = torch.from_numpy(w.scale)
        out[f"{name}.q4_zero"] = torch.from_numpy(w.zero)
    else:
        out[f"{name}.q8"] = torch.from_numpy(w.q)
        out[f"{name}.q8_scale"] = torch.from_numpy(w.scale)
    return out


def is_current(path: Path) -> bool:
    """Whether the weights file at `path` is this version's (an older one is rebuilt at `prepare`)."""
    from safetensors import safe_open

    try:
        with safe_open(path, "pt") as f:
            return (f.metadata() or {}).get("format") == FORMAT
    except Exception:  # unreadable: rebuilding it is the fix
        return False


def attach(model: nn.Module, path: Path, max_rows: int = KERNEL_ROWS) -> dict[str, int]:
    """Swap the Linears named in `path` for HybridLinears; return how many run on each kind of kernel."""
    from safetensors import safe_open

    dtype = next(model.parameters()).dtype
    counts = {**dict.fromkeys(KINDS, 0), "int4": 0, "int8": 0}
    with safe_open(path, "pt") as f:
        if f.metadata().get("format") not in READS:
            raise ModelError(f"{path} is not a gemma-lsp weights file (format {f.metadata().get('format')!r})")
        keys = set(f.keys())
        use_blocks = any(k.endswith(tuple(f".{kind}" for kind in KINDS)) for k in keys) and native.available()
        for name, mod in list(model.named_modules()):
            if not isinstance(mod, nn.Linear):
                continue
            has_bias = mod.bias is not None
            kind = next((k for k in KINDS if f"{name}.{k}" in keys), None)
            if kind is not None and use_blocks:
                q = BlockLinear(mod.in_features, mod.out_features, False, dtype, kind)
                q.set_weight(f.get_tensor(f"{name}.{kind}"))
                counts[kind] += 1
            elif f"{name}.q4" in keys:
                q = Int4Linear(mod.in_features, mod.out_features, False, dtype)
                q.set_weight(unnibble(f.get_tensor(f"{name}.q4")), f.get_tensor(f"{name}.q4_scale"),
                             f.get_tensor(f"{name}.q4_zero"))
                counts["int4"] += 1
            elif f"{name}.q8" in keys:
                q = Int8Linear(mod.in_features, mod.out_features, False, dtype)
                q.set_weight(f.get_tensor(f"{name}.q8"), f.get_tensor(f"{name}.q8_scale"))
                counts["int8"] += 1
            elif kind is not None:  # built where the kernels ran, loaded where they do not
                q = _torch_form(kind, f.get_tensor(f"{name}.{kind}").numpy(), mod.out_features, mod.in_features, dtype)
                counts["int4" if isinstance(q, Int4Linear) else "int8"] += 1
            else:
                continue
            if has_bias:
                q.bias = mod.bias
            parent, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, leaf, HybridLinear(mod, q, max_rows))
    lean.install(model)
    return counts


def _torch_form(kind: str, data: np.ndarray, n: int, k: int, dtype: torch.dtype) -> Int4Linear | Int8Linear:
    """Blocks as torch's kernels take them: int4 (the Q4 types: exactly, where N allows), else int8 per row."""
    fmt = BY_KIND[kind]
    if fmt.int4:
        w4 = (blocks.int4_from_q4_k_unpacked(data, n, k) if kind == "q4k"  # repacked: its own reader
              else blocks.convert(data.reshape(n, -1), fmt.gguf, n, k))
        if n % INT4_ROWS == 0:
            q = Int4Linear(k, n, False, dtype)
            q.set_weight(torch.from_numpy(w4.q), torch.from_numpy(w4.scale), torch.from_numpy(w4.zero))
            return q
        exact = w4.dequantize()
    elif not fmt.as_stored:  # Q5_K, repacked
        exact = blocks.dequantize_q5_k_unpacked(data, n, k)
    else:
        exact = blocks.dequantize(data.reshape(n, -1), fmt.gguf, n, k)
    w8 = blocks.int8_from(exact)
    q8 = Int8Linear(k, n, False, dtype)
    q8.set_weight(torch.from_numpy(w8.q), torch.from_numpy(w8.scale))
    return q8


def _bf16_weight(handles: list, key: str) -> torch.Tensor | None:
    for h in handles:
        if key in h.keys():
            return h.get_tensor(key)
    return None

