"""`dgemma bench-lsp`: replay editing traces through the real language server process.

Two scenarios on real source files (by default held-out files of the standard library, which
the embedded model was not trained on), in one server session, printed side by side (never
asserted):

- jump: the cursor jumps to a random line, whose rest (after a random word boundary) is cleared,
  and the client asks once: the first suggestion at a new place, with no typing history and so
  little prompt KV to reuse. Runs first, so its first request is the session's first.
- retype: a chosen line is cleared to its indentation and typed again character by character;
  after every keystroke the client asks for an inline completion, as an editor with no debounce
  would, and waits for the answer.

For each: p50 / p95 / mean latency of the inline-completion requests (all and freshly generated),
the share answered (a suggestion shown), the share useful (the suggestion completes the line
exactly as it was written), the share after which the file parses (tree-sitter, no new error),
the share served from the typing-through cache and of prompt tokens whose KV was reused.
`--profile` instead times the stages of cold requests in this process (no server): context
building, tokenising, prefill, denoising and post-processing, and prefill time by prompt length.
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
        help="replay jumps and typing through the language server; print latency, cache and parse figures",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    p.add_argument(
        "--files", nargs="*", default=None, help="source files to edit (default: held-out stdlib files)"
    )
    p.add_argument("--num-files", type=int, default=6, help="how many held-out stdlib files (default 6)")
    p.add_argument("--lines", type=int, default=4, help="lines retyped per file (default 4)")
    p.add_argument("--jumps", type=int, default=5, help="cursor jumps per file (default 5)")
    p.add_argument(
        "--scenario",
        choices=("both", "jump", "retype"),
        default="both",
        help="jump: first suggestion at a new place; retype: typing a line again (default both)",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="time the stages of cold requests in this process (no server) instead",
    )
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
    lines: list[int]  # retyped
    jumps: list[tuple[int, int]] = field(default_factory=list)  # (line, column) the cursor jumps to


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


def jump_column(line: str, rng: random.Random) -> int:
    """A random word boundary in the first half of the line's code (its indentation included):
    where a user who moved there would start or continue typing. Never inside an identifier,
    where the server rightly suggests nothing."""
    indent = len(line) - len(line.lstrip())
    code = line[indent:]
    columns = [indent] + [
        indent + i for i in range(1, len(code) // 2 + 1) if not (code[i - 1].isalnum() or code[i - 1] == "_")
    ]
    return rng.choice(columns)


def choose_jumps(text: str, count: int, rng: random.Random, avoid: list[int]) -> list[tuple[int, int]]:
    """Lines (not the retyped ones) and columns the cursor jumps to, in a random order."""
    lines = text.split("\n")
    candidates = [n for n in choose_lines(text, 10**6, rng) if n not in avoid]
    chosen = rng.sample(candidates, min(count, len(candidates)))
    return [(n, jump_column(lines[n], rng)) for n in chosen]


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
        lines = choose_lines(text, args.lines, rng) if args.scenario != "jump" and not args.profile else []
        jumps = choose_jumps(text, args.jumps, rng, lines) if args.scenario != "retype" else []
        if lines or jumps:
            traces.append(Trace(str(path), text, lines, jumps))
    if not traces:
        print("error: no lines to edit in the chosen files", file=sys.stderr)
        return 1
    settings = settings_from_args(args, device=args.device, dtype=args.dtype, seed=args.seed)
    if args.deadline_ms:
        settings["deadlineMs"] = args.deadline_ms
    if args.profile:
        return profile_cold(traces, settings)
    return asyncio.run(replay(traces, settings, args))


class Session:
    """One open document in the server, edited and asked as an editor would."""

    def __init__(self, client, trace: Trace):
        from dgemma_lsp import syntax

        self.client = client
        self.uri = Path(trace.path).resolve().as_uri()
        self.version = 1
        self.lines = trace.text.split("\n")
        open_document(client, self.uri, trace.text, "python", self.version)
        self.baseline_errors = syntax.text_error_count("python", trace.text)

    def replace_line(self, number: int, text: str) -> None:
        self.version += 1
        change_document(self.client, self.uri, self.version, (number, 0), (number, 10_000), text)
        self.lines[number] = text

    def type(self, number: int, char: str) -> None:
        self.version += 1
        end = (number, utf16_length(self.lines[number]))
        change_document(self.client, self.uri, self.version, end, end, char)
        self.lines[number] += char

    async def ask(self, number: int, original: str, figures: Figures) -> dict | None:
        """Ask at the end of line `number` (as it is now); score the answer against `original`."""
        from lsprotocol import types

        from dgemma_lsp import syntax

        line_text = self.lines[number]
        column = len(line_text)
        params = types.InlineCompletionParams(
            text_document=types.TextDocumentIdentifier(uri=self.uri),
            position=types.Position(line=number, character=utf16_length(line_text)),
            context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Automatic),
        )
        t0 = time.perf_counter()
        result = await self.client.text_document_inline_completion_async(params)
        elapsed = (time.perf_counter() - t0) * 1000
        figures.requests += 1
        figures.latencies_ms.append(elapsed)
        items = list(result.items) if result is not None else []
        if not items:
            return None
        item = items[0]
        source = (item.command.arguments or [{}])[0].get("source") if item.command else None
        if source == "cache":
            figures.shown_from_cache += 1
        elif source == "model":
            figures.model_latencies_ms.append(elapsed)
        figures.shown += 1
        insert = item.insert_text if isinstance(item.insert_text, str) else item.insert_text.value
        completed = line_text[:column] + insert + line_text[column + _chars(line_text, column, item) :]
        after = "\n".join([*self.lines[:number], completed, *self.lines[number + 1 :]])
        if syntax.text_error_count("python", after) <= self.baseline_errors:
            figures.parseable += 1
        if (line_text[:column] + insert).rstrip() == original.rstrip():
            figures.exact += 1
        return {"insert": insert, "ms": elapsed}

    def close(self) -> None:
        from lsprotocol import types

        self.client.text_document_did_close(
            types.DidCloseTextDocumentParams(text_document=types.TextDocumentIdentifier(uri=self.uri))
        )


async def jump_scenario(client, traces: list[Trace], figures: Figures) -> float | None:
    """Returns the latency of the session's first request."""
    first = None
    for trace in traces:
        session = Session(client, trace)
        for number, column in trace.jumps:
            original = session.lines[number]
            session.replace_line(number, original[:column])
            await session.ask(number, original, figures)
            if first is None:
                first = figures.latencies_ms[-1]
            session.replace_line(number, original)
        session.close()
    return first


