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
