"""Holes where an editor asks for code, found with tree-sitter, and training examples built from them.

A hole cuts a file into (prefix, middle, suffix) with `prefix + middle + suffix == text`. Kinds:

- `line`: one whole line at a statement boundary: a simple statement alone on its line, or the
  header of a compound statement or clause (`for x in y:`, `else:`, `def f(a):`) or a decorator.
  The middle runs from the start of the line (indentation included) through its newline, as in
  HumanEval-Infilling; the `cursor after the indentation` variant moves the indentation into the
  prefix and the newline into the suffix, which is what an editor sends on an indented empty line.
- `line_rest`: the rest of such a line after a token boundary (the cursor mid-line).
- `block`: whole lines from two or more consecutive statements of one block, or the whole body of
  a compound statement, cut at statement boundaries (nothing else shares their first and last rows).
- `span`: a random character span (the FIM paper's random-span holes).

Docstrings and comment-only lines are never `line` or `block` holes: they are prose, not code.

`ExampleBuilder` turns a hole into the engine's FIM layout (engine/prompting.py): a window of the
prefix and of the suffix clipped at line boundaries to token budgets (an editor sends a window
around the cursor, not the whole file), then the canvas target: middle tokens, `<eos>`, `<pad>`s.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import tree_sitter
import tree_sitter_python
from tokenizers import Tokenizer

from engine.prompting import fim_prompt
from engine.requests import ContextSnippet
from engine.training.tokenizer import EOS_ID, PAD_ID

LINE, LINE_REST, BLOCK, SPAN = "line", "line_rest", "block", "span"
KINDS = (LINE, LINE_REST, BLOCK, SPAN)
# Not a hole: plain left-to-right generation (`generate`), a prefix window as the prompt without FIM
# markers and the code that follows it as the canvas (ExampleBuilder.build_continuation).
CONTINUE = "continue"
DEFAULT_KIND_WEIGHTS = {LINE: 0.35, LINE_REST: 0.2, BLOCK: 0.3, SPAN: 0.15}

# Named children of `module` / `block` that are statements (comments are children too, and skipped).
SIMPLE_STATEMENTS = frozenset(
    {
        "expression_statement",
        "return_statement",
        "pass_statement",
        "break_statement",
        "continue_statement",
        "raise_statement",
        "import_statement",
        "import_from_statement",
        "future_import_statement",
        "assert_statement",
        "delete_statement",
        "global_statement",
        "nonlocal_statement",
        "print_statement",
        "exec_statement",
        "type_alias_statement",
    }
)
COMPOUND_STATEMENTS = frozenset(
    {
        "if_statement",
        "for_statement",
        "while_statement",
        "try_statement",
        "with_statement",
        "function_definition",
        "class_definition",
        "decorated_definition",
        "match_statement",
    }
)
CLAUSES = frozenset(
    {"elif_clause", "else_clause", "except_clause", "except_group_clause", "finally_clause", "case_clause"}
)
STRING_TYPES = frozenset({"string", "concatenated_string"})


@dataclass(frozen=True)
class Hole:
    prefix: str
    middle: str
    suffix: str
    kind: str

    @property
    def text(self) -> str:
        return self.prefix + self.middle + self.suffix


@dataclass(frozen=True)
class Cut:
    """A hole as character offsets into the file: middle = text[start:end]."""

    start: int
    end: int
    kind: str

    def hole(self, text: str) -> Hole:
        return Hole(text[: self.start], text[self.start : self.end], text[self.end :], self.kind)


@lru_cache(maxsize=1)
def python_parser() -> tree_sitter.Parser:
    return tree_sitter.Parser(tree_sitter.Language(tree_sitter_python.language()))


@dataclass
class FileHoles:
    """Every statement-boundary hole of one file, found once and sampled many times."""

    text: str
    lines: list[Cut] = field(default_factory=list)  # kind LINE, whole lines incl. newline
    blocks: list[Cut] = field(default_factory=list)  # kind BLOCK, >= 2 whole lines
    # For each LINE cut, the character offsets inside it where a token starts (line_rest cuts).
    token_starts: list[list[int]] = field(default_factory=list)

    @property
    def line_starts(self) -> list[int]:
        return _line_starts(self.text)


def _line_starts(text: str) -> list[int]:
    starts = [0]
    index = text.find("\n")
    while index != -1:
        starts.append(index + 1)
        index = text.find("\n", index + 1)
    return starts


class _Positions:
    """tree-sitter (row, byte column) -> character offset in the text."""

    def __init__(self, text: str):
        self.text = text
        self.starts = _line_starts(text)
        self.ends = [*[s - 1 for s in self.starts[1:]], len(text)]  # offset of each row's "\n" (or EOF)

    def offset(self, row: int, column: int) -> int:
        start = self.starts[row]
        line = self.text[start : self.ends[row]]
        if line.isascii():
            return start + column
        return start + len(line.encode("utf-8")[:column].decode("utf-8", errors="ignore"))

    def row_end(self, row: int) -> int:
        """Offset just past the row's newline (or the end of the text)."""
        return min(self.ends[row] + 1, len(self.text))

    def indentation(self, row: int) -> int:
        start = self.starts[row]
        line = self.text[start : self.ends[row]]
        return len(line) - len(line.lstrip(" \t"))

    def only_comment_after(self, row: int, offset: int) -> bool:
        rest = self.text[offset : self.ends[row]].strip()
        return rest == "" or rest.startswith("#")

    def starts_line(self, row: int, offset: int) -> bool:
        return offset == self.starts[row] + self.indentation(row)


