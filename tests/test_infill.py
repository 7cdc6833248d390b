"""Diffusion-native infilling: pinned suffixes and hole-length search (engine/infill.py)."""

from __future__ import annotations

import math

import pytest
import torch

import engine.infill as infill
from engine import DiffusionConfig, DiffusionGemmaModel
from engine.errors import ConfigError
from engine.generation import generate_canvases
from engine.infill import (
    BLOCK,
    INSIDE_LINE,
    REST_OF_LINE,
    Candidate,
    InfillStrategy,
    best_candidate,
    candidate_lengths,
    hole_layout,
    hole_shape,
    length_normalised_score,
)
from engine.random_model import write_random_checkpoint
from engine.requests import InfillRequest
from engine.sampler import CanvasPins

PREFIX = "def add(a, b):\n    return "
SUFFIX = "\n\n\nprint(add(1, 2))\n"


# ---- the pure part ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "pinned", "candidates", "name"),
    [
        ("prompt", 0, 1, "prompt"),
        ("pinned", 4, 1, "pinned:4"),
        ("pinned:8", 8, 1, "pinned:8"),
        ("length:5", 0, 5, "length:5"),
        ("pinned:2+length:4", 2, 4, "pinned:2+length:4"),
        ("length", 0, 3, "length:3"),  # B for a CPU
    ],
)
def test_strategy_names_parse_and_print_back(spec, pinned, candidates, name):
    strategy = InfillStrategy.parse(spec, device="cpu")
    assert (strategy.pinned_tokens, strategy.candidates, strategy.name) == (pinned, candidates, name)
    assert InfillStrategy.parse(strategy.name) == strategy


def test_candidates_default_per_device_and_bad_names_are_refused():
    assert InfillStrategy.parse("length", device="cuda").candidates == 8
    assert InfillStrategy.parse("length", device="cpu").candidates == 3
    for bad in ("lenght", "pinned:x", "length:0", "prompt:2"):
        with pytest.raises(ConfigError):
            InfillStrategy.parse(bad)


def test_hole_shape_comes_from_the_cursor_line():
    assert hole_shape("def f(a, ", "):\n    pass\n") == INSIDE_LINE
    assert hole_shape("    x = ", "\n    return x\n") == REST_OF_LINE
    assert hole_shape("def f():\n    ", "\n    return x\n") == BLOCK
    assert hole_shape("", "") == BLOCK


def test_candidate_lengths_spread_below_the_room_and_end_with_it():
    assert candidate_lengths(BLOCK, 59, 1) == [59]
    assert candidate_lengths(BLOCK, 59, 3) == [8, 48, 59]
    assert candidate_lengths(BLOCK, 59, 4) == [8, 24, 48, 59]
    assert candidate_lengths(INSIDE_LINE, 64, 8) == [3, 6, 10, 16, 24, 64]  # the whole ladder, no more
    assert candidate_lengths(REST_OF_LINE, 8, 3) == [6, 8]  # the room cuts the ladder
    with pytest.raises(ConfigError):
        candidate_lengths(BLOCK, 0, 2)


def test_hole_layout_pins_suffix_then_eos_then_pad():
    layout = hole_layout(3, 8, [70, 71], eos_id=1, pad_id=0)
    assert layout.pinned == {3: 70, 4: 71, 5: 1, 6: 0, 7: 0}
    assert hole_layout(8, 8, [70, 71], eos_id=1, pad_id=0).pinned == {}  # the whole canvas: today's
    assert hole_layout(6, 8, [70, 71, 72], eos_id=1, pad_id=0).pinned == {6: 70, 7: 71}


def test_length_normalised_score_is_a_mean_plus_a_log_length_term():
    assert length_normalised_score([-1.0, -3.0], 0.0) == pytest.approx(-2.0)
    assert length_normalised_score([-1.0, -3.0], 0.5) == pytest.approx(-2.0 + 0.5 * math.log(2))
    assert length_normalised_score([], 0.5) == -math.inf
    # A long candidate as sure per token as a short one is not penalised for its length.
    assert length_normalised_score([-0.1] * 20, 0.0) == pytest.approx(
        length_normalised_score([-0.1] * 2, 0.0)
    )


def test_best_candidate_keeps_the_highest_score_and_the_longer_hole_on_a_tie():
    def candidate(length, score):
        return Candidate(hole_layout(length, 16, [], 1, 0), f"{length}", [], "stop", score)

    assert best_candidate([candidate(4, -2.0), candidate(8, -0.5), candidate(16, -1.0)]).text == "8"
    assert best_candidate([candidate(4, -1.0), candidate(16, -1.0)]).text == "16"


# ---- on real checkpoints ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def embedded() -> DiffusionGemmaModel:
    return DiffusionGemmaModel.from_pretrained(config=DiffusionConfig(device="cpu", seed=0))


