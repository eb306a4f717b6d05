"""Model resolution: presets from the local caches only, vocab checks for draft models."""

from __future__ import annotations

import pytest

from gemma_lsp.models.loader import pick_dtype, pick_device, resolve, same_vocab
from gemma_lsp.errors import ModelError


class FakeTok:
    def __init__(self, vocab: dict[str, int]) -> None:
        self.vocab = vocab

    def get_vocab(self) -> dict[str, int]:
        return self.vocab


def test_mismatched_draft_vocabulary_is_refused():
    same_vocab(FakeTok({"a": 0, "b": 1}), FakeTok({"a": 0, "b": 1}))
    with pytest.raises(ModelError, match="vocabulary differs"):
        same_vocab(FakeTok({"a": 0, "b": 1}), FakeTok({"a": 0, "c": 1}))


def test_gemma4_preset_is_resolved_from_the_local_cache_only(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    with pytest.raises(ModelError, match=r"google/gemma-4-31B.*local Hugging Face cache.*huggingface-cli download"):
        resolve("gemma4-31b")


def test_unknown_dtype_and_missing_cuda_are_clear_errors():
    with pytest.raises(ModelError, match="unknown dtype"):
        pick_dtype("int3", pick_device("cpu"))
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match="no CUDA GPU"):
            pick_device("cuda")
