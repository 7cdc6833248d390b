"""Turn the model's raw hole text into a suggestion that is safe to show, or into nothing.

Each rule is a small function from text to text (peers.md sections 3 and 5):
strip special tokens; keep one line or one block; stop at the end of the syntactic block or
when the indentation drops below the cursor's; drop text that repeats the suffix or the next
lines; re-indent to the document's indentation; replace brackets and quotes the editor has
already closed instead of doubling them; reject empty, whitespace-only and repetitive output.
When in doubt the answer is None: never write junk into the user's file.
"""

from __future__ import annotations

import itertools
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from dgemma_lsp.text import CLOSERS, OPENERS, QUOTES, indent_width, leading_ws

# The prompt format's tokens and the one code-fence rule (torch-free: shared with the engine).
from engine.prompting import FIM_TOKENS, HOLE, strip_code_fence

# Tokens after which nothing belongs to the hole.
STOP_TOKENS = (
    *FIM_TOKENS,
    HOLE,
    "<eos>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<|eot_id|>",
    "<|im_end|>",
    "<turn|>",
    "<|turn>",
    "<end_of_turn>",
    "<start_of_turn>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<fim_prefix>",
    "<fim_suffix>",
    "<fim_middle>",
    "<file_sep>",
)
# Tokens that carry nothing and are simply removed.
DROP_TOKENS = ("<pad>", "<bos>", "<unk>", "<mask>", "<|channel>", "<channel|>")
_GENERIC_SPECIAL = re.compile(r"<\|[A-Za-z_][A-Za-z0-9_]*\|>")
# Control characters (except tab and newline; a lone carriage return too), DEL, C1 controls
# and U+FFFD (bytes that were not valid UTF-8): a model that emits them has left the code.
_JUNK_CHAR = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ufffd]")
DEFAULT_UNIT = "    "


@dataclass(frozen=True)
class Hole:
    """Where the suggestion goes, as post-processing needs to know it."""

    before: str  # text of the cursor line before the cursor
    after: str  # text of the cursor line after the cursor
    next_lines: tuple[str, ...]  # next non-blank lines after the cursor line
    previous_line: str | None  # last non-blank line before the cursor line
    mode: str  # "single" | "multi"
    max_lines: int
    block_indent: str  # indentation of the cursor's block (see decide.Decision)
    after_opener: bool
    indent_unit: str | None  # the document's indentation unit (None: the document shows none)
    eol: str = "\n"


@dataclass(frozen=True)
class Suggestion:
    text: str  # inserted at the cursor, in the document's end-of-line convention
    replace_after: int = 0  # characters after the cursor (auto-closed brackets/quotes) it replaces


# --- rules ---------------------------------------------------------------------------------


def strip_special_tokens(text: str) -> str:
    """Cut at the first stop token and remove filler tokens."""
    cut = len(text)
    for token in STOP_TOKENS:
        index = text.find(token)
        if index != -1:
            cut = min(cut, index)
    text = text[:cut]
    for token in DROP_TOKENS:
        text = text.replace(token, "")
    match = _GENERIC_SPECIAL.search(text)
    if match:
        text = text[: match.start()]
    return text


def cut_at_junk(text: str) -> str:
    """Keep the text before the first control character or undecodable byte."""
    match = _JUNK_CHAR.search(text.replace("\r\n", "\n"))
    return text if match is None else text.replace("\r\n", "\n")[: match.start()]


def keep_first_line(text: str) -> str:
    return text.split("\n", 1)[0]


def limit_lines(lines: list[str], max_lines: int, after_opener: bool) -> list[str]:
    # After an opener the first element is the (empty) rest of the opener line.
    return lines[: max_lines + (1 if after_opener else 0)]


def body_anchor(hole: Hole, unit: str | None = None) -> str:
    """The indentation the first line of a multi-line suggestion must have in the document."""
    if not hole.after_opener:
        return hole.block_indent
    return hole.block_indent + (unit or hole.indent_unit or DEFAULT_UNIT)


