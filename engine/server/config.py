"""The HTTP server's settings (`dgemma serve` options) and the name it serves a model under."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


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
