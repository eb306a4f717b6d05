"""How far a way of running a GGUF moves the model's next-token distributions.

The reference is the file's model as transformers dequantizes it (weights held in bf16),
computed in float32. Every cheap way of running the file (dense bf16, gemma-lsp's block
kernels, torch's int4/int8 kernels, llama.cpp) is compared with it by the mean KL over every
position of a few FIM prompts, and by how often it keeps the reference's top token where that
token leads by more than CLEAR_GAP logits. Speed figures say nothing about this; pass@1 on 30
tasks sees only large changes. Used by `bench vs-llama-cpp --drift` and tests/test_real_quant.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

CLEAR_GAP = 1.0  # logits: a reference top-2 gap this wide must survive quantization


def fim_prompts(prompter: Any, n: int) -> list[Any]:
    """n single-line HumanEval-infilling prompts, built as the server builds them (seed 11)."""
    from . import humaneval as he

    tasks = he.sample(he.single_line_tasks(he.load_problems()), n, seed=11)
    return [prompter.build(t.prefix, t.suffix) for t in tasks]


@torch.inference_mode()
def all_logits(model: Any, ids: list[int]) -> torch.Tensor:
    return model(input_ids=torch.tensor([ids])).logits[0].float()


def quant_logits(model: Any, prompts: list[list[int]]) -> torch.Tensor:
    """Every position on the quantized kernels (their rows are independent), not the dense prompt pass."""
    from gemma_lsp.quant.linear import set_max_rows

    set_max_rows(model, 1 << 30)
    try:
        return torch.cat([all_logits(model, ids) for ids in prompts])
    finally:
        set_max_rows(model, 8)


def llama_cpp_logits(gguf: Path, prompts: list[list[int]], threads: int = 2) -> torch.Tensor | None:
    """llama.cpp's logits for the same file and tokens; None where llama-cpp-python is not installed."""
    try:
        from llama_cpp import Llama
    except ImportError:
        return None
    llm = Llama(str(gguf), n_ctx=4096, n_threads=threads, n_threads_batch=threads, logits_all=True, verbose=False)
    out = []
    for ids in prompts:
        llm.reset()
        llm.eval(ids)
        out.append(torch.tensor(llm.scores[: len(ids)], dtype=torch.float32))
    del llm
    return torch.cat(out)


def kl(ref: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """KL(ref ‖ other) per position, in nats."""
    lp, lq = torch.log_softmax(ref, -1), torch.log_softmax(other, -1)
    return (lp.exp() * (lp - lq)).sum(-1)


def compare(ref: torch.Tensor, runs: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Mean KL from `ref` and top-1 agreement where the reference's lead is clear, per run."""
    top2 = torch.topk(ref, 2).values
    clear = (top2[:, 0] - top2[:, 1]) > CLEAR_GAP
    out: dict[str, Any] = {"positions": len(ref), "clear_positions": int(clear.sum())}
    for name, q in runs.items():
        out[name] = {"mean_kl": kl(ref, q).mean().item(),
                     "top1_clear": (q.argmax(-1) == ref.argmax(-1))[clear].float().mean().item()}
    return out
