"""config.Settings.merged: camelCase wire keys, nested or flat, later wins, bad values name the key."""

from __future__ import annotations

import pytest

from gemma_lsp.config import Settings
from gemma_lsp.errors import GemmaLspError


def test_defaults():
    s = Settings()
    assert (s.drafter, s.max_tokens, s.model, s.draft_model, s.single_line) == ("auto", 64, None, None, "auto")


def test_nested_and_flat_camel_case():
    nested = Settings().merged({"gemmaLsp": {"maxTokens": 32, "drafter": "ngram", "draftModel": "/m/draft"}})
    flat = Settings().merged({"maxTokens": 32, "drafter": "ngram", "draftModel": "/m/draft"})
    assert nested == flat
    assert (nested.max_tokens, nested.drafter, nested.draft_model) == (32, "ngram", "/m/draft")
    assert nested.model is None


def test_all_camel_keys_map():
    s = Settings().merged({
        "model": "/m/t", "draftModel": "/m/d", "drafter": "model", "maxTokens": 128, "singleLine": "never",
        "timeBudgetMs": 900, "temperature": 0.2, "topP": 0.9, "prefixTokens": 2048, "suffixTokens": 64,
        "extraTokens": 1, "dtype": "float32", "device": "cpu", "cacheMb": 512, "logPrompts": True,
    })
    assert s == Settings(
        model="/m/t", draft_model="/m/d", drafter="model", max_tokens=128, single_line="never", time_budget_ms=900,
        temperature=0.2, top_p=0.9, prefix_tokens=2048, suffix_tokens=64, extra_tokens=1, dtype="float32",
        device="cpu", cache_mb=512, log_prompts=True,
    )


def test_later_merge_wins_and_keeps_earlier_keys():
    s = Settings().merged({"gemmaLsp": {"maxTokens": 10, "drafter": "ngram"}}).merged({"maxTokens": 20})
    assert (s.max_tokens, s.drafter) == (20, "ngram")


def test_unknown_keys_ignored_and_none_is_noop():
    base = Settings()
    assert base.merged({"gemmaLsp": {"colour": "blue", "maxTokens": 8}}).max_tokens == 8
    assert base.merged({"whatever": 1}) == base
    assert base.merged(None) == base
    assert base.merged({}) == base


def test_merged_does_not_mutate():
    base = Settings()
    base.merged({"maxTokens": 5})
    assert base.max_tokens == 64


def test_empty_model_means_default():
    assert Settings(model="/m").merged({"model": ""}).model is None
    assert Settings(model="/m").merged({"model": None}).model is None


def test_float_values_coerced():
    s = Settings().merged({"temperature": 1, "topP": 1})
    assert s.temperature == 1.0 and isinstance(s.temperature, float)
    assert s.top_p == 1.0 and isinstance(s.top_p, float)


@pytest.mark.parametrize(
    "obj, key",
    [
        ({"drafter": "telepathy"}, "drafter"),
        ({"gemmaLsp": {"drafter": "telepathy"}}, "drafter"),
        ({"maxTokens": 0}, "maxTokens"),
        ({"maxTokens": "5"}, "maxTokens"),
        ({"maxTokens": True}, "maxTokens"),
        ({"maxTokens": 2.5}, "maxTokens"),
        ({"maxTokens": 100000}, "maxTokens"),
        ({"topP": 2}, "topP"),
        ({"topP": 0}, "topP"),
        ({"temperature": -1}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"model": 5}, "model"),
        ({"draftModel": ["a"]}, "draftModel"),
        ({"singleLine": "sometimes"}, "singleLine"),
        ({"logPrompts": "yes"}, "logPrompts"),
        ({"dtype": 16}, "dtype"),
        ({"dtype": "int4"}, "dtype"),
        ({"prefixTokens": -5}, "prefixTokens"),
        ({"timeBudgetMs": None}, "timeBudgetMs"),
    ],
)
def test_bad_values_name_the_key(obj, key):
    with pytest.raises(GemmaLspError) as e:
        Settings().merged(obj)
    assert key in str(e.value)


@pytest.mark.parametrize("obj", [[1, 2], "maxTokens=5", 5])
def test_non_object_rejected(obj):
    with pytest.raises(GemmaLspError, match="object"):
        Settings().merged(obj)


def test_engine_key():
    a = Settings()
    assert a.merged({"maxTokens": 9}).engine_key() == a.engine_key()
    assert a.merged({"model": "/m"}).engine_key() != a.engine_key()


def test_changed_lists_only_what_differs_from_the_defaults() -> None:
    """The server logs this when settings change: a user can see their setting arrived."""
    assert Settings().changed() == {}
    s = Settings().merged({"gemmaLsp": {"maxTokens": 48, "drafter": "auto", "singleLine": "always"}})
    assert s.changed() == {"maxTokens": 48, "singleLine": "always"}
