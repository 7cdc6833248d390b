"""Block-diffusion generation: denoise a canvas, commit it, start the next (diffusiongemma.md 4.2-4.3).

`denoise_canvas` runs the sampler on one canvas against a prompt cache. `generate_canvases` is the
outer loop: it yields every finished canvas (post-EOS positions set to pad, as transformers does)
and commits it into the cache when another canvas follows. Rows of a batch that converge early
are frozen, rows that reached EOS or their token quota stop counting steps.

Between denoising steps the loop polls a `StopCheck` (each row's `should_stop` and deadline);
when every row should stop it raises `GenerationCancelled` (or `DeadlineExceeded` when all the
deadlines passed), so a cancelled request costs at most one more decoder pass. How a row's
canvases become text and a finish reason is `engine.rows`'s business, not this loop's.

Pinned positions (`CanvasPins`) apply to the first canvas of a call: infilling puts the start of
the suffix at the end of a one-canvas hole. On request (`track_logprobs`) an outcome carries
`TokenLogprobs`: per position, the log-probability of the argmax at the first step and of the
committed token at the row's last step, under the model's untempered distribution (the sampler's
late temperatures make every argmax look certain); hole-length search scores candidates by them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from engine.cache import KVCache
from engine.errors import DeadlineExceeded, GenerationCancelled
from engine.model import DiffusionGemmaTransformer
from engine.sampler import CanvasPins, EntropyBoundSampler


@dataclass
class TokenLogprobs:
    """Untempered log-probabilities of one canvas, [B, C] each."""

    first: torch.Tensor  # of the argmax at the first step (from noise: how sure the model is at once)
    last: torch.Tensor  # of the committed token at the row's last step


@dataclass
class CanvasOutcome:
    tokens: torch.Tensor  # [B, C] committed argmax, post-EOS positions replaced by pad
    steps: list[int]  # decoder passes each row used on this canvas
    finished: torch.Tensor  # [B] bool: row is done (EOS seen now or earlier, or its quota reached)
    eos_found: torch.Tensor  # [B] bool: row hit EOS in this canvas
    logprobs: TokenLogprobs | None = None  # None unless asked for


class StopCheck:
    """Polled between denoising steps: the cancellation callbacks and deadlines of a call's rows.

    A call stops only when every one of its rows should (a batch serves the others otherwise):
    with `DeadlineExceeded` when all of them ran out of time, `GenerationCancelled` when at least
    one was cancelled.
    """

    def __init__(self, rows: Sequence[tuple[Callable[[], bool] | None, float | None]] = ()):
        self.rows = list(rows)

    @classmethod
    def single(cls, should_stop: Callable[[], bool] | None, deadline: float | None) -> StopCheck:
        return cls([(should_stop, deadline)])

    def check(self) -> None:
        if not self.rows:
            return
        now, cancelled = time.monotonic(), False
        for should_stop, deadline in self.rows:
            if should_stop is not None and should_stop():
                cancelled = True
            elif deadline is None or now <= deadline:
                return  # this row goes on, so the call does
        raise GenerationCancelled() if cancelled else DeadlineExceeded()


@torch.inference_mode()
def denoise_canvas(
    model: DiffusionGemmaTransformer,
    cache: KVCache,
    sampler: EntropyBoundSampler,
    batch: int,
    length: int,
    frozen: torch.Tensor | None = None,
    stop: StopCheck | None = None,
    on_step: Callable[[torch.Tensor], None] | None = None,
    pins: CanvasPins | None = None,
    track_logprobs: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, TokenLogprobs | None]:
    """Denoise one canvas of `length` tokens; returns (argmax canvas [B, C], decoder passes per row
    [B], the canvas's `TokenLogprobs` or None).

    `frozen` [B] marks rows that need no canvas (finished earlier): they are computed with the
    batch, as transformers does, but not counted. `pins` fixes tokens at positions of this canvas.
    `track_logprobs` costs one more log-softmax over the vocabulary per step.
    """
    device = model.device
    steps_budget = sampler.config.max_denoising_steps
    canvas = sampler.initial_canvas(batch, length, device, pins)
    argmax = canvas
    logprobs = first_logprobs = None
    self_conditioning = None
    # In fp32 the sampler's probabilities are exactly softmax(processed logits): feed them back
    # instead of recomputing the softmax (transformers casts the logits to the weight dtype first).
    feed_probs = model.dtype == torch.float32
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    idle = frozen if frozen is not None else torch.zeros_like(finished)
    passes = torch.zeros(batch, dtype=torch.long, device=device)
    for steps_remaining in range(steps_budget, 0, -1):
        if stop is not None:
            stop.check()
        passes += ~(finished | idle)
        if feed_probs:
            logits = model.denoise(canvas, cache, self_conditioning_probs=self_conditioning)
        else:
            logits = model.denoise(canvas, cache, self_conditioning)
        result = sampler.step(canvas, logits, steps_remaining, pins)
        new_argmax, new_canvas = result.argmax, result.canvas
        new_logprobs = None
        if track_logprobs:
            new_logprobs = (
                torch.log_softmax(logits.float(), dim=-1).gather(-1, new_argmax[..., None]).squeeze(-1)
            )
        feedback = result.probs if feed_probs else result.processed_logits.to(model.dtype)
        if finished.any():  # rows that converged keep their canvas, argmax and self-conditioning input
            keep = finished[:, None]
            new_argmax = torch.where(keep, argmax, new_argmax)
            new_canvas = torch.where(keep, canvas, new_canvas)
            feedback = torch.where(keep[..., None], self_conditioning, feedback)
            if new_logprobs is not None:
                new_logprobs = torch.where(keep, logprobs, new_logprobs)
        if first_logprobs is None:
            first_logprobs = new_logprobs
        finished = finished | sampler.converged(new_argmax, result.entropy, pins)
        self_conditioning = feedback
        canvas, argmax, logprobs = new_canvas, new_argmax, new_logprobs
        if on_step is not None:
            on_step(argmax)
        if bool(finished.all()):
            break
    scores = TokenLogprobs(first_logprobs, logprobs) if track_logprobs else None
    return argmax, passes, scores


def pad_after_eos(
    tokens: torch.Tensor, eos_ids: torch.Tensor, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the first EOS of each row, replace everything after it by pad (4.3)."""
    is_eos = torch.isin(tokens, eos_ids)
    seen = is_eos.cumsum(dim=-1)
    after = (seen > 0) & ~((seen == 1) & is_eos)
    return tokens.masked_fill(after, pad_id), is_eos.any(dim=-1)


def generate_canvases(
    model: DiffusionGemmaTransformer,
    cache: KVCache,
    sampler: EntropyBoundSampler,
    max_new_tokens: list[int],
    *,
    canvas_length: int,
    eos_ids: list[int],
    pad_id: int,
    stop: StopCheck | None = None,
    context_length: int | None = None,
    pins: CanvasPins | None = None,
    track_logprobs: bool = False,
) -> Iterator[CanvasOutcome]:
    """Yield canvases until every row has EOS or `max_new_tokens[row]` tokens; commit between canvases.

    `cache` must already hold the prompt. Rows that finished in an earlier canvas get an all-pad
    canvas (4.3). `pins` [B, canvas_length] fixes tokens of the first canvas; `track_logprobs`
    fills each outcome's `logprobs`.
    """
    batch = len(max_new_tokens)
    device = model.device
    eos_tensor = torch.tensor(eos_ids or [-1], device=device)
    quota = torch.tensor([math.ceil(n / canvas_length) for n in max_new_tokens], device=device)
    done = quota <= 0
    canvases = int(quota.max().item()) if batch else 0
    if context_length is not None:
        canvases = min(canvases, max(0, (context_length - cache.length) // canvas_length))
    for index in range(canvases):
        tokens, passes, logprobs = denoise_canvas(
            model,
            cache,
            sampler,
            batch,
            canvas_length,
            frozen=done,
            stop=stop,
            pins=pins if index == 0 else None,
            track_logprobs=track_logprobs,
        )
        tokens, eos_found = pad_after_eos(tokens, eos_tensor, pad_id)
        tokens = tokens.masked_fill(done[:, None], pad_id)
        eos_found &= ~done
        done = done | eos_found | (quota <= index + 1)
        yield CanvasOutcome(tokens, passes.tolist(), done.clone(), eos_found, logprobs)
        if bool(done.all()) or index + 1 == canvases:
            return
        with torch.inference_mode():
            model.encode(tokens, cache)
