"""LSP positions <-> string offsets, in the position encoding negotiated with the client.

LSP counts lines by "\n", "\r\n" and "\r" (never by str.splitlines' other separators) and
columns in utf-16 code units by default, or utf-8 / utf-32 when negotiated (LSP 3.17
`positionEncoding`). Python strings index by code point (utf-32). Positions past the end of a
line or of the document are clamped, never an error: clients send them while typing.
"""

from __future__ import annotations

import bisect
import re
from enum import Enum

_EOL = re.compile(r"\r\n|\r|\n")


class Encoding(str, Enum):
    UTF8 = "utf-8"
    UTF16 = "utf-16"
    UTF32 = "utf-32"

    @classmethod
    def parse(cls, value: object) -> Encoding:
        """The encoding named by an LSP `PositionEncodingKind`; utf-16 (the LSP default) otherwise."""
        text = str(getattr(value, "value", value)).lower()
        for encoding in cls:
            if encoding.value == text:
                return encoding
        return cls.UTF16


def code_units(text: str, encoding: Encoding) -> int:
    """Length of `text` in the encoding's code units."""
    if encoding is Encoding.UTF32 or text.isascii():
        return len(text)
    if encoding is Encoding.UTF16:
        return len(text.encode("utf-16-le", "surrogatepass")) // 2
    return len(text.encode("utf-8", "surrogatepass"))


def _unit_width(char: str, encoding: Encoding) -> int:
    code = ord(char)
    if encoding is Encoding.UTF16:
        return 2 if code > 0xFFFF else 1
    if encoding is Encoding.UTF8:
        return 1 if code < 0x80 else 2 if code < 0x800 else 3 if code < 0x10000 else 4
    return 1


def column_to_index(line: str, character: int, encoding: Encoding) -> int:
    """Index into `line` (no end-of-line characters) of a client column.

    A column beyond the end clamps to the end; a column inside a multi-unit character rounds
    down to that character's start.
    """
    if character <= 0:
        return 0
    if encoding is Encoding.UTF32 or line.isascii():
        return min(character, len(line))
    units = 0
    for index, char in enumerate(line):
        units += _unit_width(char, encoding)
        if units > character:
            return index
        if units == character:
            return index + 1
    return len(line)


def index_to_column(line: str, index: int, encoding: Encoding) -> int:
    """Client column of the index `index` into `line`."""
    return code_units(line[: max(0, index)], encoding)


def line_starts(text: str) -> list[int]:
    """Offsets at which each line starts (line 0 starts at 0)."""
    return [0, *(match.end() for match in _EOL.finditer(text))]


class LineIndex:
    """Line starts of one text, for converting positions in both directions."""

    def __init__(self, text: str):
        self.text = text
        self.starts = line_starts(text)

    @property
    def line_count(self) -> int:
        return len(self.starts)

    def line_end(self, line: int) -> int:
        """Offset of the end of `line`, before its end-of-line characters."""
        if line + 1 >= len(self.starts):
            return len(self.text)
        end = self.starts[line + 1]
        if self.text[end - 2 : end] == "\r\n":
            return end - 2
        return end - 1

    def line_text(self, line: int) -> str:
        return self.text[self.starts[line] : self.line_end(line)]

    def offset(self, line: int, character: int, encoding: Encoding) -> int:
        """Offset of an LSP position, clamped to the document."""
        if line < 0:
            return 0
        if line >= len(self.starts):
            return len(self.text)
        start = self.starts[line]
        return start + column_to_index(self.line_text(line), character, encoding)

    def position(self, offset: int, encoding: Encoding) -> tuple[int, int]:
        """LSP (line, character) of an offset, clamped to the document."""
        offset = max(0, min(offset, len(self.text)))
        line = bisect.bisect_right(self.starts, offset) - 1
        start = self.starts[line]
        # An offset between "\r" and "\n" belongs to the end of the line.
        end = self.line_end(line)
        return line, index_to_column(self.text[start : min(offset, end)], len(self.text), encoding)

    def line_of(self, offset: int) -> int:
        return bisect.bisect_right(self.starts, max(0, min(offset, len(self.text)))) - 1
