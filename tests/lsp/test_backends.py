"""Backends behind one interface: the factory, and the in-process engine with a real tiny model."""

from __future__ import annotations

import time

import pytest

from dgemma_lsp.backends.base import BackendState, BackendUnavailable, create_backend
from dgemma_lsp.backends.engine import EngineBackend
from dgemma_lsp.completion import measure_prefill
from dgemma_lsp.settings import Settings
from engine.errors import DeadlineExceeded, GenerationCancelled
from engine.requests import InfillRequest


@pytest.fixture(scope="module")
def engine_backend(lsp_checkpoint):
    backend = create_backend(Settings(model=str(lsp_checkpoint), device="cpu", dtype="float32", steps=4))
    assert isinstance(backend, EngineBackend)
    progress = []
    backend.start(lambda message, percentage: progress.append((message, percentage)))
    assert backend.state is BackendState.READY, backend.error
    assert progress and progress[-1][0] == "warming up"
    yield backend
    backend.close()


def test_unknown_backend_is_refused_with_a_hint():
    settings = Settings()
    object.__setattr__(settings, "backend", "carrier-pigeon")
    with pytest.raises(BackendUnavailable) as error:
        create_backend(settings)
    assert "carrier-pigeon" in str(error.value) and error.value.hint


def test_a_model_that_cannot_load_leaves_a_failed_backend_not_an_exception(tmp_path):
    backend = create_backend(Settings(model=str(tmp_path / "missing"), device="cpu"))
    backend.start()
    assert backend.state is BackendState.FAILED and backend.ready.is_set()
    assert "missing" in str(backend.error)


def test_engine_backend_fills_holes_and_counts_tokens(engine_backend):
    result = engine_backend.infill(InfillRequest("def add(a, b):\n    return ", "\n", max_tokens=16, seed=0))
    assert isinstance(result.text, str) and result.stats.canvases == 1
    assert engine_backend.count_tokens("def add(a, b):") > 0
    assert engine_backend.canvas_length == 64 and engine_backend.context_length >= 1024
    assert "canvas 64" in engine_backend.description


def test_several_holes_in_one_batch(engine_backend, monkeypatch):
    model, batches = engine_backend.model, []

    def run_batch(requests):  # the real batch, its result kept for the assertion below
        batches.append(type(model).run_batch(model, requests))
        return batches[-1]

    monkeypatch.setattr(model, "run_batch", run_batch)
    requests = [InfillRequest(f"x{i} = ", "\n", max_tokens=8, seed=0) for i in range(3)]
    answers = engine_backend.infill_many(requests)
    assert len(answers) == 3 and all(isinstance(a, str) for a in answers)
    assert len(batches) == 1 and batches[0].stats.canvases == 1  # one denoising loop for all three


def test_cancellation_and_deadline_stop_between_steps(engine_backend):
    with pytest.raises(GenerationCancelled):
        engine_backend.infill(
            InfillRequest("x = ", "\n", max_tokens=64, num_diffusion_steps=256, should_stop=lambda: True)
        )
    # 256 steps of a random model never converge early: only the deadline can end them.
    with pytest.raises(DeadlineExceeded):
        engine_backend.infill(
            InfillRequest(
                "x = ", "\n", max_tokens=64, num_diffusion_steps=256, deadline=time.monotonic() + 0.2, seed=0
            )
        )
    requests = [
        InfillRequest("y = ", "\n", max_tokens=64, num_diffusion_steps=256, deadline=time.monotonic() + 0.2)
        for _ in range(2)
    ]
    with pytest.raises(DeadlineExceeded):
        engine_backend.infill_many(requests)


def test_the_engine_backend_measures_its_cold_prefill_at_load(engine_backend):
    # Halving from the context budget until a prefill fits the default 80 ms (or 256 tokens):
    # which lengths depends on the machine, the shape of the table does not.
    measured = engine_backend.prefill_ms
    lengths = list(measured)
    assert lengths == sorted(set(lengths), reverse=True) and lengths[0] == 1024 and lengths[-1] >= 256
    assert all(1024 % n == 0 and (n & (n - 1)) == 0 for n in lengths)  # halvings of the budget
    assert all(measured[n] > 80 for n in lengths[:-1])
    assert measured[lengths[-1]] <= 80 or lengths[-1] == 256
    assert all(ms > 0 for ms in measured.values())


def test_measure_prefill_stops_at_the_first_length_that_fits_or_at_the_floor(engine_backend, monkeypatch):
    results = []
    infill = engine_backend.infill
    monkeypatch.setattr(
        engine_backend, "infill", lambda request: results.append(infill(request)) or results[-1]
    )
    assert list(measure_prefill(engine_backend, 512, budget_ms=10**6)) == [512]
    # Nothing fits a microsecond: from the first time straight to the floor.
    assert list(measure_prefill(engine_backend, 512, budget_ms=1e-3, floor=128)) == [512, 128]
    # Each try had a prompt of about its length and no KV to reuse from the one before (but the
    # few tokens of the file header every prompt starts with).
    stats = results[-1].stats
    assert 100 <= stats.prompt_tokens <= 200 and stats.cached_prompt_tokens < 0.1 * stats.prompt_tokens
