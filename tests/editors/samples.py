"""The files the editor tests edit (shared by the pytest tests and the VS Code E2E script).

python -m tests.editors.samples FOLDER   # writes FOLDER/typing.py and FOLDER/shapes.py,
                                          # prints the typing cursors as JSON
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

SAMPLE_PY = '''import math


def area(radius):
    """Area of a circle."""
    return math.pi * radius ** 2


def describe(shape):
    name = shape.kind.title()
    size = round(shape.size, 2)
    return f"{name} of size {size}"


def total_area(shapes):
    total = 0
    for shape in shapes:
        total += area(shape.size)
    return total


def largest(shapes):
    best = None
    for shape in shapes:
        if best is None or shape.size > best.size:
            best = shape
    return best


def kinds(shapes):
    result = []
    for shape in shapes:
        result.append(shape.kind)
    return sorted(result)
'''

# An indented `return ...` or assignment: the part kept is group 1 (the keyword or `=`).
CUT = re.compile(r"^(\s+(?:return|[\w.]+ \+?=)) \S.*$")

DESCRIBE_LINE = SAMPLE_PY.split("\n").index("def describe(shape):")  # 0-based


def typing_state(typed: bool = False) -> tuple[str, list[dict]]:
    """SAMPLE_PY as while the user types: an empty indented line opened in `describe` (a
    multi-line hole) and every `return ...` and `name = ...` line cut after its keyword or `=`.
    A cursor is where a user waits for a suggestion: (0-based line, column) plus the text typed
    there first ("" or " "). With `typed`, that text is already in the returned file and each
    cursor is after it. Many cursors, because a model may rightly suggest nothing at some of
    them (and the small embedded model often has nothing good to say)."""
    lines = SAMPLE_PY.split("\n")
    lines.insert(lines.index("    name = shape.kind.title()") + 1, "    ")
    cursors = []
    for i, line in enumerate(lines):
        if line == "    ":
            cursors.append({"line": i, "character": 4, "type": ""})
            continue
        cut = CUT.match(line)
        if cut:
            start = cut.group(1)
            lines[i] = start + (" " if typed else "")
            cursors.append({"line": i, "character": len(start), "type": " "})
    if typed:
        cursors = [
            {"line": c["line"], "character": c["character"] + len(c["type"]), "type": ""} for c in cursors
        ]
    return "\n".join(lines), cursors


if __name__ == "__main__":
    folder = Path(sys.argv[1])
    folder.mkdir(parents=True, exist_ok=True)
    text, cursors = typing_state()
    (folder / "typing.py").write_text(text)
    (folder / "shapes.py").write_text(SAMPLE_PY)
    print(json.dumps({"cursors": cursors, "describe_line": DESCRIBE_LINE}))
