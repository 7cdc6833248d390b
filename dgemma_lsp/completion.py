"""From a document and a cursor to a suggestion: decide, serve from cache or build the request,
call the backend, post-process. No pygls here.

Planning runs on the server's event loop (it reads the live document); generation runs in a
worker thread on a snapshot, so edits arriving meanwhile never race with it.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field

from dgemma_lsp import syntax
from dgemma_lsp.backends.base import Backend
from dgemma_lsp.cache import TypingCache
from dgemma_lsp.context import PromptContext, TokenCounter, build_context, prefill_cap
from dgemma_lsp.decide import Decision, decide
from dgemma_lsp.documents import Document, DocumentStore
from dgemma_lsp.postprocess import Hole, Suggestion, postprocess, trim_to_valid
from dgemma_lsp.settings import Settings
from dgemma_lsp.text import (
    detect_indent_unit,
    eol_of,
    line_bounds,
    next_nonblank_lines,
    previous_nonblank_line,
)
from engine.errors import DeadlineExceeded, GenerationCancelled
from engine.requests import InfillRequest


class CancelToken:
    """Set by `$/cancelRequest`, by a newer request for the same document, or at shutdown."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason = ""

    def cancel(self, reason: str = "cancelled") -> None:
        if not self._event.is_set():
            self.reason = reason
            self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def __call__(self) -> bool:
        return self._event.is_set()


@dataclass
class Plan:
    """Everything generation needs, copied out of the document."""

    uri: str
    version: int | None
    offset: int
    before: str
    after: str
    decision: Decision
    hole: Hole
    request: InfillRequest
    grammar: str | None
    context: PromptContext
    deadline_s: float


@dataclass
class Outcome:
    suggestion: Suggestion | None
    source: str  # "model" | "cache" | "skip" | "cancelled" | "deadline" | "error" | "not-ready"
    reason: str = ""
    plan: Plan | None = None


@dataclass
class Stats:
    requests: int = 0
    model_calls: int = 0
    cache_hits: int = 0
    suggestions: int = 0
    empty: int = 0
    cancelled: int = 0
    deadline: int = 0
    # Generations the backend stopped between denoising steps (cancelled or out of time), as
    # opposed to ones that ran to the end and were dropped afterwards.
    interrupted: int = 0
    waited_for_model: int = 0  # requests that arrived while the model loaded and waited for it
    errors: int = 0
    skipped: int = 0
    accepted: int = 0
    # Prompt tokens of the model calls, and those whose KV the engine reused from the last call.
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0
    latencies_ms: deque = field(default_factory=lambda: deque(maxlen=1000))

    def as_dict(self) -> dict:
        latencies = sorted(self.latencies_ms)

        def pct(q: float) -> float | None:
            return (
                round(latencies[min(len(latencies) - 1, int(q * len(latencies)))], 1) if latencies else None
            )

        return {
            "requests": self.requests,
            "model_calls": self.model_calls,
            "cache_hits": self.cache_hits,
            "suggestions": self.suggestions,
            "empty": self.empty,
            "cancelled": self.cancelled,
            "deadline_exceeded": self.deadline,
            "interrupted": self.interrupted,
            "waited_for_model": self.waited_for_model,
            "errors": self.errors,
            "skipped": self.skipped,
            "accepted": self.accepted,
            "prompt_tokens": self.prompt_tokens,
            "cached_prompt_tokens": self.cached_prompt_tokens,
            "model_latency_p50_ms": pct(0.5),
            "model_latency_p95_ms": pct(0.95),
        }


# The shortest context a device-capped budget goes down to: below it suggestions lose more
# than they gain in time (on a quiet 2-core CPU 256 tokens prefill well within 80 ms).
PREFILL_FLOOR_TOKENS = 256


def synthetic_source(tokens: int, count, salt: int) -> str:
    """Plausible code of about `tokens` tokens (in `count`'s tokenizer), different per `salt`."""
    blocks, used, index = [], 0, 0
    while used < tokens:
        block = (
            f"def step_{salt}_{index}(values, limit={index}):\n"
            f"    total = sum(v * {index} for v in values if v < limit)\n"
            f"    return total - {salt}\n\n"
        )
        blocks.append(block)
        used += count(block)
        index += 1
    return "".join(blocks)


