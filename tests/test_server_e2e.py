"""End to end over real LSP stdio: pytest-lsp's client drives `python -m gemma_lsp serve`.

The model is a tiny random-weight Qwen2 with the real tokenizer (see conftest):
what is checked here is protocol, positions and scheduling, not completion quality
(test_real_model.py checks that with the real default model).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import sys

import pytest
import pytest_asyncio
from lsprotocol import types as lsp
from pygls.exceptions import JsonRpcException
from pytest_lsp import ClientServerConfig, client_capabilities

CLIENTS = {"neovim": "neovim@v0.11.0", "vscode": "visual-studio-code", "emacs": "emacs"}
ENCODING = {"neovim": "utf-8", "vscode": "utf-16", "emacs": "utf-32"}
FAST = {"maxTokens": 4, "singleLine": "never", "dtype": "float32", "timeBudgetMs": 60000}


async def start(model_dir, client_name: str = "vscode", options: dict | None = None):
    cfg = ClientServerConfig(server_command=[sys.executable, "-m", "gemma_lsp", "serve"])
    client = await cfg.start()
    caps = client_capabilities(CLIENTS[client_name])
    init = {"gemmaLsp": {"model": str(model_dir), **FAST, **(options or {})}}
    result = await client.initialize_session(
        lsp.InitializeParams(capabilities=caps, initialization_options=init, root_uri="file:///tmp"))
    return client, result


@pytest_asyncio.fixture
async def server(tiny_qwen_dir):
    client, _ = await start(tiny_qwen_dir)
    yield client
    await client.shutdown_session()


def open_doc(client, uri: str, text: str, lang: str = "python") -> None:
    client.text_document_did_open(lsp.DidOpenTextDocumentParams(lsp.TextDocumentItem(uri, lang, 1, text)))


def units(s: str, enc: str) -> int:
    return len(s) if enc == "utf-32" else len(s.encode("utf-16-le")) // 2 if enc == "utf-16" else len(s.encode())


# Each line before the cursor line has something LSP does not treat as a line break
# (form feed, U+2028, U+0085) or an exotic line end (CRLF, lone CR).
TRICKY = "# 😀 emoji\x0c still line 0\r\nx = '中文 \u2028 same line'\ry = 1\n    s = '😀中' + fooba"


@pytest.mark.parametrize("client_name", list(CLIENTS))
async def test_positions_land_exactly_in_every_encoding(tiny_qwen_dir, client_name):
    client, result = await start(tiny_qwen_dir, client_name)
    try:
        enc = ENCODING[client_name]
        assert result.capabilities.position_encoding == enc
        assert result.capabilities.inline_completion_provider is not None
        uri = f"file:///tmp/tricky_{client_name}.py"
        open_doc(client, uri, TRICKY)
        last = TRICKY.split("\n")[-1]
        pos = lsp.Position(line=3, character=units(last, enc))  # lines: 0 (CRLF), 1 (CR), 2 (LF), 3
        res = await client.text_document_completion_async(lsp.CompletionParams(lsp.TextDocumentIdentifier(uri), pos))
        assert len(res.items) == 1
        edit = res.items[0].text_edit
        # The edit replaces exactly "fooba": its start is the 'f', in the client's units.
        assert edit.range.end == pos
        assert edit.range.start == lsp.Position(3, units(last[: last.index("fooba")], enc))
        assert edit.new_text.startswith("fooba")
        inline = await client.text_document_inline_completion_async(lsp.InlineCompletionParams(
            context=lsp.InlineCompletionContext(trigger_kind=lsp.InlineCompletionTriggerKind.Invoked),
            text_document=lsp.TextDocumentIdentifier(uri), position=pos))
        assert inline.items and inline.items[0].range == lsp.Range(pos, pos)
    finally:
        await client.shutdown_session()


async def test_incremental_edits_are_applied(server):
    uri = "file:///tmp/inc.py"
    open_doc(server, uri, "def f():\n    return 1\n")
    # Replace "1" by "foo + bar" then insert "😀 " before "foo" (utf-16 positions).
    server.text_document_did_change(lsp.DidChangeTextDocumentParams(
        lsp.VersionedTextDocumentIdentifier(uri=uri, version=2),
        [lsp.TextDocumentContentChangePartial(range=lsp.Range(lsp.Position(1, 11), lsp.Position(1, 12)), text="foo + bar"),
         lsp.TextDocumentContentChangePartial(range=lsp.Range(lsp.Position(1, 11), lsp.Position(1, 11)), text="😀 ")]))
    # Line is now "    return 😀 foo + bar": 'bar' starts at utf-16 column 11 + 2 + 1 + 6 = 20.
    pos = lsp.Position(1, 23)
    res = await server.text_document_completion_async(lsp.CompletionParams(lsp.TextDocumentIdentifier(uri), pos))
    assert res.items[0].text_edit.range.start == lsp.Position(1, 20)
    assert res.items[0].text_edit.new_text.startswith("bar")


_ids = itertools.count()


def start_raw(client, method: str, params) -> tuple[str, asyncio.Future]:
    """Send a request exactly as given (the typed client would refuse to serialize bad params)."""
    msg_id = f"raw-{method}-{next(_ids)}"
    fut: concurrent.futures.Future = concurrent.futures.Future()
    client.protocol._request_futures[msg_id] = fut
    client.protocol._send_data({"jsonrpc": "2.0", "id": msg_id, "method": method, "params": params})
    return msg_id, asyncio.wrap_future(fut)


async def send_raw(client, method: str, params) -> object:
    return await asyncio.wait_for(start_raw(client, method, params)[1], 10)


def plain(x):
    """pygls' client turns untyped results into namedtuples; compare as dicts."""
    if hasattr(x, "_asdict"):
        return {k: plain(v) for k, v in x._asdict().items()}
    return x


