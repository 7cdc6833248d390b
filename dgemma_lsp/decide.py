"""Whether to suggest at the cursor, and how much: nothing, one line, or a block.

The decision fixes the canvas length, the biggest quality lever of a diffusion model
(peers.md section 6): a short canvas for the rest of a line, a longer one for a block.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from dgemma_lsp import syntax
from dgemma_lsp.settings import Settings
from dgemma_lsp.text import (
    IDENTIFIER_CHAR,
    indent_width,
    leading_ws,
    line_bounds,
    next_nonblank_lines,
    previous_nonblank_line,
    strip_line_comment,
)

Mode = Literal["none", "single", "multi"]

# Only braces open blocks; "(" and "[" at the end of a line get a single line (the arguments).
BRACKET_OPENERS = ("{",)


@dataclass(frozen=True)
class Decision:
    mode: Mode
    reason: str
    canvas_tokens: int = 0
    max_lines: int = 1
    # Lines of a multi-line suggestion stop when their indentation drops below this.
    block_indent: str = ""
    # The cursor ends a block-opener line: the suggestion starts on a new line.
    after_opener: bool = False

    @property
    def suggest(self) -> bool:
        return self.mode != "none"


def none(reason: str) -> Decision:
    return Decision("none", reason)


def opener_of(line: str, grammar: str | None) -> str | None:
    """The block opener that ends `line` (ignoring a trailing comment), if any."""
    marker = syntax.SPECS[grammar].line_comment if grammar else None
    code = strip_line_comment(line, marker).rstrip() if marker else line.rstrip()
    if not code:
        return None
    if code.endswith(BRACKET_OPENERS):
        return code[-1]
    if code.endswith(":") and (grammar == "python" or grammar is None):
        return ":"
    return None


def _block_is_empty(text: str, offset: int, opener_indent: int) -> bool:
    """Whether nothing indented deeper than the opener follows (the block has no body yet)."""
    following = next_nonblank_lines(text, offset, 1)
    if not following:
        return True
    line = following[0]
    width = indent_width(leading_ws(line))
    return width <= opener_indent


def decide(
    text: str,
    offset: int,
    settings: Settings,
    *,
    grammar: str | None = None,
    tree=None,
    canvas_limit: int | None = None,
) -> Decision:
    """Decide for the cursor at string offset `offset` of `text`."""
    if not settings.enabled:
        return none("disabled in settings")
    if not text.strip():
        return none("empty document")
    start, end = line_bounds(text, offset)
    before = text[start:offset]
    after = text[offset:end]

    if after and IDENTIFIER_CHAR.match(after[0]) and not settings.suggest_mid_word:
        return none("cursor inside or before an identifier")

    if tree is not None and grammar is not None:
        where = syntax.is_in_comment_or_string(tree, syntax.SPECS[grammar], len(syntax.encode(text[:offset])))
        if where == "comment" and not settings.suggest_in_comments:
            return none("inside a comment")
        if where == "string" and not settings.suggest_in_strings:
            return none("inside a string")

    limit = canvas_limit or 10**9
    single = Decision(
        "single",
        "text follows the cursor" if after.strip() else "end of a line",
        canvas_tokens=min(settings.single_line_tokens, limit),
        max_lines=1,
        block_indent=leading_ws(before),
    )

    def multi(reason: str, block_indent: str, after_opener: bool) -> Decision:
        return Decision(
            "multi",
            reason,
            canvas_tokens=min(settings.multi_line_tokens, limit),
            max_lines=settings.max_lines,
            block_indent=block_indent,
            after_opener=after_opener,
        )

    if after.strip():
        return single

    if before.strip():
        opener = opener_of(before, grammar)
        if opener is None:
            return single
        indent = leading_ws(before)
        if _block_is_empty(text, offset, indent_width(indent)):
            # The body's indentation is decided when the suggestion is re-indented.
            return multi("after a block opener", indent, after_opener=True)
        return none("block opener of a block that already has a body")

    # A blank line: an empty block right after its opener gets a block.
    previous = previous_nonblank_line(text, offset)
    if previous is not None and opener_of(previous, grammar) is not None:
        opener_indent = indent_width(leading_ws(previous))
        if indent_width(before) > opener_indent and _block_is_empty(text, offset, opener_indent):
            return multi("empty block", before, after_opener=False)
    return Decision(
        "single",
        "blank line",
        canvas_tokens=min(settings.single_line_tokens, limit),
        max_lines=1,
        block_indent=before,
    )
