"""The engine thread: one queue of generation jobs, run one call at a time, batched where it is safe.

The engine is blocking torch code, so it runs on one dedicated thread and the event loop never waits
on it; results go back with `loop.call_soon_threadsafe`.

Batching policy. A job is *batchable* when it is a plain, non-streaming generation (a completion
without `suffix`, or a chat completion) **without a seed**. When the engine takes a batchable job it
waits up to `batch_window_s` after that job arrived for other batchable jobs with the same step
budget and sampler knobs (one canvas batch needs one sampler configuration), then runs up to
`max_batch_size` of them as one `run_batch` call: one prompt encode and one canvas batch per
step for all of them. Jobs that queued while the engine was busy are taken at once, without waiting.
Everything else runs alone through `stream`, which keeps what a batch cannot give:
- streaming, one chunk per committed canvas;
- seeds: a batch draws its random numbers for all rows from one generator, so a row's text depends
  on its neighbours; a seeded request runs alone and gets the same text whatever else is running;
- infilling (`suffix`): its prompt and canvas length are chosen by the engine's infill path;
- the prompt-prefix KV cache, which reuses the previous prompt's prefix (a batch encodes afresh).
Stop strings work in both, through the engine's one place that ends a row (engine/rows.py); a
stream holds back the end of its text that could still become a stop string.

Every call's figures come back in its own result, so two requests never see each other's.

Cancellation: every job has a `cancelled` event (client disconnected) and a deadline. The engine
polls `should_stop` between denoising steps; a batch stops only when every one of its jobs should.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field, replace
from typing import Any

from engine.errors import DeadlineExceeded, EngineError, GenerationCancelled
from engine.requests import GenerationRequest, GenerationStats, InfillRequest
from engine.server.metrics import Metrics

logger = logging.getLogger("dgemma.server")


class QueueFull(Exception):
    """More jobs are waiting than the server accepts."""


@dataclass
class Completion:
    """One finished choice."""

    text: str
    finish_reason: str  # "stop" | "length"
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    canvases: int
    steps_per_canvas: list[int]
    batch_size: int
    seconds: float


@dataclass(eq=False)
class Job:
    """One choice to generate: token ids (or an infill request) and its options."""

    prompt_ids: list[int] | None
    max_tokens: int
    deadline: float
    steps: int | None = None
    knobs: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    infill: InfillRequest | None = None
    stream: bool = False
    created: float = field(default_factory=time.monotonic)
    cancelled: threading.Event = field(default_factory=threading.Event)
    cancel_reason: str = ""
    # Delivery to the event loop: a future (whole answer) or a queue of events (streaming).
    loop: asyncio.AbstractEventLoop | None = None
    future: asyncio.Future | None = None
    events: asyncio.Queue | None = None

    @property
    def batchable(self) -> bool:
        return not self.stream and self.infill is None and self.seed is None and self.prompt_ids is not None

    @property
    def batch_key(self) -> tuple:
        return (self.steps, tuple(sorted(self.knobs.items())))

    def generation_request(self, seed: int | None) -> GenerationRequest:
        """The engine's request for this job (prompt ids, budget, sampler options, stop strings)."""
        return GenerationRequest(
            list(self.prompt_ids or []),
            self.max_tokens,
            num_diffusion_steps=self.steps,
            sampler_knobs=dict(self.knobs),
            stop=tuple(self.stop),
            seed=seed,
            deadline=self.deadline,
            should_stop=self.cancelled.is_set,
        )

    def cancel(self, reason: str) -> None:
        if not self.cancelled.is_set():
            self.cancel_reason = reason
            self.cancelled.set()

    def should_stop(self) -> bool:
        return self.cancelled.is_set() or time.monotonic() > self.deadline

    def stop_error(self) -> GenerationCancelled:
        if not self.cancelled.is_set() and time.monotonic() > self.deadline:
            return DeadlineExceeded()
        return GenerationCancelled(f"generation cancelled ({self.cancel_reason or 'cancelled'})")

    # --- called on the engine thread ---------------------------------------------------------

    def _post(self, fn: Callable, *args: Any) -> None:
        if self.loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: the server is shutting down
            self.loop.call_soon_threadsafe(fn, *args)

    def deliver(self, result: Completion | BaseException) -> None:
        if self.events is not None:
            kind = "error" if isinstance(result, BaseException) else "done"
            self._post(self.events.put_nowait, (kind, result))
        elif self.future is not None:
            self._post(_resolve, self.future, result)

    def emit(self, text: str) -> None:
        if self.events is not None:
            self._post(self.events.put_nowait, ("delta", text))


def _resolve(future: asyncio.Future, result: Completion | BaseException) -> None:
    if future.done():
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)