def _is_docstring(node: tree_sitter.Node) -> bool:
    named = [c for c in node.named_children if c.type != "comment"]
    return node.type == "expression_statement" and len(named) == 1 and named[0].type in STRING_TYPES


def _statement_children(node: tree_sitter.Node) -> list[tree_sitter.Node]:
    return [c for c in node.named_children if c.type in SIMPLE_STATEMENTS or c.type in COMPOUND_STATEMENTS]


def _header_end(node: tree_sitter.Node) -> tree_sitter.Node | None:
    """The `:` that ends the header of a compound statement or clause (before its body)."""
    for child in node.children:
        if child.type == ":":
            return child
        if child.type == "block":
            return None
    return None


def find_holes(text: str, *, max_block_lines: int = 12) -> FileHoles:
    """All `line` and `block` holes of a Python file (see the module docstring)."""
    data = text.encode("utf-8")
    tree = python_parser().parse(data)
    pos = _Positions(text)
    result = FileHoles(text=text)
    seen_lines: set[int] = set()
    seen_blocks: set[tuple[int, int]] = set()

    def add_line(row: int, token_nodes: Sequence[tree_sitter.Node]) -> None:
        if row in seen_lines:
            return
        seen_lines.add(row)
        start, end = pos.starts[row], pos.row_end(row)
        result.lines.append(Cut(start, end, LINE))
        offsets = sorted(
            {
                pos.offset(n.start_point.row, n.start_point.column)
                for n in token_nodes
                if n.start_point.row == row
            }
        )
        result.token_starts.append([o for o in offsets if start + pos.indentation(row) < o < end])

    def leaves(node: tree_sitter.Node, row: int) -> list[tree_sitter.Node]:
        out: list[tree_sitter.Node] = []
        stack = [node]
        while stack:
            current = stack.pop()
            if current.start_point.row > row:
                continue
            if current.child_count == 0 or current.type in STRING_TYPES:
                out.append(current)
            else:
                stack.extend(current.children)
        return out

    def add_block(first: tree_sitter.Node, last: tree_sitter.Node) -> None:
        start_row, end_row = first.start_point.row, last.end_point.row
        if end_row - start_row + 1 < 2 or end_row - start_row + 1 > max_block_lines:
            return
        if (start_row, end_row) in seen_blocks:
            return
        start = pos.offset(start_row, first.start_point.column)
        end = pos.offset(end_row, last.end_point.column)
        if not pos.starts_line(start_row, start) or not pos.only_comment_after(end_row, end):
            return
        seen_blocks.add((start_row, end_row))
        result.blocks.append(Cut(pos.starts[start_row], pos.row_end(end_row), BLOCK))

    def visit_body(body: tree_sitter.Node) -> None:
        statements = _statement_children(body)
        rows_taken: dict[int, int] = {}
        for s in statements:
            for row in range(s.start_point.row, s.end_point.row + 1):
                rows_taken[row] = rows_taken.get(row, 0) + 1
        clean = [
            rows_taken.get(s.start_point.row) == 1
            and rows_taken.get(s.end_point.row) == 1
            and not _is_docstring(s)
            for s in statements
        ]
        for i, s in enumerate(statements):
            row = s.start_point.row
            start = pos.offset(row, s.start_point.column)
            one_line = s.type in SIMPLE_STATEMENTS and s.end_point.row == row
            if clean[i] and one_line and pos.starts_line(row, start):
                end = pos.offset(row, s.end_point.column)
                if pos.only_comment_after(row, end):
                    add_line(row, leaves(s, row))
            # Runs of whole statements: s .. statements[j], all clean, within the line budget.
            if clean[i]:
                for j in range(i, len(statements)):
                    if not clean[j]:
                        break
                    if statements[j].end_point.row - row + 1 > max_block_lines:
                        break
                    add_block(s, statements[j])
        for s in statements:
            visit_statement(s)

    def visit_header(node: tree_sitter.Node) -> None:
        """A compound statement's or clause's header line, when it has a line of its own."""
        colon = _header_end(node)
        if colon is None or colon.end_point.row != node.start_point.row:
            return
        row = node.start_point.row
        start = pos.offset(row, node.start_point.column)
        end = pos.offset(row, colon.end_point.column)
        body = node.child_by_field_name("body") or next((c for c in node.children if c.type == "block"), None)
        if body is None or body.start_point.row == row:
            return
        if pos.starts_line(row, start) and pos.only_comment_after(row, end):
            add_line(row, [n for n in leaves(node, row) if n.end_point.row == row and n.type != "block"])

    def visit_statement(node: tree_sitter.Node) -> None:
        if node.type == "decorated_definition":
            for decorator in (c for c in node.children if c.type == "decorator"):
                row = decorator.start_point.row
                if (
                    decorator.end_point.row == row
                    and pos.starts_line(row, pos.offset(row, decorator.start_point.column))
                    and pos.only_comment_after(row, pos.offset(row, decorator.end_point.column))
                ):
                    add_line(row, leaves(decorator, row))
            definition = node.child_by_field_name("definition")
            if definition is not None:
                visit_statement(definition)
            return
        if node.type not in COMPOUND_STATEMENTS:
            return
        parts = [node, *[c for c in node.children if c.type in CLAUSES]]
        if node.type == "match_statement":
            block = next((c for c in node.children if c.type == "block"), None)
            parts += [c for c in (block.children if block else []) if c.type == "case_clause"]
        for part in parts:
            visit_header(part)
            body = next((c for c in part.children if c.type == "block"), None)
            if body is not None:
                statements = _statement_children(body)
                if statements and statements[0].start_point.row > part.start_point.row:
                    add_block(statements[0], statements[-1])
                visit_body(body)

    visit_body(tree.root_node)
    order = sorted(range(len(result.lines)), key=lambda i: result.lines[i].start)
    result.lines = [result.lines[i] for i in order]
    result.token_starts = [result.token_starts[i] for i in order]
    result.blocks.sort(key=lambda c: (c.start, c.end))
    return result


