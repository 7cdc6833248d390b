"""What the generation routes share: checks, jobs for the engine thread, waiting for them, the
OpenAI-shaped usage, and server-sent event streams. One `Serving` per app, in `app.state.serving`;
routes get it through the `get_serving` dependency."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.responses import Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from engine.errors import DeadlineExceeded, EngineError
from engine.server.batching import Completion, Job, QueueFull, Scheduler
from engine.server.config import ServerConfig
from engine.server.errors import ApiError, ClientGone, api_error_for
from engine.server.metrics import Metrics
from engine.server.schemas import (
    DiffusionParameters,
    DiffusionStats,
    ErrorResponse,
    PromptTokensDetails,
    Usage,
)

# Seconds the event loop waits past a request's deadline for the engine to notice it.
DEADLINE_GRACE_S = 1.0

# OpenAPI documentation shared by the generation routes.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 404, 408, 413, 429, 504)
}
STREAM_RESPONSE = {200: {"content": {"text/event-stream": {}}, "description": "JSON, or SSE with stream"}}
GENERATION_RESPONSES = {**ERROR_RESPONSES, **STREAM_RESPONSE}


class Serving:
    """The model, the settings, the engine thread and the metrics of one app, and what routes do with them."""

    def __init__(self, model: Any, config: ServerConfig, scheduler: Scheduler, metrics: Metrics):
        self.model = model
        self.config = config
        self.scheduler = scheduler
        self.metrics = metrics
        self.created = int(time.time())

    def api_error(self, error: BaseException) -> ApiError:
        return api_error_for(error, self.config.request_timeout_s)

    # --- checks ----------------------------------------------------------------------------------

    def check_common(self, body: DiffusionParameters) -> None:
        config = self.config
        if body.model is not None and body.model not in config.served_model_names:
            served = ", ".join(repr(name) for name in config.served_model_names)
            raise ApiError(
                404,
                f"the model {body.model!r} does not exist here; this server serves {served}",
                param="model",
                code="model_not_found",
            )
        if body.diffusion_steps is not None and body.diffusion_steps > config.max_diffusion_steps:
            raise ApiError(
                400,
                f"diffusion_steps={body.diffusion_steps} is more than this server allows "
                f"({config.max_diffusion_steps})",
                param="diffusion_steps",
            )

    def check_length(self, prompt_tokens: int, max_tokens: int) -> None:
        context = self.model.context_length
        if max_tokens > self.config.max_tokens_limit:
            raise ApiError(
                400,
                f"max_tokens={max_tokens} is more than this server allows ({self.config.max_tokens_limit})",
                param="max_tokens",
            )
        if prompt_tokens + max_tokens > context:
            raise ApiError(
                400,
                f"this model's maximum context length is {context} tokens, but "
                f"{prompt_tokens + max_tokens} were requested ({prompt_tokens} in the prompt, "
                f"{max_tokens} for the completion): shorten the prompt or ask for fewer tokens",
                param="max_tokens" if prompt_tokens < context else "prompt",
                code="context_length_exceeded",
            )

    # --- jobs ------------------------------------------------------------------------------------

    async def accept(self, body: DiffusionParameters, make_jobs: Callable[[], list[Job]]) -> list[Job]:
        """Check what every generation request shares, then build its jobs in a worker thread."""
        self.check_common(body)
        return await self.prepare(make_jobs)

    def envelope(self, id_prefix: str, object_: str) -> dict:
        """The `id`, `object`, `created` and `model` of an answer and of each of its stream chunks."""
        return {
            "id": f"{id_prefix}-{uuid.uuid4().hex}",
            "object": object_,
            "created": int(time.time()),
            "model": self.config.model_name,
        }

    def new_job(self, body: DiffusionParameters, ids: list[int] | None, max_tokens: int) -> Job:
        return Job(
            prompt_ids=ids,
            max_tokens=max_tokens,
            deadline=time.monotonic() + self.config.request_timeout_s,
            steps=body.diffusion_steps,
            knobs=body.sampler_knobs(),
            seed=body.seed if body.seed is not None else self.model.config.seed,
            stop=body.stop_list(),
            stream=body.stream,
        )

    async def prepare(self, fn: Callable[[], Any]) -> Any:
        """`fn` (tokenizing, templating) in a worker thread: long prompts take a while."""
        try:
            return await run_in_threadpool(fn)
        except EngineError as error:  # the chat template rejected the messages, etc.
            raise self.api_error(error) from None

    def enqueue(self, jobs: list[Job]) -> None:
        loop = asyncio.get_running_loop()
        for job in jobs:
            job.loop = loop
            if job.stream:
                job.events = asyncio.Queue()
            else:
                job.future = loop.create_future()
        try:
            self.scheduler.submit(jobs)
        except QueueFull as error:
            raise ApiError(
                429,
                f"the server is busy ({error}); retry shortly",
                "rate_limit_error",
                code="queue_full",
                headers={"Retry-After": "1"},
            ) from None

    async def run(self, jobs: list[Job], request: Request) -> list[Completion]:
        """Queue the jobs and wait for all of them, the client's disconnect, or the deadline."""
        self.enqueue(jobs)
        gathered = asyncio.gather(*(job.future for job in jobs), return_exceptions=True)
        watcher = asyncio.ensure_future(wait_for_disconnect(request))
        timeout = max(job.deadline for job in jobs) - time.monotonic() + DEADLINE_GRACE_S
        try:
            done, _ = await asyncio.wait({gathered, watcher}, timeout=timeout, return_when="FIRST_COMPLETED")
        except BaseException:  # the handler itself was cancelled (server shutdown)
            for job in jobs:
                job.cancel("server shutting down")
            raise
        finally:
            watcher.cancel()
            if not gathered.done():
                gathered.cancel()
        if gathered in done:
            results = gathered.result()
            for result in results:
                if isinstance(result, BaseException):
                    for job in jobs:
                        job.cancel("another choice of the request failed")
                    raise self.api_error(result)
            return results
        for job in jobs:
            job.cancel("client disconnected" if watcher in done else "deadline")
        if watcher in done:
            raise ClientGone()
        raise self.api_error(DeadlineExceeded())

    async def answer(self, make: Callable[[], Awaitable[Any]]) -> Any:
        try:
            return await make()
        except ClientGone:
            return Response(status_code=499)

    # --- figures ---------------------------------------------------------------------------------

    def account(self, results: list[Completion]) -> None:
        for r in results:
            self.metrics.prompt_tokens.inc(r.prompt_tokens)
            self.metrics.cached_prompt_tokens.inc(r.cached_tokens)
            self.metrics.generation_tokens.inc(r.completion_tokens)

    # --- streams ---------------------------------------------------------------------------------

    def stream(
        self,
        jobs: list[Job],
        body: DiffusionParameters,
        base: dict,
        choice: Callable[[int, str | None, str | None], dict],
        head: Callable[[int], dict] | None = None,
    ) -> StreamingResponse:
        """SSE: for each choice in turn, its deltas canvas by canvas, then its finish reason.

        `choice(index, text, finish)` builds one chunk's choice; `head(index)`, where given, the
        choice sent before a choice's first delta."""
        self.enqueue(jobs)
        arrived = time.monotonic()
        extra = {"usage": None} if body.include_usage else {}
        metrics = self.metrics

        def chunk(one: dict) -> str:
            return sse({**base, "choices": [one], **extra})

        async def events() -> AsyncIterator[str]:
            results: list[Completion] = []
            first = True
            try:
                for index, job in enumerate(jobs):
                    if head is not None:
                        yield chunk(head(index))
                    while True:
                        remaining = job.deadline - time.monotonic() + DEADLINE_GRACE_S
                        try:
                            kind, value = await asyncio.wait_for(
                                job.events.get(), timeout=max(0.0, remaining)
                            )
                        except asyncio.TimeoutError:
                            job.cancel("deadline")
                            kind, value = "error", DeadlineExceeded()
                        if kind == "delta":
                            if first:
                                metrics.first_chunk.observe(time.monotonic() - arrived)
                                first = False
                            yield chunk(choice(index, value, None))
                        elif kind == "done":
                            results.append(value)
                            yield chunk(choice(index, None, value.finish_reason))
                            break
                        else:
                            for other in jobs:
                                other.cancel("error in another choice")
                            yield sse(self.api_error(value).body())
                            yield "data: [DONE]\n\n"
                            return
                self.account(results)
                if body.include_usage:
                    yield sse({**base, "choices": [], "usage": usage(results).model_dump()})
                yield "data: [DONE]\n\n"
            finally:
                for job in jobs:  # the client went away (the generator was closed) or we are done
                    job.cancel("client disconnected")

        return StreamingResponse(
            events(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )


def get_serving(request: Request) -> Serving:
    """The dependency that hands a route its app's `Serving`."""
    return request.app.state.serving


ServingDep = Annotated[Serving, Depends(get_serving)]


async def wait_for_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def usage(results: list[Completion]) -> Usage:
    prompt = sum(r.prompt_tokens for r in results)
    completion = sum(r.completion_tokens for r in results)
    cached = sum(r.cached_tokens for r in results)
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=cached),
    )


def diffusion_stats(results: list[Completion]) -> list[DiffusionStats]:
    return [
        DiffusionStats(
            canvases=r.canvases,
            steps_per_canvas=r.steps_per_canvas,
            batch_size=r.batch_size,
            seconds=round(r.seconds, 6),
        )
        for r in results
    ]


def sse(data: dict) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"
