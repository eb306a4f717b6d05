-- gemma-lsp for Neovim (0.11+).
--
--   require('gemma_lsp').setup({
--     cmd = { 'gemma-lsp', 'serve' },
--     filetypes = { 'python', 'lua' },       -- nil: the default list below
--     settings = { drafter = 'ngram', maxTokens = 64 },
--     keymaps = { accept = '<Tab>', next = '<M-]>', prev = '<M-[>' },
--   })
--
-- Neovim 0.12+ shows ghost text (vim.lsp.inline_completion). On 0.11, completions come
-- through the popup menu (vim.lsp.completion with autotrigger).

local M = {}

M.name = 'gemma_lsp'

M.default_filetypes = {
  'bash', 'c', 'cpp', 'cs', 'css', 'cuda', 'dart', 'elixir', 'erlang', 'go', 'haskell',
  'html', 'java', 'javascript', 'javascriptreact', 'json', 'julia', 'kotlin', 'lua',
  'make', 'nix', 'ocaml', 'php', 'python', 'r', 'ruby', 'rust', 'scala', 'sh', 'sql',
  'swift', 'toml', 'typescript', 'typescriptreact', 'vim', 'vue', 'yaml', 'zig', 'zsh',
}

M.defaults = {
  cmd = { 'gemma-lsp', 'serve' },
  filetypes = nil, -- nil: M.default_filetypes
  root_markers = { '.git' },
  -- Sent as init_options = { gemmaLsp = settings } and settings = { gemmaLsp = settings }.
  -- Keys: model, draftModel, drafter, maxTokens, singleLine, timeBudgetMs, temperature.
  -- Empty: the server's defaults.
  settings = {},
  -- Ghost text (Neovim 0.12+). false: never.
  inline = true,
  -- Popup completion: 'auto' = only where ghost text is not available (Neovim 0.11),
  -- true = always, false = never.
  completion = 'auto',
  -- Insert-mode keys for ghost text (Neovim 0.12+). Set one to false to skip it.
  keymaps = { accept = '<Tab>', next = '<M-]>', prev = '<M-[>' },
}

M.config = vim.deepcopy(M.defaults)

local function has_inline()
  return vim.lsp.inline_completion ~= nil and vim.lsp.inline_completion.enable ~= nil
end
M.has_inline = has_inline

--- The vim.lsp.config table for the current M.config.
function M.lsp_config()
  local c = M.config
  local settings = vim.deepcopy(c.settings or {})
  -- An empty Lua table would be sent as [] instead of {}.
  local section = next(settings) == nil and vim.empty_dict() or settings
  return {
    cmd = c.cmd,
    filetypes = c.filetypes or M.default_filetypes,
    root_markers = c.root_markers,
    init_options = { gemmaLsp = section },
    settings = { gemmaLsp = section },
  }
end

--- Percent as "72%", or "-" when the denominator is 0.
function M.percent(part, whole)
  if type(whole) ~= 'number' or whole <= 0 or type(part) ~= 'number' then
    return '-'
  end
  return string.format('%d%%', math.floor(100 * part / whole + 0.5))
end

local function ms(v)
  if type(v) ~= 'number' then
    return '-'
  end
  return string.format('%d ms', math.floor(v + 0.5))
end

--- Formats a gemma/stats result.
---@param s table
---@return string
function M.format_stats(s)
  if type(s) ~= 'table' then
    return 'gemma-lsp: no stats'
  end
  local function n(k)
    return type(s[k]) == 'number' and s[k] or 0
  end
  local lat = type(s.latency_ms) == 'table' and s.latency_ms or {}
  return table.concat({
    string.format('completions: %d (cancelled %d)', n('completions'), n('cancelled')),
    string.format(
      'draft acceptance: %s (%d/%d)',
      M.percent(n('accepted'), n('drafted')),
      n('accepted'),
      n('drafted')
    ),
    string.format(
      'prompt reuse: %s (%d/%d tokens)',
      M.percent(n('reused_tokens'), n('prompt_tokens')),
      n('reused_tokens'),
      n('prompt_tokens')
    ),
    string.format('tokens: %d in %d target forwards', n('tokens'), n('target_forwards')),
    string.format('latency: p50 %s, p95 %s, last %s', ms(lat.p50), ms(lat.p95), ms(lat.last)),
  }, '\n')
