"""Refactor code actions computed by infilling: implement a function body, write a docstring,
fill every placeholder in a function, rewrite the selected lines.

`find_actions` only looks at the syntax tree (editors ask on every cursor move); `compute`
calls the model, post-processes each hole like an inline suggestion, and accepts the result
only when the edited file has no syntax error the original did not have.
"""

from __future__ import annotations

import ast
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from dgemma_lsp import syntax
from dgemma_lsp.postprocess import Hole, cut_at_junk, is_repetitive, postprocess, strip_special_tokens
from dgemma_lsp.text import detect_indent_unit, eol_of, indent_width, leading_ws, line_bounds
from engine.requests import ContextSnippet, InfillRequest

KIND_IMPLEMENT = "refactor.rewrite.implement"
KIND_DOCSTRING = "refactor.rewrite.docstring"
KIND_PLACEHOLDERS = "refactor.rewrite.fillPlaceholders"
KIND_REWRITE = "refactor.rewrite.selection"
KINDS = (KIND_IMPLEMENT, KIND_DOCSTRING, KIND_PLACEHOLDERS, KIND_REWRITE)

ATTEMPTS = 3  # seeds tried before an action gives up (setting `actionAttempts`)
MAX_BODY_LINES = 60
MAX_DOC_LINES = 12

_PY_STUB_LINE = re.compile(r"^(pass|\.\.\.|raise NotImplementedError(\(.*\))?|#.*)$")
_TODO = re.compile(r"\b(TODO|FIXME|XXX)\b")
_BRACE_STUB = re.compile(
    r"^(todo!\(.*\)|unimplemented!\(.*\)|panic\(.*\)|throw\s+new\s+\w+\(.*\)|throw\s+\w+\(.*\));?$", re.DOTALL
)
_NOT_IMPLEMENTED = re.compile(r"todo|not\s*implemented|unimplemented|unsupported", re.IGNORECASE)


@dataclass
class Candidate:
    """An action that can be offered at a range; cheap to find, expensive to compute."""

    action: str  # "implement" | "docstring" | "placeholders" | "rewrite"
    kind: str
    title: str
    start: int  # string offsets of the target (function node, or selected lines)
    end: int


@dataclass
class Edit:
    start: int
    end: int
    new_text: str


@dataclass
class Job:
    """One hole to fill: where it goes in the working text and how to render the answer."""

    region: tuple[int, int]  # offsets in the original text the edit replaces
    prefix: str  # text before the hole (up to the document start)
    suffix: str
    hole: Hole
    canvas: int
    render: Callable[[str], str | None]  # post-processed hole text -> replacement text
    snippets: list[ContextSnippet] = field(default_factory=list)
    mode: str = "block"  # "block" | "expression" | "text"


Infill = Callable[[InfillRequest], str]
InfillMany = Callable[[list[InfillRequest]], list[str]]


# --- finding -----------------------------------------------------------------------------


def find_actions(text: str, grammar: str | None, tree, start: int, end: int) -> list[Candidate]:
    """Actions available for the range [start, end) (string offsets)."""
    found: list[Candidate] = []
    if tree is not None and grammar is not None:
        spec = syntax.SPECS[grammar]
        functions = [
            n for n in _enclosing_at(text, grammar, tree, start, spec.functions) if _named_function(n)
        ]
        definitions = _enclosing_at(text, grammar, tree, start, spec.functions | spec.classes)
        if functions:
            function = functions[-1]
            name = syntax.name_of(function) or "function"
            fstart, fend = _offsets(text, function)
            stub = is_stub(text, grammar, function)
            if stub:
                found.append(
                    Candidate("implement", KIND_IMPLEMENT, f"dgemma: implement {name}()", fstart, fend)
                )
            holes = placeholders(text, grammar, function)
            if holes and (not stub or len(holes) > 1):
                count = len(holes)
                found.append(
                    Candidate(
                        "placeholders",
                        KIND_PLACEHOLDERS,
                        f"dgemma: fill {count} placeholder{'s' if count > 1 else ''} in {name}()",
                        fstart,
                        fend,
                    )
                )
        if definitions:
            target = definitions[-1]
            documentable = _named_function(target) or target.type in spec.classes
            if documentable and not has_docstring(text, grammar, target):
                name = syntax.name_of(target) or "definition"
                dstart, dend = _offsets(text, target)
                found.append(
                    Candidate(
                        "docstring", KIND_DOCSTRING, f"dgemma: write a docstring for {name}", dstart, dend
                    )
                )
    if end > start and text[start:end].strip():
        first_line_start, _ = line_bounds(text, start)
        last_end = end
        if end > 0 and text[end - 1] == "\n" and end - 1 > start:
            last_end = end - 1  # a selection ending at column 0 stops on the line above
        _, last_line_end = line_bounds(text, last_end)
        found.append(
            Candidate(
                "rewrite", KIND_REWRITE, "dgemma: rewrite the selected lines", first_line_start, last_line_end
            )
        )
    return found


