-- :checkhealth gemma_lsp
local M = {}

local health = vim.health

--- Runs `<exe> doctor` (at most timeout_ms) and returns { code, output } or nil, reason.
function M.run_doctor(exe, timeout_ms)
  local ok, proc = pcall(vim.system, { exe, 'doctor' }, { text = true })
  if not ok then
    return nil, tostring(proc)
  end
  -- On timeout the process is killed and the code is 124.
  local res = proc:wait(timeout_ms or 60000)
  return {
    code = res.code,
    output = (res.stdout or '') .. (res.stderr or ''),
    timed_out = res.code == 124,
  }
end

local function tail(text, n)
  local lines = vim.split(vim.trim(text or ''), '\n', { plain = true })
  local from = math.max(1, #lines - n + 1)
  return table.concat(lines, '\n', from)
end

function M.check()
  health.start('gemma-lsp')

  local v = vim.version()
  local vs = string.format('%d.%d.%d', v.major, v.minor, v.patch)
  if vim.fn.has('nvim-0.11') == 1 then
    health.ok('Neovim ' .. vs)
  else
    health.error('Neovim ' .. vs .. ': gemma-lsp needs 0.11 or newer (vim.lsp.config / vim.lsp.enable)')
    return
  end

  local ok, gemma = pcall(require, 'gemma_lsp')
  if not ok then
    health.error('require("gemma_lsp") failed: ' .. tostring(gemma))
    return
  end

  if gemma.has_inline() then
    health.ok('vim.lsp.inline_completion is available: ghost text')
  else
    health.info('vim.lsp.inline_completion needs Neovim 0.12: completions show in the popup menu instead')
  end

  if vim.lsp.is_enabled and vim.lsp.is_enabled(gemma.name) then
    health.ok('gemma_lsp is enabled (setup() was called)')
  else
    health.warn('gemma_lsp is not enabled', { "call require('gemma_lsp').setup() in your init.lua" })
  end

  local cmd = gemma.config.cmd
  if type(cmd) ~= 'table' or type(cmd[1]) ~= 'string' then
    health.info('cmd is not a list of strings: skipping the executable checks')
  else
    local exe = cmd[1]
    if vim.fn.executable(exe) == 1 then
      health.ok(string.format('executable: %s (%s)', exe, vim.fn.exepath(exe)))
      local res, err = M.run_doctor(exe, 60000)
      if not res then
        health.error('`' .. exe .. ' doctor` could not run: ' .. tostring(err))
      elseif res.timed_out then
        health.warn('`' .. exe .. ' doctor` did not finish within 60 s')
      elseif res.code == 0 then
        health.ok('`' .. exe .. ' doctor` passed')
        health.info(tail(res.output, 20))
      else
        health.error(
          string.format('`%s doctor` exited with %d:\n%s', exe, res.code, tail(res.output, 30)),
          { 'follow the fix commands above, then :GemmaLspRestart' }
        )
      end
    else
      health.error('executable not found: ' .. exe, {
        'install the gemma-lsp server (see the project README)',
        "or give the full path: require('gemma_lsp').setup({ cmd = { '/path/to/venv/bin/gemma-lsp', 'serve' } })",
      })
    end
  end

  local clients = gemma.clients()
  if #clients == 0 then
    health.info('no gemma_lsp client running (open a file of a configured filetype)')
  else
    for _, c in ipairs(clients) do
      local bufs = vim.tbl_keys(c.attached_buffers or {})
      health.ok(string.format('client %d attached to %d buffer(s)', c.id, #bufs))
    end
  end
  health.info('log: ' .. vim.lsp.get_log_path() .. ' (set vim.lsp.log.set_level("debug") for more)')
end

return M
