"""The completion pipeline without a client: decide, cache, request, post-process, validate."""

from __future__ import annotations

import time

from dgemma_lsp.backends.base import Backend, BackendState
from dgemma_lsp.completion import CancelToken, Completer
from dgemma_lsp.documents import DocumentStore
from dgemma_lsp.positions import Encoding
from dgemma_lsp.settings import Settings
from engine.errors import DeadlineExceeded, GenerationCancelled
from engine.requests import GenerationStats, InfillRequest, InfillResult


class ScriptedBackend(Backend):
    """A backend that answers with fixed text and honours cancellation like the engine does."""

    name = "scripted"

    def __init__(self, answer: str = "", delay: float = 0.0):
        super().__init__(Settings())
        self.answer = answer
        self.delay = delay
        self.requests: list[InfillRequest] = []

    def load(self, progress) -> None:
        progress("ready", 100)

    def infill(self, request: InfillRequest) -> InfillResult:
        self.requests.append(request)
        end = time.monotonic() + self.delay
        while time.monotonic() < end:
            if request.should_stop and request.should_stop():
                raise GenerationCancelled()
            if request.deadline is not None and time.monotonic() > request.deadline:
                raise DeadlineExceeded()
            time.sleep(0.001)
        return InfillResult(self.answer, GenerationStats())

    @property
    def canvas_length(self) -> int:
        return 64


def completer_with(answer: str, text: str, delay: float = 0.0, **settings):
    backend = ScriptedBackend(answer, delay)
    backend.start()
    assert backend.state is BackendState.READY
    store = DocumentStore()
    offset = text.index("|")
    document = store.open("file:///m.py", text.replace("|", "", 1), "python", 1)
    completer = Completer(store, Settings(**settings), backend)
    return completer, document, offset, backend


def test_a_suggestion_from_the_model_then_from_the_cache_while_typing_it():
    completer, document, offset, backend = completer_with("sum(values)", "def total(values):\n    return |\n")
    planned = completer.plan(document, offset)
    assert planned.source == "model" and planned.plan is not None
    assert planned.plan.request.max_tokens == Settings().single_line_tokens
    outcome = completer.generate(planned.plan, CancelToken())
    assert outcome.suggestion is not None and outcome.suggestion.text == "sum(values)"

    document.apply_change((1, 11), (1, 11), "sum(", Encoding.UTF16, 2)
    cached = completer.plan(document, offset + 4)
    assert cached.source == "cache" and cached.suggestion.text == "values)"
    assert len(backend.requests) == 1 and completer.stats.cache_hits == 1


def test_nothing_is_asked_of_the_model_mid_word():
    completer, document, offset, backend = completer_with("x", "value = comp|ute(1)\n")
    assert completer.plan(document, offset).source == "skip"
    assert backend.requests == []


def test_not_ready_while_the_model_loads():
    completer, document, offset, backend = completer_with("x", "value = |\n")
    backend.state = BackendState.LOADING
    outcome = completer.plan(document, offset)
    assert outcome.source == "not-ready" and outcome.suggestion is None


def test_disabled_languages_binary_and_huge_documents_are_skipped():
    completer, document, offset, _ = completer_with("x", "value = |\n", disabled_languages=["python"])
    assert completer.plan(document, offset).reason == "language 'python' not enabled"
    completer, document, offset, _ = completer_with("x", "value = |\x00\n")
    assert completer.plan(document, offset).reason == "binary document"


def test_cancelled_and_late_requests_return_nothing():
    completer, document, offset, _ = completer_with("sum(values)", "x = |\n", delay=5.0)
    token = CancelToken()
    plan = completer.plan(document, offset).plan
    token.cancel("newer request")
    assert completer.generate(plan, token).source == "cancelled"

    completer, document, offset, _ = completer_with("sum(values)", "x = |\n", delay=5.0, deadline_ms=50)
    plan = completer.plan(document, offset).plan
    outcome = completer.generate(plan, CancelToken())
    # The backend raised DeadlineExceeded (its 5 s answer would have been "model").
    assert outcome.source == "deadline" and completer.stats.deadline == 1


def test_single_line_suggestion_that_adds_a_syntax_error_is_dropped():
    completer, document, offset, _ = completer_with("1 2 3", "def f():\n    value = |\n    return value\n")
    plan = completer.plan(document, offset).plan
    outcome = completer.generate(plan, CancelToken())
    assert outcome.suggestion is None and outcome.reason == "post-processing left nothing"
    completer, document, offset, _ = completer_with("1 + 2", "def f():\n    value = |\n    return value\n")
    assert completer.generate(completer.plan(document, offset).plan, CancelToken()).suggestion.text == "1 + 2"


def test_multi_line_suggestions_are_trimmed_to_what_parses():
    answer = "\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2\n    x = ("
    completer, document, offset, _ = completer_with(answer, "def fib(n):|\n\n\nprint(fib(5))\n")
    plan = completer.plan(document, offset).plan
    assert plan.decision.mode == "multi" and plan.request.max_tokens == 64
    outcome = completer.generate(plan, CancelToken())
    assert outcome.suggestion.text == "\n    if n < 2:\n        return n"


def test_request_carries_context_path_steps_and_canvas():
    completer, document, offset, backend = completer_with("1", "import os\n\nx = |\n", steps=3)
    plan = completer.plan(document, offset).plan
    completer.generate(plan, CancelToken())
    request = backend.requests[0]
    assert request.prefix == "import os\n\nx = " and request.suffix == "\n"
    assert request.num_diffusion_steps == 3 and request.path == "/m.py" and request.language == "python"
    assert request.should_stop is not None and request.deadline is not None


def test_the_context_budget_follows_the_measured_prefill():
    text = "".join(f"value_{i} = compute({i}, factor={i * 7})\n" for i in range(400)) + "total = |\n"
    completer, document, offset, backend = completer_with("1", text)
    backend.prefill_ms = {1024: 300.0, 512: 120.0, 256: 50.0}  # what a slow device measured at load
    assert completer.context_budget() == 256
    plan = completer.plan(document, offset).plan
    assert plan.context.tokens <= 256 < len(text) // 4
    completer.settings = Settings(prefill_budget_ms=0)  # no cap
    assert completer.context_budget() == 1024
    assert completer.plan(document, offset).plan.context.tokens > 256