def _enclosing_at(text: str, grammar: str, tree, offset: int, kinds: frozenset[str]) -> list:
    """Nodes of `kinds` around the cursor, outermost first. The cursor may sit just after a
    header (`def f():|`), and in Python on a comment-only body line, which tree-sitter attaches
    outside the function."""
    byte = _byte(text, offset)
    # The ancestors of the node holding the character before the cursor: every node with
    # start < byte <= end (what syntax.enclosing asks for), also one that ends at the cursor.
    chain = []
    node = tree.root_node.descendant_for_byte_range(byte - 1, byte) if byte > 0 else None
    while node is not None:
        if node.type in kinds:
            chain.append(node)
        node = node.parent
    chain.reverse()
    if grammar == "python":
        owner = _python_owner(text, tree, offset, kinds)
        if owner is not None and all(owner.id != node.id for node in chain):
            chain = [node for node in chain if node.start_byte < owner.start_byte] + [owner]
    return chain


def _python_owner(text: str, tree, offset: int, kinds: frozenset[str]):
    """The definition whose indented body holds the cursor line, found from the lines above."""
    line_start, line_end = line_bounds(text, offset)
    line = text[line_start:line_end]
    width = indent_width(leading_ws(line)) if line.strip() else 10**6
    cursor = line_start
    while cursor > 0:
        start, end = line_bounds(text, cursor - 1)
        above = text[start:end]
        cursor = start
        if not above.strip():
            continue
        above_width = indent_width(leading_ws(above))
        if above_width >= width:
            continue
        stripped = above.strip()
        if stripped.startswith(("def ", "async def ", "class ")):
            node = tree.root_node.descendant_for_byte_range(
                _byte(text, start) + len(leading_ws(above)), _byte(text, end)
            )
            while node is not None and node.type not in kinds:
                node = node.parent
            if node is None:
                return None
            body = _python_body(text, node)
            return node if body is not None and offset <= max(body.end, body.header_line_end) else None
        width = above_width
        if above_width == 0:
            return None
    return None


def _named_function(node) -> bool:
    return node.type not in {
        "arrow_function",
        "lambda_expression",
        "closure_expression",
        "func_literal",
        "lambda",
    }


def _offsets(text: str, node) -> tuple[int, int]:
    return _char_offset(text, node.start_byte), _char_offset(text, node.end_byte)


def _char_offset(text: str, byte: int) -> int:
    """String offset of a utf-8 byte offset into `text`."""
    if text.isascii():
        return byte
    return len(syntax.encode(text)[:byte].decode("utf-8", "surrogatepass"))


def _byte(text: str, offset: int) -> int:
    return len(syntax.encode(text[:offset]))


# --- structure ----------------------------------------------------------------------------


@dataclass
class PyBody:
    header_line_end: int  # offset of the end of the line with the ':'
    def_indent: str
    body_indent: str | None  # indentation of the first body line, None when empty
    docstring_end: int | None  # offset of the end of the docstring's last line
    stub_start: int | None  # offset of the first line after the docstring
    end: int  # end of the last body line (offset)
    lines: list[str]  # body lines after the docstring (raw)