end

--- Running gemma_lsp clients (optionally only those attached to bufnr).
function M.clients(bufnr)
  return vim.lsp.get_clients({ name = M.name, bufnr = bufnr })
end

--- Requests gemma/stats from the first client and calls cb(err, result).
function M.stats(cb)
  local client = M.clients()[1]
  if not client then
    cb('gemma-lsp is not running (open a file of a configured filetype)', nil)
    return
  end
  -- Params must be an object: without them pygls rejects the request (-32602).
  client:request('gemma/stats', vim.empty_dict(), function(err, result)
    cb(err and (err.message or vim.inspect(err)) or nil, result)
  end)
end

local function map_keys(bufnr)
  local km = M.config.keymaps or {}
  local ic = vim.lsp.inline_completion
  if km.accept then
    vim.keymap.set('i', km.accept, function()
      if not ic.get() then
        -- Nothing to accept: the key does what it does without the mapping.
        return km.accept
      end
    end, { buffer = bufnr, expr = true, desc = 'gemma-lsp: accept ghost text' })
  end
  local select = ic.select or ic.jump
  if select and km.next then
    vim.keymap.set('i', km.next, function()
      select({ count = 1 })
    end, { buffer = bufnr, desc = 'gemma-lsp: next suggestion' })
  end
  if select and km.prev then
    vim.keymap.set('i', km.prev, function()
      select({ count = -1 })
    end, { buffer = bufnr, desc = 'gemma-lsp: previous suggestion' })
  end
end

--- The text an item inserts (textEdit.newText, else insertText), or nil for snippets.
local function item_text(item)
  if item.insertTextFormat == 2 then
    return nil
  end
  local text = item.textEdit and item.textEdit.newText or item.insertText
  return type(text) == 'string' and text ~= '' and text or nil
end

--- vim.lsp.completion `convert`: Neovim 0.11 makes a plain-text textEdit's complete-item
--- word only its first WORD (newText:match('^%S*')), so accepting `a + b` inserted `a`.
--- The word is the whole first line; on_complete_done inserts any further lines.
function M.complete_item(item)
  local text = item_text(item)
  if not text then
    return {}
  end
  return { word = text:match('^[^\n]*') }
end

