"""Local and safe by default, checked from outside: what the OS says the server listens on,
which files a model load opens or runs, what reaches the log, what becomes context."""

from __future__ import annotations

import os
import pickle
import re
import shutil
import time
from pathlib import Path

import pytest

from gemma_lsp.models.loader import load
from wire import Wire

ROOT = Path(__file__).resolve().parent.parent


def _listening(pid: int) -> list[str]:
    """Local addresses of the TCP sockets `pid` listens on, from /proc (not from our code)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    out = []
    for table, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        for line in Path(table).read_text().splitlines()[1:]:
            f = line.split()
            if f[3] == "0A" and f[9] in inodes:  # 0A: LISTEN
                ip, port = f[1].split(":")
                if v6:
                    out.append(f"[{ip}]:{int(port, 16)}")
                else:
                    out.append(".".join(str(int(ip[i:i + 2], 16)) for i in (6, 4, 2, 0)) + f":{int(port, 16)}")
    return out


def _ready(w: Wire, tiny) -> None:
    w.initialize({"model": str(tiny), "dtype": "float32", "maxTokens": 2})
    w.request("gemma/stats")


def test_stdio_server_listens_on_nothing(tiny_qwen_dir):
    with Wire() as w:
        _ready(w, tiny_qwen_dir)
        time.sleep(1)
        assert _listening(w.pid) == []


def test_tcp_server_listens_on_loopback_only(tiny_qwen_dir):
    with Wire(tcp=True) as w:
        _ready(w, tiny_qwen_dir)
        assert _listening(w.pid) == [f"127.0.0.1:{w.port}"]


def test_a_pickle_beside_the_safetensors_is_never_opened(tiny_qwen_dir, tmp_path):
    """transformers would prefer pytorch_model.bin in some versions; unpickling it runs code."""
    d = tmp_path / "model"
    shutil.copytree(tiny_qwen_dir, d)
    marker = tmp_path / "pickle-ran"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    (d / "pytorch_model.bin").write_bytes(pickle.dumps(Evil()))
    load(str(d), dtype="float32")
    assert not marker.exists()


def test_remote_code_in_a_model_directory_never_runs(tiny_qwen_dir, tmp_path):
    import json

    d = tmp_path / "model"
    shutil.copytree(tiny_qwen_dir, d)
    marker = tmp_path / "remote-code-ran"
    (d / "modeling_evil.py").write_text(f"from pathlib import Path\nPath({str(marker)!r}).touch()\n")
    cfg = json.loads((d / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilModel", "AutoConfig": "modeling_evil.EvilConfig"}
    (d / "config.json").write_text(json.dumps(cfg))
    try:
        load(str(d), dtype="float32")
    except Exception:
        pass  # refusing is as good as ignoring; running it is not
    assert not marker.exists()


def test_the_source_never_enables_remote_code_or_pickles():
    offenders = []
    for f in (ROOT / "gemma_lsp").rglob("*.py"):
        text = f.read_text()
        if re.search(r"trust_remote_code\s*=\s*True", text) or re.search(r"torch\.load\(|pickle\.load", text):
            offenders.append(str(f.relative_to(ROOT)))
    assert offenders == []


def _open(w: Wire, uri: str, text: str) -> None:
    w.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "python", "version": 1, "text": text}})


def _ask(w: Wire, uri: str, line: int, col: int) -> dict:
    return w.request("textDocument/inlineCompletion", {"textDocument": {"uri": uri}, "position": {"line": line, "character": col},
                     "context": {"triggerKind": 1}}, timeout=120)


@pytest.mark.parametrize("how", ["name", "symlink", "ssh-dir"])
def test_a_secret_file_never_becomes_context(tiny_qwen_dir, tmp_path, how):
    (tmp_path / ".ssh").mkdir()
    secret_real = tmp_path / ".env"
    secret_real.write_text("API_KEY = 'sk_live_SECRET_1234'\n")
    if how == "name":
        secret = secret_real
    elif how == "symlink":
        secret = tmp_path / "notes.py"
        secret.symlink_to(secret_real)
    else:
        secret = tmp_path / ".ssh" / "config.py"
        secret.write_text(secret_real.read_text())
    other = tmp_path / "helper.py"
    log = tmp_path / "server.log"
    with Wire(args=["--verbose"], stderr=log) as w:
        w.initialize({"model": str(tiny_qwen_dir), "dtype": "float32", "maxTokens": 2, "logPrompts": True})
        _open(w, secret.as_uri(), secret.read_text())
        _open(w, other.as_uri(), "def visible_helper_code():\n    return 42\n")
        _open(w, "file:///work/main.py", "def main():\n    return ")
        _ask(w, secret.as_uri(), 0, 3)
        _ask(w, other.as_uri(), 0, 3)
        _ask(w, "file:///work/main.py", 1, 11)  # both others are left behind: only helper.py is context
        w.close()
    prompts = [line for line in log.read_text().splitlines() if "prompt for file:///work/main.py" in line]
    assert prompts and "visible_helper_code" in prompts[-1]  # context does flow (the check can fail)
    assert "SECRET_1234" not in prompts[-1]


def test_document_text_never_reaches_the_log_without_log_prompts(tiny_qwen_dir, tmp_path):
    log = tmp_path / "server.log"
    with Wire(args=["--verbose"], stderr=log) as w:
        _ready(w, tiny_qwen_dir)
        _open(w, "file:///a.py", "def unique_marker_function_xyz():\n    return ")
        _ask(w, "file:///a.py", 1, 11)
        # a handler that fails (a reversed range) and params that do not parse: pygls logs both
        w.notify("textDocument/didChange", {"textDocument": {"uri": "file:///a.py", "version": 2}, "contentChanges": [
            {"range": {"start": {"line": 1, "character": 4}, "end": {"line": 0, "character": 0}},
             "text": "second_marker_text_abc"}]})
        w.notify("textDocument/didOpen", {"textDocument": {"uri": "file:///b.py", "languageId": "python",
                                                           "version": "third_marker_text_def", "text": 5}})
        w.request("gemma/stats")
        w.close()
    text = log.read_text()
    assert "DEBUG" in text  # verbose logging was on
    for marker in ("unique_marker_function_xyz", "second_marker_text_abc", "third_marker_text_def"):
        assert marker not in text
