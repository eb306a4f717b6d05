"""A long session at CI size (tests/lsp_soak.py; the full run, 10,000 changes and 1,000
requests, is its command line, figures in docs/reliability.md)."""

from __future__ import annotations

from lsp_soak import soak, utf16_position


def test_a_long_session_keeps_documents_exact_and_memory_bounded(tiny_qwen_dir):
    r = soak(tiny_qwen_dir, changes=3000, requests=300, seed=2)
    assert r["problems"] == [], r
    assert r["cancelled"] > 50 and r["superseded"] > 50 and r["completions"] > 50
    assert 0 < r["cache_max_bytes"] <= r["cache_limit_bytes"]


def test_the_soak_client_counts_positions_its_own_way():
    """The oracle is independent of the server's text.py: check it on the hard cases."""
    text = "a😀b\r\nc\rd\ne"
    assert utf16_position(text, 2) == {"line": 0, "character": 3}  # after the emoji: 2 UTF-16 units
    assert utf16_position(text, 5) == {"line": 1, "character": 0}  # after CRLF
    assert utf16_position(text, 7) == {"line": 2, "character": 0}  # after a lone CR
    assert utf16_position(text, len(text)) == {"line": 3, "character": 1}


def test_notifications_leave_no_handler_futures_behind(monkeypatch):
    """pygls 2.1.1 kept the future of every didOpen/didChange/didClose in its request table
    forever (the soak's RSS creep); GemmaProtocol takes finished ones out. Real messages
    through the real protocol object, in-process so the table can be counted."""
    import asyncio

    from gemma_lsp.lsp.main import create_server

    monkeypatch.setenv("GEMMA_LSP_LAZY_LOAD", "1")  # no model: only the protocol is under test

    async def main() -> int:
        ls = create_server()
        proto = ls.protocol

        def feed(method: str, params: dict, rid: int | None = None) -> None:
            msg = {"jsonrpc": "2.0", "method": method, "params": params}
            if rid is not None:
                msg["id"] = rid
            proto.handle_message(proto.structure_message(msg))

        sent: list = []
        proto._send_data = lambda data: sent.append(data)  # no client here: keep what would go out
        feed("initialize", {"processId": None, "rootUri": None, "capabilities": {}}, rid=1)
        feed("initialized", {})
        uri = "file:///t/a.py"
        feed("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "python", "version": 1,
                                                       "text": ""}})
        for v in range(2, 1002):
            feed("textDocument/didChange", {"textDocument": {"uri": uri, "version": v}, "contentChanges": [
                {"range": {"start": {"line": 0, "character": 0}, "end": {"line": 0, "character": 0}}, "text": "x"}]})
        assert ls.docs[uri].text == "x" * 1000  # every change was applied
        feed("textDocument/didClose", {"textDocument": {"uri": uri}})
        await asyncio.sleep(0.05)  # let done-callbacks scheduled on the loop run
        assert ls.docs == {}
        answered = [m for m in sent if getattr(m, "id", None) == 1]
        assert answered and getattr(answered[0], "error", None) is None, sent[:2]  # initialize was answered
        return len(proto._request_futures)

    assert asyncio.run(main()) == 0  # 1,004 before the fix
