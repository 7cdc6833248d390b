"""The Neovim plugin in a real Neovim 0.12+ (`vim.lsp.inline_completion`), driven through pynvim
like a user at the keyboard: Insert mode, ghost text appears, <Tab> (the plugin's mapping)
inserts exactly what the server suggested; with suggestions off, <Tab> is a plain Tab.

Needs Neovim 0.12+: DGEMMA_NVIM012, the Debian sid build that `editors/tests/install-tools.sh
nvim012` unpacks into .editor-tools/, or `nvim` on PATH. Skipped when none is found; under CI
(CI=true) or with DGEMMA_FETCH_NVIM=1 the test fetches the sid build first.
"""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from tests.editors.conftest import (
    NEOVIM_PLUGIN,
    REPO,
    editor_env,
    find_nvim012,
    server_command,
)
from tests.editors.samples import typing_state

pynvim = pytest.importorskip("pynvim")

pytestmark = [pytest.mark.editor, pytest.mark.slow, pytest.mark.timeout(900)]

SETUP = r"""
local plugin, cmd, settings, file = ...
vim.opt.runtimepath:append(plugin)
vim.cmd('filetype plugin indent on')
require('dgemma').setup({ cmd = cmd, settings = settings })
vim.cmd.edit(vim.fn.fnameescape(file))
"""

# Record what the server answered to each inline request, on the editor side, so the test can
# compare the ghost text and the accepted edit with the server's own item.
SPY = r"""
local client = vim.lsp.get_clients({ name = 'dgemma', bufnr = 0 })[1]
_G.dgemma_test = { responses = {} }
local request = client.request
client.request = function(self, method, params, handler, bufnr)
  if method == 'textDocument/inlineCompletion' then
    local inner = handler
    handler = function(err, result, ctx, config)
      table.insert(_G.dgemma_test.responses, {
        position = params.position,
        trigger = params.context.triggerKind,
        err = err and vim.inspect(err) or false,
        items = result and (result.items or result) or {},
      })
      return inner(err, result, ctx, config)
    end
  end
  return request(self, method, params, handler, bufnr)
end
"""

CLIENT = r"""
local client = vim.lsp.get_clients({ name = 'dgemma', bufnr = 0 })[1]
if not client then return nil end
local status = require('dgemma').status_by_client[client.id]
return {
  initialized = client.initialized == true,
  encoding = client.offset_encoding,
  state = status and status.state or false,
  error = status and status.error or false,
  inline_enabled = vim.lsp.inline_completion.is_enabled({ bufnr = 0 }),
}
"""

PENDING = r"""
local client = vim.lsp.get_clients({ name = 'dgemma', bufnr = 0 })[1]
for _, request in pairs(client.requests) do
  if request.type == 'pending' and request.method == 'textDocument/inlineCompletion' then return true end
end
return false
"""

GHOST = r"""
local ns = vim.api.nvim_get_namespaces()['nvim.lsp.inline_completion']
if not ns then return false end
local mark = vim.api.nvim_buf_get_extmarks(0, ns, 0, -1, { details = true })[1]
if not mark then return false end
local function join(chunks) return table.concat(vim.tbl_map(function(c) return c[1] end, chunks or {})) end
local lines = { join(mark[4].virt_text) }
for _, l in ipairs(mark[4].virt_lines or {}) do table.insert(lines, join(l)) end
return { row = mark[2], col = mark[3], text = table.concat(lines, '\n') }
"""


def wait_for(fn, timeout: float, interval: float = 0.05):
    end = time.monotonic() + timeout
    value = fn()
    while not value and time.monotonic() < end:
        time.sleep(interval)
        value = fn()
    return value


@pytest.fixture(scope="session")
def nvim012_binary() -> str:
    found = find_nvim012()
    if found is None and (os.environ.get("CI") or os.environ.get("DGEMMA_FETCH_NVIM") == "1"):
        try:
            subprocess.run(
                ["bash", str(REPO / "editors" / "tests" / "install-tools.sh"), "nvim012"],
                check=True,
                timeout=600,
                capture_output=True,
            )
        except (subprocess.SubprocessError, OSError) as error:
            pytest.skip(f"could not fetch Neovim 0.12 from Debian sid: {error}")
        found = find_nvim012()
    if found is None:
        pytest.skip("no Neovim 0.12+ (editors/tests/install-tools.sh nvim012, or set DGEMMA_NVIM012)")
    return found


@pytest.fixture
def nvim(nvim012_binary, tmp_path):
    env = editor_env(tmp_path)
    argv = ["env", *(f"{k}={v}" for k, v in env.items())]
    argv += [nvim012_binary, "--embed", "--headless", "--clean"]
    editor = pynvim.attach("child", argv=argv)
    yield editor
    try:
        editor.exec_lua("for _, c in ipairs(vim.lsp.get_clients()) do c:stop(true) end")
        editor.quit("qa!")
    except Exception:
        pass
    editor.close()