class Scheduler:
    """Runs jobs on one engine thread (see the module docstring for the batching policy)."""

    def __init__(
        self,
        model: Any,
        metrics: Metrics,
        batching: bool = True,
        batch_window_s: float = 0.01,
        max_batch_size: int = 8,
        max_queue: int = 256,
    ):
        self.model = model
        self.metrics = metrics
        self.batching = batching and max_batch_size > 1
        self.batch_window_s = batch_window_s
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        self._pending: collections.deque[Job] = collections.deque()
        self._condition = threading.Condition()
        self._running = False
        self._thread: threading.Thread | None = None
        self._current: list[Job] = []

    # --- event loop side ----------------------------------------------------------------------

    def start(self) -> None:
        self._running = True
        self._thread = threading.Thread(target=self._loop, name="dgemma-engine", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        with self._condition:
            self._running = False
            pending = list(self._pending)
            self._pending.clear()
            self._condition.notify_all()
        for job in pending:
            job.cancel("server shutting down")
            job.deliver(GenerationCancelled("the server is shutting down"))
        for job in self._current:  # the engine stops them between two denoising steps
            job.cancel("server shutting down")
        self.metrics.queue_depth.set(0)
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def queue_depth(self) -> int:
        return len(self._pending)

    def submit(self, jobs: list[Job]) -> None:
        """Queue jobs (all or none); raises `QueueFull` when the queue is at its limit."""
        with self._condition:
            if not self._running:
                raise QueueFull("the server is shutting down")
            if len(self._pending) + len(jobs) > self.max_queue:
                raise QueueFull(f"{len(self._pending)} requests are already waiting")
            self._pending.extend(jobs)
            self.metrics.queue_depth.set(len(self._pending))
            self._condition.notify_all()

    # --- engine thread ------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            live = []
            for job in batch:
                if job.should_stop():
                    self._cancelled(job)
                    job.deliver(job.stop_error())
                else:
                    live.append(job)
            if not live:
                continue
            now = time.monotonic()
            for job in live:
                self.metrics.queue_wait.observe(now - job.created)
            self.metrics.running.set(len(live))
            self._current = live
            try:
                if len(live) == 1:
                    self._run_alone(live[0], batch_size=1)
                else:
                    self._run_batch(live)
            except BaseException as error:  # never let the engine thread die
                logger.exception("engine thread error")
                for job in live:
                    job.deliver(error if isinstance(error, Exception) else RuntimeError(str(error)))
            finally:
                self._current = []
                self.metrics.running.set(0)

    def _next_batch(self) -> list[Job] | None:
        with self._condition:
            while self._running and not self._pending:
                self._condition.wait()
            if not self._running:
                return None
            first = self._pending.popleft()
            batch = [first]
            if self.batching and first.batchable:
                until = first.created + self.batch_window_s
                while True:
                    mates = [j for j in self._pending if j.batchable and j.batch_key == first.batch_key]
                    remaining = until - time.monotonic()
                    if len(mates) + 1 >= self.max_batch_size or remaining <= 0 or not self._running:
                        break
                    self._condition.wait(remaining)
                for job in mates[: self.max_batch_size - 1]:
                    self._pending.remove(job)
                    batch.append(job)
            self.metrics.queue_depth.set(len(self._pending))
            return batch

    def _cancelled(self, job: Job) -> None:
        reason = "deadline" if isinstance(job.stop_error(), DeadlineExceeded) else "disconnect"
        self.metrics.cancelled.labels(reason=reason).inc()

    def _record(self, canvases: int, steps: list[int], batch_size: int) -> None:
        self.metrics.batch_size.observe(batch_size)
        self.metrics.canvases.inc(canvases)
        for value in steps:
            self.metrics.steps_per_canvas.observe(value)

    def _run_alone(self, job: Job, batch_size: int) -> None:
        model = self.model
        started = time.perf_counter()
        stats = GenerationStats()  # what a call that fails before it starts leaves
        try:
            if job.infill is not None:
                request = replace(
                    job.infill, should_stop=job.cancelled.is_set, deadline=job.deadline, stop=tuple(job.stop)
                )
                result = model.infill_request(request)
                text, stats = result.text, result.stats
                completion_tokens = result.completion_tokens
                if job.stream and text:
                    job.emit(text)
            else:
                stream = model.stream(job.generation_request(job.seed))
                stats = stream.result.stats
                with closing(stream):  # closing stops the engine after a stop string
                    for delta in stream:
                        job.emit(delta)
                text, completion_tokens = stream.result.text, stream.result.completion_tokens
        except GenerationCancelled as error:
            self._cancelled(job)
            self._record(stats.canvases, stats.steps_per_canvas, batch_size)
            job.deliver(job.stop_error() if job.should_stop() else error)
            return
        except Exception as error:
            job.deliver(error)
            return
        self._record(stats.canvases, stats.steps_per_canvas, batch_size)
        job.deliver(
            Completion(
                text=text,
                finish_reason=stats.finish_reason,
                prompt_tokens=stats.prompt_tokens,
                completion_tokens=stats.generated_tokens if completion_tokens is None else completion_tokens,
                cached_tokens=stats.cached_prompt_tokens,
                canvases=stats.canvases,
                steps_per_canvas=list(stats.steps_per_canvas),
                batch_size=batch_size,
                seconds=time.perf_counter() - started,
            )
        )

    def _run_batch(self, jobs: list[Job]) -> None:
        model = self.model
        started = time.perf_counter()
        try:
            # Batched jobs carry no seed (see the module docstring): the model's default seeds the batch.
            batch = model.run_batch([job.generation_request(None) for job in jobs])
        except GenerationCancelled:
            for job in jobs:
                self._cancelled(job)
                job.deliver(job.stop_error())
            return
        except EngineError as error:
            # One request's problem (or memory for the whole batch) must not fail the others.
            logger.warning("batch of %d failed (%s); running its requests one by one", len(jobs), error)
            for job in jobs:
                if job.should_stop():
                    self._cancelled(job)
                    job.deliver(job.stop_error())
                else:
                    self._run_alone(job, batch_size=1)
            return
        stats = batch.stats
        self._record(stats.canvases, stats.steps_per_canvas, len(jobs))
        seconds = time.perf_counter() - started
        for job, row in zip(jobs, batch.rows, strict=True):
            job.deliver(
                Completion(
                    text=row.text,
                    finish_reason=row.finish_reason,
                    prompt_tokens=row.stats.prompt_tokens,
                    completion_tokens=row.completion_tokens,
                    cached_tokens=0,
                    canvases=stats.canvases,
                    steps_per_canvas=list(stats.steps_per_canvas),
                    batch_size=len(jobs),
                    seconds=seconds,
                )
            )
