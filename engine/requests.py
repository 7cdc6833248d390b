"""Requests and results shared by the engine, the language server and the HTTP server.

This module, `engine.errors`, `engine.prompting` and `engine.rows` import nothing heavier than the
standard library (and `import engine` itself is lazy), so the language server's shared types work
without torch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# Sampler options a request may override (diffusiongemma.md 4.4); the step budget is separate.
SAMPLER_KNOBS = ("entropy_bound", "t_min", "t_max", "stability_threshold", "confidence_threshold")


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
    # The answer ends before the first of these (the HTTP server's `stop`).
    stop: Sequence[str] = ()
    # How the hole is filled (engine.infill): "prompt" (None), "pinned[:K]", "length[:B]", "pinned+length".
    strategy: str | None = None


@dataclass
class GenerationRequest:
    """One row of generation: prompt token ids in, at most `max_tokens` new tokens out.

    Everything a call needs travels here, so nothing about a call is kept on the model.
    """

    prompt_ids: list[int]
    max_tokens: int = 256
    # Tokens per canvas; None: the model's canvas length (infilling asks for one short canvas).
    canvas_length: int | None = None
    num_diffusion_steps: int | None = None
    sampler_knobs: Mapping[str, Any] = field(default_factory=dict)
    stop: Sequence[str] = ()
    seed: int | None = None
    deadline: float | None = None
    should_stop: Callable[[], bool] | None = None

    @property
    def sampler_key(self) -> tuple:
        """Rows of one canvas batch share one sampler: they must agree on this."""
        return (self.canvas_length, self.num_diffusion_steps, tuple(sorted(self.sampler_knobs.items())))


@dataclass
class GenerationStats:
    """Per-call figures: part of every result, and of HTTP responses."""

    prompt_tokens: int = 0
    # Prompt tokens whose KV came from the previous call's cache instead of being encoded again.
    cached_prompt_tokens: int = 0
    generated_tokens: int = 0
    canvases: int = 0
    steps_per_canvas: list[int] = field(default_factory=list)
    seconds: float = 0.0
    finish_reason: str = "length"  # "stop" (EOS or a stop string) | "length"
    # One reason per row for a batch; empty for single-prompt calls.
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
class GenerationResult:
    """What one row produced: its tokens before the end, its text, why it ended, and the figures."""

    tokens: list[int]
    text: str
    finish_reason: str  # "stop" (EOS, trailing pads, a stop string) | "length"
    stats: GenerationStats
    # Tokens of `text`: fewer than `tokens` when a stop string cut the text.
    completion_tokens: int = 0


@dataclass
class BatchResult:
    """Several rows generated in one canvas batch: one result per row and the batch's own figures."""

    rows: list[GenerationResult]
    stats: GenerationStats


@dataclass
class InfillResult:
    text: str
    stats: GenerationStats
    # Tokens of `text` (None where the backend does not know them).
    completion_tokens: int | None = None