def single_line_holes(text: str) -> list[Hole]:
    """Every whole-line hole at a statement boundary (HumanEval-Infilling's single-line layout)."""
    return [cut.hole(text) for cut in find_holes(text).lines]


def multi_line_holes(text: str, max_lines: int = 12) -> list[Hole]:
    """Every block hole of 2..max_lines whole lines at statement boundaries."""
    return [cut.hole(text) for cut in find_holes(text, max_block_lines=max_lines).blocks]


def _cursor_after_indentation(text: str, cut: Cut) -> Cut:
    """The editor's view of a whole-line hole: the indentation is typed, the newline is there."""
    line = text[cut.start : cut.end]
    indent = len(line) - len(line.lstrip(" \t"))
    end = cut.end - 1 if text[cut.end - 1 : cut.end] == "\n" else cut.end
    return Cut(cut.start + indent, max(end, cut.start + indent), cut.kind)


def sample_cut(
    holes: FileHoles,
    rng: random.Random,
    kind_weights: dict[str, float] | None = None,
    max_span_chars: int = 160,
) -> Cut | None:
    """One random hole of a random kind; None when the file has none of that kind."""
    weights = kind_weights or DEFAULT_KIND_WEIGHTS
    kinds = [k for k in KINDS if weights.get(k, 0) > 0]
    kind = rng.choices(kinds, weights=[weights[k] for k in kinds])[0]
    text = holes.text
    if kind == LINE and holes.lines:
        cut = rng.choice(holes.lines)
        return _cursor_after_indentation(text, cut) if rng.random() < 0.5 else cut
    if kind == LINE_REST and holes.lines:
        index = rng.randrange(len(holes.lines))
        cut, starts = holes.lines[index], holes.token_starts[index]
        if not starts:
            return _cursor_after_indentation(text, cut)
        end = cut.end - 1 if text[cut.end - 1 : cut.end] == "\n" else cut.end
        return Cut(rng.choice(starts), end, LINE_REST)
    if kind == BLOCK and holes.blocks:
        cut = rng.choice(holes.blocks)
        return _cursor_after_indentation(text, cut) if rng.random() < 0.3 else cut
    if kind == SPAN and len(text) > 2:
        length = rng.randint(1, min(max_span_chars, len(text) - 1))
        start = rng.randrange(0, len(text) - length)
        return Cut(start, start + length, SPAN)
    return None


