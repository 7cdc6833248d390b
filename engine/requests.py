"""Structured requests and results shared by the engine, the language server and the HTTP server."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class ContextSnippet:
    """A piece of context placed before the hole: a definition, an import block, another open file..."""

    path: str
    text: str
    kind: str = "file"  # "scope" | "imports" | "definition" | "open_file" | "recent_edit" | "file"


@dataclass
class InfillRequest:
    """Fill the hole between `prefix` and `suffix` (product.md, "How a request flows", step 3)."""

    prefix: str
    suffix: str
    language: str | None = None
    path: str | None = None
    snippets: list[ContextSnippet] = field(default_factory=list)
    # Tokens the hole may take: the canvas length. At most one canvas for completions.
    max_tokens: int = 64
    num_diffusion_steps: int | None = None
    # `time.monotonic()` value after which the engine stops between denoising steps.
    deadline: float | None = None
    # Polled between denoising steps; returning True cancels the request.
    should_stop: Callable[[], bool] | None = None
    seed: int | None = None


@dataclass
class GenerationStats:
    """Per-call figures, exposed as `model.last_stats` and in HTTP responses."""

    prompt_tokens: int = 0
    # Prompt tokens whose KV came from the previous call's cache instead of being encoded again.
    cached_prompt_tokens: int = 0
    generated_tokens: int = 0
    canvases: int = 0
    steps_per_canvas: list[int] = field(default_factory=list)
    seconds: float = 0.0
    finish_reason: str = "length"  # "stop" (EOS or a stop string) | "length"
    # One reason per row for `generate_batch`; empty for single-prompt calls.
    row_finish_reasons: list[str] = field(default_factory=list)

    @property
    def tokens_per_second(self) -> float:
        return self.generated_tokens / self.seconds if self.seconds > 0 else 0.0

    @property
    def total_steps(self) -> int:
        return sum(self.steps_per_canvas)

    def as_dict(self) -> dict:
        return {
            "prompt_tokens": self.prompt_tokens,
            "cached_prompt_tokens": self.cached_prompt_tokens,
            "generated_tokens": self.generated_tokens,
            "canvases": self.canvases,
            "steps_per_canvas": list(self.steps_per_canvas),
            "seconds": round(self.seconds, 6),
            "tokens_per_second": round(self.tokens_per_second, 3),
            "finish_reason": self.finish_reason,
            **({"row_finish_reasons": list(self.row_finish_reasons)} if self.row_finish_reasons else {}),
        }


@dataclass
class InfillResult:
    text: str
    stats: GenerationStats
