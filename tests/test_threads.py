"""Engine processes of one user share the cores (threads.py): real processes, real flocks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

CHILD = """
import sys, torch
from gemma_lsp import threads
threads.register()
print("registered", threads.CORES, flush=True)
for line in sys.stdin:
    threads._last = -10.0  # look now, not once a second
    print(threads.engines(), threads.share(), torch.get_num_threads(), flush=True)
"""


def _engine(cache) -> subprocess.Popen:
    env = {**os.environ, "GEMMA_LSP_CACHE": str(cache)}
    p = subprocess.Popen([sys.executable, "-c", CHILD], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         text=True)
    assert p.stdout.readline().startswith("registered")
    return p


def _ask(p: subprocess.Popen) -> tuple[int, int, int]:
    p.stdin.write("share\n")
    p.stdin.flush()
    n, share, now = map(int, p.stdout.readline().split())
    return n, share, now


def test_engines_are_counted_and_a_dead_ones_file_goes(tmp_path):
    from gemma_lsp import threads

    a = _engine(tmp_path)
    b = _engine(tmp_path)
    try:
        assert threads.engines(tmp_path / "engines") == 2  # this test process does not count
        assert _ask(a)[0] == 2
        a.send_signal(signal.SIGKILL)  # a window killed: its lock goes with it
        a.wait(10)
        assert _ask(b)[0] == 1
        assert sorted(p.name for p in (tmp_path / "engines").iterdir()) == [f"{b.pid}.lock"]  # the stale one went
    finally:
        for p in (a, b):
            p.kill()
            p.wait(10)
    assert threads.engines(tmp_path / "engines") == 0


def test_an_engine_leaves_out_the_cores_other_programs_keep_busy(tmp_path):
    """A real busy loop in another process: the engine's next request runs on the cores left
    (measured: 2 threads beside a busy loop decoded 2-3x slower than 1 thread)."""
    import time

    from gemma_lsp import threads

    if threads.CORES < 2:
        return  # one core: one thread whatever happens (share_for's own test covers the rule)
    e = _engine(tmp_path)
    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(3)  # the sampler's average settles (half-life ~0.7 s)
        assert _ask(e)[2] == threads.CORES - 1
        spin.kill()
        spin.wait(10)
        time.sleep(3)
        assert _ask(e)[2] == threads.CORES  # the cores are free again
    finally:
        spin.kill()
        e.kill()
        e.wait(10)


def test_our_own_work_is_not_counted_as_other_programs():
    import time

    from gemma_lsp.threads import Load

    load = Load()
    end = time.monotonic() + 1.5
    while time.monotonic() < end:  # this process busy, as an engine's forward would be
        pass
    others = load.since_start()  # one sample over the 1.5 s
    assert others < 0.5, others


def test_a_share_is_what_is_left_and_at_least_one_thread():
    from gemma_lsp.threads import share_for

    assert share_for(0.0, 2) == 2 and share_for(0.4, 2) == 2 and share_for(0.6, 2) == 1
    assert share_for(1.9, 2) == 1 and share_for(5.0, 2) == 1 and share_for(3.0, 16) == 13


def test_library_use_does_not_count_as_an_engine(tiny_qwen_dir, tmp_path, monkeypatch):
    """Only `serve` and `engine` register: a test or a script that builds a server in its own
    process must not halve the threads of every server it starts."""
    from gemma_lsp import threads
    from gemma_lsp.lsp.server import GemmaServer

    monkeypatch.setenv("GEMMA_LSP_CACHE", str(tmp_path))
    ls = GemmaServer({"model": str(tiny_qwen_dir), "dtype": "float32"})
    ls.ensure_completer()
    assert threads.engines(tmp_path / "engines") == 0


def test_serve_counts_its_engine_once_the_model_is_loaded(tiny_qwen_dir):
    """A real `gemma-lsp serve` over stdio: its lock file appears with the model, and goes
    (counted out) when it exits."""
    from test_faults_server import OPTIONS, TEXT
    from wire import Wire

    from gemma_lsp import threads

    where = threads.directory()
    with Wire() as w:
        w.initialize({"model": str(tiny_qwen_dir), **OPTIONS})
        w.notify("textDocument/didOpen", {"textDocument": {"uri": "file:///f.py", "languageId": "python",
                                                           "version": 1, "text": TEXT}})
        r = w.request("textDocument/inlineCompletion", {"textDocument": {"uri": "file:///f.py"},
                      "position": {"line": 6, "character": 11}, "context": {"triggerKind": 1}}, timeout=120)
        assert "result" in r, r
        assert (where / f"{w.pid}.lock").exists()
        assert threads.engines(where) >= 1
        pid = w.pid
    threads.engines(where)  # removes the stale file of the process that exited
    assert not (where / f"{pid}.lock").exists()
