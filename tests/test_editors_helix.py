"""Static checks of editors/helix/languages.toml (Helix itself is not installable here)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")

CONFIG = Path(__file__).resolve().parents[1] / "editors" / "helix" / "languages.toml"

# Language servers that Helix 25.07 defines in its built-in languages.toml. A name used in
# a `language-servers` list must be one of these or be defined in our file.
HELIX_DEFAULT_SERVERS = {
    "bash-language-server",
    "clangd",
    "golangci-lint-lsp",
    "gopls",
    "jdtls",
    "jedi",
    "lua-language-server",
    "pylsp",
    "ruby-lsp",
    "ruff",
    "rust-analyzer",
    "solargraph",
    "ty",
    "typescript-language-server",
    "zls",
}

# Helix's own default servers per language (25.07); our lists must keep them, or the user
# loses them: `language-servers` replaces the default list.
HELIX_DEFAULT_LISTS = {
    "python": ["ty", "ruff", "jedi", "pylsp"],
    "rust": ["rust-analyzer"],
    "go": ["gopls", "golangci-lint-lsp"],
    "c": ["clangd"],
    "cpp": ["clangd"],
    "javascript": ["typescript-language-server"],
    "typescript": ["typescript-language-server"],
    "jsx": ["typescript-language-server"],
    "tsx": ["typescript-language-server"],
    "java": ["jdtls"],
    "lua": ["lua-language-server"],
}

SETTING_KEYS = {"model", "draftModel", "drafter", "maxTokens", "singleLine", "timeBudgetMs", "temperature"}


@pytest.fixture(scope="module")
def config() -> dict:
    with CONFIG.open("rb") as f:
        return tomllib.load(f)


def test_server_entry(config: dict) -> None:
    server = config["language-server"]["gemma-lsp"]
    assert server["command"] == "gemma-lsp"
    assert server["args"] == ["serve"]
    assert isinstance(server.get("timeout", 20), int)
    settings = server["config"]["gemmaLsp"]
    assert set(settings) <= SETTING_KEYS
    assert settings["drafter"] in {"auto", "none", "ngram", "suggestion", "model"}
    assert settings["singleLine"] in {"auto", "always", "never"}
    assert isinstance(settings["maxTokens"], int) and settings["maxTokens"] > 0
    assert isinstance(settings["temperature"], float) and settings["temperature"] >= 0


def test_every_language_uses_gemma_lsp(config: dict) -> None:
    languages = config["language"]
    names = [lang["name"] for lang in languages]
    assert len(names) == len(set(names)), "a language appears twice"
    for required in ("python", "rust", "javascript", "typescript", "go", "c", "cpp", "java", "lua"):
        assert required in names
    for lang in languages:
        servers = lang["language-servers"]
        assert "gemma-lsp" in servers, lang["name"]
        assert servers[-1] == "gemma-lsp", f"{lang['name']}: gemma-lsp goes after the language's own servers"
        assert len(servers) == len(set(servers)), lang["name"]
        assert len(servers) >= 2, f"{lang['name']}: keep the language's own server"


def test_referenced_servers_are_known(config: dict) -> None:
    defined = set(config.get("language-server", {}))
    for lang in config["language"]:
        for entry in lang["language-servers"]:
            # An entry is a name or a table {name = ..., only-features/except-features = ...}.
            name = entry if isinstance(entry, str) else entry["name"]
            assert name in defined or name in HELIX_DEFAULT_SERVERS, f"{lang['name']}: unknown server {name!r}"


def test_default_servers_are_kept(config: dict) -> None:
    lists = {lang["name"]: lang["language-servers"] for lang in config["language"]}
    for name, defaults in HELIX_DEFAULT_LISTS.items():
        assert lists[name][: len(defaults)] == defaults, name


def test_only_language_servers_are_overridden(config: dict) -> None:
    # Other keys would override Helix's defaults (file-types, roots, ...) for the user.
    for lang in config["language"]:
        assert set(lang) == {"name", "language-servers"}, lang["name"]
