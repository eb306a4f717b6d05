"""Protocol abuse over the real wire (tests/wire.py, a raw client; the server is `gemma-lsp
serve` with a tiny random Qwen2 and the real tokenizer).

`test_fuzzed_stream_*` runs the seeded fuzzer of tests/lsp_fuzz.py at CI size (the long run
is `python tests/lsp_fuzz.py --messages 10000 --seed 1 --tcp`, docs/reliability.md); the
others pin down, one by one, what the fuzzer found: each got no answer (or a wrong one)
before framing.Frames.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import pytest

from lsp_fuzz import fuzz_one
from wire import Wire, frame

SEED = int(os.environ.get("GEMMA_LSP_FUZZ_SEED", "1"))


@pytest.mark.parametrize("encoding,tcp", [("utf-8", False), ("utf-16", False), ("utf-32", False), ("utf-16", True)],
                         ids=["utf-8", "utf-16", "utf-32", "tcp"])
def test_fuzzed_stream_every_request_answered_once(tiny_qwen_dir, encoding, tcp):
    args = argparse.Namespace(big=encoding == "utf-16" and not tcp, drain=100)
    r = fuzz_one(args, tiny_qwen_dir, encoding, 500, SEED, tcp)
    assert r["encoding"] == encoding
    assert r["requests"] > 100 and r["completions"] >= 1  # it reached the model (most requests are superseded)
    assert r["problems"] == [], r


@pytest.fixture
def wire(tiny_qwen_dir):
    with Wire() as w:
        w.initialize({"model": str(tiny_qwen_dir), "dtype": "float32", "maxTokens": 3})
        yield w


def _error(answer: dict) -> tuple[int, str]:
    return answer["error"]["code"], answer["error"]["message"]


def test_a_request_before_initialize_is_refused_not_ignored(tiny_qwen_dir):
    with Wire() as w:
        w.send({"jsonrpc": "2.0", "id": 1, "method": "gemma/stats"})
        w.notify("textDocument/didOpen", {"textDocument": {"uri": "file:///a.py", "languageId": "python",
                                                           "version": 1, "text": "x"}})
        assert _error(w.wait(1))[0] == -32002
        w.initialize({"model": str(tiny_qwen_dir), "dtype": "float32"})
        # the didOpen before initialize was dropped, as LSP says
        assert _error(w.request("gemma/document", {"textDocument": {"uri": "file:///a.py"}}))[0] == -32803


def test_unreadable_bodies_are_answered(wire):
    wire.send_bytes(frame(b'{"jsonrpc": "2.0", "id": 7, "method": "gemma/stats", "params": {"x": "\xff"}}'))
    code, message = _error(wire.wait(7))
    assert code == -32700 and "UTF-8" in message
    wire.send_bytes(frame(b'{"jsonrpc": "2.0", "id": 8, "method": "gemma/sta'))  # truncated: the id still reads
    assert _error(wire.wait(8))[0] == -32700
    for body in (b"[1, 2]", b"5", b"[" * 100000 + b"]" * 100000):
        wire.send_bytes(frame(body))
    wire.request("gemma/stats")
    nulls = wire.answers(None)
    assert [a["error"]["code"] for a in nulls] == [-32600, -32600, -32700]


def test_bad_ids_and_versions(wire):
    wire.send({"jsonrpc": "2.0", "id": {"a": 1}, "method": "gemma/stats"})
    wire.send({"id": 9, "method": "gemma/stats"})  # no "jsonrpc"
    assert _error(wire.wait(9))[0] == -32600
    wire.send({"jsonrpc": "2.0", "id": 10, "method": 5})
    assert _error(wire.wait(10))[0] == -32600
    wire.send({"jsonrpc": "2.0", "method": 5})  # a bad notification: no answer at all
    wire.request("gemma/stats")
    assert [a["error"]["code"] for a in wire.answers(None)] == [-32600]


def test_a_notification_sent_with_an_id_is_applied_and_answered(wire):
    wire.send({"jsonrpc": "2.0", "id": 11, "method": "textDocument/didOpen", "params": {"textDocument": {
        "uri": "file:///n.py", "languageId": "python", "version": 1, "text": "abc"}}})
    assert wire.wait(11)["result"] is None
    assert wire.request("gemma/document", {"textDocument": {"uri": "file:///n.py"}})["result"]["text"] == "abc"
    time.sleep(0.3)
    assert len(wire.answers(11)) == 1


def test_duplicate_ids_get_one_answer_each(wire):
    for _ in range(2):
        wire.send({"jsonrpc": "2.0", "id": 12, "method": "gemma/stats"})
    wire.request("gemma/stats")
    assert len(wire.answers(12)) == 2


def test_framing_lies_resynchronize(wire):
    good = json.dumps({"jsonrpc": "2.0", "id": 13, "method": "gemma/stats"}).encode()
    wire.send_bytes(b"Content-Length: %d\r\n\r\n" % (len(good) + 5) + good + b" " * 5)  # too long, padded
    assert "result" in wire.wait(13)
    cut = json.dumps({"jsonrpc": "2.0", "id": 14, "method": "gemma/stats"}).encode()
    wire.send_bytes(b"Content-Length: 10\r\n\r\n" + cut + b"\r\n")  # too short: the rest is garbage
    wire.send_bytes(b"not a header\r\nX-Other: 1\r\n" + b"a" * 20000 + b"\r\n")
    assert "result" in wire.request("gemma/stats")
    assert wire.answers(14) == []  # its id was in the part the header did not announce


def test_requests_after_shutdown_are_refused_and_exit_is_clean(wire):
    assert wire.request("shutdown")["result"] is None
    assert _error(wire.request("gemma/stats"))[0] == -32600
    wire.notify("exit")
    assert wire.proc.wait(30) == 0


def test_an_invalid_change_leaves_the_document_as_it_was(wire):
    uri = "file:///c.py"
    wire.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "python", "version": 1,
                                                          "text": "one\ntwo\n"}})
    ok = {"range": {"start": {"line": 0, "character": 3}, "end": {"line": 0, "character": 3}}, "text": "!"}
    reversed_ = {"range": {"start": {"line": 1, "character": 2}, "end": {"line": 0, "character": 0}}, "text": "x"}
    wire.notify("textDocument/didChange", {"textDocument": {"uri": uri, "version": 2}, "contentChanges": [ok, reversed_]})
    assert wire.request("gemma/document", {"textDocument": {"uri": uri}})["result"]["text"] == "one\ntwo\n"


def test_stats_after_completions_report_the_cache(wire):
    """Found by the fuzzer (seed 1, 3,000 messages): gemma/stats raised once the model was
    loaded (a property called as a method)."""
    wire.notify("textDocument/didOpen", {"textDocument": {"uri": "file:///s.py", "languageId": "python",
                                                          "version": 1, "text": "def f():\n    return "}})
    assert "result" in wire.request("textDocument/inlineCompletion", {
        "textDocument": {"uri": "file:///s.py"}, "position": {"line": 1, "character": 11},
        "context": {"triggerKind": 1}}, timeout=120)
    stats = wire.request("gemma/stats")["result"]
    assert 0 < stats["cache_bytes"] <= stats["cache_limit_bytes"]


async def test_an_oversized_message_is_dropped_in_pieces(monkeypatch):
    """In process, with a small limit: the body is read and dropped (the stream stays in
    step), a request whose id is at the top gets -32600, a notification gets nothing."""
    import asyncio

    from gemma_lsp.lsp import framing

    monkeypatch.setattr(framing, "MAX_BODY", 100)
    monkeypatch.setattr(framing, "PIECE", 7)
    big_request = json.dumps({"jsonrpc": "2.0", "id": 5, "method": "x", "params": {"t": "a" * 300}}).encode()
    big_note = json.dumps({"jsonrpc": "2.0", "method": "x", "params": {"t": "a" * 300}}).encode()
    ok = json.dumps({"jsonrpc": "2.0", "id": 6, "method": "initialize", "params": {}}).encode()
    raw = asyncio.StreamReader()
    raw.feed_data(frame(big_request) + frame(big_note) + frame(ok))
    raw.feed_eof()
    replies = []
    frames = framing.Frames(raw, lambda rid, code, msg: replies.append((rid, code)), lambda rid: None)
    assert await frames.readline() == b"Content-Length: %d\r\n" % len(ok)
    assert await frames.readline() == b"\r\n"
    assert await frames.readexactly(len(ok)) == ok
    assert replies == [(5, -32600)]
