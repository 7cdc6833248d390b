-- Drive the dgemma Neovim plugin in a real headless Neovim (0.11+) against the real dgemma-lsp:
-- setup{} starts the server for a Python buffer, the model loads, inline completion and the
-- completion fallback answer, :Dgemma disable/enable reach the server, a refactor code action is
-- applied through vim.lsp.buf.code_action and the file is written, :checkhealth dgemma runs.
--
-- Usage: nvim --headless --clean -l plugin_session.lua   with, in the environment,
--   DGEMMA_TEST_PLUGIN  the plugin folder (editors/neovim)
--   DGEMMA_TEST_CMD     JSON list: the server command
--   DGEMMA_TEST_SETTINGS JSON object: the `dgemma` settings
--   DGEMMA_TEST_FILE    the Python file to edit (written by the test)
--   DGEMMA_TEST_CURSORS JSON list of {line, character} (0-based, utf-8) where to ask for suggestions
--   DGEMMA_TEST_ACTION  JSON {text, line, character, kind}: the file's text then, where to run which code action
--   DGEMMA_TEST_REPORT  where to write the JSON report the test asserts on
-- `nvim -l` never runs Insert mode (editors-testing.md gotcha 2): requests are sent explicitly.

local env = vim.env
local report = { steps = {} }

local function save_report()
  local f = assert(io.open(env.DGEMMA_TEST_REPORT, 'w'))
  f:write(vim.json.encode(report))
  f:close()
end

local function fail(message)
  report.error = message
  save_report()
  io.stderr:write('FAIL: ' .. message .. '\n')
  os.exit(1)
end

local function step(name)
  table.insert(report.steps, name)
  io.stdout:write('step: ' .. name .. '\n')
end

