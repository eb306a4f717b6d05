"""The shared engine daemon and the OpenAI client, over a real Unix socket, with a tiny
random-weight Qwen2 and the real tokenizer (see conftest): the seam is lossless (greedy
through the daemon equals the engine here, token healing included), cancels reach the
engine, bad input gets a clear 400, and the socket is this user's only."""

from __future__ import annotations

import os
import stat
import threading
import time

import pytest

from gemma_lsp.backends import Backend, inprocess
from gemma_lsp.backends.daemon import Daemon
from gemma_lsp.backends.http import Http, HttpStatusError
from gemma_lsp.backends.openai import OpenAIBackend
from gemma_lsp.engine import Engine, GenerateRequest
from gemma_lsp.models.loader import load
from gemma_lsp.errors import BackendError
from gemma_lsp.complete.prompt import Prompter


@pytest.fixture(scope="module")
def tiny(tiny_qwen_dir):
    return load(str(tiny_qwen_dir), "cpu", "float32")


def serve(tiny, path, idle_s: float = 3600) -> tuple[Daemon, threading.Thread]:
    """A daemon over the tiny model on `path`, serving on a thread."""
    d = Daemon(inprocess.build(tiny, None, 64 << 20).engine, tiny.tokenizer, "tiny", path, idle_s=idle_s)
    d.bind()
    t = threading.Thread(target=d.serve_forever, daemon=True)
    t.start()
    return d, t


@pytest.fixture
def daemon(tiny, tmp_path):
    d, t = serve(tiny, tmp_path / "engine.sock")
    yield d
    d.server.shutdown()
    t.join(10)


def client(daemon: Daemon, tok, extensions: bool = True) -> OpenAIBackend:
    return OpenAIBackend(Http(f"unix:{daemon.path}"), tok, label="local", extensions=extensions)


PREFIXES = ["def fib(n):\n    if n < 2:\n        return n\n    ret", "import os\nx = os.pa", "for i in ran", "print("]


def requests(tok, **kw) -> list[GenerateRequest]:
    p = Prompter(tok)
    out = []
    for prefix in PREFIXES:
        prompt = p.build(prefix, "\n\nprint(1)\n")
        out.append(GenerateRequest(prompt=prompt.ids, max_tokens=12, stop_ids=prompt.stop_ids, drafter="ngram",
                                   constraint=p.heal_constraint(prompt.healed), **kw))
    return out


@pytest.mark.parametrize("extensions", [True, False], ids=["daemon-fields", "plain-openai"])
def test_greedy_through_the_daemon_equals_the_engine(daemon, tiny, extensions):
    """Healing through the client is optimistic (stream, then a biased one-token retry):
    it must pick exactly the masked argmax the engine picks."""
    backend = client(daemon, tiny.tokenizer, extensions)
    assert isinstance(backend, Backend) and isinstance(daemon.engine, Backend)
    reference = Engine(tiny.model)
    for here, there in zip(requests(tiny.tokenizer), requests(tiny.tokenizer)):
        want = reference.generate(here)
        got = backend.generate(there)
        assert got.tokens == want.tokens
        assert got.stop_reason == want.stop_reason
    assert backend.ids_ok is True  # the daemon takes token-id prompts


def test_text_prompts_when_ids_are_refused(daemon, tiny):
    """A server that wants text (llama-cpp-python's) gets the ids spelled as text. The prompt
    round-trips exactly (its pieces meet at special tokens); what was generated and sent back
    after a healing retry is re-tokenized there, so only its text is promised."""
    backend = client(daemon, tiny.tokenizer)
    backend.ids_ok = False
    reference = Engine(tiny.model)
    p = Prompter(tiny.tokenizer)
    http = Http(f"unix:{daemon.path}")
    for here, there, prefix in zip(requests(tiny.tokenizer), requests(tiny.tokenizer), PREFIXES):
        assert http.post("~/tokenize", {"prompt": backend._text(there.prompt)})["tokens"] == there.prompt
        here.constraint = there.constraint = None
        assert backend.generate(there).tokens == reference.generate(here).tokens
    for there, prefix in zip(requests(tiny.tokenizer), PREFIXES):
        healed = p.build(prefix, "\n\nprint(1)\n").healed
        assert p.decode(backend.generate(there).tokens).startswith(healed)


def test_a_cancel_closes_the_stream_and_stops_the_engine(daemon, tiny):
    backend = client(daemon, tiny.tokenizer)
    stop = threading.Event()
    prompt = Prompter(tiny.tokenizer).build("x = ", "").ids
    seen = []

    def after(out) -> bool:  # runs client-side per token: cancel once a few have arrived
        seen.append(len(out))
        if len(out) == 5:
            stop.set()
        return False

    res = backend.generate(GenerateRequest(prompt=prompt, max_tokens=4000, drafter="none", stop_event=stop,
                                           stop_after=after))
    assert res.stop_reason == "cancelled" and 5 <= len(res.tokens) < 4000
    deadline = time.monotonic() + 10
    while daemon.cancelled == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert daemon.cancelled == 1  # the daemon saw its client leave and stopped decoding
    assert daemon.active == 0
    # ... and the engine is free for the next request at once.
    ok = backend.generate(GenerateRequest(prompt=prompt, max_tokens=3, drafter="none"))
    assert len(ok.tokens) == 3


