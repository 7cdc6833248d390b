"""`dgemma bench-lsp`: replay a typing trace through the real language server process.

For each chosen line of real source files (by default held-out files of the standard library,
which the embedded model was not trained on), the line is cleared to its indentation and typed
again character by character; after every keystroke the client asks for an inline completion,
as an editor with no debounce would, and waits for the answer. Printed (never asserted):

- p50 / p95 / mean latency of the inline-completion requests, all and model-served only;
- the share of requests served from the typing-through cache (server counters);
- the share of shown suggestions after which the file parses (tree-sitter, no error), and the
  share that equal the rest of the line as it was written.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from dgemma_lsp.client import (
    change_document,
    open_document,
    replaced_chars,
    server_status,
    settings_from_args,
    start_server,
    stop_server,
    utf16_length,
)

FALLBACK_FILES = ("textwrap.py", "shlex.py", "fnmatch.py", "colorsys.py", "heapq.py", "bisect.py")
MAX_FILE_BYTES = 60_000


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "bench-lsp",
        help="replay a typing trace through the language server; print latency, cache and parse figures",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    p.add_argument(
        "--files", nargs="*", default=None, help="source files to type in (default: held-out stdlib files)"
    )
    p.add_argument("--num-files", type=int, default=6, help="how many held-out stdlib files (default 6)")
    p.add_argument("--lines", type=int, default=4, help="lines typed per file (default 4)")
    p.add_argument("--model", default=None, help="checkpoint folder or hub id (default: the embedded model)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's)")
    p.add_argument(
        "--deadline-ms", type=int, default=None, help="per-request deadline (default: the server's)"
    )
    p.add_argument(
        "--setting", action="append", default=[], metavar="KEY=JSON", help="any other server setting"
    )
    p.add_argument("--seed", type=int, default=0, help="chooses the files and lines, and seeds the sampler")
    p.add_argument("--json", dest="json_out", default=None, help="also write the figures to this JSON file")
    p.set_defaults(func=run)


@dataclass
class Trace:
    path: str
    text: str
    lines: list[int]


@dataclass
class Figures:
    latencies_ms: list[float] = field(default_factory=list)
    model_latencies_ms: list[float] = field(default_factory=list)  # requests answered by a new generation
    shown: int = 0
    shown_from_cache: int = 0
    parseable: int = 0
    exact: int = 0
    requests: int = 0


def choose_files(args: argparse.Namespace, rng: random.Random) -> list[Path]:
    if args.files:
        return [Path(f) for f in args.files]
    try:
        from engine.training.corpus import HELDOUT, collect
    except ImportError:  # the training extras are not installed: a fixed list of stdlib modules
        import sysconfig

        stdlib = Path(sysconfig.get_paths()["stdlib"])
        candidates = [stdlib / name for name in FALLBACK_FILES]
    else:
        corpus = collect()
        candidates = [corpus.root / f.path for f in corpus.split(HELDOUT) if f.bytes <= MAX_FILE_BYTES]
    candidates = sorted(p for p in candidates if p.is_file())
    return rng.sample(candidates, min(args.num_files, len(candidates)))


def choose_lines(text: str, count: int, rng: random.Random) -> list[int]:
    """Indented code lines of a reasonable length (not comments, docstrings or decorators)."""
    lines = text.split("\n")
    good = []
    for number, line in enumerate(lines):
        stripped = line.strip()
        if not line.startswith((" ", "\t")) or not 8 <= len(stripped) <= 72:
            continue
        if stripped.startswith(("#", '"', "'", "@", ")", "]", "}")) or stripped.endswith(("\\", ",")):
            continue
        good.append(number)
    return sorted(rng.sample(good, min(count, len(good))))


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run(args: argparse.Namespace) -> int:
    rng = random.Random(args.seed)
    traces = []
    for path in choose_files(args, rng):
        text = path.read_text(encoding="utf-8").replace("\r\n", "\n")
        lines = choose_lines(text, args.lines, rng)
        if lines:
            traces.append(Trace(str(path), text, lines))
    if not traces:
        print("error: no lines to type in the chosen files", file=sys.stderr)
        return 1
    settings = settings_from_args(args, device=args.device, dtype=args.dtype, seed=args.seed)
    if args.deadline_ms:
        settings["deadlineMs"] = args.deadline_ms
    return asyncio.run(replay(traces, settings, args))


async def replay(traces: list[Trace], settings: dict, args: argparse.Namespace) -> int:
    from lsprotocol import types

    from dgemma_lsp import syntax

    client, state, load_s = await start_server(settings)
    if state.get("state") != "ready":
        print(f"error: the model did not load: {state.get('error')}", file=sys.stderr)
        await stop_server(client)
        return 1
    print(f"server ready in {load_s:.1f} s: {state.get('backend')}")
    before = await server_status(client)

    figures = Figures()
    for index, trace in enumerate(traces):
        uri = Path(trace.path).resolve().as_uri()
        version = 1
        text = trace.text
        open_document(client, uri, text, "python", version)
        baseline_errors = syntax.text_error_count("python", text)
        for number in trace.lines:
            original = text.split("\n")[number]
            indent = original[: len(original) - len(original.lstrip())]
            content = original[len(indent) :]
            version += 1
            change_document(client, uri, version, (number, 0), (number, 10_000), indent)
            lines = text.split("\n")
            for typed in range(len(content)):
                column = len(indent) + typed
                lines[number] = indent + content[:typed]
                params = types.InlineCompletionParams(
                    text_document=types.TextDocumentIdentifier(uri=uri),
                    position=types.Position(line=number, character=utf16_length(lines[number][:column])),
                    context=types.InlineCompletionContext(
                        trigger_kind=types.InlineCompletionTriggerKind.Automatic
                    ),
                )
                t0 = time.perf_counter()
                result = await client.text_document_inline_completion_async(params)
                elapsed = (time.perf_counter() - t0) * 1000
                figures.requests += 1
                figures.latencies_ms.append(elapsed)
                items = list(result.items) if result is not None else []
                if items:
                    item = items[0]
                    source = (item.command.arguments or [{}])[0].get("source") if item.command else None
                    if source == "cache":
                        figures.shown_from_cache += 1
                    elif source == "model":
                        figures.model_latencies_ms.append(elapsed)
                    figures.shown += 1
                    insert = item.insert_text if isinstance(item.insert_text, str) else item.insert_text.value
                    line_text = lines[number]
                    completed = (
                        line_text[:column] + insert + line_text[column + _chars(line_text, column, item) :]
                    )
                    after = "\n".join([*lines[:number], completed, *lines[number + 1 :]])
                    if syntax.text_error_count("python", after) <= baseline_errors:
                        figures.parseable += 1
                    if (line_text[:column] + insert).rstrip() == original.rstrip():
                        figures.exact += 1
                version += 1
                end = (number, utf16_length(lines[number]))
                change_document(client, uri, version, end, end, content[typed])
            lines[number] = original
            text = "\n".join(lines)
        client.text_document_did_close(
            types.DidCloseTextDocumentParams(text_document=types.TextDocumentIdentifier(uri=uri))
        )
        print(
            f"  {index + 1}/{len(traces)} {trace.path}: lines {', '.join(str(n + 1) for n in trace.lines)}",
            flush=True,
        )

    after_state = await server_status(client)
    await stop_server(client)
    report(figures, before, after_state, traces, settings, load_s, args)
    return 0


def _chars(line: str, column: int, item) -> int:
    """Characters after the cursor that the item's range replaces."""
    return 0 if item.range is None else replaced_chars(line[column:], item.range)