async def retype_scenario(client, traces: list[Trace], figures: Figures) -> None:
    for index, trace in enumerate(traces):
        session = Session(client, trace)
        for number in trace.lines:
            original = session.lines[number]
            indent = original[: len(original) - len(original.lstrip())]
            session.replace_line(number, indent)
            for char in original[len(indent) :]:
                await session.ask(number, original, figures)
                session.type(number, char)
        session.close()
        print(
            f"  {index + 1}/{len(traces)} {trace.path}: lines {', '.join(str(n + 1) for n in trace.lines)}",
            flush=True,
        )


async def replay(traces: list[Trace], settings: dict, args: argparse.Namespace) -> int:
    client, state, load_s = await start_server(settings)
    if state.get("state") != "ready":
        print(f"error: the model did not load: {state.get('error')}", file=sys.stderr)
        await stop_server(client)
        return 1
    print(
        f"server ready in {load_s:.1f} s: {state.get('backend')} (context budget {state.get('context_budget')})"
    )
    results = {}
    first_ms = None
    for name, scenario in (("jump", jump_scenario), ("retype", retype_scenario)):
        if args.scenario not in ("both", name) or not any(
            t.jumps if name == "jump" else t.lines for t in traces
        ):
            continue
        before = await server_status(client)
        figures = Figures()
        outcome = await scenario(client, traces, figures)
        if name == "jump":
            first_ms = outcome
        results[name] = summarise(figures, before, await server_status(client))
    after_state = await server_status(client)
    await stop_server(client)
    report(results, first_ms, after_state, traces, settings, load_s, args)
    return 0


def _chars(line: str, column: int, item) -> int:
    """Characters after the cursor that the item's range replaces."""
    return 0 if item.range is None else replaced_chars(line[column:], item.range)