def document_unit(lines: list[str], hole: Hole) -> str:
    """The document's unit, or the model's when the document shows none."""
    if hole.indent_unit:
        return hole.indent_unit
    return model_unit(lines, hole) or DEFAULT_UNIT


def model_unit(lines: list[str], hole: Hole) -> str | None:
    first_body = 1 if hole.after_opener else 0
    body = [line for line in lines[first_body:] if line.strip()]
    if not body:
        return None
    model_anchor = leading_ws(body[0]) if hole.after_opener else hole.block_indent
    # After an opener, the first body line is one step in from the opener's line.
    first_step = indent_width(model_anchor) - indent_width(hole.block_indent) if hole.after_opener else 0
    return _guess_unit(lines[first_body:], model_anchor, first_step)


def reindent(lines: list[str], hole: Hole) -> list[str]:
    """Re-indent lines after the first to the document's unit, relative to the block anchor.

    The model's own anchor is the indentation of its first body line after an opener, or the
    cursor's indentation on a blank line (the model saw it in the prefix).
    """
    doc_unit_text = document_unit(lines, hole)
    doc_anchor = body_anchor(hole, doc_unit_text)
    first_body = 1 if hole.after_opener else 0
    body = [line for line in lines[first_body:] if line.strip()]
    if not body:
        return lines
    model_anchor = leading_ws(body[0]) if hole.after_opener else hole.block_indent
    unit_width = max(1, indent_width(model_unit(lines, hole) or doc_unit_text))
    anchor_width = indent_width(model_anchor)
    result = list(lines[:first_body])
    for index, line in enumerate(lines[first_body:]):
        if index == 0 and not hole.after_opener:
            # The first line continues after the cursor, which already has its indentation.
            result.append(line.lstrip(" \t"))
            continue
        if not line.strip():
            result.append("")
            continue
        width = indent_width(leading_ws(line))
        relative = width - anchor_width
        if relative < 0:
            # Below the anchor: keep it relative to the document's block (cut later).
            levels, extra = divmod(-relative, unit_width)
            target = max(0, indent_width(doc_anchor) - levels * indent_width(doc_unit_text) - extra)
            result.append(_ws_of_width(target, doc_unit_text) + line.lstrip(" \t"))
            continue
        levels, extra = divmod(relative, unit_width)
        result.append(doc_anchor + doc_unit_text * levels + " " * extra + line.lstrip(" \t"))
    return result


def _ws_of_width(width: int, unit: str) -> str:
    if unit == "\t":
        tabs, spaces = divmod(width, indent_width("\t"))
        return "\t" * tabs + " " * spaces
    return " " * width


def _guess_unit(lines: list[str], anchor: str, first_step: int = 0) -> str | None:
    """The model's indentation unit: a tab if it indents with tabs, else the smallest step."""
    steps: Counter[int] = Counter()
    if first_step > 0:
        steps[first_step] += 1
    previous = indent_width(anchor)
    for line in lines:
        if not line.strip():
            continue
        ws = leading_ws(line)
        if "\t" in ws:
            return "\t"
        width = indent_width(ws)
        if width > previous:
            steps[width - previous] += 1
        previous = width
    candidates = [step for step in steps if 1 < step <= 8]
    return " " * min(candidates) if candidates else None


def cut_at_block_end(lines: list[str], hole: Hole) -> list[str]:
    """Stop where the indentation drops below the block's, or where a bracket opened before
    the hole closes (the end of the syntactic block). A lone closing line that the suffix does
    not already provide is kept as the block's end."""
    anchor_width = indent_width(body_anchor(hole, document_unit(lines, hole)))
    start = 1 if hole.after_opener else 0
    depth = 0
    for index, line in enumerate(lines):
        stripped = line.strip()
        if index >= start and index > 0 and stripped and indent_width(leading_ws(line)) < anchor_width:
            if _is_closing_line(stripped) and not _suffix_closes(hole, stripped):
                return [*lines[:index], line]
            return lines[:index]
        depth, closed_outer = _scan_depth(line, depth)
        if closed_outer and index > 0:
            return lines[:index]
    return lines