def _python_body(text: str, node) -> PyBody | None:
    colon = next((c for c in node.children if c.type == ":"), None)
    if colon is None:
        return None
    colon_end = _char_offset(text, colon.end_byte)
    _, header_line_end = line_bounds(text, colon_end)
    if text[colon_end:header_line_end].strip() and not text[colon_end:header_line_end].strip().startswith(
        "#"
    ):
        return None  # a one-line body (def f(): pass)
    def_line_start, _ = line_bounds(text, _char_offset(text, node.start_byte))
    def_indent = leading_ws(text[def_line_start:header_line_end])
    base = indent_width(def_indent)
    lines = []
    cursor = header_line_end
    end = header_line_end
    body_indent = None
    while cursor < len(text):
        next_start = cursor + (2 if text.startswith("\r\n", cursor) else 1)
        if next_start > len(text):
            break
        _, next_end = line_bounds(text, next_start)
        line = text[next_start:next_end]
        if line.strip():
            if indent_width(leading_ws(line)) <= base:
                break
            if body_indent is None:
                body_indent = leading_ws(line)
            end = next_end
        lines.append((next_start, next_end, line))
        cursor = next_end
    body_lines = [item for item in lines if item[1] <= end]
    docstring_end = None
    block = node.child_by_field_name("body")
    if block is not None and block.named_children:
        first = block.named_children[0]
        if (
            first.type == "expression_statement"
            and first.named_children
            and first.named_children[0].type == "string"
        ):
            _, docstring_end = line_bounds(text, _char_offset(text, first.end_byte))
    rest = [item for item in body_lines if docstring_end is None or item[0] > docstring_end]
    stub_start = rest[0][0] if rest else None
    return PyBody(
        header_line_end=header_line_end,
        def_indent=def_indent,
        body_indent=body_indent,
        docstring_end=docstring_end,
        stub_start=stub_start,
        end=end,
        lines=[item[2] for item in rest],
    )


def _brace_statements(body) -> list:
    statements = []
    for child in body.named_children:
        if child.type == "statement_list":
            statements.extend(child.named_children)
        else:
            statements.append(child)
    return statements


def is_stub(text: str, grammar: str, function) -> bool:
    """Whether the function's body is empty or only a placeholder (pass, ..., raise
    NotImplementedError, TODO comments, todo!(), a not-implemented throw or panic)."""
    spec = syntax.SPECS[grammar]
    if grammar == "python":
        body = _python_body(text, function)
        if body is None:
            return False
        meaningful = [line.strip() for line in body.lines if line.strip()]
        return all(_PY_STUB_LINE.match(line) for line in meaningful)
    block = syntax.body_of(function)
    if block is None or block.type not in spec.blocks:
        return False
    statements = [s for s in _brace_statements(block) if s.type not in spec.comments]
    if not statements:
        return True
    if len(statements) == 1:
        statement = (statements[0].text or b"").decode("utf-8", "replace").strip()
        return bool(_BRACE_STUB.match(statement)) and (
            statement.startswith(("todo!", "unimplemented!")) or bool(_NOT_IMPLEMENTED.search(statement))
        )
    return False


def has_docstring(text: str, grammar: str, node) -> bool:
    if grammar == "python":
        body = _python_body(text, node)
        return body is None or body.docstring_end is not None
    previous = node.prev_sibling
    if previous is not None and previous.type in syntax.SPECS[grammar].comments:
        gap = text[_char_offset(text, previous.end_byte) : _char_offset(text, node.start_byte)]
        return gap.count("\n") <= 1
    return False