# ---------------------------------------------------------------------------------------------
# Windows and FIM examples


def clip_prefix(tokenizer: Tokenizer, prefix: str, max_tokens: int) -> str:
    """The end of `prefix` within `max_tokens`, starting at a line start; the cursor's line is always kept."""
    cursor_line = prefix[prefix.rfind("\n") + 1 :]
    if max_tokens <= 0:
        return cursor_line
    tail = prefix[-max_tokens * 24 :]
    encoding = tokenizer.encode(tail, add_special_tokens=False)
    if len(encoding.ids) <= max_tokens:
        if len(tail) == len(prefix):
            return prefix
        cut = 0
    else:
        cut = encoding.offsets[len(encoding.ids) - max_tokens][0]
    if cut > 0 and tail[cut - 1] == "\n":
        return tail[cut:]
    newline = tail.find("\n", cut)
    if newline == -1 or len(tail) - newline - 1 < len(cursor_line):
        return cursor_line
    return tail[newline + 1 :]


def clip_suffix(tokenizer: Tokenizer, suffix: str, max_tokens: int) -> str:
    """The start of `suffix` within `max_tokens`, ending at a line end (the cursor's line is kept)."""
    if max_tokens <= 0:
        return ""
    head = suffix[: max_tokens * 24]
    encoding = tokenizer.encode(head, add_special_tokens=False)
    if len(encoding.ids) <= max_tokens:
        if len(head) == len(suffix):
            return suffix
        cut = len(head)
    else:
        cut = encoding.offsets[max_tokens - 1][1]
    newline = head.rfind("\n", 0, cut)
    first_newline = head.find("\n")
    if newline == -1 or newline < first_newline:
        return head[:cut]
    return head[: newline + 1]


@dataclass
class FimExample:
    prompt_ids: list[int]  # starts with <bos>
    canvas_ids: list[int]  # middle, <eos>, <pad>... (len == canvas length)
    middle_tokens: int
    kind: str


