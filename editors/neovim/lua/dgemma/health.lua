-- :checkhealth dgemma
local M = {}

function M.check()
  local health = vim.health
  local dgemma = require('dgemma')

  health.start('Neovim')
  local version = tostring(vim.version())
  if vim.fn.has('nvim-0.11') ~= 1 then
    health.error('Neovim ' .. version .. ' is too old', { 'dgemma needs Neovim 0.11 or later (vim.lsp.config)' })
    return
  end
  if dgemma.has_inline() then
    health.ok('Neovim ' .. version .. ': ghost text through vim.lsp.inline_completion')
  else
    health.warn('Neovim ' .. version .. ': no vim.lsp.inline_completion', {
      'suggestions arrive through LSP completion (<C-Space> asks for one)',
      'Neovim 0.12 or later shows them as ghost text',
    })
  end

  health.start('Setup')
  local opts = dgemma.options
  if not opts then
    health.error("require('dgemma').setup() has not been called", { "add require('dgemma').setup() to your config" })
    return
  end
  health.ok('setup() called; filetypes: ' .. table.concat(opts.filetypes, ', '))
  if next(opts.settings) then
    health.info('settings: ' .. vim.inspect(opts.settings, { newline = ' ', indent = '' }))
  else
    health.info('settings: none (the embedded model on the best device)')
  end

  health.start('Server')
  local exe = dgemma.server_cmd()[1]
  local path = vim.fn.exepath(exe)
  if path == '' then
    health.error('`' .. exe .. '` not found', {
      ':DgemmaInstall installs it in its own environment under ' .. vim.fn.stdpath('data'),
      'or install it from a checkout: pip install torch==2.13.0 -e . (see the README)',
      "or point setup{ cmd = { '/path/to/venv/bin/dgemma-lsp' } } at it",
    })
  else
    local result = vim.system({ path, '--version' }, { text = true }):wait(20000)
    if result.code == 0 then
      health.ok(vim.trim(result.stdout or '') .. ' (' .. path .. ')')
    else
      health.error('`' .. path .. ' --version` failed: ' .. vim.trim((result.stderr or '') .. (result.stdout or '')))
    end
  end

  local running = vim.lsp.get_clients({ name = 'dgemma' })
  if #running == 0 then
    health.info('no dgemma client running (open a file of a supported filetype)')
  end
  for _, client in ipairs(running) do
    local status = dgemma.status_by_client[client.id]
    local buffers = vim.tbl_count(client.attached_buffers)
    local line = ('client %d: %d buffer(s), position encoding %s'):format(client.id, buffers, client.offset_encoding)
    if not status then
      health.info(line .. ', no status yet (the model may still be loading)')
    elseif status.state == 'ready' then
      health.ok(line .. ', model ready: ' .. tostring(status.backend))
    elseif status.state == 'failed' then
      health.error(line .. ', the model failed to load: ' .. tostring(status.error), {
        'check the `model`, `device` and `dtype` settings',
        ':Dgemma log shows the server log',
      })
    else
      health.info(line .. ', state ' .. tostring(status.state))
    end
    if dgemma.has_inline() and opts.inline then
      local enabled = false
      for bufnr in pairs(client.attached_buffers) do
        enabled = enabled or vim.lsp.inline_completion.is_enabled({ bufnr = bufnr })
      end
      if enabled then
        health.ok('inline completion enabled')
      else
        health.warn('inline completion is disabled in every attached buffer', { ':Dgemma enable' })
      end
    end
  end
end

return M