async def get_stats(client) -> dict:
    return plain(await send_raw(client, "gemma/stats", None))


async def test_malformed_params_get_an_error_response(server):
    with pytest.raises(JsonRpcException) as err:
        await send_raw(server, "textDocument/inlineCompletion", {"textDocument": 5, "position": "here"})
    assert err.value.code == -32602
    with pytest.raises(JsonRpcException) as err:
        await send_raw(server, "textDocument/completion", {"textDocument": {"uri": "file:///x"}, "position": {"line": -1}})
    assert err.value.code == -32602
    stats = await get_stats(server)
    assert stats["completions"] == 0  # and the server still answers


async def test_unknown_document_is_a_clear_error(server):
    with pytest.raises(JsonRpcException, match="not open"):
        await server.text_document_completion_async(lsp.CompletionParams(
            lsp.TextDocumentIdentifier("file:///tmp/never_opened.py"), lsp.Position(0, 0)))


LONG = {"maxTokens": 1000, "timeBudgetMs": 120000}


def long_request(client, uri: str):
    return client.text_document_inline_completion_async(lsp.InlineCompletionParams(
        context=lsp.InlineCompletionContext(trigger_kind=lsp.InlineCompletionTriggerKind.Automatic),
        text_document=lsp.TextDocumentIdentifier(uri), position=lsp.Position(0, 4)))


async def test_cancel_request_stops_decoding(tiny_qwen_dir):
    client, _ = await start(tiny_qwen_dir, options=LONG)
    try:
        uri = "file:///tmp/cancel.py"
        open_doc(client, uri, "def ")
        open_doc(client, "file:///tmp/warm.py", "def ")  # load the model first, on another document
        await client.text_document_completion_async(lsp.CompletionParams(
            lsp.TextDocumentIdentifier("file:///tmp/warm.py"), lsp.Position(0, 4)))
        msg_id, task = start_raw(client, "textDocument/inlineCompletion", {
            "context": {"triggerKind": 2}, "textDocument": {"uri": uri}, "position": {"line": 0, "character": 4}})
        await asyncio.sleep(1.0)
        assert not task.done(), "the request must still be decoding when it is cancelled"
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        client.protocol._send_data({"jsonrpc": "2.0", "method": "$/cancelRequest", "params": {"id": msg_id}})
        with pytest.raises(JsonRpcException) as err:
            await asyncio.wait_for(task, 10)
        assert err.value.code == -32800  # RequestCancelled
        # The engine thread is free again at once: a cheap request is answered quickly.
        stats = await get_stats(client)
        assert stats["cancelled"] >= 1
        assert loop.time() - t0 < 5
    finally:
        await client.shutdown_session()