def _is_closing_line(stripped: str) -> bool:
    return bool(stripped) and stripped[0] in CLOSERS and all(c in CLOSERS or c in ";,) " for c in stripped)


def _suffix_closes(hole: Hole, stripped: str) -> bool:
    return bool(hole.next_lines) and hole.next_lines[0].strip().startswith(stripped[0])


def _scan_depth(line: str, depth: int) -> tuple[int, bool]:
    """Bracket depth after `line` (strings skipped roughly); True when it went below zero."""
    quote = None
    went_below = False
    escaped = False
    for char in line:
        if quote:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == quote:
                quote = None
            continue
        if char in QUOTES:
            quote = char
        elif char in OPENERS:
            depth += 1
        elif char in CLOSERS:
            depth -= 1
            if depth < 0:
                went_below = True
    return depth, went_below


def cut_suffix_repeats(lines: list[str], hole: Hole) -> list[str]:
    """Drop the first line that repeats the next non-blank line of the document (same text at
    the same indentation, the lines being re-indented already), and all after it."""
    if not hole.next_lines:
        return lines
    target = hole.next_lines[0].rstrip()
    if not target.strip():
        return lines
    for index, line in enumerate(lines):
        if index == 0 and not hole.after_opener:
            if hole.before.strip():
                continue
            line = hole.before + line
        if line.rstrip() == target:
            return lines[:index]
    return lines


def trim_line_suffix_overlap(text: str, after: str) -> str:
    """A single-line suggestion that ends with the text already after the cursor drops that ending."""
    rest = after.strip()
    if rest and not all(c in CLOSERS or c in QUOTES for c in rest) and text.rstrip().endswith(rest):
        return text.rstrip()[: -len(rest)].rstrip() if len(text.rstrip()) > len(rest) else ""
    return text


def imbalance(line: str) -> int:
    """Unmatched brackets plus an odd quote count: a rough measure of a broken line."""
    stack: list[str] = []
    unmatched = 0
    quote = None
    escaped = False
    for char in line:
        if quote:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == quote:
                quote = None
            continue
        if char in QUOTES:
            quote = char
        elif char in OPENERS:
            stack.append(char)
        elif char in CLOSERS:
            if stack and stack[-1] == CLOSERS[char]:
                stack.pop()
            else:
                unmatched += 1
    return unmatched + len(stack) + (1 if quote else 0)


def auto_closed_range(text: str, hole: Hole) -> tuple[str, int] | None:
    """Handle brackets and quotes the editor auto-closed after the cursor.

    Returns the text and how many characters after the cursor it replaces; None when every way
    of placing the suggestion leaves the line's brackets and quotes more unbalanced than they
    already are (a single line should close what it opens).
    """
    after = hole.after
    run = 0
    while run < len(after) and (after[run] in CLOSERS or after[run] in QUOTES):
        run += 1
    best: tuple[int, int] | None = None  # (imbalance, -k)
    for k in range(run + 1):
        if k and not text.endswith(after[:k]):
            continue
        line = hole.before + text + after[k:]
        score = (imbalance(line), -k)
        if best is None or score < best:
            best = score
    assert best is not None
    k = -best[1]
    if best[0] > imbalance(hole.before + after):
        return None
    return text, k


_WORD = re.compile(r"\w+|[^\w\s]")