def placeholders(text: str, grammar: str, function) -> list[tuple[int, int, str]]:
    """(start, end, kind) of every placeholder in the function: "line" placeholders replace their
    whole line(s), "expression" ones only their own text."""
    spec = syntax.SPECS[grammar]
    found: list[tuple[int, int, str]] = []
    for node in syntax.walk(function):
        kind = None
        if node.type in spec.comments and _TODO.search((node.text or b"").decode("utf-8", "replace")):
            kind = "line"
        elif grammar == "python":
            not_implemented = node.type == "raise_statement" and (node.text or b"").startswith(
                b"raise NotImplementedError"
            )
            if node.type == "pass_statement" or not_implemented:
                kind = "line"
            elif node.type == "ellipsis" and node.parent is not None:
                parent = node.parent.type
                if parent == "expression_statement" and node.parent.named_child_count == 1:
                    kind = "line"
                elif parent in {"return_statement", "assignment", "keyword_argument"}:
                    kind = "expression"
        elif node.type == "macro_invocation" and (node.text or b"").startswith((b"todo!", b"unimplemented!")):
            kind = "expression"
        if kind is None:
            continue
        start, end = _offsets(text, node)
        if kind == "line":
            line_start, _ = line_bounds(text, start)
            if text[line_start:start].strip():
                continue  # a trailing comment after code is not a placeholder line
            _, line_end = line_bounds(text, end)
            if text[end:line_end].strip():
                continue
            start, end = line_start, line_end
        if found and start < found[-1][1]:
            continue
        found.append((start, end, kind))
    return found


# --- computing -------------------------------------------------------------------------------


def window(prefix: str, suffix: str, budget: int, count: Callable[[str], int]) -> tuple[str, str]:
    """Trim the prefix from the top and the suffix from the bottom, on line boundaries."""
    prefix_budget = int(budget * 0.7)
    if count(prefix) > prefix_budget:
        lines = prefix.split("\n")
        kept: list[str] = [lines.pop()]
        used = count(kept[0])
        while lines and used + count(lines[-1]) + 1 <= prefix_budget:
            used += count(lines[-1]) + 1
            kept.append(lines.pop())
        prefix = "\n".join(reversed(kept))
    suffix_budget = max(16, budget - count(prefix))
    if count(suffix) > suffix_budget:
        lines = suffix.split("\n")
        kept = [lines.pop(0)]
        used = count(kept[0])
        while lines and used + count(lines[0]) + 1 <= suffix_budget:
            used += count(lines[0]) + 1
            kept.append(lines.pop(0))
        suffix = "\n".join(kept)
    return prefix, suffix


def no_new_errors(grammar: str | None, old: str, new: str) -> bool:
    """The edited text has no more tree-sitter errors than the original (and, for Python, still
    compiles when the original did)."""
    if grammar is None:
        return True
    if syntax.text_error_count(grammar, new) > syntax.text_error_count(grammar, old):
        return False
    return not (grammar == "python" and _compiles(old) and not _compiles(new))


def _compiles(source: str) -> bool:
    try:
        ast.parse(source)
    except Exception:
        return False
    return True


def apply_edits(text: str, edits: list[Edit]) -> str:
    for edit in sorted(edits, key=lambda e: e.start, reverse=True):
        text = text[: edit.start] + edit.new_text + text[edit.end :]
    return text


class ActionError(Exception):
    """The action could not produce a valid edit; the message is for the user."""


def compute(
    candidate: Candidate,
    text: str,
    grammar: str | None,
    tree,
    infill: Infill,
    count: Callable[[str], int],
    canvas_length: int,
    budget: int,
    path: str | None = None,
    attempts: int = ATTEMPTS,
    infill_many: InfillMany | None = None,
) -> list[Edit]:
    """The edits for a candidate (on `text`, whose tree is `tree`). Raises ActionError.

    With `infill_many`, several holes (the placeholders of a function) are filled in one batch of
    canvases first; holes whose answer was not valid are then retried one by one."""
    unit = detect_indent_unit(text)
    eol = eol_of(text)
    node = None
    if candidate.action != "rewrite":
        node = _node_for(text, grammar, tree, candidate)
        if node is None:
            raise ActionError("the function is no longer there; ask for code actions again")
    if candidate.action == "implement":
        jobs = [_implement_job(text, grammar, node, unit, eol, canvas_length)]
    elif candidate.action == "docstring":
        jobs = [_docstring_job(text, grammar, node, unit, eol, canvas_length)]
    elif candidate.action == "placeholders":
        jobs = _placeholder_jobs(text, grammar, node, unit, eol, canvas_length)
    else:
        jobs = [_rewrite_job(text, candidate, unit, eol, canvas_length, count, path)]
    jobs = [job for job in jobs if job is not None]
    if not jobs:
        raise ActionError("nothing to fill here")

    batched = infill_many is not None and len(jobs) > 1
    together = _fill_together(jobs, text, grammar, infill_many, count, budget, path) if batched else {}
    edits: list[Edit] = list(together.values())
    # Holes the batch left unfilled are retried one by one (from the next seed), seeing the fills so far.
    first_seed = 1 if batched else 0
    for index, job in enumerate(jobs):
        if index in together:
            continue
        edit = _fill(job, text, edits, grammar, infill, count, budget, path, attempts, first_seed)
        if edit is not None:
            edits.append(edit)
    edits.sort(key=lambda e: e.start)
    if not edits:
        raise ActionError("the model's answers did not give valid code; nothing was changed")
    # The result as a whole must parse; drop the last fills until it does.
    while edits and not no_new_errors(grammar, text, apply_edits(text, edits)):
        edits.pop()
    if not edits:
        raise ActionError("the model's answers did not give valid code; nothing was changed")
    return edits


