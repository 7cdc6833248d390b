-- dgemma: suggestions from the dgemma-lsp language server (a diffusion language model) in Neovim.
--
--   require('dgemma').setup()            -- the server :DgemmaInstall installed, else `dgemma-lsp` from PATH
--   require('dgemma').setup({ settings = { model = '/path/to/checkpoint', steps = 16 } })
--   :DgemmaInstall [wheel-or-checkout]   -- the server in its own venv under stdpath('data') (install.lua)
--
-- Neovim 0.12+: ghost text through the built-in `vim.lsp.inline_completion`; <Tab> accepts a
-- suggestion and otherwise inserts a Tab. Neovim 0.11: the server answers ordinary completion
-- (`vim.lsp.completion`), <C-Space> asks for it. Needs Neovim 0.11+ (`vim.lsp.config`).

local M = {}

local NAME = 'dgemma'

--- Language ids the server has a grammar for (dgemma_lsp/syntax.py).
M.filetypes = {
  'python',
  'javascript',
  'javascriptreact',
  'typescript',
  'typescriptreact',
  'go',
  'rust',
  'c',
  'cpp',
  'java',
}

---@class dgemma.Keymaps
---@field accept string|false Insert-mode key that accepts the ghost text (0.12+) or the selected completion item (0.11); otherwise it types itself.
---@field trigger string|false Insert-mode key that asks for a suggestion now.

---@class dgemma.InstallSettings
---@field python? string The Python that creates the server's environment (default python3).
---@field pip_args? string[] Extra `pip install` arguments, e.g. { '--extra-index-url', 'https://download.pytorch.org/whl/cpu' }.

---@class dgemma.Options
---@field cmd? string[] The server command; nil = the one :DgemmaInstall installed, else `dgemma-lsp` from PATH.
---@field install dgemma.InstallSettings How :DgemmaInstall builds the server's environment.
---@field filetypes string[] Filetypes to attach to.
---@field root_markers string[] Files that mark a project root (the server also works without one).
---@field settings table The server's `dgemma` settings: model, device, dtype, backend, endpoint, steps, seed, enabled, ... (camelCase or snake_case).
---@field inline boolean Use inline completion (ghost text) where Neovim has it (0.12+).
---@field completion boolean|nil Use LSP completion (`vim.lsp.completion`); nil = only where inline completion is unavailable (0.11).
---@field keymaps dgemma.Keymaps
---@field on_attach? fun(client: vim.lsp.Client, bufnr: integer)

---@type dgemma.Options
M.defaults = {
  cmd = nil,
  install = { python = nil, pip_args = {} },
  filetypes = M.filetypes,
  root_markers = { '.git', 'pyproject.toml', 'setup.py', 'package.json', 'go.mod', 'Cargo.toml', 'pom.xml' },
  settings = {},
  inline = true,
  completion = nil,
  keymaps = { accept = '<Tab>', trigger = '<C-Space>' },
  on_attach = nil,
}

---@type dgemma.Options?
M.options = nil

--- Latest `dgemma/status` notification per client id (state: loading | ready | failed | ...).
---@type table<integer, table>
M.status_by_client = {}

--- Whether Neovim can show ghost text for LSP inline completions.
function M.has_inline()
  return vim.lsp.inline_completion ~= nil and type(vim.lsp.inline_completion.enable) == 'function'
end

local function use_inline()
  return M.options.inline and M.has_inline()
end

local function use_completion()
  if M.options.completion ~= nil then
    return M.options.completion
  end
  return not use_inline()
end

--- The settings payload for the server: nil when empty (a Lua `{}` would be sent as a JSON array).
local function settings_payload(settings)
  if settings == nil or next(settings) == nil then
    return nil
  end
  return settings
end

local function clients(bufnr)
  return vim.lsp.get_clients({ name = NAME, bufnr = bufnr })
end

local function notify(message, level)
  vim.notify('dgemma: ' .. message, level or vim.log.levels.INFO)
end

local function termcodes(keys)
  return vim.api.nvim_replace_termcodes(keys, true, false, true)
end

