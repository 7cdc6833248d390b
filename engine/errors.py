"""Errors the engine raises on bad input: each says what is wrong and what to do about it.

Every public entry point (SDK, CLI, HTTP server, language server) catches `EngineError` and shows
`str(error)`, which includes the hint, instead of a traceback from deep inside torch.
"""

from __future__ import annotations


class EngineError(Exception):
    """Base class. `hint` tells the user what to do next."""

    def __init__(self, message: str, hint: str | None = None):
        self.message = message
        self.hint = hint
        super().__init__(message if not hint else f"{message}\n  hint: {hint}")


class CheckpointError(EngineError):
    """A checkpoint is missing, unreadable, corrupt, of an unknown architecture or of the wrong shapes."""


class ConfigError(EngineError):
    """A configuration value is invalid (unknown dtype or device, out-of-range sampler knob...)."""


class DeviceError(EngineError):
    """The requested device cannot run the requested dtype, or is not there."""


class PromptTooLongError(EngineError):
    """The prompt (plus the tokens asked for) does not fit the model's context."""


class OutOfMemoryError(EngineError):
    """The device ran out of memory while loading or generating."""


class GenerationCancelled(EngineError):
    """The caller asked to stop (a newer request, `$/cancelRequest`, a disconnected HTTP client)."""

    def __init__(self, message: str = "generation cancelled", hint: str | None = None):
        super().__init__(message, hint)


class DeadlineExceeded(GenerationCancelled):
    """The request's deadline passed before the canvas converged."""

    def __init__(self, message: str = "deadline exceeded", hint: str | None = None):
        super().__init__(message, hint)


OOM_HINT = (
    "use the NVFP4 weights (dtype='nvfp4'), enable attention_slicing=True, "
    "enable cpu_offload_unused_experts=True, or ask for fewer tokens"
)
