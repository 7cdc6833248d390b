"""`dgemma suggest`: ask the real language server for a suggestion at a place in a file.

It starts `dgemma-lsp` as an editor would (stdio, the same settings), opens the file, sends one
inline-completion request at the cursor and prints the lines around it with the suggestion
inserted (marked `>`), and how long the server took. Without a file it uses a small Python
example with the cursor in an empty function body, so a newcomer sees the whole path (context,
model, post-processing) work on the embedded model.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

from dgemma_lsp.client import (
    open_document,
    replaced_chars,
    settings_from_args,
    start_server,
    stop_server,
    utf16_length,
)

EXAMPLE = """import math


class Circle:
    def __init__(self, radius):
        self.radius = radius

    def area(self):
        return math.pi * self.radius ** 2

    def circumference(self):
"""
EXAMPLE += " " * 8 + "\n"
EXAMPLE_CURSOR = (11, 8)  # 0-based line and column: the empty body of `circumference`

LANGUAGES = {
    ".py": "python",
    ".js": "javascript",
    ".ts": "typescript",
    ".go": "go",
    ".rs": "rust",
    ".c": "c",
    ".h": "c",
    ".cc": "cpp",
    ".cpp": "cpp",
    ".java": "java",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "suggest",
        help="ask the language server for a suggestion at a place in a file (default: an example)",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    p.add_argument("file", nargs="?", default=None, help="source file (default: a small Python example)")
    p.add_argument("--line", type=int, default=None, help="1-based line of the cursor (default: the last)")
    p.add_argument(
        "--column", type=int, default=None, help="1-based column of the cursor (default: the end of the line)"
    )
    p.add_argument("--model", default=None, help="checkpoint folder or hub id (default: the embedded model)")
    p.add_argument("--device", default="auto")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's)")
    p.add_argument(
        "--setting", action="append", default=[], metavar="KEY=JSON", help="any other server setting"
    )
    p.set_defaults(func=run)


def cursor_of(text: str, line: int | None, column: int | None) -> tuple[int, int]:
    """0-based (line, column in characters) from 1-based arguments; default: the end of the last line."""
    lines = text.split("\n")
    if line is None:
        # The last line; the empty string after a final newline is not a line of its own.
        line = len(lines) - 2 if len(lines) > 1 and lines[-1] == "" else len(lines) - 1
    else:
        line -= 1
    if not 0 <= line < len(lines):
        raise ValueError(f"line {line + 1} is outside the file (1 to {len(lines)})")
    length = len(lines[line])
    column = length if column is None else column - 1
    if not 0 <= column <= length:
        raise ValueError(f"column {column + 1} is outside line {line + 1} (1 to {length + 1})")
    return line, column


def run(args: argparse.Namespace) -> int:
    if args.file is None:
        folder = Path(tempfile.mkdtemp(prefix="dgemma-suggest-"))
        path = folder / "shapes.py"
        path.write_text(EXAMPLE, encoding="utf-8")
        text, (line, column) = EXAMPLE, EXAMPLE_CURSOR
    else:
        path = Path(args.file)
        try:
            text = path.read_text(encoding="utf-8").replace("\r\n", "\n")
            line, column = cursor_of(text, args.line, args.column)
        except (OSError, UnicodeDecodeError, ValueError) as error:
            print(f"error: {path}: {error}", file=sys.stderr)
            return 1
    settings = settings_from_args(args, device=args.device)
    language = LANGUAGES.get(path.suffix.lower(), "plaintext")
    return asyncio.run(ask(path, text, language, line, column, settings))


async def ask(path: Path, text: str, language: str, line: int, column: int, settings: dict) -> int:
    from lsprotocol import types

    print(f"starting dgemma-lsp ({json.dumps(settings)}) ...", flush=True)
    client, state, load_s = await start_server(settings)
    try:
        if state.get("state") != "ready":
            print(f"error: the model did not load: {state.get('error')}", file=sys.stderr)
            return 1
        print(f"ready in {load_s:.1f} s: {state.get('backend')}")
        uri = path.resolve().as_uri()
        open_document(client, uri, text, language)
        lines = text.split("\n")
        params = types.InlineCompletionParams(
            text_document=types.TextDocumentIdentifier(uri=uri),
            position=types.Position(line=line, character=utf16_length(lines[line][:column])),
            context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Invoked),
        )
        started = time.perf_counter()
        result = await client.text_document_inline_completion_async(params)
        elapsed_ms = (time.perf_counter() - started) * 1000
        items = list(result.items) if result is not None else []
        print(f"{path}:{line + 1}:{column + 1}, answered in {elapsed_ms:.0f} ms")
        if not items:
            print("no suggestion here (the server judged none useful, or the model's output was rejected)")
            return 0
        insert = items[0].insert_text
        insert = insert if isinstance(insert, str) else insert.value
        print(render(lines, line, column, insert, items[0].range))
        return 0
    finally:
        await stop_server(client)


def render(lines: list[str], line: int, column: int, insert: str, replaced=None, around: int = 6) -> str:
    """The lines around the cursor with `insert` placed there; suggested lines start with `>`."""
    after = lines[line][column:]
    if replaced is not None and replaced.end.line == line:
        # The item replaces text after the cursor (an auto-closed bracket): drop those characters.
        after = after[replaced_chars(after, replaced) :]
    new = (lines[line][:column] + insert + after).split("\n")
    first = max(0, line - around)
    out = [f"  {text}" for text in lines[first:line]]
    out += [f"> {text}" for text in new]
    out += [f"  {text}" for text in lines[line + 1 : line + 1 + 2]]
    return "\n".join(out)
