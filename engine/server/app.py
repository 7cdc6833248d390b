"""The OpenAI-compatible HTTP API over one `DiffusionGemmaModel` (FastAPI).

    POST /v1/completions        prompt (+ suffix: infilling), max_tokens, diffusion_steps, knobs, stop, stream
    POST /v1/chat/completions   messages through the checkpoint's chat template, stream
    GET  /v1/models             the served model under each of its names (max_model_len, canvas_length, fim)
    GET  /health                liveness, open without the API key
    GET  /metrics               Prometheus text format, open without the API key (as vLLM)

Streams are server-sent events, one chunk per committed canvas, then `data: [DONE]`. Errors have
OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`: 400 for bad input (pydantic
validation, limits, context length), 401 without the API key, 404 for a model name this server does
not serve (it answers to every name in `served_model_names`, as vLLM's `--served-model-name`), 408 for
a body that does not arrive in time, 413 for an oversized body, 429 when the queue is full, 504
when generation passes the request timeout. A client that disconnects cancels its generation
between two denoising steps. Generation runs on one engine thread (batching.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from engine.errors import (
    ConfigError,
    DeadlineExceeded,
    EngineError,
    GenerationCancelled,
    OutOfMemoryError,
    PromptTooLongError,
)
from engine.requests import ContextSnippet, InfillRequest
from engine.server.batching import Completion, Job, QueueFull, Scheduler
from engine.server.metrics import CONTENT_TYPE, Metrics
from engine.server.schemas import (
    AssistantMessage,
    ChatChoice,
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    DiffusionParameters,
    DiffusionStats,
    ErrorResponse,
    ModelCard,
    ModelList,
    PromptTokensDetails,
    Usage,
)

logger = logging.getLogger("dgemma.server")

ENDPOINTS = ("/v1/completions", "/v1/chat/completions", "/v1/models", "/health", "/metrics")
# Seconds the event loop waits past a request's deadline for the engine to notice it.
DEADLINE_GRACE_S = 1.0


@dataclass
class ServerConfig:
    # The name responses carry and `/v1/models` lists first; requests may use it or any alias.
    model_name: str = "dgemma"
    model_aliases: tuple[str, ...] = ()
    api_key: str | None = None
    max_body_bytes: int = 1 << 20
    # Per-request generation deadline; the body must also arrive within `body_timeout_s`.
    request_timeout_s: float = 300.0
    body_timeout_s: float = 30.0
    max_tokens_limit: int = 4096
    max_diffusion_steps: int = 256
    default_completion_tokens: int = 16  # OpenAI's default for /v1/completions
    batching: bool = True
    batch_window_ms: float = 10.0
    max_batch_size: int = 8
    max_queue: int = 256

    @property
    def served_model_names(self) -> tuple[str, ...]:
        return (self.model_name, *(a for a in self.model_aliases if a != self.model_name))


def served_model_name(source: str) -> str:
    """The name `GET /v1/models` shows: a hub id as given, a folder's name, or `dgemma-embedded`."""
    if not source or source == "embedded":
        return "dgemma-embedded"
    path = Path(source)
    return path.name if path.exists() else source


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


class ClientGone(Exception):
    """The client closed the connection before the answer was ready."""


def api_error_for(error: BaseException, config: ServerConfig) -> ApiError:
    """The HTTP answer for an engine-side failure."""
    if isinstance(error, DeadlineExceeded):
        return ApiError(
            504,
            f"generation did not finish within the server's request timeout ({config.request_timeout_s:g} s)",
            "timeout_error",
            code="timeout",
        )
    if isinstance(error, GenerationCancelled):
        return ApiError(499, error.message, "cancelled", code="cancelled")
    if isinstance(error, PromptTooLongError | ConfigError):
        return ApiError(400, str(error), code="invalid_value")
    if isinstance(error, OutOfMemoryError):
        return ApiError(503, str(error), "server_error", code="out_of_memory", headers={"Retry-After": "5"})
    if isinstance(error, EngineError):
        return ApiError(500, str(error), "server_error")
    logger.error("unexpected error", exc_info=error)
    return ApiError(500, f"internal error: {type(error).__name__}", "server_error")


# ---- the ASGI guard: auth, body size, body timeout, request metrics ---------------------------------


