"""The context of a fill-in-the-middle request, under a token budget.

Priority order (issue 3, "Context"): the prefix and suffix windows; the signatures of the
enclosing scopes; the imports; definitions of names used near the cursor, from this file and
the other open documents; recently edited ranges. Only what the windows do not already show
becomes a snippet.

The engine's prompt puts the snippets, then the suffix, then the prefix (engine/prompting.py).
Everything here is chosen so that this start stays byte-identical while the user types on a
line: the suffix does not change, the prefix window starts on a line quantised to
`WINDOW_QUANTUM`, and the names that select definitions exclude the word being typed. The
engine can then reuse its prompt KV cache for all but the last few tokens.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from dgemma_lsp import syntax
from dgemma_lsp.documents import Document
from engine.requests import ContextSnippet

WINDOW_QUANTUM = 16  # prefix windows start on a multiple of this many lines
PREFIX_SHARE = 0.6
SUFFIX_SHARE = 0.2
NEAR_LINES = 12  # lines around the cursor whose names select definitions
MAX_DEFINITIONS = 8
MAX_SNIPPET_LINES = 24
MAX_EDIT_SNIPPETS = 3
SNIPPET_OVERHEAD_TOKENS = 4  # separator and path line of each snippet


class TokenCounter:
    """Counts tokens with the backend's tokenizer, caching per line (bounded)."""

    def __init__(self, count: Callable[[str], int] | None = None, max_entries: int = 50_000):
        self._count = count or estimate_tokens
        self._cache: dict[str, int] = {}
        self.max_entries = max_entries

    def __call__(self, text: str) -> int:
        if not text:
            return 0
        cached = self._cache.get(text)
        if cached is not None:
            return cached
        try:
            value = int(self._count(text))
        except Exception:
            value = estimate_tokens(text)
        if len(self._cache) >= self.max_entries:
            self._cache.clear()
        if len(text) <= 400:
            self._cache[text] = value
        return value

    def __len__(self) -> int:
        return len(self._cache)


def prefill_cap(prefill_ms: dict[int, float] | None, budget_ms: float) -> int | None:
    """The context budget a device affords, from measured cold-prefill times by prompt length:
    the longest measured length whose prefill fits `budget_ms`, else the shortest measured one.
    None (no cap) when nothing was measured, when there is no time budget, or when the longest
    measured length fits."""
    if not prefill_ms or budget_ms <= 0:
        return None
    fits = [length for length, ms in prefill_ms.items() if ms <= budget_ms]
    if not fits:
        return min(prefill_ms)
    best = max(fits)
    return None if best >= max(prefill_ms) else best


def estimate_tokens(text: str) -> int:
    """A tokenizer-free estimate (about 3.5 characters per token for code)."""
    return max(1, math.ceil(len(text) / 3.5)) if text else 0


@dataclass
class PromptContext:
    prefix: str
    suffix: str
    snippets: list[ContextSnippet] = field(default_factory=list)
    prefix_start: int = 0  # document offset where the prefix window starts
    suffix_end: int = 0  # document offset where the suffix window ends
    tokens: int = 0  # estimated prompt tokens (windows + snippets)


def display_path(document: Document, root: str | None = None) -> str:
    path = document.path
    if root and path.startswith(root.rstrip("/") + "/"):
        return path[len(root.rstrip("/")) + 1 :]
    return path


