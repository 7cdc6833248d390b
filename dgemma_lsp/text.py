"""Small text helpers shared by the decision, context and post-processing modules."""

from __future__ import annotations

import re
from collections import Counter

TAB_SIZE = 4
IDENTIFIER_CHAR = re.compile(r"[\w$]")
CLOSERS = {")": "(", "]": "[", "}": "{"}
OPENERS = {"(": ")", "[": "]", "{": "}"}
QUOTES = ("'", '"', "`")


def leading_ws(line: str) -> str:
    return line[: len(line) - len(line.lstrip(" \t"))]


def indent_width(ws: str, tab_size: int = TAB_SIZE) -> int:
    width = 0
    for char in ws:
        width = (width // tab_size + 1) * tab_size if char == "\t" else width + 1
    return width


def split_lines(text: str) -> list[str]:
    """Lines split on \\n (\\r\\n handled by the caller normalising first)."""
    return text.split("\n")


def detect_indent_unit(
    text: str, sample_lines: int = 2000, default: str | None = " " * TAB_SIZE
) -> str | None:
    """The document's indentation unit: a tab, or 2/4/8... spaces (`default` when nothing tells)."""
    tabs = spaces = 0
    deltas: Counter[int] = Counter()
    previous = 0
    for count, line in enumerate(text.split("\n")):
        if count >= sample_lines:
            break
        if not line.strip():
            continue
        ws = leading_ws(line)
        if ws.startswith("\t"):
            tabs += 1
        elif ws.startswith(" "):
            spaces += 1
        width = indent_width(ws)
        if width > previous and not ws.startswith("\t"):
            deltas[width - previous] += 1
        previous = width
    if tabs > spaces:
        return "\t"
    if deltas:
        # Most common increase among plausible units.
        for delta, _ in deltas.most_common():
            if 1 < delta <= 8:
                return " " * delta
    return default


def line_bounds(text: str, offset: int) -> tuple[int, int]:
    """(start, end) of the line holding `offset`; end is before the line's end-of-line characters."""
    start = max(text.rfind("\n", 0, offset), text.rfind("\r", 0, offset)) + 1
    end_n = text.find("\n", offset)
    end_r = text.find("\r", offset)
    ends = [e for e in (end_n, end_r) if e != -1]
    return start, min(ends) if ends else len(text)


def next_nonblank_lines(text: str, offset: int, count: int) -> list[str]:
    """The next `count` non-blank lines after the line holding `offset`."""
    _, end = line_bounds(text, offset)
    found = []
    for line in text[end:].replace("\r\n", "\n").split("\n")[1:]:
        if line.strip():
            found.append(line)
            if len(found) == count:
                break
    return found


def previous_nonblank_line(text: str, offset: int) -> str | None:
    start, _ = line_bounds(text, offset)
    for line in reversed(text[:start].replace("\r\n", "\n").split("\n")):
        if line.strip():
            return line
    return None


def strip_line_comment(line: str, marker: str) -> str:
    """The line without a trailing comment (a rough cut that ignores comment markers in strings
    only when a quote precedes them)."""
    index = line.find(marker)
    while index != -1:
        before = line[:index]
        if before.count('"') % 2 == 0 and before.count("'") % 2 == 0:
            return before
        index = line.find(marker, index + 1)
    return line


def eol_of(text: str) -> str:
    """The document's end-of-line sequence."""
    index = text.find("\n")
    if index > 0 and text[index - 1] == "\r":
        return "\r\n"
    if index == -1 and "\r" in text:
        return "\r"
    return "\n"
