"""The real embedded default model (Qwen2.5-Coder-1.5B), end to end. Slow; CI runs it.

These are the tests that prove the product works: the CLI and the LSP server each
complete a masked HumanEval line, and the completed function passes its own tests.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from lsprotocol import types as lsp
from pytest_lsp import ClientServerConfig, client_capabilities

from benchmarks import humaneval as he

pytestmark = pytest.mark.slow

# Lines this model completes correctly on this CPU (bf16, greedy); picked from a sample,
# each with a different shape: a call inside a loop body, a for header, an augmented assign.
TASKS = ["HumanEval/58/L5", "HumanEval/75/L11", "HumanEval/140/L13"]


@pytest.fixture(scope="module")
def tasks() -> dict[str, he.InfillTask]:
    all_tasks = {t.task_id: t for t in he.single_line_tasks(he.load_problems())}
    return {tid: all_tasks[tid] for tid in TASKS}


def lsp_position(text: str, offset: int) -> lsp.Position:
    before = text[:offset]
    line = before.count("\n")
    col = len(before) - (before.rfind("\n") + 1)
    return lsp.Position(line, len(before[len(before) - col :].encode("utf-16-le")) // 2)


@pytest.mark.parametrize("task_id", TASKS[:2])
def test_cli_complete_fills_a_humaneval_line_that_passes_its_tests(default_model_dir, tasks, task_id, tmp_path):
    t = tasks[task_id]
    src = tmp_path / "task.py"
    src.write_text(t.prefix + t.suffix)
    line = t.prefix.count("\n") + 1
    col = len(t.prefix) - t.prefix.rfind("\n")  # 1-based column just after the indentation
    out = subprocess.run(
        [sys.executable, "-m", "gemma_lsp", "complete", f"{src}:{line}:{col}", "--json", "--drafter", "auto"],
        capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    d = json.loads(out.stdout.strip().splitlines()[-1])
    for key in ("text", "tokens", "target_forwards", "drafted", "accepted", "prompt_tokens", "reused_tokens",
                "prefill_ms", "decode_ms", "drafter", "model"):
        assert key in d, key
    assert d["text"].strip(), d
    result = he.run_tests(he.program(t, d["text"] + "\n"), 20)
    assert result.passed, (d["text"], result)


async def test_lsp_inline_completion_with_the_real_model(default_model_dir, tasks):
    t = tasks["HumanEval/140/L13"]
    text = t.prefix + t.suffix
    cfg = ClientServerConfig(server_command=[sys.executable, "-m", "gemma_lsp", "serve"])
    client = await cfg.start()
    try:
        await client.initialize_session(lsp.InitializeParams(
            capabilities=client_capabilities("visual-studio-code"),
            initialization_options={"gemmaLsp": {"timeBudgetMs": 60000}}))
        uri = "file:///tmp/he140.py"
        client.text_document_did_open(lsp.DidOpenTextDocumentParams(lsp.TextDocumentItem(uri, "python", 1, text)))
        pos = lsp_position(text, len(t.prefix))
        res = await client.text_document_inline_completion_async(lsp.InlineCompletionParams(
            context=lsp.InlineCompletionContext(trigger_kind=lsp.InlineCompletionTriggerKind.Invoked),
            text_document=lsp.TextDocumentIdentifier(uri), position=pos))
        assert res.items, "no suggestion from the real model"
        item = res.items[0]
        assert item.range == lsp.Range(pos, pos)
        result = he.run_tests(he.program(t, item.insert_text + "\n"), 20)
        assert result.passed, (item.insert_text, result)
        # Typing the suggestion's first characters is answered at once with the rest.
        typed = item.insert_text[:3]
        client.text_document_did_change(lsp.DidChangeTextDocumentParams(
            lsp.VersionedTextDocumentIdentifier(uri=uri, version=2),
            [lsp.TextDocumentContentChangePartial(range=lsp.Range(pos, pos), text=typed)]))
        pos2 = lsp.Position(pos.line, pos.character + len(typed))
        res2 = await client.text_document_inline_completion_async(lsp.InlineCompletionParams(
            context=lsp.InlineCompletionContext(trigger_kind=lsp.InlineCompletionTriggerKind.Automatic),
            text_document=lsp.TextDocumentIdentifier(uri), position=pos2))
        assert res2.items and res2.items[0].insert_text == item.insert_text[3:]
    finally:
        await client.shutdown_session()
