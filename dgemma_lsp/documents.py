"""Open documents: text, incremental changes, the tree-sitter tree and recently edited ranges.

The server keeps its own copy of every open document (instead of pygls' workspace) because it
needs each change as an edit: tree-sitter re-parses incrementally from it, and the context
builder shows the user's recent edits to the model.
"""

from __future__ import annotations

import os
from collections import OrderedDict, deque
from dataclasses import dataclass
from urllib.parse import unquote, urlparse

from dgemma_lsp import syntax
from dgemma_lsp.positions import Encoding, LineIndex

# Documents larger than this are kept but never parsed nor completed (minified bundles, logs).
DEFAULT_MAX_CHARS = 1_000_000
RECENT_EDITS = 16


@dataclass
class EditRange:
    """A range of the current text that the user changed recently."""

    start: int
    end: int


class Document:
    def __init__(
        self,
        uri: str,
        text: str,
        language_id: str | None = None,
        version: int | None = None,
        max_chars: int = DEFAULT_MAX_CHARS,
    ):
        self.uri = uri
        self.language_id = language_id or ""
        self.version = version
        self.path = uri_to_path(uri)
        self.max_chars = max_chars
        self.grammar = syntax.grammar_for(language_id, self.path)
        self.recent_edits: deque[EditRange] = deque(maxlen=RECENT_EDITS)
        self._text = text
        self._index: LineIndex | None = None
        self._syntax: syntax.SyntaxTree | None = None
        self._definitions_cache: tuple[int, dict] | None = None
        self.edit_count = 0
        self._refresh_syntax()

    # --- state --------------------------------------------------------------------------

    @property
    def text(self) -> str:
        return self._text

    @property
    def lines(self) -> LineIndex:
        if self._index is None:
            self._index = LineIndex(self._text)
        return self._index

    @property
    def is_binary(self) -> bool:
        return "\x00" in self._text

    @property
    def is_too_large(self) -> bool:
        return len(self._text) > self.max_chars

    @property
    def completable(self) -> bool:
        """Whether the server may look inside this document at all."""
        return not self.is_too_large and not self.is_binary

    @property
    def syntax(self) -> syntax.SyntaxTree | None:
        return self._syntax

    def tree(self):
        """The up-to-date tree (incremental re-parse), or None for plain text."""
        return self._syntax.tree if self._syntax is not None else None

    def definitions(self) -> dict:
        """Top-level definitions by name (cached per edit)."""
        if self._syntax is None:
            return {}
        if self._definitions_cache is None or self._definitions_cache[0] != self.edit_count:
            tree = self.tree()
            self._definitions_cache = (self.edit_count, syntax.top_level_definitions(tree, self._syntax.spec))
        return self._definitions_cache[1]

    def _refresh_syntax(self) -> None:
        if self.grammar is None or not self.completable:
            self._syntax = None
            return
        if self._syntax is None:
            self._syntax = syntax.SyntaxTree(self.grammar, self._text)
        else:
            self._syntax.reset(self._text)

    # --- positions ----------------------------------------------------------------------

    def offset_at(self, line: int, character: int, encoding: Encoding) -> int:
        return self.lines.offset(line, character, encoding)

    def position_at(self, offset: int, encoding: Encoding) -> tuple[int, int]:
        return self.lines.position(offset, encoding)

    # --- changes ------------------------------------------------------------------------

    def replace_all(self, text: str, version: int | None = None) -> None:
        self._text = text
        self._index = None
        self.version = version
        self.edit_count += 1
        self.recent_edits.clear()
        self._refresh_syntax()

    def apply_change(
        self,
        start: tuple[int, int] | None,
        end: tuple[int, int] | None,
        new_text: str,
        encoding: Encoding,
        version: int | None = None,
    ) -> None:
        """Apply one `TextDocumentContentChangeEvent`: a range edit, or the whole text when start is None."""
        if start is None or end is None:
            self.replace_all(new_text, version)
            return
        begin = self.offset_at(start[0], start[1], encoding)
        finish = self.offset_at(end[0], end[1], encoding)
        if finish < begin:
            begin, finish = finish, begin
        self.splice(begin, finish, new_text)
        self.version = version

    def splice(self, begin: int, finish: int, new_text: str) -> None:
        """Replace text[begin:finish] with new_text (string offsets)."""
        old = self._text
        new = old[:begin] + new_text + old[finish:]
        incremental = self._syntax is not None and len(new) <= self.max_chars and "\x00" not in new_text
        if incremental:
            start_point = _point(old, begin)
            old_end_point = _point(old, finish)
            start_byte = _byte_offset(old, begin)
            old_end_byte = start_byte + len(syntax.encode(old[begin:finish]))
            new_end_byte = start_byte + len(syntax.encode(new_text))
            new_end_point = _point_after(start_point, new_text)
            self._syntax.edit(
                new, start_byte, old_end_byte, new_end_byte, start_point, old_end_point, new_end_point
            )
        self._text = new
        self._index = None
        self.edit_count += 1
        if not incremental:
            # Became (un)parseable, or plain text: start over from the whole text.
            self._syntax = None
            self._refresh_syntax()
        self._track_edit(begin, finish, len(new_text))

    def _track_edit(self, begin: int, finish: int, inserted: int) -> None:
        """Shift the remembered edit ranges through this change and record it (merged with touching ones)."""
        delta = inserted - (finish - begin)
        merged_start, merged_end = begin, begin + inserted
        kept: deque[EditRange] = deque(maxlen=RECENT_EDITS)
        for edit in self.recent_edits:
            if edit.end < begin:
                kept.append(edit)
            elif edit.start > finish:
                kept.append(EditRange(edit.start + delta, edit.end + delta))
            else:
                merged_start = min(merged_start, edit.start)
                merged_end = max(merged_end, edit.end + delta if edit.end > finish else begin + inserted)
        kept.append(EditRange(merged_start, merged_end))
        self.recent_edits = kept


