"""Gemma 4's MTP assistant drafter: lossless with a tiny random Gemma 4 (KV sharing) + assistant."""

from __future__ import annotations

import pytest

from gemma_lsp.engine import Engine, GenerateRequest
from tiny_models import gemma4_assistant, gemma4_shared_kv, reference_greedy

PROMPTS = [[(5 * i + 7) % 90 + 3 for i in range(30)], [3, 4, 5, 6] * 6 + [9, 10]]


@pytest.mark.parametrize("drafter", ["gemma4-assistant", "auto"])
def test_assistant_drafter_is_lossless(drafter):
    target, assistant = gemma4_shared_kv(seed=4), gemma4_assistant(seed=5)
    engine = Engine(target, assistant=assistant)
    drafted = 0
    for prompt in PROMPTS:
        want = reference_greedy(target, prompt, 20)
        res = engine.generate(GenerateRequest(prompt=prompt, max_tokens=20, drafter=drafter))
        assert res.tokens == want
        drafted += res.stats.drafted_by.get("gemma4-assistant", [0, 0])[0]
    assert drafted > 0, "the assistant never drafted: the test would prove nothing"


def test_assistant_needs_an_assistant_model():
    with pytest.raises(ValueError, match="gemma4-assistant"):
        Engine(gemma4_shared_kv()).generate(GenerateRequest(prompt=[3, 4, 5], drafter="gemma4-assistant"))


def test_an_assistant_directory_loads_as_a_draft_head(tmp_path):
    """A saved assistant (safetensors, no tokenizer of its own) loads through the normal model path."""
    from gemma_lsp.models.loader import load

    gemma4_assistant(seed=5).save_pretrained(tmp_path, safe_serialization=True)
    loaded = load(str(tmp_path), "cpu", "float32")
    assert loaded.is_assistant and loaded.tokenizer is None