class Guard:
    """Outermost middleware: reject before any body is parsed, and count every answer."""

    def __init__(self, app: Callable, config: ServerConfig, metrics: Metrics):
        self.app = app
        self.config = config
        self.metrics = metrics
        self._key = config.api_key.encode() if config.api_key else None

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        path = scope.get("path", "")
        endpoint = path if path in ENDPOINTS else "other"
        status = {"code": 500}

        async def send_counted(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            rejection = self._authorize(scope, path)
            if rejection is None:
                receive, rejection = await self._read_body(scope, receive)
            if rejection is not None:
                await rejection.response()(scope, receive, send_counted)
            else:
                await self.app(scope, receive, send_counted)
        finally:
            self.metrics.requests.labels(endpoint=endpoint, status=str(status["code"])).inc()
            self.metrics.latency.labels(endpoint=endpoint).observe(time.monotonic() - started)

    def _authorize(self, scope: dict, path: str) -> ApiError | None:
        if self._key is None or not path.startswith("/v1"):
            return None
        header = dict(scope.get("headers") or []).get(b"authorization", b"")
        scheme, _, token = header.partition(b" ")
        if scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self._key):
            return None
        return ApiError(
            401,
            "missing or wrong API key: send the header 'Authorization: Bearer <key>'",
            "authentication_error",
            code="invalid_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )

    async def _read_body(self, scope: dict, receive: Callable) -> tuple[Callable, ApiError | None]:
        """Read the whole body (at most `max_body_bytes`, within `body_timeout_s`) and replay it."""
        limit = self.config.max_body_bytes
        too_large = ApiError(
            413, f"the request body is larger than this server accepts ({limit} bytes)", code="body_too_large"
        )
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None:
            try:
                if int(length) > limit:
                    return receive, too_large
            except ValueError:
                return receive, ApiError(400, "invalid Content-Length header")
        chunks: list[bytes] = []
        size = 0
        deadline = time.monotonic() + self.config.body_timeout_s
        while True:
            try:
                message = await asyncio.wait_for(receive(), timeout=max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                return receive, ApiError(
                    408,
                    f"the request body did not arrive within {self.config.body_timeout_s:g} s",
                    code="timeout",
                )
            if message["type"] == "http.disconnect":
                pending = [message]
                break
            if message["type"] == "http.request":
                size += len(message.get("body", b""))
                if size > limit:
                    return receive, too_large
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    pending = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]
                    break

        async def replay() -> dict:
            if pending:
                return pending.pop(0)
            return await receive()

        return replay, None


# ---- the app ---------------------------------------------------------------------------------------


def create_app(model: Any, config: ServerConfig | None = None) -> FastAPI:
    """The FastAPI app serving `model`; the engine thread starts and stops with the app's lifespan."""
    config = config or ServerConfig()
    metrics = Metrics()
    scheduler = Scheduler(
        model,
        metrics,
        batching=config.batching,
        batch_window_s=config.batch_window_ms / 1000,
        max_batch_size=config.max_batch_size,
        max_queue=config.max_queue,
    )
    created = int(time.time())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        scheduler.start()
        try:
            yield
        finally:
            await run_in_threadpool(scheduler.stop)

    app = FastAPI(
        title="dgemma",
        version="0.1.0",
        summary="OpenAI-compatible API of the DiffusionGemma engine (block diffusion, one canvas per chunk).",
        lifespan=lifespan,
    )
    app.state.model = model
    app.state.config = config
    app.state.metrics = metrics
    app.state.scheduler = scheduler
    app.add_middleware(Guard, config=config, metrics=metrics)
    errors: dict[int | str, dict[str, Any]] = {
        code: {"model": ErrorResponse} for code in (400, 401, 404, 408, 413, 429, 504)
    }
    stream_doc = {200: {"content": {"text/event-stream": {}}, "description": "JSON, or SSE with stream"}}

    # --- errors ---------------------------------------------------------------------------------

    @app.exception_handler(ApiError)
    async def on_api_error(request: Request, error: ApiError) -> JSONResponse:
        return error.response()

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        parts, param = [], None
        for item in error.errors():
            location = [str(p) for p in item.get("loc", ()) if p != "body"]
            message = str(item.get("msg", "invalid")).removeprefix("Value error, ")
            if item.get("type") == "json_invalid":
                location = []
                message = f"the body is not valid JSON ({item.get('ctx', {}).get('error', 'parse error')})"
            parts.append(f"{'.'.join(location)}: {message}" if location else message)
            param = param or (location[0] if location else None)
        return ApiError(400, "; ".join(parts[:10]) or "invalid request", param=param).response()

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        type_ = "not_found_error" if error.status_code == 404 else "invalid_request_error"
        return ApiError(error.status_code, str(error.detail), type_, headers=error.headers).response()

    # --- helpers --------------------------------------------------------------------------------

    def check_common(body: DiffusionParameters) -> None:
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

    def check_length(prompt_tokens: int, max_tokens: int) -> None:
        if max_tokens > config.max_tokens_limit:
            raise ApiError(
                400,
                f"max_tokens={max_tokens} is more than this server allows ({config.max_tokens_limit})",
                param="max_tokens",
            )
        if prompt_tokens + max_tokens > model.context_length:
            raise ApiError(
                400,
                f"this model's maximum context length is {model.context_length} tokens, but "
                f"{prompt_tokens + max_tokens} were requested ({prompt_tokens} in the prompt, "
                f"{max_tokens} for the completion): shorten the prompt or ask for fewer tokens",
                param="max_tokens" if prompt_tokens < model.context_length else "prompt",
                code="context_length_exceeded",
            )

    def new_job(body: DiffusionParameters, ids: list[int] | None, max_tokens: int) -> Job:
        return Job(
            prompt_ids=ids,
            max_tokens=max_tokens,
            deadline=time.monotonic() + config.request_timeout_s,
            steps=body.diffusion_steps,
            knobs=body.sampler_knobs(),
            seed=body.seed if body.seed is not None else model.config.seed,
            stop=body.stop_list(),
            stream=body.stream,
        )

    def prompt_ids(prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, str):
            return model.tokenizer.encode(prompt, add_special_tokens=True)
        vocab = model.transformer.config.vocab_size
        bad = [t for t in prompt if not 0 <= t < vocab]
        if bad:
            raise ApiError(
                400, f"prompt: token ids out of the vocabulary (0..{vocab - 1}): {bad[:5]}", param="prompt"
            )
        return list(prompt)

    def completion_jobs(body: CompletionRequest) -> list[Job]:
        """Tokenize and check every prompt (runs in a worker thread: long prompts take a while)."""
        jobs = []
        max_tokens = body.max_tokens or min(config.default_completion_tokens, config.max_tokens_limit)
        for prompt in body.prompts():
            if body.suffix is None:
                ids = prompt_ids(prompt)
                check_length(len(ids), max_tokens)
                jobs.append(new_job(body, ids, max_tokens))
                continue
            if not isinstance(prompt, str):
                raise ApiError(400, "suffix needs a text prompt, not token ids", param="prompt")
            snippets = [ContextSnippet(e.filename or "context", e.text) for e in body.input_extra or []]
            estimate = model.count_tokens(prompt + body.suffix + "".join(s.text for s in snippets))
            check_length(estimate, max_tokens)
            job = new_job(body, None, max_tokens)
            job.infill = InfillRequest(
                prefix=prompt,
                suffix=body.suffix,
                language=body.language,
                path=body.path,
                snippets=snippets,
                max_tokens=max_tokens,
                num_diffusion_steps=body.diffusion_steps,
                seed=job.seed,
            )
            jobs.append(job)
        return jobs

    def chat_job(body: ChatCompletionRequest) -> Job:
        ids = model.chat_prompt_ids([m.as_template_message() for m in body.messages])
        room = model.context_length - len(ids)
        max_tokens = body.max_tokens or max(1, min(config.max_tokens_limit, room))
        check_length(len(ids), max_tokens)
        return new_job(body, ids, max_tokens)

    async def prepare(fn: Callable[[], Any]) -> Any:
        try:
            return await run_in_threadpool(fn)
        except EngineError as error:  # the chat template rejected the messages, etc.
            raise api_error_for(error, config) from None

    def enqueue(jobs: list[Job]) -> None:
        loop = asyncio.get_running_loop()
        for job in jobs:
            job.loop = loop
            if job.stream:
                job.events = asyncio.Queue()
            else:
                job.future = loop.create_future()
        try:
            scheduler.submit(jobs)
        except QueueFull as error:
            raise ApiError(
                429,
                f"the server is busy ({error}); retry shortly",
                "rate_limit_error",
                code="queue_full",
                headers={"Retry-After": "1"},
            ) from None

    async def wait_for_disconnect(request: Request) -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                return

    async def run(jobs: list[Job], request: Request) -> list[Completion]:
        """Queue the jobs and wait for all of them, the client's disconnect, or the deadline."""
        enqueue(jobs)
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
                    raise api_error_for(result, config)
            return results
        for job in jobs:
            job.cancel("client disconnected" if watcher in done else "deadline")
        if watcher in done:
            raise ClientGone()
        raise api_error_for(DeadlineExceeded(), config)

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

    def account(results: list[Completion]) -> None:
        for r in results:
            metrics.prompt_tokens.inc(r.prompt_tokens)
            metrics.cached_prompt_tokens.inc(r.cached_tokens)
            metrics.generation_tokens.inc(r.completion_tokens)

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

    def stream(
        jobs: list[Job],
        body: DiffusionParameters,
        base: dict,
        choice: Callable[[int, str | None, str | None], dict],
        head: Callable[[int], dict] | None = None,
    ) -> StreamingResponse:
        """SSE: for each choice in turn, its deltas canvas by canvas, then its finish reason.

        `choice(index, text, finish)` builds one chunk's choice; `head(index)`, where given, the
        choice sent before a choice's first delta."""
        enqueue(jobs)
        arrived = time.monotonic()
        extra = {"usage": None} if body.include_usage else {}

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
                            yield sse(api_error_for(value, config).body())
                            yield "data: [DONE]\n\n"
                            return
                account(results)
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

    async def answer(make: Callable[[], Awaitable[Any]]) -> Any:
        try:
            return await make()
        except ClientGone:
            return Response(status_code=499)

    # --- routes ---------------------------------------------------------------------------------

    @app.post("/v1/completions", response_model=CompletionResponse, responses={**errors, **stream_doc})
    async def completions(body: CompletionRequest, request: Request) -> Any:
        """Text completion; with `suffix`, fill the hole between `prompt` and `suffix`."""
        check_common(body)
        jobs = await prepare(lambda: completion_jobs(body))
        ident, now = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        base = {"id": ident, "object": "text_completion", "created": now, "model": config.model_name}
        if body.stream:

            def choice(index: int, text: str | None, finish: str | None) -> dict:
                return {"index": index, "text": text or "", "finish_reason": finish, "logprobs": None}

            return stream(jobs, body, base, choice)

        async def whole() -> CompletionResponse:
            results = await run(jobs, request)
            account(results)
            return CompletionResponse(
                id=ident,
                created=now,
                model=config.model_name,
                choices=[
                    CompletionChoice(index=i, text=r.text, finish_reason=r.finish_reason)
                    for i, r in enumerate(results)
                ],
                usage=usage(results),
                diffusion=diffusion_stats(results),
            )

        return await answer(whole)

    @app.post(
        "/v1/chat/completions", response_model=ChatCompletionResponse, responses={**errors, **stream_doc}
    )
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
        """Chat completion: system, user and assistant turns through the model's chat template."""
        check_common(body)
        job = await prepare(lambda: chat_job(body))
        ident, now = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        base = {"id": ident, "object": "chat.completion.chunk", "created": now, "model": config.model_name}
        if body.stream:

            def choice(index: int, text: str | None, finish: str | None) -> dict:
                delta = {"content": text} if text is not None else {}
                return {"index": index, "delta": delta, "finish_reason": finish, "logprobs": None}

            def head(index: int) -> dict:
                delta = {"role": "assistant", "content": ""}
                return {"index": index, "delta": delta, "finish_reason": None, "logprobs": None}

            return stream([job], body, base, choice, head)

        async def whole() -> ChatCompletionResponse:
            results = await run([job], request)
            account(results)
            result = results[0]
            return ChatCompletionResponse(
                id=ident,
                created=now,
                model=config.model_name,
                choices=[
                    ChatChoice(
                        index=0,
                        message=AssistantMessage(content=result.text),
                        finish_reason=result.finish_reason,
                    )
                ],
                usage=usage(results),
                diffusion=diffusion_stats(results),
            )

        return await answer(whole)

    @app.get("/v1/models", response_model=ModelList, responses={401: {"model": ErrorResponse}})
    async def models() -> ModelList:
        """The served model under each of its names (the main one first), with its context and
        canvas lengths and whether it has FIM tokens."""
        cards = [
            ModelCard(
                id=name,
                created=created,
                max_model_len=model.context_length,
                canvas_length=model.canvas_length,
                fim=bool(model.has_fim_tokens),
            )
            for name in config.served_model_names
        ]
        return ModelList(data=cards)

    @app.get("/health")
    async def health() -> dict:
        """Liveness: 200 while the engine thread runs."""
        return {"status": "ok", "model": config.model_name, "queue_depth": scheduler.queue_depth}

    @app.get("/metrics", response_class=Response)
    async def prometheus() -> Response:
        """Prometheus metrics: requests, tokens, denoising steps per canvas, latency histograms."""
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    return app