def _byte_offset(text: str, offset: int) -> int:
    prefix = text[:offset]
    return len(prefix) if prefix.isascii() else len(syntax.encode(prefix))


def _point(text: str, offset: int) -> tuple[int, int]:
    """tree-sitter point (row, byte column) of a string offset."""
    row = text.count("\n", 0, offset)
    line_start = text.rfind("\n", 0, offset) + 1
    return row, _byte_offset(text[line_start:offset], offset - line_start)


def _point_after(start: tuple[int, int], inserted: str) -> tuple[int, int]:
    newlines = inserted.count("\n")
    if newlines == 0:
        return start[0], start[1] + len(syntax.encode(inserted))
    tail = inserted[inserted.rfind("\n") + 1 :]
    return start[0] + newlines, len(syntax.encode(tail))


def uri_to_path(uri: str) -> str:
    """A display path for a URI: the file system path for file URIs, the URI otherwise."""
    try:
        parsed = urlparse(uri)
    except ValueError:
        return uri
    if parsed.scheme == "file":
        path = unquote(parsed.path)
        if os.name == "nt" and path.startswith("/") and len(path) > 2 and path[2] == ":":
            path = path[1:]
        return path
    return uri


class DocumentStore:
    """Open documents by URI, most recently used last; bounded so memory stays bounded."""

    def __init__(self, max_documents: int = 500, max_chars: int = DEFAULT_MAX_CHARS):
        self.max_documents = max_documents
        self.max_chars = max_chars
        self._documents: OrderedDict[str, Document] = OrderedDict()

    def __len__(self) -> int:
        return len(self._documents)

    def __iter__(self):
        return iter(list(self._documents.values()))

    def get(self, uri: str) -> Document | None:
        document = self._documents.get(uri)
        if document is not None:
            self._documents.move_to_end(uri)
        return document

    def open(self, uri: str, text: str, language_id: str | None, version: int | None) -> Document:
        document = Document(uri, text, language_id, version, max_chars=self.max_chars)
        self._documents[uri] = document
        self._documents.move_to_end(uri)
        while len(self._documents) > self.max_documents:
            self._documents.popitem(last=False)
        return document

    def close(self, uri: str) -> None:
        self._documents.pop(uri, None)

    def others(self, uri: str) -> list[Document]:
        """Other open documents, most recently used first."""
        return [d for d in reversed(self._documents.values()) if d.uri != uri]