def _node_for(text: str, grammar: str | None, tree, candidate: Candidate):
    if tree is None or grammar is None:
        return None
    spec = syntax.SPECS[grammar]
    kinds = spec.functions | spec.classes
    start_byte = _byte(text, candidate.start)
    end_byte = _byte(text, candidate.end)
    node = tree.root_node.descendant_for_byte_range(start_byte, end_byte)
    while node is not None:
        if node.type in kinds and node.start_byte == start_byte and node.end_byte == end_byte:
            return node
        node = node.parent
    return None


@dataclass
class _Slot:
    """A job placed in the text with the fills done so far."""

    working: str
    start: int
    end: int
    prefix: str
    suffix: str


def _slot(job: Job, text: str, done: list[Edit], count: Callable[[str], int], budget: int) -> _Slot:
    working = apply_edits(text, done)
    shift = sum(len(e.new_text) - (e.end - e.start) for e in done if e.end <= job.region[0])
    start, end = job.region[0] + shift, job.region[1] + shift
    prefix, suffix = window(working[:start] + job.prefix, job.suffix + working[end:], budget, count)
    return _Slot(working, start, end, prefix, suffix)


def _request(job: Job, slot: _Slot, grammar: str | None, path: str | None, seed: int) -> InfillRequest:
    return InfillRequest(
        prefix=slot.prefix,
        suffix=slot.suffix,
        language=grammar,
        path=path,
        snippets=job.snippets,
        max_tokens=job.canvas,
        seed=seed,
    )


def _accept(raw: str, job: Job, slot: _Slot, grammar: str | None) -> Edit | None:
    """The edit for an answer, if it (or its longest prefix of lines) adds no syntax error."""
    rendered = _render(raw, job)
    if rendered is None:
        return None

    def valid(replacement: str) -> bool:
        return no_new_errors(
            grammar, slot.working, slot.working[: slot.start] + replacement + slot.working[slot.end :]
        )

    if valid(rendered):
        return Edit(job.region[0], job.region[1], rendered)
    # Keep the longest prefix of lines that parses (the block may have run on).
    trimmed = _trim_lines(rendered, job, valid)
    return Edit(job.region[0], job.region[1], trimmed) if trimmed is not None else None


def _fill(
    job: Job,
    text: str,
    done: list[Edit],
    grammar: str | None,
    infill: Infill,
    count: Callable[[str], int],
    budget: int,
    path: str | None,
    attempts: int = ATTEMPTS,
    first_seed: int = 0,
) -> Edit | None:
    """Fill one hole (after the previous fills), trying a few seeds; None when nothing valid came."""
    slot = _slot(job, text, done, count, budget)
    for seed in range(first_seed, first_seed + attempts):
        edit = _accept(infill(_request(job, slot, grammar, path, seed)), job, slot, grammar)
        if edit is not None:
            return edit
    return None


