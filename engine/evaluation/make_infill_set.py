"""Build a HumanEval-Infilling style set from source files (`dgemma make-infill-set`).

Holes come from `engine.training.holes.find_holes`, so they sit at statement boundaries:

- **single-line**: one whole line (a simple statement alone on its line, a compound statement's
  header or a decorator), indentation and newline included: `prompt` ends with a newline and
  `suffix` starts on the next line, as in OpenAI's single-line set. Lines that are a lone keyword
  (`pass`, `else:`, `try:`, `return`, `break`...) are left out: they are too easy to say anything.
- **multi-line**: 2 to `max_lines` whole lines of consecutive statements of one block, or a
  block's whole body.

Each hole's middle is at most `max_single_chars` / `max_multi_chars` characters, so that it fits
the embedded model's canvas (32 and 64 tokens at about 3.8 characters a token): the set measures
what is inside the canvas, not the canvas length. The task carries a window of the file, not the
whole file: the top-level statements that overlap `lines_before` lines above and `lines_after`
lines below the hole (whole statements, so `prompt + canonical_solution + suffix` still parses;
holes whose window does not parse are skipped). `test` and `entry_point` are empty: these tasks
are scored by exact match and parse rate. By default only the corpus's held-out files are used
(engine/training/corpus.py), so a model trained on the training split never saw them.
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

from engine.evaluation.eval_infill import MULTI_LINE, SINGLE_LINE, parses
from engine.training.corpus import HELDOUT, STDLIB, collect, corpus_key
from engine.training.holes import Cut, find_holes, python_parser

LONE_KEYWORD = re.compile(r"^\s*(pass|break|continue|return|raise|else:|try:|finally:|\.\.\.)\s*(#.*)?$")


def _top_level_spans(text: str) -> list[tuple[int, int]]:
    """(start offset, end offset) of each top-level statement and comment, whole lines."""
    tree = python_parser().parse(text.encode("utf-8"))
    starts = [0]
    for index, char in enumerate(text):
        if char == "\n":
            starts.append(index + 1)
    spans = []
    for node in tree.root_node.named_children:
        first, last = node.start_point.row, node.end_point.row
        end = starts[last + 1] if last + 1 < len(starts) else len(text)
        spans.append((starts[first], end))
    return spans


def window(
    text: str, cut: Cut, spans: list[tuple[int, int]], lines_before: int, lines_after: int
) -> tuple[int, int]:
    """Offsets [start, end) of whole top-level statements around the hole."""
    lo = cut.start
    for _ in range(lines_before):
        previous = text.rfind("\n", 0, max(0, lo - 1))
        if previous == -1:
            lo = 0
            break
        lo = previous + 1
    hi = cut.end
    for _ in range(lines_after):
        following = text.find("\n", hi)
        if following == -1:
            hi = len(text)
            break
        hi = following + 1
    start = min([s for s, e in spans if e > lo] or [0])
    start = min(start, cut.start)
    end = max([e for s, e in spans if s < hi] or [len(text)])
    end = max(end, cut.end)
    # Blank lines and comments between statements are not in any span: keep the text around the hole.
    return min(start, _line_start(text, lo)), max(end, hi)


def _line_start(text: str, offset: int) -> int:
    return text.rfind("\n", 0, offset) + 1


def make_tasks(
    files: list[tuple[str, str]],
    *,
    single: int = 500,
    multi: int = 300,
    per_file_single: int = 12,
    per_file_multi: int = 8,
    max_lines: int = 8,
    max_single_chars: int = 100,
    max_multi_chars: int = 200,
    lines_before: int = 60,
    lines_after: int = 30,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Tasks from (relative path, text) pairs, deterministic for a given seed and file list."""
    singles: list[dict[str, Any]] = []
    multis: list[dict[str, Any]] = []
    for path, text in sorted(files):
        rng = random.Random(f"{seed}:{path}")
        holes = find_holes(text, max_block_lines=max_lines)
        spans = _top_level_spans(text)
        line_cuts = [
            c
            for c in holes.lines
            if len(text[c.start : c.end]) <= max_single_chars
            and not LONE_KEYWORD.match(text[c.start : c.end])
        ]
        block_cuts = [c for c in holes.blocks if len(text[c.start : c.end]) <= max_multi_chars]
        for cuts, target, kind, limit in (
            (line_cuts, singles, SINGLE_LINE, per_file_single),
            (block_cuts, multis, MULTI_LINE, per_file_multi),
        ):
            rng.shuffle(cuts)
            taken = 0
            for cut in cuts:
                if taken >= limit:
                    break
                task = _task(path, text, cut, kind, spans, lines_before, lines_after)
                if task is not None:
                    target.append(task)
                    taken += 1
    rng = random.Random(seed)
    rng.shuffle(singles)
    rng.shuffle(multis)
    chosen = sorted(singles[:single], key=_order) + sorted(multis[:multi], key=_order)
    return chosen


