"""The files the editor tests edit (shared by the pytest tests and the VS Code E2E script).

python -m tests.editors.samples FOLDER   # writes FOLDER/typing.py and FOLDER/shapes.py,
                                          # prints the typing cursors as JSON
"""

from __future__ import annotations

import json
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
'''

DESCRIBE_LINE = SAMPLE_PY.split("\n").index("def describe(shape):")  # 0-based


def typing_state() -> tuple[str, list[dict]]:
    """SAMPLE_PY as while the user types in `describe`: the lines `size =` and `return` cut
    short; a cursor is the end of such a line (0-based line, column) plus the text the user
    types there before waiting for a suggestion."""
    lines = SAMPLE_PY.split("\n")
    cursors = []
    for i, line in enumerate(lines):
        for start in ("    size =", "    return"):
            if line.startswith(start + " "):
                lines[i] = start
                cursors.append({"line": i, "character": len(start), "type": " "})
    return "\n".join(lines), cursors


if __name__ == "__main__":
    folder = Path(sys.argv[1])
    folder.mkdir(parents=True, exist_ok=True)
    text, cursors = typing_state()
    (folder / "typing.py").write_text(text)
    (folder / "shapes.py").write_text(SAMPLE_PY)
    print(json.dumps({"cursors": cursors, "describe_line": DESCRIBE_LINE}))