def test_ghost_text_and_tab_in_neovim_012(nvim, tmp_path, test_model):
    assert nvim.exec_lua("return vim.lsp.inline_completion ~= nil")
    text, cursors = typing_state()
    path = tmp_path / "shapes.py"
    path.write_text(text)
    nvim.exec_lua(SETUP, str(NEOVIM_PLUGIN), server_command(), test_model.settings, str(path))

    client = wait_for(lambda: (c := nvim.exec_lua(CLIENT)) and c["initialized"] and c, 60)
    assert client, "the plugin did not start dgemma-lsp"
    assert client["encoding"] == "utf-8" and client["inline_enabled"]
    nvim.exec_lua(SPY)
    client = wait_for(lambda: (c := nvim.exec_lua(CLIENT)) and c["state"] in ("ready", "failed") and c, 300)
    assert client and client["state"] == "ready", f"model {test_model.name} did not load: {client}"
    assert nvim.exec_lua("return require('dgemma').statusline()") == "dgemma: ready"

    shown = None
    for cursor in cursors:
        line, typed = cursor["line"], cursor["type"]
        nvim.input("<Esc>")
        wait_for(lambda: nvim.api.get_mode()["mode"] == "n", 5)
        nvim.api.win_set_cursor(0, (line + 1, 0))
        answered = len(nvim.exec_lua("return _G.dgemma_test.responses"))
        nvim.input("A" + typed)  # keystrokes as a user types them: append at the end of the line
        assert wait_for(lambda: nvim.api.get_mode()["mode"] == "i", 5)
        # The automatic request (200 ms after typing) is answered, for this cursor.
        column = len(nvim.current.buffer[line].encode())
        expected_position = {"line": line, "character": column}

        def answer(position=expected_position, answered=answered):
            # The latest answer once nothing is pending: a newer request cancels an older one,
            # which is then answered with no items.
            if nvim.exec_lua(PENDING):
                return None
            responses = nvim.exec_lua("return _G.dgemma_test.responses")[answered:]
            return next((r for r in reversed(responses) if r["position"] == position), None)

        response = wait_for(answer, 120)
        assert response is not None, f"no inline request answered at {expected_position}"
        assert response["trigger"] == 2 and response["err"] is False, response
        if response["items"]:
            ghost = wait_for(lambda: nvim.exec_lua(GHOST), 10)
            shown = (line, column, response["items"][0], ghost)
            break
    assert shown is not None, (
        f"no suggestion at any cursor with model {test_model.name}: "
        f"{nvim.exec_lua('return _G.dgemma_test.responses')}"
    )
    line, column, item, ghost = shown

    # The ghost text is the server's item, drawn at the cursor.
    assert item["range"]["start"] == {"line": line, "character": column}
    assert ghost, "the server answered but no ghost text was drawn"
    assert ghost["text"] == item["insertText"], (ghost, item)
    assert (ghost["row"], ghost["col"]) == (line, column)

    # <Tab> (the plugin's mapping) accepts it: the buffer gets exactly the server's edit.
    before = list(nvim.current.buffer)
    nvim.input("<Tab>")
    expected_line = (
        before[line][:column] + item["insertText"] + before[line][item["range"]["end"]["character"] :]
    )
    expected = [*before[:line], *expected_line.split("\n"), *before[line + 1 :]]
    assert wait_for(lambda: list(nvim.current.buffer) == expected, 10), (list(nvim.current.buffer), expected)
    assert nvim.api.get_mode()["mode"] == "i"
    inserted = item["insertText"].split("\n")
    row, col = nvim.api.win_get_cursor(0)
    assert row == line + len(inserted)
    assert col == (column if len(inserted) == 1 else 0) + len(inserted[-1].encode())

    # With suggestions off (`:Dgemma disable`), <Tab> does what Tab does without the plugin
    # (here Python's ftplugin: spaces up to the next 'softtabstop').
    nvim.input("<Esc>")
    wait_for(lambda: nvim.api.get_mode()["mode"] == "n", 5)
    nvim.command("Dgemma disable")
    assert nvim.exec_lua("return vim.lsp.inline_completion.is_enabled({ bufnr = 0 })") is False
    first = nvim.current.buffer[0]
    nvim.api.win_set_cursor(0, (1, 0))
    nvim.input("A<Tab>")
    assert wait_for(lambda: nvim.current.buffer[0] != first, 5)
    mapped = nvim.current.buffer[0]
    nvim.input("<Esc>")
    wait_for(lambda: nvim.api.get_mode()["mode"] == "n", 5)
    nvim.current.buffer[0] = first
    nvim.command("iunmap <buffer> <Tab>")
    nvim.input("A<Tab>")
    assert wait_for(lambda: nvim.current.buffer[0] != first, 5)
    assert mapped == nvim.current.buffer[0] and mapped.startswith(first) and not mapped[len(first) :].strip()
    nvim.input("<Esc>")