local ok, err = pcall(function()
  report.nvim = tostring(vim.version())
  vim.opt.runtimepath:append(env.DGEMMA_TEST_PLUGIN)
  vim.cmd('filetype plugin indent on')
  local dgemma = require('dgemma')
  dgemma.setup({
    cmd = vim.json.decode(env.DGEMMA_TEST_CMD),
    settings = vim.json.decode(env.DGEMMA_TEST_SETTINGS),
  })
  step('setup')

  vim.cmd.edit(vim.fn.fnameescape(env.DGEMMA_TEST_FILE))
  local buf = vim.api.nvim_get_current_buf()
  report.filetype = vim.bo[buf].filetype

  local client
  if not vim.wait(60000, function()
    client = vim.lsp.get_clients({ name = 'dgemma', bufnr = buf })[1]
    return client ~= nil and client.initialized == true
  end, 50) then
    fail('the plugin did not start dgemma-lsp for the buffer')
  end
  step('attached')
  report.offset_encoding = client.offset_encoding
  report.inline_provider = client.server_capabilities.inlineCompletionProvider ~= nil
  report.code_action_provider = client.server_capabilities.codeActionProvider ~= nil
  local tab = vim.fn.maparg('<Tab>', 'i', false, true)
  report.tab_mapped_in_buffer = tab.buffer == 1

  -- The plugin keeps the server's dgemma/status notifications (statusline, health).
  if not vim.wait(300000, function()
    local status = dgemma.status_by_client[client.id]
    return status ~= nil and (status.state == 'ready' or status.state == 'failed')
  end, 100) then
    fail('no dgemma/status ready notification: ' .. vim.inspect(dgemma.status_by_client[client.id]))
  end
  report.status = dgemma.status_by_client[client.id]
  report.statusline = dgemma.statusline(buf)
  if report.status.state ~= 'ready' then
    fail('the model failed to load: ' .. tostring(report.status.error))
  end
  step('ready')

  local function inline_at(position)
    local params = {
      textDocument = vim.lsp.util.make_text_document_params(buf),
      position = position,
      context = { triggerKind = 2 },
    }
    local res = vim.lsp.buf_request_sync(buf, 'textDocument/inlineCompletion', params, 120000)
    local answer = res and res[client.id]
    if not answer then
      fail('no answer to textDocument/inlineCompletion')
    end
    if answer.err then
      fail('inlineCompletion error ' .. vim.inspect(answer.err))
    end
    local result = answer.result or {}
    return result.items or result
  end

  -- 1. Inline completion (0.11 has no ghost text: the raw request the 0.12 UI would send).
  local original = vim.api.nvim_buf_get_lines(buf, 0, -1, false)
  report.inline = {}
  for _, position in ipairs(vim.json.decode(env.DGEMMA_TEST_CURSORS)) do
    local items = inline_at(position)
    table.insert(report.inline, { position = position, items = items })
    if #items > 0 and not report.accepted then
      -- Accept it the way vim.lsp.inline_completion does: the item's range replaced by its text.
      local item = items[1]
      vim.lsp.util.apply_text_edits({ { range = item.range, newText = item.insertText } }, buf, client.offset_encoding)
      report.accepted = {
        position = position,
        item = item,
        lines = vim.api.nvim_buf_get_lines(buf, 0, -1, false),
      }
      vim.api.nvim_buf_set_lines(buf, 0, -1, false, original)
    end
  end
  step('inline')

  -- 2. The completion fallback the plugin enables on 0.11 (vim.lsp.completion).
  report.completion = {}
  for _, position in ipairs(vim.json.decode(env.DGEMMA_TEST_CURSORS)) do
    local params = { textDocument = vim.lsp.util.make_text_document_params(buf), position = position }
    local res = vim.lsp.buf_request_sync(buf, 'textDocument/completion', params, 120000)
    local answer = res and res[client.id]
    if not answer or answer.err then
      fail('completion failed ' .. vim.inspect(answer))
    end
    local result = answer.result or {}
    table.insert(report.completion, { position = position, items = result.items or result })
  end
  step('completion')

  -- 3. :Dgemma disable reaches the server (workspace/didChangeConfiguration): nothing is suggested.
  if report.accepted then
    vim.cmd('Dgemma disable')
    vim.wait(500)
    report.items_when_disabled = inline_at(report.accepted.position)
    vim.cmd('Dgemma enable')
    vim.wait(500)
    report.items_when_enabled_again = inline_at(report.accepted.position)
  end
  step('toggle')

  -- 4. A refactor code action through Neovim's own code-action path (lists, resolves, applies).
  local action = vim.json.decode(env.DGEMMA_TEST_ACTION)
  -- On a complete file (the typing states above do not parse).
  vim.api.nvim_buf_set_lines(buf, 0, -1, false, vim.split(action.text, '\n', { plain = true }))
  vim.api.nvim_win_set_cursor(0, { action.line + 1, action.character })
  local listed = {}
  local cparams = vim.lsp.util.make_range_params(0, client.offset_encoding)
  cparams.context = { diagnostics = {}, triggerKind = 1 }
  local cres = vim.lsp.buf_request_sync(buf, 'textDocument/codeAction', cparams, 30000)
  for _, a in ipairs((cres and cres[client.id] and cres[client.id].result) or {}) do
    table.insert(listed, { title = a.title, kind = a.kind })
  end
  report.actions_listed = listed
  local before = table.concat(vim.api.nvim_buf_get_lines(buf, 0, -1, false), '\n')
  vim.lsp.buf.code_action({
    apply = true,
    context = { only = { action.kind }, diagnostics = {} },
    filter = function(a)
      return a.kind == action.kind
    end,
  })
  local changed = vim.wait(240000, function()
    return table.concat(vim.api.nvim_buf_get_lines(buf, 0, -1, false), '\n') ~= before
  end, 100)
  report.action_applied = changed
  vim.cmd.write()
  report.messages = vim.api.nvim_exec2('messages', { output = true }).output
  step('code action')

  -- 5. :checkhealth dgemma
  vim.cmd('checkhealth dgemma')
  report.health = table.concat(vim.api.nvim_buf_get_lines(0, 0, -1, false), '\n')
  step('health')

  client:stop()
  vim.wait(10000, function()
    return client:is_stopped()
  end, 50)
  step('stopped')
end)

if not ok then
  fail('error: ' .. tostring(err))
end
save_report()
os.exit(0)
