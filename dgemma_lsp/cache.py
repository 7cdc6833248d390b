"""Typing-through cache: while the user types the characters a suggestion predicted, the rest
of that suggestion is served without calling the model (peers.md section 5, item 6).

An entry remembers the text before and after the cursor when the suggestion was made. A new
request hits when the text after the cursor is unchanged, the text before it only grew, and the
grown part is a prefix of the suggestion. Exact repeats (nothing typed) hit too, including
"no suggestion" answers, so an editor asking twice does not cost two model calls.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass


@dataclass
class CacheEntry:
    uri: str
    before: str
    after: str
    text: str | None  # None: the model had nothing worth showing here
    replace_after: int = 0


@dataclass
class CacheHit:
    text: str | None
    replace_after: int
    typed: str


class TypingCache:
    def __init__(self, max_entries: int = 64, max_chars: int = 16_000_000, per_document: int = 8):
        self.max_entries = max_entries
        self.max_chars = max_chars
        self.per_document = per_document
        self._entries: OrderedDict[int, CacheEntry] = OrderedDict()
        self._next_key = 0
        self._chars = 0
        self.hits = 0
        self.misses = 0
        # put() runs on the model's worker thread, get() on the server's event loop.
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def chars(self) -> int:
        return self._chars

    def put(self, uri: str, before: str, after: str, text: str | None, replace_after: int = 0) -> None:
        with self._lock:
            self._put(uri, before, after, text, replace_after)

    def _put(self, uri: str, before: str, after: str, text: str | None, replace_after: int) -> None:
        for key, entry in list(self._entries.items()):
            if entry.uri == uri and entry.before == before and entry.after == after:
                self._drop(key)
        entry = CacheEntry(uri, before, after, text, replace_after)
        self._entries[self._next_key] = entry
        self._next_key += 1
        self._chars += len(before) + len(after)
        same_document = [key for key, e in self._entries.items() if e.uri == uri]
        for key in same_document[: max(0, len(same_document) - self.per_document)]:
            self._drop(key)
        while self._entries and (len(self._entries) > self.max_entries or self._chars > self.max_chars):
            self._drop(next(iter(self._entries)))

    def get(self, uri: str, before: str, after: str) -> CacheHit | None:
        with self._lock:
            return self._get(uri, before, after)

    def _get(self, uri: str, before: str, after: str) -> CacheHit | None:
        for key in reversed(self._entries):
            entry = self._entries[key]
            if entry.uri != uri or entry.after != after or len(before) < len(entry.before):
                continue
            if not before.startswith(entry.before):
                continue
            typed = before[len(entry.before) :]
            if not typed:
                self._entries.move_to_end(key)
                self.hits += 1
                return CacheHit(entry.text, entry.replace_after, typed)
            if entry.text is None or len(typed) >= len(entry.text) or not entry.text.startswith(typed):
                continue
            self._entries.move_to_end(key)
            self.hits += 1
            return CacheHit(entry.text[len(typed) :], entry.replace_after, typed)
        self.misses += 1
        return None

    def forget(self, uri: str) -> None:
        with self._lock:
            for key in [k for k, e in self._entries.items() if e.uri == uri]:
                self._drop(key)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._chars = 0

    def _drop(self, key: int) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._chars -= len(entry.before) + len(entry.after)