--- CompleteDone: inserts the lines after the first of an accepted multi-line item.
function M.on_complete_done(bufnr)
  local ci = vim.v.completed_item
  local reason = vim.v.event and vim.v.event.reason
  if reason and reason ~= 'accept' then
    return
  end
  local item = vim.tbl_get(ci or {}, 'user_data', 'nvim', 'lsp', 'completion_item')
  local client_id = vim.tbl_get(ci or {}, 'user_data', 'nvim', 'lsp', 'client_id')
  local client = client_id and vim.lsp.get_client_by_id(client_id)
  local text = item and item_text(item)
  if not (client and client.name == M.name and text and text:find('\n')) then
    return
  end
  local lines = vim.split(text, '\n', { plain = true })
  lines[1] = ''
  local row, col = unpack(vim.api.nvim_win_get_cursor(0))
  vim.api.nvim_buf_set_text(bufnr, row - 1, col, row - 1, col, lines)
  vim.api.nvim_win_set_cursor(0, { row - 1 + #lines, #lines[#lines] })
end

--- Tells the server where the cursor went (`gemma/cursor`) when it changes line, so that
--- a pause there warms the server's cache before the first request (typing on the same
--- line already says so through didChange).
local function report_cursor(client, bufnr)
  local last
  vim.api.nvim_create_autocmd({ 'CursorMoved', 'CursorMovedI', 'BufEnter' }, {
    group = vim.api.nvim_create_augroup('gemma_lsp_cursor_' .. bufnr, { clear = true }),
    buffer = bufnr,
    callback = function()
      local row = vim.api.nvim_win_get_cursor(0)[1]
      if row == last or client:is_stopped() then
        return
      end
      last = row
      client:notify('gemma/cursor', vim.lsp.util.make_position_params(0, client.offset_encoding))
    end,
  })
end
M.report_cursor = report_cursor

--- LspAttach handler (exposed for tests).
function M.on_attach(client, bufnr)
  report_cursor(client, bufnr)
  local c = M.config
  local inline = c.inline ~= false and has_inline()
  if inline then
    vim.lsp.inline_completion.enable(true, { bufnr = bufnr, client_id = client.id })
    map_keys(bufnr)
  end
  local popup = c.completion == true or (c.completion == 'auto' and not inline)
  if popup and vim.lsp.completion then
    vim.lsp.completion.enable(true, client.id, bufnr, {
      autotrigger = true,
      convert = M.complete_item,
    })
    vim.api.nvim_create_autocmd('CompleteDone', {
      group = vim.api.nvim_create_augroup('gemma_lsp_complete_' .. bufnr, { clear = true }),
      buffer = bufnr,
      callback = function()
        M.on_complete_done(bufnr)
      end,
    })
  end
  return { inline = inline, popup = popup }
end

local function create_commands()
  vim.api.nvim_create_user_command('GemmaLspStats', function()
    M.stats(function(err, result)
      vim.schedule(function()
        if err then
          vim.notify('gemma-lsp: ' .. tostring(err), vim.log.levels.WARN)
        else
          vim.notify(M.format_stats(result), vim.log.levels.INFO)
        end
      end)
    end)
  end, { desc = 'Show gemma-lsp stats (gemma/stats)' })

  vim.api.nvim_create_user_command('GemmaLspRestart', function()
    for _, client in ipairs(M.clients()) do
      client:stop(true)
    end
    -- Re-enabling starts a client again for every open buffer of a configured filetype.
    vim.defer_fn(function()
      vim.lsp.enable(M.name)
    end, 500)
  end, { desc = 'Restart gemma-lsp' })
end

--- Pushes new settings to running servers (workspace/didChangeConfiguration).
function M.update_settings(settings)
  M.config.settings = vim.deepcopy(settings or {})
  local cfg = M.lsp_config()
  vim.lsp.config[M.name] = cfg
  for _, client in ipairs(M.clients()) do
    client.settings = cfg.settings
    client:notify('workspace/didChangeConfiguration', { settings = cfg.settings })
  end
end

---@param opts? table see M.defaults
function M.setup(opts)
  if vim.fn.has('nvim-0.11') ~= 1 or not vim.lsp.config then
    vim.notify('gemma-lsp needs Neovim 0.11 or newer', vim.log.levels.ERROR)
    return
  end
  M.config = vim.tbl_deep_extend('force', vim.deepcopy(M.defaults), opts or {})
  -- Lists are replaced, not merged.
  if opts and opts.cmd then
    M.config.cmd = opts.cmd
  end
  if opts and opts.filetypes then
    M.config.filetypes = opts.filetypes
  end

  -- Assignment replaces an earlier setup() instead of merging into it.
  vim.lsp.config[M.name] = M.lsp_config()

  local group = vim.api.nvim_create_augroup('gemma_lsp', { clear = true })
  vim.api.nvim_create_autocmd('LspAttach', {
    group = group,
    callback = function(args)
      local client = vim.lsp.get_client_by_id(args.data.client_id)
      if client and client.name == M.name then
        M.on_attach(client, args.buf)
      end
    end,
  })
  create_commands()
  vim.lsp.enable(M.name)
end

return M