@dataclass
class ExampleBuilder:
    """Hole -> FIM example, with random window budgets (the editor's window varies)."""

    tokenizer: Tokenizer
    max_prefix_tokens: int = 384
    max_suffix_tokens: int = 128
    min_prefix_tokens: int = 32
    # With this probability an import block that fell outside the prefix window is sent as a
    # context snippet, as the language server does for the imports of the file.
    import_snippet_probability: float = 0.3
    path_probability: float = 0.8

    def draw_prefix_budget(self, rng: random.Random) -> int:
        return rng.randint(min(self.min_prefix_tokens, self.max_prefix_tokens), self.max_prefix_tokens)

    def draw_suffix_budget(self, rng: random.Random) -> int:
        """Usually a random window; one time in ten no suffix at all."""
        return rng.randint(0, self.max_suffix_tokens) if rng.random() < 0.9 else 0

    def prompt_text(
        self,
        prefix: str,
        suffix: str,
        path: str | None,
        rng: random.Random | None = None,
        prefix_budget: int | None = None,
        suffix_budget: int | None = None,
    ) -> str:
        """The FIM prompt text; budgets left as None are drawn at random."""
        rng = rng or random.Random(0)
        if prefix_budget is None:
            prefix_budget = self.draw_prefix_budget(rng)
        if suffix_budget is None:
            suffix_budget = self.draw_suffix_budget(rng)
        window_prefix = clip_prefix(self.tokenizer, prefix, prefix_budget)
        window_suffix = clip_suffix(self.tokenizer, suffix, suffix_budget)
        snippets: list[ContextSnippet] = []
        if len(window_prefix) < len(prefix) and rng.random() < self.import_snippet_probability:
            imports = import_lines(prefix[: len(prefix) - len(window_prefix)])
            if imports:
                snippets.append(ContextSnippet(path=path or "untitled", text=imports, kind="imports"))
        use_path = path if rng.random() < self.path_probability else None
        return fim_prompt(window_prefix, window_suffix, snippets, use_path)

    def build(
        self,
        hole: Hole,
        canvas_length: int,
        path: str | None = None,
        rng: random.Random | None = None,
        prefix_budget: int | None = None,
        suffix_budget: int | None = None,
    ) -> FimExample | None:
        """None when the middle (plus `<eos>`) does not fit the canvas."""
        middle_ids = self.tokenizer.encode(hole.middle, add_special_tokens=False).ids
        if len(middle_ids) + 1 > canvas_length:
            return None
        text = self.prompt_text(hole.prefix, hole.suffix, path, rng, prefix_budget, suffix_budget)
        prompt_ids = self.tokenizer.encode(text).ids
        canvas = [*middle_ids, EOS_ID] + [PAD_ID] * (canvas_length - len(middle_ids) - 1)
        return FimExample(
            prompt_ids=prompt_ids, canvas_ids=canvas, middle_tokens=len(middle_ids), kind=hole.kind
        )

    def build_continuation(
        self, text: str, start: int, canvas_length: int, prefix_budget: int
    ) -> FimExample | None:
        """The prompt `<bos>` + the prefix window before `start` (a line start), as a plain prompt;
        the canvas: the next `canvas_length` tokens, or the rest of the file, `<eos>` and `<pad>`s.
        None when there is nothing to continue."""
        prefix = clip_prefix(self.tokenizer, text[:start], prefix_budget)
        window = text[start : start + canvas_length * 16]
        ids = self.tokenizer.encode(window, add_special_tokens=False).ids
        if not ids:
            return None
        if len(ids) >= canvas_length:
            canvas = ids[:canvas_length]
        elif start + len(window) >= len(text):
            canvas = [*ids, EOS_ID] + [PAD_ID] * (canvas_length - len(ids) - 1)
        else:
            return None  # an unusually long run of characters per token: draw another place
        prompt_ids = self.tokenizer.encode(prefix).ids
        middle = sum(1 for t in canvas if t not in (EOS_ID, PAD_ID))
        return FimExample(prompt_ids=prompt_ids, canvas_ids=canvas, middle_tokens=middle, kind=CONTINUE)


def import_lines(text: str, max_lines: int = 30) -> str:
    """The top-level import statements of `text`, one per line."""
    out = [line for line in text.split("\n") if line.startswith(("import ", "from "))]
    return "\n".join(out[:max_lines])
