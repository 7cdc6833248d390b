"""The interface every backend implements, and the factory that picks one from the settings.

Handlers only ever talk to a `Backend`: the in-process engine (`backends/engine.py`) or a remote
OpenAI-compatible server (`backends/http.py`). A new backend registers its import path in
`BACKENDS` and needs no change anywhere else. This module and the request types it uses
(`engine.requests`, `engine.errors`) import without torch.
"""

from __future__ import annotations

import importlib
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from enum import Enum

from dgemma_lsp.settings import Settings
from engine.errors import EngineError
from engine.requests import InfillRequest, InfillResult

# Backend name -> "module:Class", imported when chosen: a backend's own dependencies (httpx for the
# remote one) stay unloaded otherwise. The engine backend imports torch only in `load`.
BACKENDS = {
    "engine": "dgemma_lsp.backends.engine:EngineBackend",
    "http": "dgemma_lsp.backends.http:HttpBackend",
    "openai": "dgemma_lsp.backends.http:HttpBackend",
}

ProgressCallback = Callable[[str, int | None], None]  # (message, percentage)


class BackendState(str, Enum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"
    CLOSED = "closed"


class BackendUnavailable(EngineError):
    """The configured backend cannot be used (not installed, unreachable, failed to load)."""


class Backend(ABC):
    """A model that fills holes. `load` runs once in a background thread; `infill` is blocking
    and is called from a worker thread, one call at a time per backend."""

    name = "backend"

    def __init__(self, settings: Settings):
        self.settings = settings
        self.state = BackendState.LOADING
        self.error: Exception | None = None
        self.ready = threading.Event()

    # --- lifecycle --------------------------------------------------------------------------

    def start(self, progress: ProgressCallback | None = None) -> None:
        """Load and warm up (blocking); records the outcome in `state`/`error` instead of raising."""
        report = progress or (lambda message, percentage: None)
        try:
            self.load(report)
            report("warming up", 90)
            self.warmup()
            self.state = BackendState.READY
        except Exception as error:  # any failure must leave the server running without a model
            self.error = error
            self.state = BackendState.FAILED
        finally:
            self.ready.set()

    @abstractmethod
    def load(self, progress: ProgressCallback) -> None: ...

    def warmup(self) -> None:  # noqa: B027 - optional hook, nothing to do by default
        """One small request so the first user request does not pay for lazy initialisation."""

    def close(self) -> None:
        self.state = BackendState.CLOSED

    # --- work ---------------------------------------------------------------------------------

    @abstractmethod
    def infill(self, request: InfillRequest) -> InfillResult: ...

    def infill_many(self, requests: list[InfillRequest]) -> list[str]:
        """Several holes at once. Backends that can put them in one batch of canvases override
        this; the default fills them one after another."""
        return [self.infill(request).text for request in requests]

    def count_tokens(self, text: str) -> int:
        """Tokens of `text` in the model's tokenizer (an estimate where there is none)."""
        from dgemma_lsp.context import estimate_tokens

        return estimate_tokens(text)

    @property
    def canvas_length(self) -> int:
        """Most tokens one hole may take."""
        return 256

    @property
    def context_length(self) -> int:
        return 8192

    @property
    def description(self) -> str:
        return self.name


def create_backend(settings: Settings) -> Backend:
    """The backend the settings ask for; `BackendUnavailable` if it cannot be imported."""
    target = BACKENDS.get(settings.backend)
    if target is None:
        raise BackendUnavailable(
            f"unknown backend {settings.backend!r}", hint=f"choose one of {', '.join(sorted(BACKENDS))}"
        )
    module_name, class_name = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        if error.name != module_name:
            raise
        raise BackendUnavailable(
            f"the {settings.backend!r} backend is not available in this installation",
            hint="use backend 'engine' (the in-process model)",
        ) from error
    return getattr(module, class_name)(settings)
