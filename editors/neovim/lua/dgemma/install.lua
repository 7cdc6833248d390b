-- :DgemmaInstall: the server in its own virtual environment under stdpath('data'), as the VS Code
-- extension does in its storage: `python -m venv`, then `pip install torch==2.13.0 <source>`
-- where the source is a wheel (`:DgemmaInstall path/to/dgemma_lsp-*.whl`, or one in the plugin's
-- `server/` folder) or the plugin's own checkout (the repository the plugin folder sits in).
-- Asynchronous (vim.system): progress goes to :messages and a `User DgemmaInstall` autocmd
-- fires with `data = { state = 'done' | 'failed', ... }` at the end.

local M = {}

--- The torch the README installs; `install.pip_args` can name an index for another build.
M.torch = 'torch==2.13.0'

local is_windows = vim.fn.has('win32') == 1

--- Where the environment lives.
function M.layout()
  local root = vim.fs.joinpath(vim.fn.stdpath('data'), 'dgemma')
  local venv = vim.fs.joinpath(root, 'server-env')
  local bin = vim.fs.joinpath(venv, is_windows and 'Scripts' or 'bin')
  return {
    root = root,
    venv = venv,
    python = vim.fs.joinpath(bin, is_windows and 'python.exe' or 'python'),
    server = vim.fs.joinpath(bin, is_windows and 'dgemma-lsp.exe' or 'dgemma-lsp'),
    stamp = vim.fs.joinpath(root, 'server-env.json'),
  }
end

--- The installed server command, or nil when no finished install is there.
---@return string[]?
function M.installed_cmd()
  local layout = M.layout()
  if vim.uv.fs_stat(layout.stamp) and vim.fn.executable(layout.server) == 1 then
    return { layout.server }
  end
  return nil
end

--- The plugin folder (editors/neovim), from this file's path.
local function plugin_root()
  local this = debug.getinfo(1, 'S').source:sub(2)
  return vim.fs.dirname(vim.fs.dirname(vim.fs.dirname(vim.fs.normalize(this))))
end