def _fill_together(
    jobs: list[Job],
    text: str,
    grammar: str | None,
    infill_many: InfillMany,
    count: Callable[[str], int],
    budget: int,
    path: str | None,
) -> dict[int, Edit]:
    """Every hole in one batch of canvases, each seeing the others as they are; the answers that
    are valid on their own and together are kept (by job index)."""
    slots = [_slot(job, text, [], count, budget) for job in jobs]
    answers = infill_many(
        [_request(job, slot, grammar, path, 0) for job, slot in zip(jobs, slots, strict=True)]
    )
    accepted: dict[int, Edit] = {}
    for index, (job, slot, raw) in enumerate(zip(jobs, slots, answers, strict=True)):
        edit = _accept(raw, job, slot, grammar)
        if edit is None:
            continue
        combined = [*accepted.values(), edit]
        if no_new_errors(grammar, text, apply_edits(text, combined)):
            accepted[index] = edit
    return accepted


def _render(raw: str, job: Job) -> str | None:
    if job.mode == "text":
        return job.render(raw)
    suggestion = postprocess(raw, job.hole)
    if suggestion is None:
        return None
    text = suggestion.text
    if suggestion.replace_after:
        # The hole's region ends before the characters the suggestion re-typed: drop them.
        text = text[: len(text) - suggestion.replace_after]
    return job.render(text) if text.strip() else None


def _trim_lines(rendered: str, job: Job, valid: Callable[[str], bool]) -> str | None:
    if job.mode != "block":
        return None
    lines = rendered.split(job.hole.eol)
    for end in range(len(lines) - 1, 0, -1):
        candidate = job.hole.eol.join(lines[:end])
        if candidate.strip() and valid(candidate):
            return candidate
    return None


def _block_hole(before: str, block_indent: str, unit: str, eol: str, suffix: str, max_lines: int) -> Hole:
    next_lines = tuple(line for line in suffix.replace("\r\n", "\n").split("\n") if line.strip())[:3]
    return Hole(
        before=before,
        after="",
        next_lines=next_lines,
        previous_line=None,
        mode="multi",
        max_lines=max_lines,
        block_indent=block_indent,
        after_opener=False,
        indent_unit=unit,
        eol=eol,
    )


def _implement_job(text: str, grammar: str, node, unit: str, eol: str, canvas: int) -> Job | None:
    if grammar == "python":
        body = _python_body(text, node)
        if body is None:
            return None
        indent = body.body_indent or (body.def_indent + unit)
        if body.stub_start is not None:
            region = (body.stub_start, body.end)
            prefix, suffix = indent, ""
            render_prefix = indent
        else:
            anchor = body.docstring_end if body.docstring_end is not None else body.header_line_end
            region = (anchor, anchor)
            prefix, suffix = eol + indent, ""
            render_prefix = eol + indent
        hole = _block_hole(indent, indent, unit, eol, text[region[1] :], MAX_BODY_LINES)
        return Job(region, prefix, suffix, hole, canvas, lambda t: render_prefix + t)
    block = syntax.body_of(node)
    if block is None:
        return None
    open_end = _char_offset(text, block.start_byte) + 1
    close_start = _char_offset(text, block.end_byte) - 1
    line_start, _ = line_bounds(text, _char_offset(text, node.start_byte))
    outer = leading_ws(text[line_start:])
    indent = outer + unit
    hole = _block_hole(indent, indent, unit, eol, eol + outer + text[close_start:], MAX_BODY_LINES)
    return Job(
        (open_end, close_start),
        eol + indent,
        eol + outer,
        hole,
        canvas,
        lambda t: eol + indent + t + eol + outer,
    )


