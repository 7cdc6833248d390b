"""Diffusion-native infilling strategies (issue 10 items 1 and 2; infilling.md sections 1 and 3).

Today's infill ("prompt") asks for one canvas after the hole prompt and lets the model decide where
the middle ends. Two things only a diffusion canvas allows are built on top of it:

- **pinned suffix** (`pinned[:K]`): the first K tokens of the suffix are pinned right after a hole
  of a chosen length, then EOS, then pad. The model sees, inside its own canvas, the code the
  middle must join; the text returned is the part before the pinned tokens (or before an EOS the
  model put inside the hole). Works with the embedded model's FIM prompt and with DiffusionGemma's
  chat-style hole prompt alike (it has no FIM tokens).
- **hole-length search** (`length[:B]`): B candidate hole lengths, taken from the syntax of the hole
  (inside a line, the rest of a line, a block), are denoised as one batch; each candidate's hole
  is closed by a pinned EOS. Raw confidence is biased by length (infilling.md 3), so candidates are
  compared by the mean untempered log-probability of their committed tokens plus
  `length_bias * log(n)` (the k*log L correction of LR-DLLM, one k for all holes; 0 by default:
  on 40 held-out holes with the embedded model a positive k only moved the choice further from
  the model's own length). The longest candidate is the whole canvas with nothing pinned but the
  suffix, i.e. the length the model picks itself, so the search only adds options to it.

Both combine (`pinned+length:B`). A batch of B is nearly free on a GPU and about B times the
compute on a CPU (performance.md 5.2), hence `default_candidates(device)`.

The pure part (strategy names, hole shapes, candidate lengths, canvas layouts, scores) needs no
torch; `infill_with_strategy` runs the layouts on a `DiffusionGemmaModel`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from engine.errors import ConfigError
from engine.requests import GenerationStats, InfillRequest, InfillResult

if TYPE_CHECKING:
    from engine.api import DiffusionGemmaModel

PROMPT, PINNED, LENGTH_SEARCH = "prompt", "pinned", "length"
DEFAULT_PINNED_TOKENS = 4
DEFAULT_LENGTH_BIAS = 0.0
CPU_CANDIDATES, ACCELERATOR_CANDIDATES = 3, 8

INSIDE_LINE, REST_OF_LINE, BLOCK = "inside-line", "rest-of-line", "block"
# Candidate hole lengths in tokens per hole shape, shortest first (Python lines run about 8-15
# tokens with the embedded tokenizer; a block hole is one or more statements).
LENGTH_LADDERS: dict[str, tuple[int, ...]] = {
    INSIDE_LINE: (3, 6, 10, 16, 24),
    REST_OF_LINE: (6, 10, 16, 24, 32),
    BLOCK: (8, 16, 24, 32, 48),
}


@dataclass(frozen=True)
class InfillStrategy:
    """How one hole is filled: K pinned suffix tokens (0: none) and B candidate lengths (1: no search)."""

    pinned_tokens: int = 0
    candidates: int = 1
    length_bias: float = DEFAULT_LENGTH_BIAS

    def __post_init__(self) -> None:
        if self.pinned_tokens < 0:
            raise ConfigError("a pinned suffix needs 0 or more tokens")
        if self.candidates < 1:
            raise ConfigError("hole-length search needs at least one candidate length")

    @property
    def is_prompt_only(self) -> bool:
        return self.pinned_tokens == 0 and self.candidates == 1

    @property
    def name(self) -> str:
        parts = []
        if self.pinned_tokens:
            parts.append(f"{PINNED}:{self.pinned_tokens}")
        if self.candidates > 1:
            parts.append(f"{LENGTH_SEARCH}:{self.candidates}")
        return "+".join(parts) or PROMPT

    @classmethod
    def parse(
        cls, spec: str, device: str = "cpu", length_bias: float = DEFAULT_LENGTH_BIAS
    ) -> InfillStrategy:
        """`prompt`, `pinned[:K]`, `length[:B]` or `pinned[:K]+length[:B]` (B defaults per device)."""
        pinned, candidates = 0, 1
        for part in spec.strip().lower().split("+"):
            word, _, number = part.partition(":")
            try:
                count = int(number) if number else None
            except ValueError:
                raise ConfigError(f"bad infill strategy {spec!r}: {number!r} is not a number") from None
            if word == PROMPT and count is None:
                continue
            if word == PINNED:
                pinned = DEFAULT_PINNED_TOKENS if count is None else count
            elif word == LENGTH_SEARCH:
                candidates = default_candidates(device) if count is None else count
            else:
                raise ConfigError(
                    f"unknown infill strategy {spec!r}",
                    hint="prompt, pinned[:K], length[:B] or pinned[:K]+length[:B]",
                )
        return cls(pinned, candidates, length_bias)


def default_candidates(device: str) -> int:
    """B for hole-length search: a CPU pays about B times the compute, an accelerator almost nothing."""
    return CPU_CANDIDATES if str(device).startswith("cpu") else ACCELERATOR_CANDIDATES


def hole_shape(prefix: str, suffix: str) -> str:
    """What the syntax around the cursor says about the hole: text on both sides of it within the
    line (`inside-line`), text before it only (`rest-of-line`), or a blank line (`block`)."""
    before = prefix.rsplit("\n", 1)[-1]
    after = suffix.split("\n", 1)[0]
    if not before.strip():
        return BLOCK
    return INSIDE_LINE if after.strip() else REST_OF_LINE


def candidate_lengths(shape: str, room: int, count: int) -> list[int]:
    """`count` hole lengths for `shape`, at most `room` tokens, the last always `room` itself.

    `room` is the longest hole the canvas can hold; it is today's choice (the model ends the
    middle where it likes), so the other candidates are spread over the shape's ladder below it.
    """
    if room < 1:
        raise ConfigError("the canvas has no room for a hole", hint="pin fewer suffix tokens")
    shorter = [length for length in LENGTH_LADDERS[shape] if length < room]
    picks = count - 1
    if picks <= 0 or not shorter:
        return [room]
    if picks >= len(shorter):
        chosen = shorter
    else:
        # Evenly over the ladder, the shortest included.
        chosen = [shorter[round(i * (len(shorter) - 1) / max(1, picks - 1))] for i in range(picks)]
        chosen = sorted(set(chosen))
    return [*chosen, room]


@dataclass(frozen=True)
class HoleLayout:
    """One candidate canvas: `hole_length` free positions, then the pinned tokens `pinned`."""

    hole_length: int
    canvas_length: int
    pinned: dict[int, int]


def hole_layout(
    hole_length: int, canvas_length: int, suffix_ids: Sequence[int], eos_id: int, pad_id: int
) -> HoleLayout:
    """[free x hole_length][suffix_ids][EOS][pad ...], cut at the canvas end.

    The pinned suffix and EOS make the hole's end explicit inside the canvas, the layout the
    embedded model was trained on (middle, EOS, pads) with the start of the suffix counted as
    middle. A hole that fills the canvas pins nothing: today's canvas.
    """
    tail = [*suffix_ids, eos_id]
    pinned: dict[int, int] = {}
    for offset in range(canvas_length - hole_length):
        pinned[hole_length + offset] = tail[offset] if offset < len(tail) else pad_id
    return HoleLayout(hole_length, canvas_length, pinned)


def length_normalised_score(
    token_logprobs: Sequence[float], length_bias: float = DEFAULT_LENGTH_BIAS
) -> float:
    """Mean log-probability of a candidate's committed tokens plus `length_bias * log(n)`.

    The log-probabilities are the model's untempered ones (the sampler's last temperatures make
    every argmax look certain). A sum favours short candidates and a plain mean still drifts with
    length (infilling.md 3); the log-length term is the one-parameter correction of LR-DLLM.
    """
    if not token_logprobs:
        return -math.inf
    return sum(token_logprobs) / len(token_logprobs) + length_bias * math.log(len(token_logprobs))


@dataclass
class Candidate:
    layout: HoleLayout
    text: str
    tokens: list[int]
    finish_reason: str
    score: float
    # CAL-style first-step confidence (mean over the hole), kept for inspection, not for the
    # choice: uncalibrated it preferred the longest hole on every one of 40 held-out holes.
    first_score: float = 0.0


def best_candidate(candidates: Sequence[Candidate]) -> Candidate:
    """The highest score; on a tie the longer hole (the earlier, shorter one was not better)."""
    return max(reversed(candidates), key=lambda c: c.score)


def infill_with_strategy(
    model: DiffusionGemmaModel, request: InfillRequest, strategy: InfillStrategy
) -> InfillResult:
    """Fill `request`'s hole on `model` with `strategy`: one canvas per candidate layout, all
    candidates in one batch, the best one's text (before its pinned tokens) returned."""
    from engine.device import translate_oom
    from engine.generation import StopCheck, generate_canvases
    from engine.prompting import chat_infill_messages, strip_code_fence
    from engine.rows import STOP, RowReader
    from engine.sampler import CanvasPins

    canvas_length = min(request.max_tokens, model.canvas_length)
    if model.has_fim_tokens:
        prompt_ids = model.fim_prompt_ids(request)
    else:
        messages = chat_infill_messages(
            request.prefix, request.suffix, request.snippets, request.path, request.language
        )
        prompt_ids = model.chat_prompt_ids(messages)
    suffix_ids = model.tokenizer.encode(request.suffix, add_special_tokens=False)[: strategy.pinned_tokens]
    # A pinned suffix needs room for at least one free token and the EOS after it.
    suffix_ids = suffix_ids[: max(0, canvas_length - 2)]
    room = canvas_length - (len(suffix_ids) + 1 if suffix_ids else 0)
    lengths = candidate_lengths(hole_shape(request.prefix, request.suffix), room, strategy.candidates)
    eos_id, pad_id = model.eos_ids[0], model.pad_id
    layouts = [hole_layout(n, canvas_length, suffix_ids, eos_id, pad_id) for n in lengths]
    options: dict[str, Any] = {
        "num_diffusion_steps": request.num_diffusion_steps,
        "seed": request.seed,
        "canvas_length": canvas_length,
    }
    generation = model._request(prompt_ids, canvas_length, options)
    stats = GenerationStats(prompt_tokens=len(prompt_ids))
    started = time.perf_counter()
    with model._lock, translate_oom("infilling"):
        model._check_context(len(prompt_ids), canvas_length)
        sampler = model._sampler(generation)
        pins = CanvasPins.from_rows([layout.pinned for layout in layouts], canvas_length, model.device)
        stop = StopCheck([(request.should_stop, request.deadline)])

        def first_canvas(cache):
            canvases = generate_canvases(
                model.transformer,
                cache,
                sampler,
                [canvas_length] * len(layouts),
                canvas_length=canvas_length,
                eos_ids=model.eos_ids,
                pad_id=pad_id,
                stop=stop,
                context_length=model.context_length,
                pins=pins,
                track_logprobs=True,
            )
            try:
                return next(canvases)
            finally:
                canvases.close()

        if len(layouts) == 1:  # one row: the prefix cache, as today's infill uses it
            with model.prefix_cache.holding(prompt_ids) as (cache, reused):
                stats.cached_prompt_tokens = reused
                outcome = first_canvas(cache)
        else:
            outcome = first_canvas(model._encode_batch([prompt_ids] * len(layouts)))
    stats.seconds = time.perf_counter() - started
    stats.canvases = 1
    stats.steps_per_canvas = [max(outcome.steps)]
    rows = outcome.tokens.tolist()
    last_logprobs = outcome.logprobs.last.tolist()
    first_logprobs = outcome.logprobs.first.tolist()
    candidates = []
    for layout, row, row_logprobs, row_first in zip(
        layouts, rows, last_logprobs, first_logprobs, strict=True
    ):
        reader = RowReader(layout.hole_length, model.tokenizer.decode, model.eos_ids, pad_id, request.stop)
        reader.add_canvas(row)
        reader.finish()
        # The committed tokens of the hole, with the EOS or pad that ends it when the model put one
        # inside it (a decision about the length too); pinned positions say nothing.
        scored = len(reader.tokens)
        if scored < layout.hole_length and reader.finish_reason == STOP and not reader.cut_by_stop_string:
            scored += 1
        score = length_normalised_score(row_logprobs[:scored], strategy.length_bias)
        first_score = sum(row_first[: layout.hole_length]) / layout.hole_length
        text = reader.text if model.has_fim_tokens else strip_code_fence(reader.text)
        candidates.append(
            Candidate(layout, text, list(reader.tokens), reader.finish_reason or "length", score, first_score)
        )
    best = best_candidate(candidates)
    stats.generated_tokens = len(best.tokens)
    stats.finish_reason = best.finish_reason
    return InfillResult(best.text, stats, completion_tokens=len(best.tokens))
