"""`dgemma suggest` asks the real language server at a cursor and prints the suggestion in place."""

from __future__ import annotations

import pytest
from lsprotocol import types

from dgemma_lsp.suggest import EXAMPLE, EXAMPLE_CURSOR, cursor_of, render
from engine.cli import main

pytestmark = pytest.mark.timeout(120)


def test_cursor_defaults_to_the_end_of_the_last_line_and_checks_bounds():
    assert cursor_of("a = 1\nb = 2\n", None, None) == (1, 5)
    assert cursor_of("a = 1\nb = 2", 1, 3) == (0, 2)
    with pytest.raises(ValueError, match="line 9 is outside"):
        cursor_of("a = 1\n", 9, None)
    with pytest.raises(ValueError, match="column 20 is outside"):
        cursor_of("a = 1\n", 1, 20)


def test_the_example_cursor_is_in_the_empty_body():
    line, column = EXAMPLE_CURSOR
    lines = EXAMPLE.split("\n")
    assert lines[line - 1].strip() == "def circumference(self):" and lines[line] == " " * column


def test_render_marks_the_suggested_lines_and_drops_a_replaced_bracket():
    lines = ["def f(x):", "    return max(", "", "y = 1"]
    end = types.Position(line=1, character=16)
    shown = render(lines, 1, 15, "x, 0)", types.Range(start=types.Position(line=1, character=15), end=end))
    assert shown.split("\n") == ["  def f(x):", ">     return max(x, 0)", "  ", "  y = 1"]
    multi = render(["def f():", "    "], 1, 4, "a = 1\n    return a")
    assert multi.split("\n") == ["  def f():", ">     a = 1", ">     return a"]


def test_suggest_runs_the_server_on_a_file(lsp_checkpoint, tmp_path, capsys):
    source = tmp_path / "shapes.py"
    source.write_text("def area(r):\n    pi = 3.14159\n    \n")
    code = main(
        [
            "suggest",
            str(source),
            "--line",
            "3",
            "--model",
            str(lsp_checkpoint),
            "--device",
            "cpu",
            "--steps",
            "2",
        ]
    )
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "ready in" in printed.out and f"{source}:3:5, answered in" in printed.out


def test_suggest_explains_a_bad_position(tmp_path, capsys):
    source = tmp_path / "a.py"
    source.write_text("x = 1\n")
    assert main(["suggest", str(source), "--line", "7"]) == 1
    assert "line 7 is outside the file" in capsys.readouterr().err