--- Buffer-local insert-mode mappings.
local function map_keys(bufnr)
  local keymaps = M.options.keymaps or {}
  if keymaps.accept then
    vim.keymap.set('i', keymaps.accept, function()
      if use_inline() and vim.lsp.inline_completion.get({ bufnr = bufnr }) then
        return '' -- accepted (the edit is scheduled by Neovim)
      end
      if use_completion() and vim.fn.pumvisible() == 1 then
        return termcodes('<C-y>')
      end
      return termcodes(keymaps.accept)
    end, { buffer = bufnr, expr = true, replace_keycodes = false, desc = 'dgemma: accept the suggestion' })
  end
  if keymaps.trigger then
    vim.keymap.set('i', keymaps.trigger, function()
      if use_completion() then
        vim.lsp.completion.get()
      elseif use_inline() then
        -- Requests are automatic (200 ms after the cursor moves): pretend it moved.
        vim.api.nvim_exec_autocmds('CursorMovedI', { buffer = bufnr, modeline = false })
      end
    end, { buffer = bufnr, desc = 'dgemma: ask for a suggestion' })
  end
end

local function on_attach(client, bufnr)
  if use_inline() then
    vim.lsp.inline_completion.enable(true, { bufnr = bufnr })
  end
  if use_completion() then
    vim.lsp.completion.enable(true, client.id, bufnr, { autotrigger = true })
  end
  map_keys(bufnr)
  if M.options.on_attach then
    M.options.on_attach(client, bufnr)
  end
end

--- The server command: the user's `cmd`, else the installed one, else `dgemma-lsp` from PATH.
---@return string[]
function M.server_cmd()
  local opts = assert(M.options, "call require('dgemma').setup() first")
  return opts.cmd or require('dgemma.install').installed_cmd() or { 'dgemma-lsp' }
end

--- The `vim.lsp.config` table for the server.
function M.lsp_config()
  local opts = assert(M.options, "call require('dgemma').setup() first")
  local payload = settings_payload(opts.settings)
  local capabilities = vim.lsp.protocol.make_client_capabilities()
  if use_inline() then
    -- 0.12 announces this itself; being explicit keeps the server's completion fallback off.
    capabilities.textDocument.inlineCompletion = { dynamicRegistration = false }
  end
  return {
    cmd = M.server_cmd(),
    filetypes = opts.filetypes,
    root_markers = opts.root_markers,
    capabilities = capabilities,
    init_options = payload and { dgemma = payload } or nil,
    settings = payload and { dgemma = payload } or {},
    handlers = {
      ['dgemma/status'] = function(_, params, ctx)
        M.status_by_client[ctx.client_id] = params
        vim.api.nvim_exec_autocmds('User', { pattern = 'DgemmaStatus', modeline = false, data = params })
      end,
    },
    on_attach = on_attach,
    on_exit = function(_, _, client_id)
      M.status_by_client[client_id] = nil
    end,
  }
end

--- A short status for statuslines: "dgemma: ready", "dgemma: loading", "" when not running.
function M.statusline(bufnr)
  for _, client in ipairs(clients(bufnr or 0)) do
    local status = M.status_by_client[client.id]
    local state = status and status.state or 'starting'
    if status and status.state == 'ready' and M.options.settings.enabled == false then
      state = 'disabled'
    end
    return 'dgemma: ' .. state
  end
  return ''
end

--- Turn suggestions on or off (server setting `enabled`, and the ghost text on 0.12+).
---@param enable boolean?
function M.toggle(enable)
  local settings = M.options.settings
  if enable == nil then
    enable = settings.enabled == false
  end
  settings.enabled = enable
  for _, client in ipairs(vim.lsp.get_clients({ name = NAME })) do
    client.settings = vim.tbl_deep_extend('force', client.settings or {}, { dgemma = { enabled = enable } })
    client:notify('workspace/didChangeConfiguration', { settings = client.settings })
  end
  if use_inline() then
    vim.lsp.inline_completion.enable(enable)
  end
  notify('suggestions ' .. (enable and 'on' or 'off'))
end