def _share(after: dict, before: dict, part: str, whole: str) -> float | None:
    total = after.get(whole, 0) - before.get(whole, 0)
    return (after.get(part, 0) - before.get(part, 0)) / total if total else None


def summarise(figures: Figures, before: dict, after: dict) -> dict:
    requests = max(1, after["requests"] - before["requests"])
    return {
        "requests": figures.requests,
        "latency_p50_ms": percentile(figures.latencies_ms, 0.5),
        "latency_p95_ms": percentile(figures.latencies_ms, 0.95),
        "latency_mean_ms": statistics.fmean(figures.latencies_ms) if figures.latencies_ms else None,
        "model_request_latency_p50_ms": percentile(figures.model_latencies_ms, 0.5),
        "model_request_latency_p95_ms": percentile(figures.model_latencies_ms, 0.95),
        "served_from_cache": (after["cache_hits"] - before["cache_hits"]) / requests,
        "prompt_kv_reused": _share(after, before, "cached_prompt_tokens", "prompt_tokens"),
        "prompt_tokens_per_call": _per_call(after, before, "prompt_tokens"),
        "model_calls": after["model_calls"] - before["model_calls"],
        "no_suggestion_decisions": after["skipped"] - before["skipped"],
        "shown": figures.shown,
        "shown_share": figures.shown / max(1, figures.requests),
        "shown_from_cache": figures.shown_from_cache,
        "useful_share": figures.exact / max(1, figures.requests),
        "parseable_share": figures.parseable / figures.shown if figures.shown else None,
        "exact_share": figures.exact / figures.shown if figures.shown else None,
        "deadline_exceeded": after["deadline_exceeded"] - before["deadline_exceeded"],
    }


def _per_call(after: dict, before: dict, key: str) -> float | None:
    calls = after["model_calls"] - before["model_calls"]
    return (after.get(key, 0) - before.get(key, 0)) / calls if calls else None


ROWS = (
    ("requests", "requests", "{:.0f}"),
    ("inline latency p50", "latency_p50_ms", "ms"),
    ("inline latency p95", "latency_p95_ms", "ms"),
    ("mean", "latency_mean_ms", "ms"),
    ("freshly generated p50", "model_request_latency_p50_ms", "ms"),
    ("freshly generated p95", "model_request_latency_p95_ms", "ms"),
    ("answered (a suggestion shown)", "shown_share", "%"),
    ("useful (completes the line as written)", "useful_share", "%"),
    ("leave the file parseable (of shown)", "parseable_share", "%"),
    ("served from cache", "served_from_cache", "%"),
    ("prompt KV reused", "prompt_kv_reused", "%"),
    ("prompt tokens per model call", "prompt_tokens_per_call", "{:.0f}"),
    ("model calls", "model_calls", "{:.0f}"),
    ("deadline exceeded", "deadline_exceeded", "{:.0f}"),
)