--- What to install when no source is given: a wheel in the plugin's `server/` folder, else the
--- checkout the plugin belongs to.
---@return string? source, string? problem
function M.default_source()
  local root = plugin_root()
  local wheels = vim.fn.glob(vim.fs.joinpath(root, 'server', 'dgemma_lsp-*.whl'), false, true)
  if #wheels > 0 then
    table.sort(wheels)
    return wheels[#wheels]
  end
  local checkout = vim.fs.dirname(vim.fs.dirname(root))
  if vim.uv.fs_stat(vim.fs.joinpath(checkout, 'pyproject.toml')) then
    return checkout
  end
  return nil, 'no wheel in ' .. vim.fs.joinpath(root, 'server') .. ' and no checkout around ' .. root
end

local PROBE = 'import sys, venv, ensurepip; print(sys.executable); print("%d.%d" % sys.version_info[:2])'

--- The first Python 3.10+ that can make a venv.
---@return string? python, string? problem
local function find_python(configured)
  local tried = {}
  local candidates = {}
  -- `configured` may be nil: a list starting with it would end there for ipairs.
  for _, c in ipairs({ configured or '', 'python3', 'python' }) do
    if c ~= '' and not vim.tbl_contains(candidates, c) then
      table.insert(candidates, c)
    end
  end
  for _, candidate in ipairs(candidates) do
    if vim.fn.executable(candidate) == 1 then
      local out = vim.system({ candidate, '-c', PROBE }, { text = true }):wait()
      local exe, major, minor = (out.stdout or ''):match('^(.-)\r?\n(%d+)%.(%d+)')
      if out.code == 0 and exe and (tonumber(major) > 3 or (tonumber(major) == 3 and tonumber(minor) >= 10)) then
        return exe
      end
      table.insert(tried, candidate .. ': ' .. vim.trim(out.stderr or ''):gsub('.*\n', ''))
    else
      table.insert(tried, candidate .. ': not found')
    end
  end
  return nil, 'no Python 3.10+ with venv (' .. table.concat(tried, '; ') .. ')'
end

local function notify(message, level)
  vim.schedule(function()
    vim.notify('dgemma install: ' .. message, level or vim.log.levels.INFO)
  end)
end

--- A short progress message for one line of pip's output.
function M.pip_progress(line)
  local package = line:match('^Collecting ([^%s<>=!~;]+)')
  if package then
    return 'fetching ' .. package
  end
  if line:match('^Installing collected packages') then
    return 'installing the packages (torch takes a while)'
  end
  if line:match('^Successfully installed') then
    return 'installed'
  end
  return nil
end

---@class dgemma.InstallOptions
---@field source? string A wheel or a checkout folder; default: M.default_source().
---@field python? string The Python that creates the environment; default python3.
---@field pip_args? string[] Extra `pip install` arguments (an index URL, a mirror).
---@field on_done? fun(ok: boolean, message: string)

--- Build the environment. Runs in the background; `opts.on_done` and `User DgemmaInstall` report.
---@param opts dgemma.InstallOptions?
function M.install(opts)
  opts = opts or {}
  local layout = M.layout()
  local function finish(ok, message)
    notify(message, ok and vim.log.levels.INFO or vim.log.levels.ERROR)
    vim.schedule(function()
      vim.api.nvim_exec_autocmds('User', {
        pattern = 'DgemmaInstall',
        modeline = false,
        data = { state = ok and 'done' or 'failed', message = message, venv = layout.venv },
      })
      if opts.on_done then
        opts.on_done(ok, message)
      end
    end)
  end
  if M.running then
    return finish(false, 'an install is already running')
  end

  local source, problem = opts.source, nil
  if source == nil or source == '' then
    source, problem = M.default_source()
  else
    source = vim.fs.normalize(vim.fn.fnamemodify(source, ':p'))
  end
  if not source or not vim.uv.fs_stat(source) then
    return finish(false, problem or ('no such wheel or folder: ' .. tostring(source)))
  end
  local python, why = find_python(opts.python)
  if not python then
    return finish(false, why .. '; on Debian/Ubuntu install python3-venv')
  end

  M.running = true
  vim.fn.mkdir(layout.root, 'p')
  os.remove(layout.stamp)
  vim.fn.delete(layout.venv, 'rf')
  local pip = { layout.python, '-m', 'pip', 'install', '--disable-pip-version-check', '--no-input', '--progress-bar', 'off' }
  vim.list_extend(pip, opts.pip_args or {})
  vim.list_extend(pip, { M.torch, source })
  local steps = {
    { 'creating ' .. layout.venv .. ' with ' .. python, { python, '-m', 'venv', layout.venv } },
    { 'installing ' .. M.torch .. ' and ' .. vim.fs.basename(source), pip },
    { 'checking the server', { layout.server, '--version' } },
  }
  local log_lines = {}

  local function run(i)
    if i > #steps then
      local stamp = vim.json.encode({ source = source, torch = M.torch, python = python })
      vim.fn.writefile({ stamp }, layout.stamp)
      M.running = false
      return finish(true, 'done: ' .. layout.server)
    end
    local message, cmd = steps[i][1], steps[i][2]
    notify(message)
    local function on_output(_, data)
      for line in vim.gsplit(data or '', '\n', { trimempty = true }) do
        table.insert(log_lines, line)
        local progress = M.pip_progress(line)
        if progress then
          notify(progress)
        end
      end
    end
    local ok, err = pcall(vim.system, cmd, {
      text = true,
      stdout = on_output,
      stderr = on_output,
      env = { PIP_NO_INPUT = '1', PYTHONUNBUFFERED = '1' },
    }, function(out)
      -- on_exit runs in a fast event: the next step (vim.fn calls) waits for the main loop.
      vim.schedule(function()
        if out.code ~= 0 then
          M.running = false
          local tail = table.concat(vim.list_slice(log_lines, math.max(1, #log_lines - 3)), ' | ')
          return finish(false, message .. ' failed (exit ' .. out.code .. '): ' .. tail)
        end
        run(i + 1)
      end)
    end)
    if not ok then
      M.running = false
      finish(false, message .. ' failed: ' .. tostring(err))
    end
  end
  run(1)
end

return M
