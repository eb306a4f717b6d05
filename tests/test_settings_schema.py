"""One settings schema (config.py: `setting(...)` per field) and every list of keys checked
against it: the CLI's flags (generated from it), the benchmarks' server options (generated),
the VS Code extension's keys, enums and defaults (package.json, logic.ts: TypeScript, so
tested here), and the README's table."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from gemma_lsp.cli import build_parser, settings_of
from gemma_lsp.config import FIELDS, Settings

REPO = Path(__file__).parent.parent
VSCODE = REPO / "editors" / "vscode"
EXTENSION_ONLY = {"enabled", "languages", "serverPath", "serverArgs", "serverEnv", "popupCompletion", "debounceMs",
                  "statsIntervalMs", "trace.server"}


def choices(key: str) -> tuple[str, ...] | None:
    return getattr(FIELDS[key].metadata["check"], "choices", None)


def _ts_list(name: str) -> list[str]:
    m = re.search(rf"export const {name} = \[(.*?)\] as const", (VSCODE / "src" / "logic.ts").read_text(), re.S)
    assert m, name
    return re.findall(r'"([^"]+)"', m.group(1))


def _package_settings() -> dict[str, dict]:
    props = json.loads((VSCODE / "package.json").read_text())["contributes"]["configuration"]["properties"]
    return {k.removeprefix("gemmaLsp."): v for k, v in props.items()}


def test_every_setting_has_a_check_a_doc_and_a_valid_default():
    for key, f in FIELDS.items():
        assert callable(f.metadata["check"]) and f.metadata["doc"], key
        assert f.metadata["check"](key, f.default) == f.default, key  # the default passes its own check


def test_every_dtype_setting_names_a_torch_dtype():
    from gemma_lsp.models.loader import DTYPE_OF

    assert set(DTYPE_OF) | {"auto"} == set(choices("dtype"))


def test_the_engine_key_is_the_reload_settings():
    changed = Settings().merged({"model": "/m", "dtype": "float32", "cacheMb": 64, "maxTokens": 3})
    assert changed.engine_key() != Settings().engine_key()
    assert Settings().merged({"cacheMb": 64, "maxTokens": 3}).engine_key() == Settings().engine_key()


def test_the_cli_flags_come_from_the_schema():
    """Every flag setting is a flag of `complete`, with the schema's choices; what the flags
    say reaches the settings."""
    argv = ["complete", "f.py:1:1"]
    for key, f in FIELDS.items():
        if not f.metadata["flag"] or key == "cacheMb":
            continue
        c = choices(key)
        value = c[-1] if c else {"backend": "local", "apiKeyEnv": "MY_KEY"}.get(key, "7" if f.type in ("int", int) else "x")
        argv += ["--" + f.name.replace("_", "-"), value]
    s = settings_of(build_parser().parse_args(argv))
    assert s.drafter == choices("drafter")[-1] and s.max_tokens == 7 and s.backend == "local" and s.model == "x"
    assert s.api_key_env == "MY_KEY" and s.time_budget_ms == 7
    engine = build_parser().parse_args(["engine", "--cache-mb", "64"])
    assert settings_of(engine).cache_mb == 64
    with pytest.raises(SystemExit):  # argparse refuses what the schema refuses
        build_parser().parse_args(["complete", "f.py:1:1", "--drafter", "magic"])


def test_the_benchmarks_pass_the_server_the_schema_s_keys():
    import argparse

    from benchmarks.cli import add_bench_args
    from benchmarks.lsp_client import server_options

    p = argparse.ArgumentParser()
    add_bench_args(p)
    args = p.parse_args(["typing", "--drafter", "ngram", "--max-tokens", "9", "--backend", "local",
                         "--api-key-env", "K", "--time-budget-ms", "5"])
    opts = server_options(args)
    assert opts == {"drafter": "ngram", "maxTokens": 9, "backend": "local", "apiKeyEnv": "K", "timeBudgetMs": 5}
    assert Settings().merged(opts).max_tokens == 9


def test_the_vscode_extension_knows_the_schema():
    pkg = _package_settings()
    server_keys = _ts_list("SERVER_KEYS")
    assert set(server_keys) <= set(FIELDS), set(server_keys) - set(FIELDS)
    assert set(pkg) - EXTENSION_ONLY <= set(FIELDS), set(pkg) - EXTENSION_ONLY - set(FIELDS)
    assert set(pkg) - EXTENSION_ONLY == set(server_keys)  # every server key in the UI is forwarded
    for key, ts in (("drafter", "DRAFTERS"), ("singleLine", "SINGLE_LINE"), ("retrieval", "RETRIEVAL")):
        assert tuple(_ts_list(ts)) == choices(key), key
        assert tuple(pkg[key]["enum"]) == choices(key), key
    for key in set(pkg) & set(FIELDS):
        default = pkg[key].get("default")
        if default is not None:  # null: the server's own default
            assert default == FIELDS[key].default, key


def test_the_readme_table_lists_the_schema():
    text = (REPO / "README.md").read_text()
    table = text[text.index("| key | default | meaning |"):]
    rows = [r for r in table.split("\n\n", 1)[0].splitlines()[2:] if r.startswith("|")]
    documented: dict[str, str] = {}
    for row in rows:
        first = row.split("|")[1]
        for key in re.findall(r"`(\w+)`", first):
            documented[key] = row
    assert set(documented) == set(FIELDS), set(documented) ^ set(FIELDS)
    for key in FIELDS:
        for value in choices(key) or ():
            if key != "dtype" or value in ("gguf", "bfloat16", "float32", "float16", "bf16", "fp32", "fp16"):
                assert f"`{value}`" in documented[key] or value == "auto", (key, value)
