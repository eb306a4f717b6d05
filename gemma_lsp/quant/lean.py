"""A lean forward for the few-token passes (decode, verify) of Llama-family models on the GGUF path.

Why it exists:
  * Speed. A one-token step of the default 1.5B model on 2 cores reads ~1 GB of
    weights and spends ~20 ms more in transformers' per-layer Python and small ops.
    This path runs the same math with fewer calls: sibling Linears that read the same
    input (q/k/v, gate/up) share one kernel call, masks, kwargs plumbing and the generic
    attention dispatch are skipped, and where our kernels run, the norms, rotary embedding
    and gated product are one native op each (kernels/pointwise.h: ~6 ms of a ~45 ms step
    on 2 AMD EPYC cores, measured against torch's ops alternating in one process).
  * Exactness. Attention runs row by row: row r of a k-row verify attends over the
    first p0 + r + 1 keys with the very kernel and shapes a one-token step uses, and
    every other op computes each row alone. So a verify forward yields, bit for bit,
    the logits k one-token forwards yield, and speculative greedy equals plain greedy
    on the model actually run (no bf16 near-tie caveat on this path).

Prompt passes (more than `max_rows` rows, the dense bf16 path), other architectures and
any call with extra arguments go to transformers' own forward, unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import native
from .linear import BlockLinear, HybridLinear, Int4Linear

ARCHS = ("qwen2", "llama")  # pre-norm RMSNorm, rotary GQA attention (optional q/k/v bias), SwiGLU MLP
PACK_BLOCK = 64  # torch packs int4 weights in blocks of 64 output rows; a shorter tail is laid out apart


class Siblings:
    """Linears that read the same input; each run of fusable members is one kernel call."""

    def __init__(self, mods: Sequence[HybridLinear]) -> None:
        self.calls: list[tuple[nn.Module, list[int]]] = [  # (kernel, the output sizes it yields)
            (_fuse([m.quant for m in run]) if len(run) > 1 else run[0].quant, [m.out_features for m in run])
            for run in _runs(mods)
        ]

    def __call__(self, x: torch.Tensor) -> list[torch.Tensor]:
        out: list[torch.Tensor] = []
        for kernel, sizes in self.calls:
            y = kernel(x)
            out.extend(y.split(sizes, dim=-1) if len(sizes) > 1 else (y,))
        return out


def _runs(mods: Sequence[HybridLinear]) -> list[list[HybridLinear]]:
    """Consecutive members share a call when they run the same block kind, or are int4 and
    each one before the last has whole 64-row blocks."""
    runs: list[list[HybridLinear]] = []
    for m in mods:
        prev = runs[-1][-1] if runs else None
        if prev is not None and _fusable(prev.quant, m.quant):
            runs[-1].append(m)
        else:
            runs.append([m])
    return runs


def _fusable(a: nn.Module, b: nn.Module) -> bool:
    if isinstance(a, BlockLinear) and isinstance(b, BlockLinear):
        return a.kind == b.kind and a.in_features == b.in_features and a.tiled == b.tiled
    return isinstance(a, Int4Linear) and isinstance(b, Int4Linear) and a.out_features % PACK_BLOCK == 0


def _fuse(mods: list[nn.Module]) -> nn.Module:
    return _fuse_blocks(mods) if isinstance(mods[0], BlockLinear) else _fuse_int4(mods)


def _fused_bias(mods: Sequence[nn.Module], dtype: torch.dtype) -> nn.Parameter | None:
    if all(m.bias is None for m in mods):
        return None
    return nn.Parameter(torch.cat([m.bias if m.bias is not None else torch.zeros(m.out_features, dtype=dtype)
                                   for m in mods]), requires_grad=False)


def _fuse_blocks(mods: list[BlockLinear]) -> BlockLinear:
    """One BlockLinear holding the rows of `mods` in order; the members' blocks become views of it.
    Output rows are computed independently, so each column equals its own layer's."""
    dtype = next((m.bias.dtype for m in mods if m.bias is not None), torch.float32)
    fused = BlockLinear(mods[0].in_features, sum(m.out_features for m in mods), False, dtype, mods[0].kind)
    fused.use(torch.cat([m.blocks for m in mods], 0), mods[0].tiled)  # tiles stack as rows do: 16 rows each
    fused.bias = _fused_bias(mods, dtype)
    start = 0
    for m in mods:
        m.use(fused.rows(start, start + m.out_features), m.tiled)
        start += m.out_features
    return fused


