"""The outermost ASGI middleware: API key, body size and body timeout checked before any body is
parsed, and every answer counted in the request metrics."""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Callable

from engine.server.config import ServerConfig
from engine.server.errors import ApiError
from engine.server.metrics import Metrics

ENDPOINTS = ("/v1/completions", "/v1/chat/completions", "/v1/models", "/health", "/metrics")


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