@pytest.fixture
def candidates_seen(monkeypatch) -> list[list[Candidate]]:
    """Every candidate list the strategy chose from (the real choice runs unchanged)."""
    seen: list[list[Candidate]] = []
    choose = infill.best_candidate

    def record(candidates):
        seen.append(list(candidates))
        return choose(candidates)

    monkeypatch.setattr(infill, "best_candidate", record)
    return seen


def test_a_pinned_canvas_commits_its_pins_and_denoises_the_rest(tiny_checkpoint):
    model = DiffusionGemmaModel.from_pretrained(
        tiny_checkpoint, config=DiffusionConfig(dtype="float32", seed=2)
    )
    cache = model.transformer.new_cache()
    with torch.inference_mode():
        model.transformer.encode(torch.tensor([[2, 40, 41, 42]]), cache)
    pins = CanvasPins.from_rows([{12: 300, 13: 301, 14: 302, 15: 303}], 16)
    eos = 511  # not pinned, so the row cannot end before the pins by an accident of the draw
    outcome = next(
        generate_canvases(
            model.transformer,
            cache,
            model._sampler(model.request([2], 16, num_diffusion_steps=6)),
            [16],
            canvas_length=16,
            eos_ids=[eos],
            pad_id=0,
            pins=pins,
            track_logprobs=True,
        )
    )
    tokens = outcome.tokens[0].tolist()
    if eos in tokens[:12]:
        pytest.skip("the random model wrote EOS inside the hole for this seed")
    assert tokens[12:] == [300, 301, 302, 303]
    assert outcome.logprobs is not None and outcome.logprobs.last.shape == (1, 16)
    assert (outcome.logprobs.last <= 0).all() and (outcome.logprobs.first <= 0).all()


def test_prompt_strategy_is_todays_infill(embedded):
    today = embedded.infill_request(InfillRequest(PREFIX, SUFFIX, seed=3, num_diffusion_steps=4))
    named = embedded.infill_request(
        InfillRequest(PREFIX, SUFFIX, seed=3, num_diffusion_steps=4, strategy="prompt")
    )
    assert named.text == today.text


def test_pinned_suffix_returns_the_text_before_the_pinned_tokens(embedded, candidates_seen):
    request = InfillRequest(PREFIX, SUFFIX, seed=0, num_diffusion_steps=4, strategy="pinned:4")
    result = embedded.infill_request(request)
    (only,) = candidates_seen[0]
    suffix_ids = embedded.tokenizer.encode(SUFFIX, add_special_tokens=False)[:4]
    assert only.layout.hole_length == embedded.canvas_length - len(suffix_ids) - 1
    hole = only.layout.hole_length
    assert [only.layout.pinned[hole + i] for i in range(len(suffix_ids))] == suffix_ids
    assert only.layout.pinned[hole + len(suffix_ids)] == embedded.eos_ids[0]
    assert len(only.tokens) <= hole
    assert result.text == only.text == embedded.tokenizer.decode(only.tokens)
    assert result.stats.steps_per_canvas and result.stats.steps_per_canvas[0] <= 4
    # Seeded: the same request gives the same text.
    assert embedded.infill_request(request).text == result.text


def test_length_search_denoises_the_candidates_as_one_batch_and_keeps_the_best(embedded, candidates_seen):
    prefix = "def mean(values):\n    total = "
    suffix = "\n    return total / len(values)\n"
    request = InfillRequest(prefix, suffix, seed=1, num_diffusion_steps=4, strategy="pinned:2+length:3")
    result = embedded.infill_request(request)
    (candidates,) = candidates_seen
    room = embedded.canvas_length - 3  # two pinned suffix tokens and the EOS
    assert [c.layout.hole_length for c in candidates] == candidate_lengths(REST_OF_LINE, room, 3)
    assert all(len(c.tokens) <= c.layout.hole_length for c in candidates)
    assert all(math.isfinite(c.score) and c.score <= 0.0 for c in candidates)
    best = max(candidates, key=lambda c: c.score)
    assert result.text == best.text
    assert result.stats.steps_per_canvas[0] <= 4
    candidates_seen.clear()
    assert embedded.infill_request(request).text == result.text


def test_length_search_needs_no_fim_tokens(tmp_path, candidates_seen):
    folder = write_random_checkpoint(tmp_path / "nofim", fim_tokens=False, canvas_length=16)
    chat_model = DiffusionGemmaModel.from_pretrained(folder, config=DiffusionConfig(dtype="float32", seed=0))
    result = chat_model.infill_request(
        InfillRequest(
            "def f():\n    ",
            "\n    return 1\n",
            max_tokens=16,
            num_diffusion_steps=2,
            strategy="pinned:2+length:2",
        )
    )
    assert result.stats.prompt_tokens > 40  # the chat system prompt and the hole marker
    (candidates,) = candidates_seen
    assert [c.layout.hole_length for c in candidates] == [8, 13]
    assert result.text in {c.text for c in candidates}