@pytest.mark.parametrize("body, message", [
    ({"prompt": [10 ** 9]}, "token ids in"),
    ({"prompt": []}, "non-empty"),
    ({"prompt": [1, 2], "logit_bias": {"5": -3}}, "allow-list"),
    ({"prompt": [1, 2], "gemma": {"drafter": "magic"}}, "gemma.drafter"),
    ({"prompt": [1, 2], "max_tokens": 0}, "max_tokens"),
    ({"prompt": [1, 2], "temperature": "hot"}, "temperature"),
])
def test_bad_requests_get_a_clear_400(daemon, body, message):
    http = Http(f"unix:{daemon.path}")
    with pytest.raises(HttpStatusError) as e:
        http.post("/completions", body)
    assert e.value.status == 400 and message in e.value.body
    assert http.get("/models")["data"][0]["id"] == "tiny"  # still serving


def test_the_socket_is_private(daemon):
    mode = stat.S_IMODE(os.stat(daemon.path).st_mode)
    assert mode == 0o600


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to act as another user")
def test_another_user_gets_nothing(tiny):
    """Even with every file mode opened up, the daemon drops a peer of another uid (SO_PEERCRED)."""
    import shutil
    import socket
    import tempfile
    from pathlib import Path

    where = Path(tempfile.mkdtemp(prefix="gemma-peer-"))
    os.chmod(where, 0o755)
    d, t = serve(tiny, where / "e.sock")
    os.chmod(d.path, 0o666)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child becomes `nobody` and asks for the model list
        os.close(r)
        result = b"?"
        try:
            os.setgid(65534)
            os.setuid(65534)
            s = socket.socket(socket.AF_UNIX)
            s.settimeout(5)
            s.connect(str(d.path))
            s.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
            result = s.recv(100) or b"closed"
        except Exception as e:
            result = type(e).__name__.encode()
        os.write(w, result)
        os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    got = os.read(r, 100)
    d.server.shutdown()
    t.join(10)
    shutil.rmtree(where, ignore_errors=True)
    assert got in (b"closed", b"ConnectionResetError", b"BrokenPipeError"), got


def test_idle_exit_after_the_last_session(tiny, tmp_path):
    d, t = serve(tiny, tmp_path / "e.sock", idle_s=0.5)
    http = Http(f"unix:{d.path}")
    events = http.stream_get("~/gemma/session")
    next(events)  # a client holds a session: the daemon stays
    time.sleep(1.5)
    assert t.is_alive() and d.sessions == 1
    events.close()  # the client leaves
    t.join(10)
    assert not t.is_alive() and not d.path.exists()


def test_a_dead_socket_is_a_clear_error_then_a_back_off(tiny, tmp_path):
    backend = OpenAIBackend(Http(f"unix:{tmp_path / 'none.sock'}"), tiny.tokenizer)
    req = GenerateRequest(prompt=[1, 2, 3], max_tokens=2)
    with pytest.raises(BackendError, match="not answering"):
        backend.generate(req)
    with pytest.raises(BackendError, match="not answering"):  # fails fast, no new connection
        backend.generate(req)
    assert backend._down_until > time.monotonic()


def test_a_slow_prompt_pass_does_not_count_as_a_decode_step(daemon, tiny, monkeypatch):
    """The time policy starts at the first token: a prompt pass longer than the ceiling must
    not be taken for the cost of the next step (it once stopped every cold answer at 1 token)."""
    slow = daemon.engine._prefill

    def prefill(*a, **kw):
        time.sleep(1.5)
        return slow(*a, **kw)

    monkeypatch.setattr(daemon.engine, "_prefill", prefill)
    backend = client(daemon, tiny.tokenizer)
    prompt = Prompter(tiny.tokenizer).build("x = ", "").ids
    res = backend.generate(GenerateRequest(prompt=prompt, max_tokens=8, drafter="none", budget_s=5.0, ceiling_s=1.0))
    assert len(res.tokens) > 1 or res.stop_reason == "stop", res


def test_a_request_preempts_warm_ups_still_waiting_for_the_engine(daemon, tiny):
    prompt = Prompter(tiny.tokenizer).build("y = ", "").ids
    warm = GenerateRequest(prompt=prompt, stop_event=threading.Event())
    real = GenerateRequest(prompt=prompt, max_tokens=2, drafter="none", stop_event=threading.Event())
    results = {}
    with daemon.engine_lock:  # the engine is busy: both wait
        tw = threading.Thread(target=lambda: results.setdefault("warm", daemon.run(warm, warm=True)))
        tw.start()
        time.sleep(0.2)
        tr = threading.Thread(target=lambda: results.setdefault("real", daemon.run(real, warm=False)))
        tr.start()
        time.sleep(0.2)
        assert warm.stop_event.is_set()  # preempted before it ever ran
    tw.join(10)
    tr.join(10)
    assert results["warm"] is None and len(results["real"].tokens) == 2
    assert not daemon.warms


def test_the_daemon_log_is_rotated_at_a_start(tmp_path):
    """Each daemon start appends to one log: past its bound it moves to `.log.1` (the older
    copy replaced), so a machine that runs for months keeps at most about twice the bound."""
    from gemma_lsp.backends.local import rotate

    log = tmp_path / "engine.log"
    log.write_bytes(b"a" * 100)
    rotate(log, keep=1000)
    assert log.read_bytes() == b"a" * 100  # under the bound: left alone
    log.write_bytes(b"b" * 2000)
    (tmp_path / "engine.log.1").write_bytes(b"old")
    rotate(log, keep=1000)
    assert not log.exists() and (tmp_path / "engine.log.1").read_bytes() == b"b" * 2000
    rotate(tmp_path / "never-written.log", keep=1000)  # a first start: nothing to move
