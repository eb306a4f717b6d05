"""Tiny random-weight models built in the test process (no downloads).

They are real transformers architectures (Qwen2, Gemma 3, Gemma 4 text) with
real caches and real sliding-window masks; only their size and weights are fake.
"""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, Gemma3TextConfig, Qwen2Config
from transformers.models.gemma4 import Gemma4TextConfig

VOCAB = 96


def _build(config, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    # Random init is near-uniform; scale the output head so argmaxes are decisive.
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(8.0)
    return model.eval()


def qwen2(seed: int = 0) -> torch.nn.Module:
    cfg = Qwen2Config(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        tie_word_embeddings=False,
    )
    return _build(cfg, seed)


def gemma3(seed: int = 0, window: int = 8) -> torch.nn.Module:
    cfg = Gemma3TextConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=window,
        layer_types=["sliding_attention", "sliding_attention", "sliding_attention", "full_attention"],
        max_position_embeddings=512, pad_token_id=0, tie_word_embeddings=False,
    )
    return _build(cfg, seed)


def gemma4(seed: int = 0, window: int = 8) -> torch.nn.Module:
    cfg = Gemma4TextConfig(
        vocab_size=VOCAB, vocab_size_per_layer_input=VOCAB, hidden_size=64, intermediate_size=128,
        num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        global_head_dim=16, hidden_size_per_layer_input=8, sliding_window=window,
        layer_types=["sliding_attention", "sliding_attention", "sliding_attention", "full_attention"],
        max_position_embeddings=512, pad_token_id=0, tie_word_embeddings=False,
    )
    return _build(cfg, seed)


def gemma4_config(window: int = 8, shared: int = 0) -> Gemma4TextConfig:
    return Gemma4TextConfig(
        vocab_size=VOCAB, vocab_size_per_layer_input=VOCAB, hidden_size=64, intermediate_size=128,
        num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        global_head_dim=16, hidden_size_per_layer_input=8, sliding_window=window,
        layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
        max_position_embeddings=512, pad_token_id=0, tie_word_embeddings=False, num_kv_shared_layers=shared,
    )


def gemma4_shared_kv(seed: int = 0) -> torch.nn.Module:
    """Gemma 4 with KV sharing (the last two layers reuse earlier layers' K/V), as E2B has."""
    return _build(gemma4_config(shared=2), seed)


def gemma4_assistant(seed: int = 0) -> torch.nn.Module:
    """A Gemma 4 MTP assistant head for `gemma4_shared_kv` (backbone hidden size 64)."""
    from transformers.models.gemma4_assistant import Gemma4AssistantConfig, Gemma4AssistantForCausalLM

    text = Gemma4TextConfig(
        vocab_size=VOCAB, vocab_size_per_layer_input=0, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, head_dim=16, global_head_dim=16, hidden_size_per_layer_input=0,
        sliding_window=8, layer_types=["sliding_attention", "full_attention"], max_position_embeddings=512,
        pad_token_id=0, num_kv_shared_layers=2,
    )
    torch.manual_seed(seed)
    return Gemma4AssistantForCausalLM(Gemma4AssistantConfig(text_config=text, backbone_hidden_size=64)).eval()


FAMILIES = {"qwen2": qwen2, "gemma3": gemma3, "gemma4": gemma4, "gemma4-shared-kv": gemma4_shared_kv}


@torch.inference_mode()
def reference_greedy(model: torch.nn.Module, prompt: list[int], n: int, stop: frozenset[int] = frozenset()) -> list[int]:
    """Plain greedy without any cache: a full forward over the whole sequence per token."""
    seq, out = list(prompt), []
    for _ in range(n):
        logits = model(input_ids=torch.tensor([seq]), use_cache=False).logits[0, -1]
        t = int(torch.argmax(logits))
        if t in stop:
            break
        out.append(t)
        seq.append(t)
    return out