async def test_newer_request_supersedes_older(tiny_qwen_dir):
    client, _ = await start(tiny_qwen_dir, options=LONG)
    try:
        uri = "file:///tmp/super.py"
        open_doc(client, uri, "def ")
        first = asyncio.ensure_future(long_request(client, uri))
        await asyncio.sleep(0.5)
        second = asyncio.ensure_future(long_request(client, uri))
        old = await asyncio.wait_for(first, 30)
        assert not old.items  # answered, empty: superseded
        await asyncio.wait_for(second, 120)
        stats = await get_stats(client)
        assert stats["cancelled"] >= 1
    finally:
        await client.shutdown_session()


async def test_engine_failure_is_answered_and_server_lives_on(tiny_qwen_dir, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in tiny_qwen_dir.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    client, _ = await start(broken)
    try:
        uri = "file:///tmp/fail.py"
        open_doc(client, uri, "x = ")
        params = lsp.CompletionParams(lsp.TextDocumentIdentifier(uri), lsp.Position(0, 4))
        with pytest.raises(JsonRpcException, match="could not load model|safetensors"):
            await client.text_document_completion_async(params)
        client.workspace_did_change_configuration(lsp.DidChangeConfigurationParams(
            settings={"gemmaLsp": {"model": str(tiny_qwen_dir)}}))
        res = await client.text_document_completion_async(params)
        assert isinstance(res, lsp.CompletionList)
        stats = await get_stats(client)
        assert stats["errors"] == 1 and stats["completions"] == 1
    finally:
        await client.shutdown_session()


async def test_stats_contract(server):
    uri = "file:///tmp/stats.py"
    open_doc(server, uri, "import os\n")
    await server.text_document_completion_async(lsp.CompletionParams(lsp.TextDocumentIdentifier(uri), lsp.Position(1, 0)))
    server.text_document_did_change(lsp.DidChangeTextDocumentParams(
        lsp.VersionedTextDocumentIdentifier(uri=uri, version=2),
        [lsp.TextDocumentContentChangePartial(range=lsp.Range(lsp.Position(1, 0), lsp.Position(1, 0)), text="import re\n")]))
    await server.text_document_completion_async(lsp.CompletionParams(lsp.TextDocumentIdentifier(uri), lsp.Position(2, 0)))
    s = await get_stats(server)
    for key in ("completions", "prompt_tokens", "reused_tokens", "tokens", "drafted", "accepted", "target_forwards", "cancelled"):
        assert isinstance(s[key], int), key
    assert s["completions"] == 2
    assert s["reused_tokens"] > 0  # the second prompt extends the first: its KV was reused
    assert set(s["latency_ms"]) >= {"p50", "p95"}


async def test_request_without_params_is_answered(server):
    msg_id = f"raw-noparams-{next(_ids)}"
    fut: concurrent.futures.Future = concurrent.futures.Future()
    server.protocol._request_futures[msg_id] = fut
    server.protocol._send_data({"jsonrpc": "2.0", "id": msg_id, "method": "gemma/stats"})  # no "params" key
    stats = plain(await asyncio.wait_for(asyncio.wrap_future(fut), 10))
    assert stats["completions"] == 0


async def test_a_bad_setting_is_reported_and_only_it_is_dropped(tiny_qwen_dir):
    client, _ = await start(tiny_qwen_dir, options={"maxTokens": 0, "singleLine": "always"})
    try:
        await asyncio.sleep(0.5)
        warnings = [m.message for m in client.messages if m.type == lsp.MessageType.Warning]
        assert any("maxTokens must be a positive integer" in w for w in warnings), client.messages
        uri = "file:///tmp/bad_setting.py"
        open_doc(server := client, uri, "x = 1\ny = ")
        res = await server.text_document_inline_completion_async(lsp.InlineCompletionParams(
            context=lsp.InlineCompletionContext(trigger_kind=lsp.InlineCompletionTriggerKind.Invoked),
            text_document=lsp.TextDocumentIdentifier(uri), position=lsp.Position(1, 4)))
        # singleLine "always" still applied: whatever came back is one line.
        assert all("\n" not in i.insert_text for i in res.items)
    finally:
        await client.shutdown_session()