--- Stop the server and start it again for every buffer it served.
function M.restart()
  local buffers = {}
  local running = vim.lsp.get_clients({ name = NAME })
  for _, client in ipairs(running) do
    for bufnr in pairs(client.attached_buffers) do
      buffers[bufnr] = true
    end
    client:stop()
  end
  vim.lsp.config(NAME, M.lsp_config())
  local function start()
    for bufnr in pairs(buffers) do
      if vim.api.nvim_buf_is_valid(bufnr) then
        vim.api.nvim_exec_autocmds('FileType', { group = 'nvim.lsp.enable', buffer = bufnr, modeline = false })
      end
    end
    notify('server restarted')
  end
  local function all_stopped()
    for _, client in ipairs(running) do
      if not client:is_stopped() then
        return false
      end
    end
    return true
  end
  if not vim.wait(5000, all_stopped, 50) then
    for _, client in ipairs(running) do
      client:stop(true)
    end
    vim.wait(2000, all_stopped, 50)
  end
  start()
end

--- Show what the server reports about itself (model, state, counters).
function M.show_status()
  local list = clients(0)
  if #list == 0 then
    list = vim.lsp.get_clients({ name = NAME })
  end
  if #list == 0 then
    notify('the server is not running (see :checkhealth dgemma)', vim.log.levels.WARN)
    return
  end
  local client = list[1]
  client:request('workspace/executeCommand', { command = 'dgemma.status', arguments = {} }, function(err, result)
    if err then
      notify('status failed: ' .. (err.message or vim.inspect(err)), vim.log.levels.ERROR)
      return
    end
    notify(vim.inspect(result))
  end, 0)
end

--- Install the server in its own environment (install.lua), then restart the client on it
--- unless the user named a `cmd`.
---@param source string? A wheel or a checkout; nil = the plugin's wheel or checkout.
---@param on_done fun(ok: boolean, message: string)?
function M.install(source, on_done)
  local settings = M.options.install or {}
  require('dgemma.install').install({
    source = source,
    python = settings.python,
    pip_args = settings.pip_args,
    on_done = function(ok, message)
      if ok and not M.options.cmd then
        M.restart()
      end
      if on_done then
        on_done(ok, message)
      end
    end,
  })
end

local function command(args)
  local sub = args.fargs[1] or 'status'
  if sub == 'status' then
    M.show_status()
  elseif sub == 'toggle' then
    M.toggle()
  elseif sub == 'enable' then
    M.toggle(true)
  elseif sub == 'disable' then
    M.toggle(false)
  elseif sub == 'restart' then
    M.restart()
  elseif sub == 'install' then
    M.install(args.fargs[2])
  elseif sub == 'log' then
    vim.cmd.edit(vim.fn.fnameescape(vim.lsp.log.get_filename()))
  else
    notify('unknown subcommand ' .. sub .. ' (status, toggle, enable, disable, restart, install, log)', vim.log.levels.ERROR)
  end
end

---@param opts dgemma.Options?
function M.setup(opts)
  if vim.fn.has('nvim-0.11') ~= 1 then
    notify('needs Neovim 0.11 or later', vim.log.levels.ERROR)
    return
  end
  opts = opts or {}
  M.options = vim.tbl_deep_extend('force', vim.deepcopy(M.defaults), opts)
  -- Lists are replaced, not merged.
  for _, key in ipairs({ 'cmd', 'filetypes', 'root_markers' }) do
    if opts[key] then
      M.options[key] = opts[key]
    end
  end
  vim.lsp.config(NAME, M.lsp_config())
  vim.lsp.enable(NAME)
  vim.api.nvim_create_user_command('Dgemma', command, {
    nargs = '*',
    complete = function()
      return { 'status', 'toggle', 'enable', 'disable', 'restart', 'install', 'log' }
    end,
    desc = 'dgemma: status | toggle | enable | disable | restart | install [source] | log',
  })
  vim.api.nvim_create_user_command('DgemmaInstall', function(args)
    M.install(args.args ~= '' and args.args or nil)
  end, {
    nargs = '?',
    complete = 'file',
    desc = "dgemma: install the server in its own venv under stdpath('data') (from a wheel or the plugin's checkout)",
  })
  if not opts.cmd and vim.fn.executable(M.server_cmd()[1]) == 0 then
    notify('no server yet: run :DgemmaInstall (or set cmd in setup{})', vim.log.levels.WARN)
  end
end

return M
