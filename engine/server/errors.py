"""HTTP errors in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, and the answer
for each engine-side failure."""

from __future__ import annotations

import logging

from fastapi.responses import JSONResponse

from engine.errors import (
    ConfigError,
    DeadlineExceeded,
    EngineError,
    GenerationCancelled,
    OutOfMemoryError,
    PromptTooLongError,
)

logger = logging.getLogger("dgemma.server")


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


def api_error_for(error: BaseException, request_timeout_s: float) -> ApiError:
    """The HTTP answer for an engine-side failure."""
    if isinstance(error, DeadlineExceeded):
        return ApiError(
            504,
            f"generation did not finish within the server's request timeout ({request_timeout_s:g} s)",
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