def _docstring_job(text: str, grammar: str, node, unit: str, eol: str, canvas: int) -> Job | None:
    canvas = min(canvas, 96)
    if grammar == "python":
        body = _python_body(text, node)
        if body is None:
            return None
        indent = body.body_indent or (body.def_indent + unit)
        first_body = body.stub_start
        if first_body is None:
            at, lead = body.header_line_end, eol
        else:
            at, lead = first_body, ""
        tail = eol if first_body is not None else ""

        def render_py(raw: str) -> str | None:
            content = _doc_content(raw, forbidden='"""')
            if content is None:
                return None
            lines = content.split("\n")
            if len(lines) == 1:
                doc = f'{indent}"""{lines[0]}"""'
            else:
                inner = eol.join((indent + line) if line else "" for line in lines[1:])
                doc = f'{indent}"""{lines[0]}{eol}{inner}{eol}{indent}"""'
            return lead + doc + tail

        hole = _block_hole(indent, indent, unit, eol, "", MAX_DOC_LINES)
        return Job((at, at), lead + indent + '"""', '"""' + tail, hole, canvas, render_py, mode="text")
    line_start, _ = line_bounds(text, _char_offset(text, node.start_byte))
    outer = leading_ws(text[line_start:])
    name = syntax.name_of(node) or ""
    if grammar == "go":
        opening, middle, closing = f"{outer}// {name} ", f"{outer}// ", ""
        forbidden = None
    elif grammar == "rust":
        opening, middle, closing = f"{outer}/// ", f"{outer}/// ", ""
        forbidden = None
    else:
        opening, middle, closing = f"{outer}/**{eol}{outer} * ", f"{outer} * ", f"{eol}{outer} */"
        forbidden = "*/"

    def render_comment(raw: str) -> str | None:
        content = _doc_content(raw, forbidden=forbidden)
        if content is None:
            return None
        lines = content.split("\n")
        body = (eol + middle).join(lines)
        return opening + body.rstrip() + closing + eol

    hole = _block_hole("", "", unit, eol, "", MAX_DOC_LINES)
    suffix = closing + eol
    return Job((line_start, line_start), opening, suffix, hole, canvas, render_comment, mode="text")


def _doc_content(raw: str, forbidden: str | None) -> str | None:
    text = cut_at_junk(strip_special_tokens(raw).replace("\r\n", "\n"))
    if forbidden:
        cut = text.find(forbidden)
        if cut != -1:
            text = text[:cut]
    lines = [line.strip() for line in text.split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    while lines and not lines[0]:
        lines.pop(0)
    lines = [line.lstrip("*/# ").rstrip() if line.startswith(("*", "//", "#")) else line for line in lines]
    lines = lines[:MAX_DOC_LINES]
    content = "\n".join(lines).rstrip("\\").strip()
    if not content or not any(c.isalnum() for c in content) or is_repetitive(content):
        return None
    if content.endswith('"'):
        content = content + " "  # never let the closing quotes run into a quote of the content
    return content


def _placeholder_jobs(text: str, grammar: str, node, unit: str, eol: str, canvas: int) -> list[Job]:
    jobs = []
    for start, end, kind in placeholders(text, grammar, node):
        if kind == "line":
            indent = leading_ws(text[start:end])
            hole = _block_hole(indent, indent, unit, eol, text[end:], 20)
            jobs.append(Job((start, end), indent, "", hole, min(canvas, 96), lambda t, i=indent: i + t))
        else:
            line_start, line_end = line_bounds(text, start)
            hole = Hole(
                before=text[line_start:start],
                after=text[end:line_end],
                next_lines=(),
                previous_line=None,
                mode="single",
                max_lines=1,
                block_indent=leading_ws(text[line_start:start]),
                after_opener=False,
                indent_unit=unit,
                eol=eol,
            )

            def render_expression(t: str, after: str = text[end:line_end]) -> str | None:
                return t if t.strip() and not t.strip().startswith(after.strip() or "\0") else None

            jobs.append(
                Job((start, end), "", "", hole, min(canvas, 32), render_expression, mode="expression")
            )
    return jobs


def _rewrite_job(
    text: str,
    candidate: Candidate,
    unit: str,
    eol: str,
    canvas: int,
    count: Callable[[str], int],
    path: str | None,
) -> Job:
    original = text[candidate.start : candidate.end]
    indent = leading_ws(original)
    lines = original.count("\n") + 1
    tokens = count(original)
    hole = _block_hole(indent, indent, unit, eol, text[candidate.end :], max(4, lines * 2 + 2))
    snippet = ContextSnippet(path=f"{path or 'untitled'} (lines to rewrite)", text=original, kind="selection")
    return Job(
        (candidate.start, candidate.end),
        indent,
        "",
        hole,
        min(canvas, max(16, math.ceil(tokens * 1.5) + 8)),
        lambda t: indent + t,
        snippets=[snippet],
    )
