"""editors/emacs/dgemma.el in a real Emacs (eglot, `emacs --batch`) against the real `dgemma-lsp`:
eglot picks the dgemma server class, the settings reach the server, completion-at-point inserts
the server's suggestion, `dgemma-toggle` turns suggestions off, a refactor action applies through
eglot's command path and the file still parses. Skipped without Emacs and eglot
(editors/tests/install-tools.sh emacs)."""

from __future__ import annotations

import ast
import json
import shutil
import subprocess

import pytest

from tests.editors.conftest import HERE, REPO, editor_env, parse_python, server_command
from tests.editors.samples import DESCRIBE_LINE, SAMPLE_PY, typing_state

pytestmark = [pytest.mark.editor, pytest.mark.slow, pytest.mark.timeout(900)]


def emacs_with_eglot() -> str | None:
    emacs = shutil.which("emacs")
    if emacs is None:
        return None
    probe = subprocess.run(
        [emacs, "--batch", "--eval", "(require 'eglot)"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return emacs if probe.returncode == 0 else None


def test_dgemma_el_in_emacs_eglot(tmp_path, test_model):
    emacs = emacs_with_eglot()
    if emacs is None:
        pytest.skip("no Emacs with eglot (editors/tests/install-tools.sh emacs)")
    text, cursors = typing_state()
    path = tmp_path / "shapes.py"
    path.write_text(text)
    report_path = tmp_path / "report.json"
    env = editor_env(tmp_path)
    env.update(
        HOME=str(tmp_path),
        DGEMMA_TEST_CONFIG=str(REPO / "editors" / "emacs" / "dgemma.el"),
        DGEMMA_TEST_CMD=json.dumps(server_command()),
        DGEMMA_TEST_SETTINGS=json.dumps(test_model.settings),
        DGEMMA_TEST_FILE=str(path),
        DGEMMA_TEST_CURSORS=json.dumps(cursors),
        DGEMMA_TEST_ACTION=json.dumps(
            {"text": SAMPLE_PY, "line": DESCRIBE_LINE, "character": 4, "kind": "refactor.rewrite.docstring"}
        ),
        DGEMMA_TEST_REPORT=str(report_path),
    )
    run = subprocess.run(
        [emacs, "--batch", "-l", str(HERE / "emacs" / "session.el")],
        env=env,
        capture_output=True,
        text=True,
        timeout=800,
        cwd=tmp_path,
    )
    assert report_path.exists(), f"no report (exit {run.returncode}):\n{run.stdout}\n{run.stderr[-3000:]}"
    report = json.loads(report_path.read_text())
    context = f"model {test_model.name}: {json.dumps(report)[:4000]}\n{run.stderr[-2000:]}"
    assert run.returncode == 0 and "error" not in report, context

    # eglot chose the dgemma class from eglot-server-programs, and the settings reached the server.
    assert report["class"] == "eglot-dgemma" and report["connected"], context
    status = report["status"]
    assert status["state"] == "ready", context
    if "model" in test_model.settings:
        assert test_model.settings["model"] in status["backend"], (
            "initializationOptions/configuration ignored"
        )
    assert report["status_notification"]["state"] == "ready", "dgemma/status handled by dgemma.el"

    # completion-at-point inserted the server's item (its textEdit) at the cursor.
    accepted = report.get("accepted")
    assert accepted, f"no completion item at any cursor: {report['completion']}"
    edit = accepted["item"]["textEdit"]
    line = accepted["before"]
    assert accepted["changed"], context
    start, end = edit["range"]["start"]["character"], edit["range"]["end"]["character"]
    expected_first_line = (line[:start] + edit["newText"] + line[end:]).split("\n")[0]
    assert accepted["after"] == expected_first_line, context

    assert report["items_when_disabled"] == 0, "dgemma-toggle reached the server"

    # The docstring action applied through workspace/executeCommand + workspace/applyEdit.
    assert {
        "title": "dgemma: write a docstring for describe",
        "kind": "refactor.rewrite.docstring",
    } in report["actions_listed"], context
    assert report["action_applied"], context
    after = path.read_text()
    tree = parse_python(after)
    describe = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "describe")
    assert ast.get_docstring(describe), after
    kept = after.split("\n")
    del kept[describe.body[0].lineno - 1 : describe.body[0].end_lineno]
    assert "\n".join(kept) == SAMPLE_PY
