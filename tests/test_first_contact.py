"""First contact: the request in a file the cache has not seen, over real LSP stdio.

The server warms the KV cache at the cursor while the user pauses (after didOpen,
didChange, or a `gemma/cursor` notification), at the lowest priority and at most one
job at a time; the completion handler answers for the snapshot it was asked about;
settings that need no reload take effect at run time. The model is the tiny random-weight
Qwen2 with the real tokenizer (see conftest): what is checked is scheduling and reuse.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading

from lsprotocol import types as lsp

from test_server_e2e import get_stats, open_doc, start

PAUSE_S = 1.0  # what a user's pause is here: well past the server's idle delay (0.15 s)


def change(client, uri: str, version: int, line: int, col: int, text: str) -> None:
    client.text_document_did_change(lsp.DidChangeTextDocumentParams(
        lsp.VersionedTextDocumentIdentifier(uri=uri, version=version),
        [lsp.TextDocumentContentChangePartial(range=lsp.Range(lsp.Position(line, col), lsp.Position(line, col)),
                                              text=text)]))


def inline(client, uri: str, line: int, col: int):
    return client.text_document_inline_completion_async(lsp.InlineCompletionParams(
        context=lsp.InlineCompletionContext(trigger_kind=lsp.InlineCompletionTriggerKind.Invoked),
        text_document=lsp.TextDocumentIdentifier(uri), position=lsp.Position(line, col)))


BODY = "".join(f"def f{i}(x):\n    return x * {i} + {i * i}\n\n" for i in range(40))  # ~1,000 tokens


async def wait_for_model(client) -> None:
    open_doc(client, "file:///tmp/load.py", "x = ")
    await inline(client, "file:///tmp/load.py", 0, 4)


async def ask_and_count(client, uri: str, line: int, col: int, min_warmups: int) -> tuple[int, int]:
    """(reused, prompt) tokens of one request, after checking the warm-ups so far."""
    before = await get_stats(client)
    assert before["warmups"] >= min_warmups
    await inline(client, uri, line, col)
    after = await get_stats(client)
    return (after["reused_tokens"] - before["reused_tokens"], after["prompt_tokens"] - before["prompt_tokens"])


async def test_a_pause_after_typing_warms_the_prompt_at_the_cursor(tiny_qwen_dir):
    client, _ = await start(tiny_qwen_dir, options={"maxTokens": 8})
    try:
        await wait_for_model(client)
        uri = "file:///tmp/fresh.py"
        open_doc(client, uri, BODY + "def main():\n")
        change(client, uri, 2, BODY.count("\n") + 1, 0, "    ")  # the editor's auto-indent
        await asyncio.sleep(PAUSE_S)
        reused, prompt = await ask_and_count(client, uri, BODY.count("\n") + 1, 4, min_warmups=1)
        assert prompt > 500 and reused >= 0.9 * prompt, (reused, prompt)
    finally:
        await client.shutdown_session()


async def test_cursor_notification_warms_where_the_user_went(tiny_qwen_dir):
    client, _ = await start(tiny_qwen_dir, options={"maxTokens": 8})
    try:
        await wait_for_model(client)
        uri = "file:///tmp/jump.py"
        open_doc(client, uri, BODY)
        await asyncio.sleep(PAUSE_S)  # didOpen warms the end of the file
        line = 40  # somewhere in the middle: inside f13
        client.protocol.notify("gemma/cursor", {"textDocument": {"uri": uri}, "position": {"line": line, "character": 4}})
        client.protocol.notify("gemma/cursor", {"textDocument": 5})  # malformed: ignored, nothing breaks
        await asyncio.sleep(PAUSE_S)
        reused, prompt = await ask_and_count(client, uri, line, 4, min_warmups=2)
        assert reused >= 0.9 * prompt, (reused, prompt)
    finally:
        await client.shutdown_session()


async def test_a_burst_of_changes_costs_one_warm_up(tiny_qwen_dir):
    client, _ = await start(tiny_qwen_dir, options={"maxTokens": 8})
    try:
        await wait_for_model(client)
        base = (await get_stats(client))["warmups"]
        uri = "file:///tmp/paste.py"
        open_doc(client, uri, "")
        for i in range(300):  # a paste arriving as many small changes
            change(client, uri, i + 2, i, 0, f"x{i} = {i}\n")
        await asyncio.sleep(PAUSE_S + 1)
        assert (await get_stats(client))["warmups"] - base == 1
    finally:
        await client.shutdown_session()


async def test_the_answer_is_for_the_snapshot_even_if_the_document_closes(tiny_qwen_dir):
    """The completion handler used to read the document after its await: a didClose in
    between raised KeyError (an internal error), a didChange gave a wrong range."""
    client, _ = await start(tiny_qwen_dir, options={"maxTokens": 400, "singleLine": "never"})
    try:
        await wait_for_model(client)
        uri = "file:///tmp/closing.py"
        open_doc(client, uri, "def fooba")
        task = asyncio.ensure_future(client.text_document_completion_async(
            lsp.CompletionParams(lsp.TextDocumentIdentifier(uri), lsp.Position(0, 9))))
        await asyncio.sleep(0.3)
        client.text_document_did_close(lsp.DidCloseTextDocumentParams(lsp.TextDocumentIdentifier(uri)))
        res = await asyncio.wait_for(task, 120)
        assert isinstance(res, lsp.CompletionList)
        if res.items:
            edit = res.items[0].text_edit
            assert edit.range.start == lsp.Position(0, 4) and edit.new_text.startswith("fooba")
            assert res.is_incomplete is False  # an answer is filtered by the client, not re-asked per keystroke
    finally:
        await client.shutdown_session()


def test_cache_mb_takes_effect_at_run_time(tiny_qwen_dir):
    from gemma_lsp.lsp.server import GemmaServer

    ls = GemmaServer({"model": str(tiny_qwen_dir), "dtype": "float32"})
    completer = ls.ensure_completer()
    assert completer.engine.cache.max_bytes == 2048 << 20
    ls.cli_overrides = {**ls.cli_overrides, "cacheMb": 64}
    ls.settings = ls.settings.merged({"cacheMb": 64})
    assert ls.ensure_completer() is completer  # no reload
    assert completer.engine.cache.max_bytes == 64 << 20


def test_background_work_is_kept_alive():
    """A background verify started with a bare ensure_future had no reference: it could be
    collected mid-run. The server keeps one until the task ends."""
    import gc

    from gemma_lsp.lsp.server import GemmaServer

    ls = GemmaServer()

    async def main() -> bool:
        done = asyncio.Event()

        async def work() -> None:
            await asyncio.sleep(0.05)
            done.set()

        ls.spawn(work())
        assert len(ls._tasks) == 1
        gc.collect()
        await asyncio.wait_for(done.wait(), 5)
        await asyncio.sleep(0)
        return not ls._tasks

    assert asyncio.run(main())


def test_offline_mode_holds_before_any_hugging_face_import():
    code = ("import gemma_lsp.lsp.server, huggingface_hub.constants as c, transformers.utils.hub as h; "
            "assert c.HF_HUB_OFFLINE is True, c.HF_HUB_OFFLINE; assert h.is_offline_mode(); print('offline')")
    env = {**os.environ, "HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0"}  # a user's environment says online
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "offline" in out.stdout, out.stderr[-2000:]


def test_a_request_preempts_background_work_between_chunks():
    """The warm-up sees its event set as soon as a request is scheduled, and the request
    runs right after the chunk in progress."""
    from gemma_lsp.lsp.scheduler import Scheduler

    sched = Scheduler()
    chunks: list[int] = []
    started = threading.Event()

    def warm(stop: threading.Event) -> str:
        started.set()
        for i in range(10_000):  # "prefill chunks"
            if stop.is_set():
                return "preempted"
            chunks.append(i)
            threading.Event().wait(0.01)
        return "finished"

    async def main():
        bg = asyncio.ensure_future(sched.run_background(warm))
        while not started.is_set():
            await asyncio.sleep(0.01)
        res = await sched.run("file:///a", lambda stop: "answered")
        return await bg, res

    bg, res = asyncio.run(main())
    assert (bg, res) == ("preempted", "answered") and len(chunks) < 10_000
    sched.shutdown()


def test_warm_up_never_evicts():
    import torch
    from transformers import DynamicCache

    from gemma_lsp.engine.cache import PrefixCache, cache_bytes

    def kv(n: int) -> DynamicCache:
        c = DynamicCache()
        c.update(torch.zeros(1, 1, n, 8), torch.zeros(1, 1, n, 8), 0)
        return c

    one = cache_bytes(kv(10))
    pc = PrefixCache(2 * one + 1)
    pc.put(list(range(10)), kv(10))
    pc.put(list(range(100, 110)), kv(10))
    pc.put(list(range(200, 210)), kv(10), evict=False)  # would need to evict: dropped instead
    assert len(pc) == 2 and pc.take(list(range(10)))[1] == 10
    pc.resize(one + 1)  # cacheMb lowered at run time: the oldest go first
    assert len(pc) == 1


def test_a_request_queued_behind_the_model_load_is_not_late():
    """The limit counts from the end of a model load ahead of the request, which has its own
    bound; a request queued behind a stuck request still is late."""
    import time

    import pytest

    from gemma_lsp.lsp.scheduler import Overdue, Scheduler

    async def main():
        sched = Scheduler()
        sched.submit(lambda: time.sleep(0.6))  # "the model load"
        answered = await sched.run("file:///a", lambda stop: "answered", limit_s=0.3, load_limit_s=5)
        sched.submit(lambda: time.sleep(0.6))
        with pytest.raises(Overdue) as e:
            await sched.run("file:///a", lambda stop: "late", limit_s=0.3, load_limit_s=0.2)
        assert e.value.loading
        time.sleep(0.5)
        stuck = asyncio.ensure_future(sched.run("file:///b", lambda stop: time.sleep(0.6), limit_s=5))
        await asyncio.sleep(0.05)
        with pytest.raises(Overdue) as e:  # behind a request, not a load: its limit holds
            await sched.run("file:///a", lambda stop: "late", limit_s=0.3, load_limit_s=5)
        assert not e.value.loading
        await stuck
        sched.shutdown()
        return answered

    assert asyncio.run(main()) == "answered"