def measure_prefill(
    backend: Backend, budget_tokens: int, budget_ms: float, floor: int = PREFILL_FLOOR_TOKENS
) -> dict[int, float]:
    """Cold-prefill time (ms) by prompt length, from `budget_tokens` down by halves until one
    fits `budget_ms` or the floor is reached. A length that misses by less than half is tried
    once more (its first try paid for allocating its buffers); the best try counts.

    Prefill time grows at least linearly with the length (attention adds a square term), so a
    length `budget_ms / time` times a measured one surely fits. Halvings more than twice that
    long are skipped (on the embedded model a halving saves 2-3x, not more), which keeps
    start-up short on a slow or loaded machine.

    Each try is a one-token, one-step hole whose prompt shares no prefix with the last one (the
    engine would reuse its KV), so its time is the prefill's plus a near-constant. Run at load,
    it also warms the kernels and the allocator up at the lengths requests will use.
    """
    table: dict[int, float] = {}
    length, salt = max(budget_tokens, 1), 0
    while True:
        best = float("inf")
        for _ in range(2):
            salt += 1
            text = synthetic_source(length, backend.count_tokens, salt)
            request = InfillRequest(
                prefix=text, suffix=f"{salt} # salt\n", max_tokens=1, num_diffusion_steps=1, seed=0
            )
            started = time.perf_counter()
            backend.infill(request)
            best = min(best, (time.perf_counter() - started) * 1000)
            if best <= budget_ms or best > 2 * budget_ms:
                break
        table[length] = round(best, 1)
        if best <= budget_ms or length <= floor:
            return table
        affordable = length * budget_ms / best
        shorter = length // 2
        while shorter // 2 >= floor and shorter > 2 * affordable:
            shorter //= 2
        length = max(floor, shorter)


def make_hole(document_text: str, offset: int, decision: Decision, indent_unit: str | None) -> Hole:
    start, end = line_bounds(document_text, offset)
    return Hole(
        before=document_text[start:offset],
        after=document_text[offset:end],
        next_lines=tuple(next_nonblank_lines(document_text, offset, 3)),
        previous_line=previous_nonblank_line(document_text, offset),
        mode=decision.mode,
        max_lines=decision.max_lines,
        block_indent=decision.block_indent,
        after_opener=decision.after_opener,
        indent_unit=indent_unit,
        eol=eol_of(document_text),
    )