def build_context(
    document: Document,
    offset: int,
    budget: int,
    count: TokenCounter,
    others: list[Document] | None = None,
    root: str | None = None,
) -> PromptContext:
    text = document.text
    lines = document.lines
    cursor_line = lines.line_of(offset)
    line_start = lines.starts[cursor_line]

    # 1. Prefix window: the cursor line's start, then whole lines upwards.
    prefix_budget = int(budget * PREFIX_SHARE)
    used = count(text[line_start:offset])
    first = cursor_line
    while first > 0:
        cost = count(text[lines.starts[first - 1] : lines.starts[first]])
        if used + cost > prefix_budget:
            break
        used += cost
        first -= 1
    if first > 0:
        first = min(cursor_line, math.ceil(first / WINDOW_QUANTUM) * WINDOW_QUANTUM)
        used = count(text[lines.starts[first] : line_start]) if first < cursor_line else 0
        used += count(text[line_start:offset])
    prefix_start = lines.starts[first]
    prefix = text[prefix_start:offset]
    prefix_tokens = used

    # 2. Suffix window: the rest of the cursor line, then whole lines downwards.
    suffix_budget = int(budget * SUFFIX_SHARE) + max(0, prefix_budget - prefix_tokens) // 2
    line_end = lines.starts[cursor_line + 1] if cursor_line + 1 < lines.line_count else len(text)
    used = count(text[offset:line_end])
    last = cursor_line + 1
    while last < lines.line_count:
        end = lines.starts[last + 1] if last + 1 < lines.line_count else len(text)
        cost = count(text[lines.starts[last] : end])
        if used + cost > suffix_budget:
            break
        used += cost
        last += 1
    suffix_end = lines.starts[last] if last < lines.line_count else len(text)
    suffix_end = max(suffix_end, min(line_end, len(text)))
    suffix = text[offset:suffix_end]
    suffix_tokens = used

    context = PromptContext(prefix, suffix, [], prefix_start, suffix_end, prefix_tokens + suffix_tokens)
    remaining = budget - context.tokens
    if remaining <= SNIPPET_OVERHEAD_TOKENS:
        return context

    # 3. Snippets in priority order; each is taken if it fits.
    path = display_path(document, root)
    chosen: list[ContextSnippet] = []

    def take(snippet: ContextSnippet | None) -> None:
        nonlocal remaining
        if snippet is None or not snippet.text.strip():
            return
        cost = count(snippet.text) + count(snippet.path) + SNIPPET_OVERHEAD_TOKENS
        if cost <= remaining:
            chosen.append(snippet)
            remaining -= cost

    tree = document.tree() if document.syntax is not None else None
    if tree is not None:
        spec = document.syntax.spec
        source = document.syntax.source
        byte = len(syntax.encode(text[:offset]))
        prefix_start_byte = len(syntax.encode(text[:prefix_start]))
        suffix_end_byte = byte + len(syntax.encode(suffix))
        take(_scope_snippet(tree, spec, source, byte, prefix_start_byte, path))
        take(_imports_snippet(tree, spec, source, prefix_start_byte, path))
        for snippet in _definition_snippets(
            document, tree, spec, source, offset, byte, prefix_start_byte, suffix_end_byte, others or [], root
        ):
            take(snippet)
    for snippet in _recent_edit_snippets(document, prefix_start, suffix_end, others or [], root):
        take(snippet)

    context.tokens = budget - remaining
    # The engine lays snippets out in list order, lowest priority first (nearest the hole last).
    context.snippets = list(reversed(chosen))
    return context


def _line_text_of(source: bytes, node) -> str:
    """The node's text with the indentation of its first line restored."""
    line_start = source.rfind(b"\n", 0, node.start_byte) + 1
    return source[line_start : node.end_byte].decode("utf-8", "replace")


def _clip_lines(text: str, max_lines: int = MAX_SNIPPET_LINES) -> str:
    lines = text.split("\n")
    return text if len(lines) <= max_lines else "\n".join(lines[:max_lines])


def _scope_snippet(
    tree, spec, source: bytes, byte: int, window_start: int, path: str
) -> ContextSnippet | None:
    chain = syntax.enclosing(tree, byte, spec.functions | spec.classes)
    headers = []
    for node in chain:
        if node.start_byte >= window_start:
            break
        line_start = source.rfind(b"\n", 0, node.start_byte) + 1
        indent = source[line_start : node.start_byte].decode("utf-8", "replace")
        indent = indent if not indent.strip() else ""
        headers.append(indent + syntax.signature(node, source))
    if not headers:
        return None
    return ContextSnippet(path=path, text="\n".join(headers), kind="scope")


