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

Layout (FastAPI's "bigger applications"): `create_app` builds one `Serving` (model, settings,
engine thread, metrics: serving.py) into `app.state`, adds the guard middleware (guard.py) and the
error handlers, and includes one router per group (routers/): completions, chat, models, health
and metrics. Routes get the `Serving` through a dependency.
"""

from __future__ import annotations

import contextlib
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from engine.server.batching import Scheduler
from engine.server.config import ServerConfig, served_model_name
from engine.server.errors import ApiError, ClientGone, api_error_for
from engine.server.guard import ENDPOINTS, Guard
from engine.server.metrics import Metrics
from engine.server.routers import chat, completions, health, models
from engine.server.serving import DEADLINE_GRACE_S, Serving

__all__ = [
    "DEADLINE_GRACE_S",
    "ENDPOINTS",
    "ApiError",
    "ClientGone",
    "Guard",
    "ServerConfig",
    "api_error_for",
    "create_app",
    "served_model_name",
]


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
    app.state.serving = Serving(model, config, scheduler, metrics)
    app.add_middleware(Guard, config=config, metrics=metrics)
    add_error_handlers(app)
    for group in (completions, chat, models, health):
        app.include_router(group.router)
    return app


def add_error_handlers(app: FastAPI) -> None:
    """Every error in OpenAI's shape: ours, pydantic's validation errors, Starlette's 404/405."""

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