def _cell(value, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "ms":
        return f"{value:.0f} ms"
    if unit == "%":
        return f"{100 * value:.1f} %"
    return unit.format(value)


def report(results: dict, first_ms, after: dict, traces, settings, load_s: float, args) -> None:
    data = {
        "files": len(traces),
        "lines": sum(len(t.lines) for t in traces),
        "jumps": sum(len(t.jumps) for t in traces),
        "scenarios": results,
        "first_request_ms": first_ms,
        "server_load_s": round(load_s, 2),
        "backend": after.get("backend"),
        "context_budget": after.get("context_budget"),
        "prefill_ms": after.get("prefill_ms"),
        "settings": settings,
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    # The retyping figures keep their flat names (earlier JSON readers).
    if "retype" in results:
        data.update(results["retype"])
    print()
    print(
        f"dgemma bench-lsp: {data['files']} files, {data['jumps']} cursor jumps, {data['lines']} lines retyped"
    )
    print(f"  backend            {data['backend']}")
    print(
        f"  context budget     {data['context_budget']} prompt tokens (prefill ms by length: {data['prefill_ms']})"
    )
    print(f"  first request      {_cell(first_ms, 'ms')}")
    names = list(results)
    print(f"  {'':40}" + "".join(f"{name:>16}" for name in names))
    for label, key, unit in ROWS:
        print(f"  {label:40}" + "".join(f"{_cell(results[n][key], unit):>16}" for n in names))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        print(f"  figures written to {args.json_out}")


# --- --profile: where a cold request's time goes ---------------------------------------------


class Clock:
    """Wall time and this thread's CPU time of a stage, in ms. On a loaded machine the wall time
    includes waiting for a core; the CPU time of the calling thread (which takes part in every
    torch operation) is closer to what a quiet machine's wall clock shows."""

    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.thread_time()

    def read(self) -> tuple[float, float]:
        return (time.perf_counter() - self.wall) * 1000, (time.thread_time() - self.cpu) * 1000


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def profile_cold(traces: list[Trace], raw_settings: dict) -> int:
    """Time each stage of a cold request at every jump, in this process (no server, no deadline).

    Also measured: cold prefill time by prompt length, and what two engine-side levers would
    save: prompt tokens shared with the previous jump's prompt in the current layout (snippets
    and suffix first, what the engine reuses today) and in a prefix-first layout (file header
    and prefix window first: the KV of an unchanged document head).
    """
    import torch

    from dgemma_lsp.backends.engine import EngineBackend
    from dgemma_lsp.completion import Completer
    from dgemma_lsp.documents import DocumentStore
    from dgemma_lsp.settings import parse_settings
    from engine.prompting import FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX, fim_context_text, fim_prompt

    settings, problems = parse_settings({"dgemma": raw_settings})
    for problem in problems:
        print(f"warning: {problem}", file=sys.stderr)
    backend = EngineBackend(settings)
    clock = Clock()
    backend.start()
    if backend.state.value != "ready":
        print(f"error: the model did not load: {backend.error}", file=sys.stderr)
        return 1
    model = backend.model
    print(
        f"loaded and warmed up in {clock.read()[0] / 1000:.1f} s: {backend.description}, "
        f"{torch.get_num_threads()} threads; cold prefill ms by budget length: {backend.prefill_ms}"
    )
    store = DocumentStore()
    completer = Completer(store, settings, backend)
    print(f"context budget {completer.context_budget()} prompt tokens")

    def prefill(ids: list[int]) -> tuple[float, float]:
        cache = model.transformer.new_cache()
        clock = Clock()
        with torch.inference_mode():
            model.transformer.encode(torch.tensor([ids], device=model.device), cache)
        return clock.read()

    rows: list[dict] = []
    previous: tuple[list[int], ...] | None = None  # prompt ids: current, prefix-first, imports-first
    for trace in traces:
        lines = trace.text.split("\n")
        for number, column in trace.jumps:
            cut = [*lines[:number], lines[number][:column], *lines[number + 1 :]]
            document = store.open(Path(trace.path).resolve().as_uri(), "\n".join(cut), "python", 1)
            offset = sum(len(line) + 1 for line in cut[:number]) + column
            clock = Clock()
            outcome = completer.plan(document, offset)
            plan_ms = clock.read()
            store.close(document.uri)
            if outcome.plan is None:
                continue
            request = outcome.plan.request
            clock = Clock()
            ids = model.fim_prompt_ids(request)
            tokenise_ms = clock.read()
            prefill_ms = prefill(ids)
            model._prompt_cache = None  # cold: nothing to reuse
            clock = Clock()
            result = backend.infill(request)
            infill_ms = clock.read()
            clock = Clock()
            suggestion = completer.finish(outcome.plan, result.text)
            finish_ms = clock.read()
            header = fim_context_text(request.snippets, request.path)
            head_first = model.tokenizer.encode(
                f"{header}{FIM_PREFIX}{request.prefix}{FIM_SUFFIX}{request.suffix}{FIM_MIDDLE}",
                add_special_tokens=True,
            )
            imports = sorted(request.snippets, key=lambda snippet: snippet.kind != "imports")
            imports_first = model.tokenizer.encode(
                fim_prompt(request.prefix, request.suffix, imports, request.path), add_special_tokens=True
            )
            shared = shared_head = shared_imports = None
            if previous is not None:
                shared = _common_prefix(previous[0], ids)
                shared_head = _common_prefix(previous[1], head_first)
                shared_imports = _common_prefix(previous[2], imports_first)
            previous = (ids, head_first, imports_first)
            steps = result.stats.steps_per_canvas
            rows.append(
                {
                    "plan_ms": plan_ms,
                    "tokenise_ms": tokenise_ms,
                    "prefill_ms": prefill_ms,
                    "denoise_ms": tuple(
                        max(0.0, i - t - p)
                        for i, t, p in zip(infill_ms, tokenise_ms, prefill_ms, strict=True)
                    ),
                    "finish_ms": finish_ms,
                    "total_ms": tuple(map(sum, zip(plan_ms, infill_ms, finish_ms, strict=True))),
                    "prompt_tokens": len(ids),
                    "steps": sum(steps),
                    "canvas": request.max_tokens,
                    "shared_now": shared,
                    "shared_head_first": shared_head,
                    "shared_imports_first": shared_imports,
                    "answered": suggestion is not None,
                }
            )
        previous = None  # another file: nothing in common
    if not rows:
        print("error: no request to profile", file=sys.stderr)
        return 1

    def column(key: str, part: int | None = None) -> list[float]:
        return [r[key] if part is None else r[key][part] for r in rows if r[key] is not None]

    print(f"\n{len(rows)} cold requests (no deadline): wall p50 / p95, thread CPU p50 / p95")
    for label, key in (
        ("context building (decide, tree-sitter, snippets)", "plan_ms"),
        ("tokenising the prompt", "tokenise_ms"),
        ("prefill (a fresh KV cache)", "prefill_ms"),
        ("denoising the canvas (and its overhead)", "denoise_ms"),
        ("post-processing and validation", "finish_ms"),
        ("total", "total_ms"),
    ):
        wall, cpu = column(key, 0), column(key, 1)
        print(
            f"  {label:50} {percentile(wall, 0.5):8.1f} {percentile(wall, 0.95):8.1f} ms"
            f"   {percentile(cpu, 0.5):8.1f} {percentile(cpu, 0.95):8.1f} ms"
        )
    tokens = column("prompt_tokens")
    print(f"  prompt tokens p50 {percentile(tokens, 0.5):.0f}, max {max(tokens):.0f}")
    steps = column("steps")
    print(f"  denoising steps p50 {percentile(steps, 0.5):.0f}; canvases of {sorted(set(column('canvas')))}")
    print(f"  answered {sum(r['answered'] for r in rows)} of {len(rows)}")

    sample = model.tokenizer.encode(traces[0].text, add_special_tokens=True)
    while len(sample) < 1024:
        sample = sample + sample
    print("\ncold prefill by prompt length, best of 3: wall, thread CPU")
    per_token = {}
    for length in (128, 256, 512, 768, 1024):
        wall, cpu = min(prefill(sample[:length]) for _ in range(3))
        per_token[length] = cpu / length
        print(f"  {length:5} tokens  {wall:8.1f} ms  {cpu:8.1f} ms")

    pairs = [r for r in rows if r["shared_now"] is not None]
    if pairs:
        prompt = sum(r["prompt_tokens"] for r in pairs)
        now = sum(r["shared_now"] for r in pairs)
        head = sum(r["shared_head_first"] for r in pairs)
        imports = sum(r["shared_imports_first"] for r in pairs)
        rate = min(per_token.values())  # the best rate measured: a loaded machine inflates the rest
        print(
            f"\nprompt tokens shared with the previous jump's prompt ({len(pairs)} jumps in the same file):"
        )
        print(f"  current layout (snippets, suffix, prefix): {100 * now / prompt:.1f} % (reused today)")
        print(
            f"  prefix-first layout (header, prefix, suffix): {100 * head / prompt:.1f} %, "
            f"about {rate * (head - now) / len(pairs):.1f} ms of prefill saved per jump (best rate)"
        )
        print(
            f"  the imports snippet first (same engine layout): {100 * imports / prompt:.1f} %, "
            f"about {rate * (imports - now) / len(pairs):.1f} ms saved per jump (best rate)"
        )
    prefills = column("prefill_ms", 1)
    print(
        f"\nchunked prefill with cancellation would free the model for a newer request up to a "
        f"prefill's length sooner: p50 {percentile(prefills, 0.5):.0f} ms, p95 "
        f"{percentile(prefills, 0.95):.0f} ms (thread CPU) here (on average half that for a request "
        "superseded mid-prefill)"
    )
    return 0
