"""Positions in utf-8 / utf-16 / utf-32 code units <-> string offsets (properties and examples)."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from dgemma_lsp.positions import Encoding, LineIndex, code_units, column_to_index, index_to_column

# Text with the characters that make encodings differ: ASCII, 2- and 3-byte UTF-8, astral
# (surrogate pairs in UTF-16) and every kind of line ending.
ALPHABET = st.sampled_from([*"ab \t(", "é", "€", "中", "😋", "𝕏", "\n", "\r\n", "\r"])
TEXTS = st.lists(ALPHABET, max_size=40).map("".join)
ENCODINGS = st.sampled_from(list(Encoding))


def reference_units(text: str, encoding: Encoding) -> int:
    if encoding is Encoding.UTF8:
        return len(text.encode("utf-8"))
    if encoding is Encoding.UTF16:
        return len(text.encode("utf-16-le")) // 2
    return len(text)


def reference_lines(text: str) -> list[str]:
    """LSP lines: split on \\r\\n, \\r and \\n only."""
    return re.split(r"\r\n|\r|\n", text)


def test_emoji_example_from_the_spec():
    # x="😋" : the closing quote is at 7 (utf-8), 5 (utf-16), 4 (utf-32)
    line = 'x="😋"'
    assert index_to_column(line, 4, Encoding.UTF8) == 7
    assert index_to_column(line, 4, Encoding.UTF16) == 5
    assert index_to_column(line, 4, Encoding.UTF32) == 4
    assert column_to_index(line, 7, Encoding.UTF8) == 4
    assert column_to_index(line, 5, Encoding.UTF16) == 4


def test_column_inside_a_character_rounds_down_and_past_the_end_clamps():
    line = "a😋b"
    assert column_to_index(line, 2, Encoding.UTF16) == 1  # middle of the surrogate pair
    assert column_to_index(line, 3, Encoding.UTF8) == 1  # middle of the 4-byte sequence
    assert column_to_index(line, 99, Encoding.UTF16) == 3


def test_line_index_handles_every_end_of_line():
    index = LineIndex("a\r\nbc\rd\ne")
    assert [index.line_text(i) for i in range(index.line_count)] == ["a", "bc", "d", "e"]
    assert index.offset(1, 1, Encoding.UTF16) == 4
    assert index.offset(9, 0, Encoding.UTF16) == len(index.text)  # beyond the last line: end of document
    assert index.offset(0, 50, Encoding.UTF16) == 1  # beyond the end of the line: before its \r\n


def test_unicode_line_separators_are_not_lsp_line_breaks():
    text = "a\u2028b\x0cc\nd"
    index = LineIndex(text)
    assert index.line_count == 2
    assert index.line_text(0) == "a\u2028b\x0cc"


@given(TEXTS, ENCODINGS)
def test_code_units_match_the_encoders(text, encoding):
    assert code_units(text, encoding) == reference_units(text, encoding)


@given(TEXTS, ENCODINGS, st.data())
def test_offset_position_round_trip(text, encoding, data):
    index = LineIndex(text)
    offset = data.draw(st.integers(0, len(text)))
    # Offsets between \r and \n are not positions; move them to the line end.
    if 0 < offset < len(text) and text[offset - 1] == "\r" and text[offset] == "\n":
        offset -= 1
    line, character = index.position(offset, encoding)
    assert index.offset(line, character, encoding) == offset
    lines = reference_lines(text)
    assert line < len(lines)
    assert character == reference_units(text[index.starts[line] : offset], encoding)


@given(TEXTS, ENCODINGS, st.integers(0, 60), st.integers(0, 200))
def test_any_position_maps_inside_the_document(text, encoding, line, character):
    index = LineIndex(text)
    offset = index.offset(line, character, encoding)
    assert 0 <= offset <= len(text)
    back = index.position(offset, encoding)
    assert index.offset(*back, encoding) == offset


@given(st.lists(st.sampled_from(["a", "é", "😋", "中"]), max_size=20).map("".join), ENCODINGS, st.data())
def test_column_conversions_are_inverse_on_character_boundaries(line, encoding, data):
    index = data.draw(st.integers(0, len(line)))
    assert column_to_index(line, index_to_column(line, index, encoding), encoding) == index


def test_encoding_parse_defaults_to_utf16():
    assert Encoding.parse("utf-8") is Encoding.UTF8
    assert Encoding.parse(None) is Encoding.UTF16
    assert Encoding.parse("latin-1") is Encoding.UTF16
