"""Injected faults over the real wire (gemma_lsp/faults.py, armed by GEMMA_LSP_FAULTS in the
server's environment only): an exception inside a forward pass, a drafter and postprocess,
and a forward pass that hangs past the request limit. Each request fails alone with a clear
error; the next one in the same document is answered and still reuses the KV cache.

The model is the tiny random Qwen2 (its text is gibberish; what is checked is who answers
what). Forward calls are counted from the start of the process: the first request's
prompt pass is forward 1 (its prompt fits one chunk), its decode steps the next ones.
"""

from __future__ import annotations

import time

import pytest

from wire import Wire

OPTIONS = {"dtype": "float32", "maxTokens": 3, "drafter": "ngram", "timeBudgetMs": 60000, "singleLine": "never"}
TEXT = "def add(a, b):\n    total = a + b\n    return total\n\n\ndef mul(a, b):\n    return "


def _session(tiny, faults: str, limit_s: str = "28", lazy: bool = True):
    env = {"GEMMA_LSP_FAULTS": faults, "GEMMA_LSP_REQUEST_LIMIT_S": limit_s}
    w = Wire(env={**env, "GEMMA_LSP_LAZY_LOAD": "1"} if lazy else env)
    w.initialize({"model": str(tiny), **OPTIONS})
    w.notify("textDocument/didOpen", {"textDocument": {"uri": "file:///f.py", "languageId": "python", "version": 1,
                                                       "text": TEXT}})
    return w


def _ask(w: Wire, timeout: float = 120) -> dict:
    return w.request("textDocument/inlineCompletion", {"textDocument": {"uri": "file:///f.py"},
                     "position": {"line": 6, "character": 11}, "context": {"triggerKind": 1}}, timeout=timeout)


def _stats(w: Wire) -> dict:
    return w.request("gemma/stats")["result"]


@pytest.mark.parametrize("site", ["forward:raise@2", "drafter:raise@1", "postprocess:raise@1"])
def test_a_fault_fails_its_request_alone(tiny_qwen_dir, site):
    with _session(tiny_qwen_dir, site) as w:
        bad = _ask(w)
        assert bad["error"]["code"] == -32803
        assert "injected fault" in bad["error"]["message"] and "still running" in bad["error"]["message"]
        before = _stats(w)
        good = _ask(w)
        assert "result" in good, good
        after = _stats(w)
        assert after["completions"] == before["completions"] + 1
        # the prompt pass of the failed request stayed in the cache
        assert after["reused_tokens"] - before["reused_tokens"] > 0
        assert w.close() == 0


def test_a_hanging_forward_is_answered_at_the_limit_and_the_next_request_works(tiny_qwen_dir):
    with _session(tiny_qwen_dir, "forward:hang=8@1", limit_s="3", lazy=False) as w:
        time.sleep(6)  # the model loads at initialize (on the engine thread, before any forward)
        t0 = time.monotonic()
        stuck = _ask(w, timeout=30)  # its prompt pass is forward 1: it hangs for 8 s
        waited = time.monotonic() - t0
        assert stuck["error"]["code"] == -32803 and "did not finish within 3 s" in stuck["error"]["message"]
        assert waited < 6  # answered at the limit, not when the hang ends
        time.sleep(8 - waited + 0.5)  # the hang is over
        before = _stats(w)
        good = _ask(w, timeout=60)
        assert "result" in good, good
        after = _stats(w)
        assert after["errors"] == 1 and after["completions"] == before["completions"] + 1
        assert after["reused_tokens"] > before["reused_tokens"]  # the hung prompt pass still went to the cache
        assert w.close() == 0


def test_faults_are_off_without_the_variable():
    import gemma_lsp.faults as faults

    assert faults.ACTIVE is False  # the test process itself has nothing armed
    faults.hit("forward")
    with pytest.raises(ValueError, match="cannot read"):
        faults._parse("forward:explode@1")


def test_the_first_request_waits_for_a_slow_model_load(tiny_qwen_dir):
    """A model load longer than the request limit (a first start, a busy machine): the
    request sent during it is answered once the model is ready, not failed at the limit."""
    with _session(tiny_qwen_dir, "load:hang=5@1", limit_s="3", lazy=False) as w:
        first = _ask(w, timeout=60)
        assert "result" in first, first
        assert _stats(w)["errors"] == 0
        assert w.close() == 0