def _fuse_int4(mods: list[Int4Linear]) -> Int4Linear:
    """One Int4Linear holding the rows of `mods` in order; the members' packed weights become views of it.

    Packed int4 blocks of 64 rows are independent, so when every member but the last
    has whole blocks, concatenating along N is the fused weight, and each output column
    is computed exactly as in its own layer."""
    n = sum(m.out_features for m in mods)
    dtype = mods[0].scales_zeros.dtype
    fused = Int4Linear(mods[0].in_features, n, any(m.bias is not None for m in mods), dtype)
    fused.packed = torch.cat([m.packed for m in mods], 0)
    fused.scales_zeros = torch.cat([m.scales_zeros for m in mods], 1)
    fused.bias = _fused_bias(mods, dtype)
    start = 0
    for m in mods:  # share the bytes: a member alone (the fallback forward) reads its rows of the fused tensor
        m.packed = fused.packed[start : start + m.out_features]
        start += m.out_features
    return fused


def supports(model: nn.Module) -> bool:
    cfg = getattr(model, "config", None)
    if getattr(cfg, "model_type", None) not in ARCHS or getattr(cfg, "use_sliding_window", False):
        return False
    if getattr(cfg, "hidden_act", "silu") != "silu" or getattr(cfg, "pretraining_tp", 1) != 1:
        return False
    inner = getattr(model, "model", None)
    if inner is None or not hasattr(inner, "rotary_emb") or not hasattr(model, "lm_head"):
        return False
    names = ("q_proj", "k_proj", "v_proj", "o_proj")
    return all(
        all(isinstance(getattr(layer.self_attn, n, None), HybridLinear) for n in names)
        and all(isinstance(getattr(layer.mlp, n, None), HybridLinear) for n in ("gate_proj", "up_proj", "down_proj"))
        for layer in inner.layers
    )


class LeanForward:
    """Stands in for `model.forward`: the lean path for 1..max_rows tokens, transformers' otherwise."""

    def __init__(self, model: nn.Module, fallback: Callable[..., Any]) -> None:
        cfg = model.config
        self.model = model
        self.fallback = fallback
        self.heads, self.kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.scale = self.head_dim**-0.5
        norms = [model.model.norm] + [n for layer in model.model.layers
                                      for n in (layer.input_layernorm, layer.post_attention_layernorm)]
        self.native = (native.available() and model.device.type == "cpu"
                       and all(hasattr(n, "variance_epsilon") and hasattr(n, "weight") for n in norms))
        self.first = model.model.layers[0].self_attn.q_proj  # its max_rows is every HybridLinear's
        self.layers = [
            (layer.input_layernorm,
             Siblings([layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj]),
             layer.self_attn.o_proj.quant,
             layer.post_attention_layernorm,
             Siblings([layer.mlp.gate_proj, layer.mlp.up_proj]),
             layer.mlp.act_fn,
             layer.mlp.down_proj.quant)
            for layer in model.model.layers
        ]

    def __call__(self, input_ids: torch.Tensor | None = None, cache: Any = None, past_key_values: Any = None,
                 use_cache: bool = True, logits_to_keep: int = 0, **kw: Any) -> Any:
        from transformers import DynamicCache
        from transformers.modeling_outputs import CausalLMOutputWithPast

        cache = cache if cache is not None else past_key_values
        rows = input_ids.shape[-1] if input_ids is not None and input_ids.dim() == 2 else 0
        if (not 0 < rows <= self.first.max_rows or input_ids.shape[0] != 1 or kw or not use_cache
                or not isinstance(cache, DynamicCache)):
            return self.fallback(input_ids=input_ids, cache=cache, use_cache=use_cache,
                                 logits_to_keep=logits_to_keep, **kw)
        return CausalLMOutputWithPast(logits=self.logits(input_ids, cache, logits_to_keep), cache=cache)

    def logits(self, ids: torch.Tensor, cache: Any, keep: int) -> torch.Tensor:
        m = ids.shape[1]
        start = cache.get_seq_length()
        inner = self.model.model
        h = inner.embed_tokens(ids)
        cos, sin = inner.rotary_emb(h, torch.arange(start, start + m, device=ids.device)[None])
        layer = self.native_layer if self.native else self.torch_layer
        for i, parts in enumerate(self.layers):
            h = layer(i, parts, h, cos, sin, cache, start)
        h = h[:, -keep:] if keep else h
        norm = inner.norm
        return self.model.lm_head(native.rms_norm(h, norm.weight, norm.variance_epsilon) if self.native else norm(h))

    def native_layer(self, i: int, parts: tuple, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                     cache: Any, start: int) -> torch.Tensor:
        """One decoder layer on our kernels: ~12 calls where torch_layer makes ~40."""
        norm1, qkv, o_proj, norm2, gate_up, _, down = parts
        m = h.shape[1]
        q, k, v = qkv(native.rms_norm(h, norm1.weight, norm1.variance_epsilon))
        q, k = native.rope(q, cos, sin, self.heads), native.rope(k, cos, sin, self.kv_heads)
        keys, values = append(cache, i, k, v.view(1, m, self.kv_heads, self.head_dim).transpose(1, 2))
        a = native.attend(q, keys, values, start, self.scale)
        h = h + o_proj(a.transpose(1, 2).reshape(1, m, self.heads * self.head_dim))
        g, u = gate_up(native.rms_norm(h, norm2.weight, norm2.variance_epsilon))
        return h + down(native.silu_mul(g, u))

    def torch_layer(self, i: int, parts: tuple, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                    cache: Any, start: int) -> torch.Tensor:
        """One decoder layer in torch ops (where our kernels are not built)."""
        norm1, qkv, o_proj, norm2, gate_up, act, down = parts
        m = h.shape[1]
        cos, sin = cos[:, None], sin[:, None]  # broadcast over heads
        q, k, v = qkv(norm1(h))
        q = _rotate(q.view(1, m, self.heads, self.head_dim).transpose(1, 2), cos, sin)
        k = _rotate(k.view(1, m, self.kv_heads, self.head_dim).transpose(1, 2), cos, sin)
        keys, values = append(cache, i, k, v.view(1, m, self.kv_heads, self.head_dim).transpose(1, 2))
        a = self.attend(q, keys, values, start)
        h = h + o_proj(a.transpose(1, 2).reshape(1, m, self.heads * self.head_dim))
        g, u = gate_up(norm2(h))
        return h + down(act(g) * u)

    def attend(self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, start: int) -> torch.Tensor:
        """Causal attention, one query row at a time: row r sees keys [0, start + r]. Where our
        kernels run, native_layer calls native.attend instead: torch's flash attention costs
        ~0.5 ms a call on a CPU."""
        rows = [
            F.scaled_dot_product_attention(q[:, :, r : r + 1], keys[:, :, : start + r + 1], values[:, :, : start + r + 1],
                                           scale=self.scale, enable_gqa=True)
            for r in range(q.shape[2])
        ]
        return rows[0] if len(rows) == 1 else torch.cat(rows, dim=2)


