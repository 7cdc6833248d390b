"""Documents: incremental changes in every position encoding, incremental re-parse, recent edits."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from dgemma_lsp import syntax
from dgemma_lsp.documents import Document, DocumentStore, uri_to_path
from dgemma_lsp.positions import Encoding

PY = "import os\n\n\ndef f(x):\n    return x + 1\n\n\nclass A:\n    def m(self):\n        pass\n"
PIECES = ["x", "(", ")", ":", "\n", "    ", "def g():", "é", "😋", "\r\n", "'", "return 1", "if x:\n    y"]


def reference_offset(text: str, line: int, character: int, encoding: Encoding) -> int:
    """Offset of an LSP position computed the slow, obvious way."""
    starts = [0] + [m.end() for m in re.finditer(r"\r\n|\r|\n", text)]
    if line >= len(starts):
        return len(text)
    start = starts[line]
    end = starts[line + 1] if line + 1 < len(starts) else len(text)
    content = text[start:end].rstrip("\r\n")
    units = 0
    for i, ch in enumerate(content):
        width = {Encoding.UTF8: len(ch.encode()), Encoding.UTF16: len(ch.encode("utf-16-le")) // 2}.get(
            encoding, 1
        )
        if units + width > character:
            return start + i
        units += width
    return start + len(content)


def dump(node) -> list:
    """Every node with its byte range and point range (positions matter, not just the shape)."""
    return [
        (n.type, n.start_byte, n.end_byte, tuple(n.start_point), tuple(n.end_point))
        for n in syntax.walk(node)
    ]


@st.composite
def edit_sequences(draw):
    edits = []
    for _ in range(draw(st.integers(1, 12))):
        edits.append(
            (
                draw(st.integers(0, 14)),
                draw(st.integers(0, 20)),
                draw(st.integers(0, 14)),
                draw(st.integers(0, 20)),
                draw(st.lists(st.sampled_from(PIECES), max_size=3).map("".join)),
            )
        )
    return edits


@settings(max_examples=150, deadline=None)
@given(edit_sequences(), st.sampled_from(list(Encoding)))
def test_random_edits_match_a_reference_and_the_incremental_tree_matches_a_fresh_parse(edits, encoding):
    document = Document("file:///t.py", PY, "python", 1)
    expected = PY
    for version, (l1, c1, l2, c2, new) in enumerate(edits, start=2):
        a = reference_offset(expected, l1, c1, encoding)
        b = reference_offset(expected, l2, c2, encoding)
        if b < a:
            a, b = b, a
        expected = expected[:a] + new + expected[b:]
        document.apply_change((l1, c1), (l2, c2), new, encoding, version)
        assert document.text == expected
        assert document.version == version
    incremental = document.tree()
    fresh = syntax.parse("python", syntax.encode(expected))
    assert dump(incremental.root_node) == dump(fresh.root_node)
    assert incremental.root_node.end_byte == len(syntax.encode(expected))
    for edit in document.recent_edits:
        assert 0 <= edit.start <= edit.end <= len(expected)


def test_whole_text_change_replaces_and_reparses():
    document = Document("file:///t.rs", "fn main() {}\n", "rust", 1)
    document.apply_change(None, None, "fn other() { let x = 1; }\n", Encoding.UTF16, 2)
    assert "function_item" in str(document.tree().root_node)
    assert syntax.name_of(document.tree().root_node.children[0]) == "other"


def test_plain_text_for_unknown_languages():
    document = Document("file:///notes.txt", "hello\n", "plaintext", 1)
    assert document.grammar is None and document.tree() is None
    document.apply_change((0, 5), (0, 5), " world", Encoding.UTF16, 2)
    assert document.text == "hello world\n"


def test_grammar_from_the_extension_when_the_language_id_is_unknown():
    assert Document("file:///a/b.go", "package x\n", "", 1).grammar == "go"
    assert Document("file:///a/b.tsx", "", "typescriptreact", 1).grammar == "typescriptreact"
    assert Document("file:///a/b.h", "", None, 1).grammar == "c"


def test_binary_and_huge_documents_are_not_parsed():
    binary = Document("file:///b.py", "x = 1\x00\x01", "python", 1)
    assert binary.is_binary and not binary.completable and binary.tree() is None
    huge = Document("file:///h.py", "x = 1\n" * 50, "python", 1, max_chars=100)
    assert huge.is_too_large and huge.tree() is None
    # Shrinking below the limit makes it parseable again.
    huge.apply_change((0, 0), (49, 0), "", Encoding.UTF16, 2)
    assert huge.completable and huge.tree() is not None


def test_recent_edits_merge_while_typing_and_shift_with_later_edits():
    document = Document("file:///t.py", "a = 1\nb = 2\nc = 3\n", "python", 1)
    for i, ch in enumerate("xyz"):
        document.apply_change((1, 5 + i), (1, 5 + i), ch, Encoding.UTF16, i + 2)
    assert len(document.recent_edits) == 1
    edit = document.recent_edits[-1]
    assert document.text[edit.start : edit.end] == "xyz"
    document.apply_change((0, 0), (0, 0), "# top\n", Encoding.UTF16, 9)
    first = document.recent_edits[0]
    assert document.text[first.start : first.end] == "xyz"
    assert document.text[document.recent_edits[-1].start : document.recent_edits[-1].end] == "# top\n"


def test_store_is_bounded_and_lists_others_most_recent_first():
    store = DocumentStore(max_documents=3)
    for i in range(5):
        store.open(f"file:///{i}.py", "", "python", 1)
    assert len(store) == 3
    assert store.get("file:///0.py") is None
    store.get("file:///2.py")
    assert [d.uri for d in store.others("file:///3.py")] == ["file:///2.py", "file:///4.py"]


def test_uri_to_path():
    assert uri_to_path("file:///home/me/a%20b.py") == "/home/me/a b.py"
    assert uri_to_path("untitled:Untitled-1") == "untitled:Untitled-1"