def _share(after: dict, before: dict, part: str, whole: str) -> float | None:
    total = after.get(whole, 0) - before.get(whole, 0)
    return (after.get(part, 0) - before.get(part, 0)) / total if total else None


def report(figures: Figures, before: dict, after: dict, traces, settings, load_s: float, args) -> None:
    requests = max(1, after["requests"] - before["requests"])
    cache_hits = after["cache_hits"] - before["cache_hits"]
    data = {
        "files": len(traces),
        "lines": sum(len(t.lines) for t in traces),
        "requests": figures.requests,
        "latency_p50_ms": percentile(figures.latencies_ms, 0.5),
        "latency_p95_ms": percentile(figures.latencies_ms, 0.95),
        "latency_mean_ms": statistics.fmean(figures.latencies_ms) if figures.latencies_ms else None,
        "model_request_latency_p50_ms": percentile(figures.model_latencies_ms, 0.5),
        "model_request_latency_p95_ms": percentile(figures.model_latencies_ms, 0.95),
        "served_from_cache": cache_hits / requests,
        "prompt_kv_reused": _share(after, before, "cached_prompt_tokens", "prompt_tokens"),
        "model_calls": after["model_calls"] - before["model_calls"],
        "no_suggestion_decisions": after["skipped"] - before["skipped"],
        "shown": figures.shown,
        "shown_share": figures.shown / max(1, figures.requests),
        "shown_from_cache": figures.shown_from_cache,
        "parseable_share": figures.parseable / figures.shown if figures.shown else None,
        "exact_share": figures.exact / figures.shown if figures.shown else None,
        "deadline_exceeded": after["deadline_exceeded"] - before["deadline_exceeded"],
        "server_load_s": round(load_s, 2),
        "backend": after.get("backend"),
        "settings": settings,
        "cpu_count": os.cpu_count(),
    }

    def ms(value) -> str:
        return "-" if value is None else f"{value:.0f} ms"

    def share(value) -> str:
        return "-" if value is None else f"{100 * value:.1f} %"

    print()
    print(
        f"dgemma bench-lsp: {data['files']} files, {data['lines']} lines typed, {data['requests']} requests"
    )
    print(f"  backend                       {data['backend']}")
    print(f"  inline latency p50 / p95      {ms(data['latency_p50_ms'])} / {ms(data['latency_p95_ms'])}")
    print(f"  mean                          {ms(data['latency_mean_ms'])}")
    print(
        f"  freshly generated p50 / p95   {ms(data['model_request_latency_p50_ms'])} / "
        f"{ms(data['model_request_latency_p95_ms'])}"
    )
    print(f"  served from cache             {share(data['served_from_cache'])} of requests")
    print(f"  prompt KV reused              {share(data['prompt_kv_reused'])} of prompt tokens")
    print(
        f"  model calls                   {data['model_calls']} (deadline exceeded: {data['deadline_exceeded']})"
    )
    print(f"  suggestions shown             {data['shown']} ({share(data['shown_share'])} of requests)")
    print(f"  leave the file parseable      {share(data['parseable_share'])} of shown suggestions")
    print(f"  equal the line as written     {share(data['exact_share'])} of shown suggestions")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        print(f"  figures written to {args.json_out}")