def append(cache: Any, i: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`cache.update` without copying the history: write into room kept after layer i's KV.

    transformers' DynamicLayer concatenates (copies all n positions) on every step; here each
    layer's keys and values are prefix views of buffers with ROOM spare positions, so a step
    writes only its m new positions. A cropped layer stays a view of its buffer (the next step
    overwrites what was cut). Anything that is not such a view (a prompt pass, a deep copy)
    gets a fresh buffer, once."""
    layers = cache.layers
    if i >= len(layers) or not getattr(layers[i], "is_initialized", False):
        return cache.update(k, v, i)
    layer = layers[i]
    layer.keys = _write(layer, "keys", k)
    layer.values = _write(layer, "values", v)
    return layer.keys, layer.values


ROOM = 256  # spare positions per buffer: a reallocation (one copy) every 256 tokens at most


def _write(layer: Any, name: str, new: torch.Tensor) -> torch.Tensor:
    old: torch.Tensor = getattr(layer, name)
    buf: torch.Tensor | None = getattr(layer, f"_lean_{name}", None)
    n, m = old.shape[-2], new.shape[-2]
    if (buf is None or buf.shape[-2] < n + m or buf.shape[:-2] != old.shape[:-2] or buf.dtype != old.dtype
            or old.data_ptr() != buf.data_ptr() or old.stride() != buf.stride()):
        buf = old.new_empty((*old.shape[:-2], n + m + ROOM, old.shape[-1]))
        buf[..., :n, :] = old
        setattr(layer, f"_lean_{name}", buf)
    buf.narrow(-2, n, m).copy_(new)  # narrow, not buf[..., n:n + m, :]: Python slicing costs ~15 µs a call
    return buf.narrow(-2, 0, n + m)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding, half-split form: x·cos + [−x₂, x₁]·sin."""
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


def installed(model: nn.Module) -> bool:
    return isinstance(model.__dict__.get("forward"), LeanForward)


def install(model: nn.Module) -> bool:
    """Route `model`'s few-token forwards through LeanForward; False if its architecture is not one we run."""
    if not installed(model) and supports(model):
        model.forward = LeanForward(model, model.forward)
    return installed(model)