def is_repetitive(text: str) -> bool:
    """Degenerate output: a token or line repeated over and over."""
    lines = [line.strip() for line in text.split("\n") if line.strip()]
    meaningful = [
        line for line in lines if len(line) >= 4 and not all(c in CLOSERS or c in ";," for c in line)
    ]
    if meaningful:
        _, times = Counter(meaningful).most_common(1)[0]
        if times >= 3 and times * 2 > len(meaningful):
            return True
    tokens = _WORD.findall(text)
    # Separator runs ("# -----", "=" * 60 written out) are code people write; words and brackets
    # repeated over and over are not.
    counted = [t for t in tokens if t[0].isalnum() or t[0] == "_" or t in CLOSERS or t in OPENERS]
    if len(counted) >= 8 and len(set(counted)) / len(counted) < 0.25:
        return True
    run = 1
    for previous, current in itertools.pairwise(counted):
        run = run + 1 if previous == current else 1
        if run >= 6:
            return True
    # The same short pattern with a letter or digit in it, back to back ("abcabcabcabc").
    compact = re.sub(r"\s+", "", text)
    if len(compact) >= 16:
        for period in range(1, len(compact) // 4 + 1):
            pattern = compact[:period]
            repeated = pattern * (len(compact) // period) == compact[: period * (len(compact) // period)]
            if repeated and any(c.isalnum() for c in pattern):
                return True
    return False


# --- the pipeline ---------------------------------------------------------------------------


def postprocess(raw: str, hole: Hole) -> Suggestion | None:
    text = strip_special_tokens(raw).replace("\r\n", "\n")
    text = cut_at_junk(strip_code_fence(text))
    if not text.strip():
        return None
    if hole.mode == "single":
        return _single(text, hole)
    return _multi(text, hole)


def _single(text: str, hole: Hole) -> Suggestion | None:
    line = keep_first_line(text).rstrip()
    if hole.before.endswith((" ", "\t")) or not hole.before.strip():
        # No second space after the one typed, no extra indentation on an indented blank line.
        line = line.lstrip(" \t") if hole.before else line
    if not line.strip():
        return None
    line = trim_line_suffix_overlap(line, hole.after)
    if not line.strip():
        return None
    full = (hole.before + line).strip()
    if hole.next_lines and full == hole.next_lines[0].strip() and not hole.after.strip():
        return None
    if hole.previous_line is not None and full == hole.previous_line.strip() and len(full) > 3:
        return None
    placed = auto_closed_range(line, hole)
    if placed is None:
        return None
    line, replace = placed
    if hole.after[:replace] == line:
        return None  # it would only retype what is already there
    if is_repetitive(line):
        return None
    return Suggestion(line, replace)


def _multi(text: str, hole: Hole) -> Suggestion | None:
    if hole.after_opener:
        stripped = text.lstrip(" \t")
        text = stripped if stripped.startswith("\n") else "\n" + stripped
    lines = text.split("\n")
    lines = [line.rstrip() for line in lines]
    lines = reindent(lines, hole)
    lines = cut_suffix_repeats(lines, hole)
    lines = cut_at_block_end(lines, hole)
    lines = limit_lines(lines, hole.max_lines, hole.after_opener)
    while lines and not lines[-1].strip():
        lines.pop()
    if not any(line.strip() for line in lines):
        return None
    body = "\n".join(lines)
    if is_repetitive(body):
        return None
    first = lines[0] if lines else ""
    repeats_previous = (
        hole.previous_line is not None and (hole.before + first).strip() == hole.previous_line.strip()
    )
    if not hole.after_opener and len(lines) == 1 and repeats_previous:
        return None
    return Suggestion(body.replace("\n", hole.eol) if hole.eol != "\n" else body, 0)


def trim_to_valid(suggestion: Suggestion, hole: Hole, valid: Callable[[str, int], bool]) -> Suggestion | None:
    """Drop trailing lines of a multi-line suggestion until `valid(text, replace_after)` holds
    (used with a tree-sitter check: the suggestion must not add syntax errors). None when no
    non-empty prefix of lines passes."""
    if valid(suggestion.text, suggestion.replace_after):
        return suggestion
    lines = suggestion.text.split(hole.eol)
    for end in range(len(lines) - 1, 0, -1):
        candidate = hole.eol.join(lines[:end]).rstrip()
        if candidate.strip() and valid(candidate, suggestion.replace_after):
            return Suggestion(candidate, suggestion.replace_after)
    return None
