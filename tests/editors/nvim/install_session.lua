-- :DgemmaInstall in a real headless Neovim (0.11+): the plugin builds the server's own venv under
-- stdpath('data') from its checkout (or DGEMMA_TEST_SOURCE), then starts that server for a
-- Python buffer, which initializes and answers an inline completion request.
--
-- Usage: nvim --headless --clean -l install_session.lua   with, in the environment,
--   DGEMMA_TEST_PLUGIN   the plugin folder (editors/neovim)
--   DGEMMA_TEST_SETTINGS JSON object: the `dgemma` settings
--   DGEMMA_TEST_FILE     the Python file to open (written by the test)
--   DGEMMA_TEST_SOURCE   optional: the wheel or checkout to install (default: the plugin's)
--   DGEMMA_TEST_PIP_ARGS optional JSON list: extra `pip install` arguments
--   DGEMMA_TEST_REPORT   where to write the JSON report the test asserts on

local env = vim.env
local report = { steps = {}, progress = {} }

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
  -- What the user sees: the install's progress messages.
  local notify = vim.notify
  vim.notify = function(message, level, opts)
    table.insert(report.progress, message)
    io.stdout:write('notify: ' .. message .. '\n')
    return notify(message, level, opts)
  end
  local dgemma = require('dgemma')
  local install = require('dgemma.install')
  dgemma.setup({
    settings = vim.json.decode(env.DGEMMA_TEST_SETTINGS),
    install = { pip_args = vim.json.decode(env.DGEMMA_TEST_PIP_ARGS or '[]') },
  })
  local layout = install.layout()
  report.layout = layout
  report.installed_before = install.installed_cmd() ~= nil
  report.cmd_before = dgemma.server_cmd()
  step('setup')

  local result
  vim.api.nvim_create_autocmd('User', {
    pattern = 'DgemmaInstall',
    callback = function(args)
      result = args.data
    end,
  })
  local source = env.DGEMMA_TEST_SOURCE
  vim.cmd('DgemmaInstall' .. ((source and source ~= '') and (' ' .. vim.fn.fnameescape(source)) or ''))
  if not vim.wait(25 * 60 * 1000, function()
    return result ~= nil
  end, 200) then
    fail('the install did not finish')
  end
  report.install = result
  if result.state ~= 'done' then
    fail('install failed: ' .. tostring(result.message))
  end
  step('installed')
  report.stamp = vim.json.decode(table.concat(vim.fn.readfile(layout.stamp), '\n'))
  report.cmd_after = dgemma.server_cmd()

  vim.cmd.edit(vim.fn.fnameescape(env.DGEMMA_TEST_FILE))
  local buf = vim.api.nvim_get_current_buf()
  local client
  if not vim.wait(120000, function()
    client = vim.lsp.get_clients({ name = 'dgemma', bufnr = buf })[1]
    return client ~= nil and client.initialized == true
  end, 50) then
    fail('the installed server did not start for the buffer')
  end
  step('attached')
  report.client_cmd = client.config.cmd
  report.inline_provider = client.server_capabilities.inlineCompletionProvider ~= nil

  local lines = vim.api.nvim_buf_get_lines(buf, 0, -1, false)
  local last = #lines - 1
  local params = {
    textDocument = vim.lsp.util.make_text_document_params(buf),
    position = { line = last, character = #lines[#lines] },
    context = { triggerKind = 1 },
  }
  local response = vim.lsp.buf_request_sync(buf, 'textDocument/inlineCompletion', params, 300000)
  local answer = response and response[client.id]
  if not answer then
    fail('no inline completion answer from the installed server')
  end
  report.inline_error = answer.err
  report.inline_items = answer.result and (answer.result.items or answer.result) or nil
  step('inline answered')

  client:stop()
  vim.wait(5000, function()
    return client:is_stopped()
  end, 50)
end)
if not ok then
  fail(tostring(err))
end
save_report()
os.exit(0)