def _order(task: dict[str, Any]) -> tuple[str, int]:
    return task["path"], task["line"]


def _task(
    path: str, text: str, cut: Cut, kind: str, spans: list[tuple[int, int]], before: int, after: int
) -> dict[str, Any] | None:
    start, end = window(text, cut, spans, before, after)
    prompt, middle, suffix = text[start : cut.start], text[cut.start : cut.end], text[cut.end : end]
    if not middle.strip() or not parses(prompt + middle + suffix):
        return None
    first_line = text.count("\n", 0, cut.start) + 1
    last_line = first_line + middle.count("\n") - (1 if middle.endswith("\n") else 0)
    tag = "SingleLine" if kind == SINGLE_LINE else "MultiLine"
    lines = f"L{first_line}" if first_line == last_line else f"L{first_line}-{last_line}"
    return {
        "task_id": f"Stdlib{tag}Infilling/{path}/{lines}",
        "prompt": prompt,
        "suffix": suffix,
        "canonical_solution": middle,
        "test": "",
        "entry_point": "",
        "kind": kind,
        "path": path,
        "line": first_line,
    }


def files_from(
    src_dir: str | Path,
    split: str = HELDOUT,
    packages_dir: str | Path | None = None,
    packages_only: bool = False,
) -> list[tuple[str, str]]:
    """(corpus path, text) of the corpus files under `src_dir` (and the unpacked packages under
    `packages_dir`; with `packages_only`, only theirs) on the `split` side ("all": every file)."""
    corpus = collect(src_dir, packages_dir=packages_dir)
    chosen = corpus.files if split == "all" else corpus.split(split)
    if packages_only:
        chosen = [f for f in chosen if f.source != STDLIB]
    return [(corpus_key(f), corpus.read(f)) for f in chosen]


def main_make_infill_set(args: Any) -> int:
    from engine.evaluation.eval_infill import write_tasks

    files = files_from(args.src_dir, args.split, getattr(args, "packages", None))
    if getattr(args, "packages_only", False):
        files = [
            (path, text) for path, text in files if "/" in path and not Path(args.src_dir, path).is_file()
        ]
    if not files:
        print(f"no {args.split} Python files found under {args.src_dir}")
        return 1
    tasks = make_tasks(
        files,
        single=args.single,
        multi=args.multi,
        max_lines=args.max_lines,
        lines_before=args.lines_before,
        lines_after=args.lines_after,
        seed=args.seed,
    )
    count = write_tasks(tasks, Path(args.out))
    kinds = {k: sum(t["kind"] == k for t in tasks) for k in (SINGLE_LINE, MULTI_LINE)}
    print(
        f"wrote {count} tasks ({kinds[SINGLE_LINE]} single-line, {kinds[MULTI_LINE]} multi-line) "
        f"from {len(files)} files to {args.out}"
    )
    return 0