def _imports_snippet(tree, spec, source: bytes, window_start: int, path: str) -> ContextSnippet | None:
    texts = [
        source[node.start_byte : node.end_byte].decode("utf-8", "replace")
        for node in syntax.import_nodes(tree, spec)
        if node.end_byte <= window_start
    ]
    if not texts:
        return None
    return ContextSnippet(path=path, text=_clip_lines("\n".join(texts), 40), kind="imports")


def _names_near(document: Document, tree, spec, offset: int, byte: int) -> list[str]:
    """Names used near the cursor, nearest first, without the word being typed."""
    lines = document.lines
    cursor_line = lines.line_of(offset)
    first = max(0, cursor_line - NEAR_LINES)
    last = min(lines.line_count - 1, cursor_line + NEAR_LINES)
    start_byte = len(syntax.encode(document.text[: lines.starts[first]]))
    end_offset = lines.line_end(last)
    end_byte = byte + len(syntax.encode(document.text[offset:end_offset]))
    found: dict[str, int] = {}
    for name, start, end in syntax.identifiers_in(tree, spec, start_byte, end_byte):
        if start <= byte <= end:
            continue  # the identifier being typed changes every keystroke
        distance = min(abs(start - byte), abs(end - byte))
        if name not in found or distance < found[name]:
            found[name] = distance
    return sorted(found, key=lambda name: (found[name], name))


def _definition_snippets(
    document: Document,
    tree,
    spec,
    source: bytes,
    offset: int,
    byte: int,
    window_start: int,
    window_end: int,
    others: list[Document],
    root: str | None,
) -> list[ContextSnippet]:
    names = _names_near(document, tree, spec, offset, byte)
    if not names:
        return []
    enclosing = {id(node) for node in syntax.enclosing(tree, byte, spec.functions | spec.classes)}
    local = document.definitions()
    snippets: list[ContextSnippet] = []
    seen: set[str] = set()
    path = display_path(document, root)
    candidates = [d for d in others if d.syntax is not None and d.completable]
    for name in names:
        if len(snippets) >= MAX_DEFINITIONS:
            break
        node = local.get(name)
        if node is not None:
            if id(node) in enclosing or (node.end_byte > window_start and node.start_byte < window_end):
                continue  # already visible in the windows
            text = _clip_lines(_line_text_of(source, node))
            if text not in seen:
                seen.add(text)
                snippets.append(ContextSnippet(path=path, text=text, kind="definition"))
            continue
        for other in candidates:
            other_node = other.definitions().get(name)
            if other_node is None:
                continue
            text = _clip_lines(_line_text_of(other.syntax.source, other_node))
            if text not in seen:
                seen.add(text)
                snippets.append(ContextSnippet(path=display_path(other, root), text=text, kind="definition"))
            break
    return snippets


def _recent_edit_snippets(
    document: Document, window_start: int, window_end: int, others: list[Document], root: str | None
) -> list[ContextSnippet]:
    snippets = []
    sources = [(document, window_start, window_end)] + [(d, 0, 0) for d in others[:2] if d.completable]
    for doc, start, end in sources:
        text = doc.text
        for edit in reversed(doc.recent_edits):
            if len(snippets) >= MAX_EDIT_SNIPPETS:
                return snippets
            if edit.end >= start and edit.start <= end and doc is document:
                continue
            first = doc.lines.line_of(edit.start)
            last = doc.lines.line_of(min(edit.end, len(text)))
            lo = doc.lines.starts[max(0, first - 1)]
            hi = doc.lines.line_end(min(doc.lines.line_count - 1, last + 1))
            body = _clip_lines(text[lo:hi], 15)
            if body.strip():
                snippets.append(ContextSnippet(path=display_path(doc, root), text=body, kind="recent_edit"))
    return snippets