class Completer:
    """Inline suggestions for the open documents, through one backend."""

    def __init__(self, documents: DocumentStore, settings: Settings, backend: Backend | None = None):
        self.documents = documents
        self.settings = settings
        self.backend = backend
        self.cache = TypingCache()
        self.counter = TokenCounter(self._count_tokens)
        self.stats = Stats()
        self.root: str | None = None
        self._indent_units: dict[str, tuple[int, str | None]] = {}

    def _count_tokens(self, text: str) -> int:
        backend = self.backend
        if backend is not None and backend.ready.is_set() and backend.state.value == "ready":
            return backend.count_tokens(text)
        from dgemma_lsp.context import estimate_tokens

        return estimate_tokens(text)

    def set_backend(self, backend: Backend | None) -> None:
        self.backend = backend
        self.counter = TokenCounter(self._count_tokens)
        self.cache.clear()

    def indent_unit(self, document: Document) -> str | None:
        cached = self._indent_units.get(document.uri)
        if cached is not None and cached[0] == document.edit_count // 50:
            return cached[1]
        unit = detect_indent_unit(document.text, default=None)
        if len(self._indent_units) > 1000:
            self._indent_units.clear()
        self._indent_units[document.uri] = (document.edit_count // 50, unit)
        return unit

    def context_budget(self) -> int:
        """`contextBudget`, capped at what the device prefills within `prefillBudgetMs` (measured
        when the model loaded; the same cap for every request, so typing still reuses the KV)."""
        measured = getattr(self.backend, "prefill_ms", None)
        cap = prefill_cap(measured, self.settings.prefill_budget_ms)
        return self.settings.context_budget if cap is None else min(cap, self.settings.context_budget)

    # --- planning (event loop) --------------------------------------------------------------

    def plan(self, document: Document, offset: int, again: bool = False) -> Outcome:
        """Decide, look in the cache, or build the request. Cheap: no model call. `again`: the
        same request planned a second time (after waiting for the model), not counted twice."""
        if not again:
            self.stats.requests += 1
        settings = self.settings
        if not document.completable:
            self.stats.skipped += 1
            reason = "document too large" if document.is_too_large else "binary document"
            return Outcome(None, "skip", reason)
        if not settings.language_enabled(document.language_id):
            self.stats.skipped += 1
            return Outcome(None, "skip", f"language {document.language_id!r} not enabled")
        backend = self.backend
        canvas_limit = (
            backend.canvas_length if backend is not None and backend.state.value == "ready" else None
        )
        text = document.text
        tree = document.tree() if document.syntax is not None else None
        decision = decide(
            text, offset, settings, grammar=document.grammar, tree=tree, canvas_limit=canvas_limit
        )
        if not decision.suggest:
            self.stats.skipped += 1
            return Outcome(None, "skip", decision.reason)

        before, after = text[:offset], text[offset:]
        hit = self.cache.get(document.uri, before, after)
        if hit is not None:
            self.stats.cache_hits += 1
            if hit.text is None:
                return Outcome(None, "cache", "no suggestion here (cached)")
            return Outcome(Suggestion(hit.text, hit.replace_after), "cache", "typed through the suggestion")

        if backend is None or backend.state.value != "ready":
            state = backend.state.value if backend is not None else "none"
            return Outcome(None, "not-ready", f"model {state}")

        budget = min(self.context_budget(), max(64, backend.context_length - decision.canvas_tokens - 16))
        context = build_context(
            document, offset, budget, self.counter, self.documents.others(document.uri), self.root
        )
        request = InfillRequest(
            prefix=context.prefix,
            suffix=context.suffix,
            language=document.grammar or (document.language_id or None),
            path=document.path,
            snippets=context.snippets,
            max_tokens=decision.canvas_tokens,
            num_diffusion_steps=settings.steps,
            seed=settings.seed,
        )
        hole = make_hole(text, offset, decision, self.indent_unit(document))
        plan = Plan(
            uri=document.uri,
            version=document.version,
            offset=offset,
            before=before,
            after=after,
            decision=decision,
            hole=hole,
            request=request,
            grammar=document.grammar,
            context=context,
            deadline_s=settings.deadline_ms / 1000,
        )
        return Outcome(None, "model", "generate", plan)

    # --- generation (worker thread) ---------------------------------------------------------------

    def generate(self, plan: Plan, token: CancelToken, started: float | None = None) -> Outcome:
        """Call the backend and post-process; never raises."""
        backend = self.backend
        if backend is None:
            return Outcome(None, "not-ready", "no backend")
        if token.cancelled:
            self.stats.cancelled += 1
            return Outcome(None, "cancelled", token.reason, plan)
        begin = started if started is not None else time.monotonic()
        plan.request.deadline = begin + plan.deadline_s
        if time.monotonic() >= plan.request.deadline:
            # It waited behind other work (a code action) for its whole budget.
            self.stats.deadline += 1
            return Outcome(None, "deadline", "deadline passed before the model was free", plan)
        plan.request.should_stop = token
        self.stats.model_calls += 1
        try:
            result = backend.infill(plan.request)
        except DeadlineExceeded:
            self.stats.deadline += 1
            self.stats.interrupted += 1
            return Outcome(None, "deadline", "deadline exceeded", plan)
        except GenerationCancelled:
            self.stats.cancelled += 1
            self.stats.interrupted += 1
            return Outcome(None, "cancelled", token.reason or "cancelled", plan)
        except Exception as error:
            self.stats.errors += 1
            return Outcome(None, "error", f"{type(error).__name__}: {error}", plan)
        finally:
            self.stats.latencies_ms.append((time.monotonic() - begin) * 1000)
        self.stats.prompt_tokens += result.stats.prompt_tokens
        self.stats.cached_prompt_tokens += result.stats.cached_prompt_tokens
        if token.cancelled:
            self.stats.cancelled += 1
            return Outcome(None, "cancelled", token.reason, plan)
        suggestion = self.finish(plan, result.text)
        self.cache.put(
            plan.uri,
            plan.before,
            plan.after,
            suggestion.text if suggestion else None,
            suggestion.replace_after if suggestion else 0,
        )
        if suggestion is None:
            self.stats.empty += 1
            return Outcome(None, "model", "post-processing left nothing", plan)
        self.stats.suggestions += 1
        return Outcome(suggestion, "model", "generated", plan)

    def finish(self, plan: Plan, raw: str) -> Suggestion | None:
        suggestion = postprocess(raw, plan.hole)
        if suggestion is None or plan.grammar is None:
            return suggestion
        if plan.decision.mode == "multi":
            return trim_to_valid(suggestion, plan.hole, self._validator(plan))
        return suggestion if self._line_is_better(plan, suggestion) else None

    @staticmethod
    def _line_is_better(plan: Plan, suggestion: Suggestion) -> bool:
        """A single line must fix the syntax of the line being typed, or at least leave no error
        on it and none elsewhere that was not there: the rest of a line is a complete thought."""
        prefix, suffix = plan.context.prefix, plan.context.suffix
        row = prefix.count("\n")
        before, _ = syntax.errors_near_row(plan.grammar, prefix + suffix, row)
        after, on_row = syntax.errors_near_row(
            plan.grammar, prefix + suggestion.text + suffix[suggestion.replace_after :], row
        )
        return after < before or (after == before and not on_row)

    @staticmethod
    def _validator(plan: Plan):
        """A suggestion must not add syntax errors to the window around it (a block is trimmed
        to the lines that do not, a single line is dropped)."""
        grammar = plan.grammar
        prefix, suffix = plan.context.prefix, plan.context.suffix
        baseline = syntax.text_error_count(grammar, prefix + suffix)

        def valid(text: str, replace_after: int) -> bool:
            return syntax.text_error_count(grammar, prefix + text + suffix[replace_after:]) <= baseline

        return valid

    def forget(self, uri: str) -> None:
        self.cache.forget(uri)
        self._indent_units.pop(uri, None)
