"""The entropy-bound renoising sampler on its own (diffusiongemma.md 4.1-4.2)."""

from __future__ import annotations

import math

import pytest
import torch

from engine.errors import ConfigError
from engine.sampler import (
    CanvasPins,
    EntropyBoundSampler,
    GeneratorRandom,
    ReferenceRandom,
    SamplerConfig,
    entropy_bound_acceptance,
    inverse_cdf_sample,
)


def test_published_defaults():
    config = SamplerConfig()
    assert (config.max_denoising_steps, config.entropy_bound) == (48, 0.1)
    assert (config.t_max, config.t_min) == (0.8, 0.4)
    assert (config.stability_threshold, config.confidence_threshold) == (1, 0.005)


def test_temperature_falls_linearly_from_t_max_with_steps_remaining():
    config = SamplerConfig()
    assert config.temperature(48) == pytest.approx(0.8)
    assert config.temperature(1) == pytest.approx(0.4 + 0.4 / 48)  # 0.4083 at the last step
    assert config.temperature(24) == pytest.approx(0.6)


@pytest.mark.parametrize(
    "knobs",
    [
        {"max_denoising_steps": 0},
        {"entropy_bound": 0.0},
        {"t_min": 0.0},
        {"t_max": -1.0},
        {"stability_threshold": -1},
        {"confidence_threshold": -0.1},
    ],
)
def test_invalid_knobs_are_rejected_with_a_message(knobs):
    with pytest.raises(ConfigError):
        SamplerConfig(**knobs)


def test_every_knob_can_be_overridden():
    config = SamplerConfig().with_overrides(
        max_denoising_steps=8,
        entropy_bound=0.5,
        t_min=0.1,
        t_max=1.0,
        stability_threshold=2,
        confidence_threshold=0.01,
    )
    assert config == SamplerConfig(8, 0.5, 0.1, 1.0, 2, 0.01)
    assert SamplerConfig().with_overrides(entropy_bound=None) == SamplerConfig()


def test_acceptance_keeps_the_lowest_entropy_prefix_within_the_bound():
    entropy = torch.tensor([[0.0, 0.05, 0.04, 0.5, 0.02]])
    # sorted: 0.0, 0.02, 0.04, 0.05, 0.5; sums of strictly lower ranks: 0, 0, 0.02, 0.06, 0.11
    accepted = entropy_bound_acceptance(entropy, 0.1)
    assert accepted.tolist() == [[True, True, True, False, True]]


def test_the_lowest_entropy_position_is_always_accepted():
    entropy = torch.tensor([[3.0, 2.5, 4.0]])
    assert entropy_bound_acceptance(entropy, 0.1).tolist() == [[False, True, False]]


@pytest.mark.parametrize("random", [ReferenceRandom(), GeneratorRandom(0)])
def test_step_takes_samples_where_accepted_and_fresh_noise_elsewhere(random):
    torch.manual_seed(0)
    vocab = 50
    sampler = EntropyBoundSampler(SamplerConfig(), vocab, random)
    logits = torch.zeros(1, 6, vocab)
    logits[0, :3, 7] = 30.0  # three confident positions that all want token 7
    canvas = sampler.initial_canvas(1, 6, torch.device("cpu"))
    result = sampler.step(canvas, logits, steps_remaining=48)
    # The three confident positions have ~0 entropy, so the first uncertain one still fits the
    # bound (the sum of the entropies ranked below it is ~0): four accepted, two renoised.
    assert result.accepted[0, :3].all() and result.accepted.sum().item() == 4
    assert result.canvas[0, :3].tolist() == [7, 7, 7]
    assert result.argmax[0, :3].tolist() == [7, 7, 7]
    expected = torch.distributions.Categorical(logits=logits / 0.8).entropy()
    assert torch.allclose(result.entropy, expected, atol=1e-4)
    assert result.processed_logits.equal(logits / 0.8)
    assert result.canvas.min() >= 0 and result.canvas.max() < vocab


def test_convergence_needs_a_stable_argmax_and_low_mean_entropy():
    sampler = EntropyBoundSampler(SamplerConfig(stability_threshold=1), 10, GeneratorRandom(0))
    argmax = torch.tensor([[1, 2, 3]])
    low = torch.zeros(1, 3)
    assert not sampler.converged(argmax, low).item()  # never on the first step
    assert sampler.converged(argmax, low).item()
    assert not sampler.converged(argmax, torch.ones(1, 3)).item()  # stable but not confident
    assert not sampler.converged(torch.tensor([[1, 2, 4]]), low).item()  # confident but changed


def test_stability_threshold_zero_and_two():
    zero = EntropyBoundSampler(SamplerConfig(stability_threshold=0), 10, GeneratorRandom(0))
    assert zero.converged(torch.tensor([[5]]), torch.zeros(1, 1)).item()
    two = EntropyBoundSampler(SamplerConfig(stability_threshold=2), 10, GeneratorRandom(0))
    same = torch.tensor([[5]])
    assert [two.converged(same, torch.zeros(1, 1)).item() for _ in range(3)] == [False, False, True]


def test_a_new_canvas_resets_the_stability_history():
    sampler = EntropyBoundSampler(SamplerConfig(), 10, GeneratorRandom(0))
    argmax = torch.tensor([[1]])
    sampler.converged(argmax, torch.zeros(1, 1))
    sampler.initial_canvas(1, 1, torch.device("cpu"))
    assert not sampler.converged(argmax, torch.zeros(1, 1)).item()


def test_private_generator_is_reproducible_and_leaves_global_state_alone():
    torch.manual_seed(0)
    before = torch.get_rng_state()
    a = GeneratorRandom(7).uniform_tokens((4, 8), 100, torch.device("cpu"))
    b = GeneratorRandom(7).uniform_tokens((4, 8), 100, torch.device("cpu"))
    c = GeneratorRandom(8).uniform_tokens((4, 8), 100, torch.device("cpu"))
    assert a.equal(b) and not a.equal(c)
    assert torch.get_rng_state().equal(before)


def test_inverse_cdf_sampling_matches_the_distribution():
    probs = torch.softmax(torch.randn(1, 300, generator=torch.Generator().manual_seed(0)) * 2, dim=-1)
    n = 200_000
    draws = inverse_cdf_sample(
        probs.repeat(n, 1), torch.rand(n, 1, generator=torch.Generator().manual_seed(1))
    )
    empirical = torch.bincount(draws, minlength=300) / n
    # every deviation within 5 standard errors
    sigma = (probs[0] * (1 - probs[0]) / n).sqrt()
    assert ((empirical - probs[0]).abs() <= 5 * sigma + 1e-6).all()


def test_inverse_cdf_never_draws_a_zero_probability_token():
    probs = torch.zeros(1000, 256)
    probs[:, 255] = 1.0  # all the mass at the end of the last block
    probs[::2, 0] = 1.0
    probs = probs / probs.sum(-1, keepdim=True)
    draws = inverse_cdf_sample(probs, torch.rand(1000, 1))
    assert set(draws.tolist()) <= {0, 255}
    assert math.isclose((draws[1::2] == 255).float().mean().item(), 1.0)


# ---- pinned canvas positions (issue 10 item 1) ----------------------------------------------------


def _pins(rows: list[dict[int, int]], length: int) -> CanvasPins:
    return CanvasPins.from_rows(rows, length)


@pytest.mark.parametrize("random", [ReferenceRandom(), GeneratorRandom(3)])
def test_pinned_tokens_start_as_themselves_and_never_change(random):
    torch.manual_seed(0)
    vocab, length = 40, 8
    sampler = EntropyBoundSampler(SamplerConfig(entropy_bound=0.5), vocab, random)
    pins = _pins([{2: 11, 7: 0}, {0: 39}], length)
    canvas = sampler.initial_canvas(2, length, torch.device("cpu"), pins)
    assert canvas[0, [2, 7]].tolist() == [11, 0] and canvas[1, 0].item() == 39
    logits_source = torch.Generator().manual_seed(1)
    for steps_remaining in range(48, 38, -1):
        # The model prefers other tokens everywhere, the pinned positions included.
        logits = torch.randn(2, length, vocab, generator=logits_source) * 4
        logits[0, 2, 5] = logits[1, 0, 5] = 50.0
        result = sampler.step(canvas, logits, steps_remaining, pins)
        assert result.canvas[0, [2, 7]].tolist() == [11, 0] and result.canvas[1, 0].item() == 39
        assert result.argmax[0, [2, 7]].tolist() == [11, 0] and result.argmax[1, 0].item() == 39
        assert result.entropy[pins.mask].eq(0).all() and not result.entropy.isnan().any()
        assert result.accepted[pins.mask].all()
        # Every other token has probability zero on a pinned position.
        assert result.probs[0, 2, 11].item() == pytest.approx(1.0) and result.probs[0, 2, 5].item() == 0.0
        canvas = result.canvas


def test_pinned_positions_spend_nothing_of_the_entropy_budget():
    free_entropy = torch.tensor([[0.05, 0.04, 0.5, 0.02]])
    alone = entropy_bound_acceptance(free_entropy, 0.1)
    # The same free positions with three pinned ones between them: the same free positions accepted.
    entropy = torch.tensor([[0.05, 0.0, 0.04, 0.0, 0.5, 0.02, 0.0]])
    pinned = torch.tensor([[False, True, False, True, False, False, True]])
    accepted = entropy_bound_acceptance(entropy, 0.1, pinned)
    assert accepted[~pinned].tolist() == alone[0].tolist() == [True, True, False, True]
    assert accepted[pinned].all()
    # Pinned positions that carried entropy (after -inf logits they cannot) would still cost nothing:
    # the rule runs over the free positions alone.
    costly = torch.tensor([[0.05, 9.0, 0.04, 9.0, 0.5, 0.02, 9.0]])
    assert entropy_bound_acceptance(costly, 0.1, pinned).equal(accepted)


def test_the_stop_test_reads_the_mean_entropy_of_free_positions_only():
    config = SamplerConfig(stability_threshold=0, confidence_threshold=0.005)
    sampler = EntropyBoundSampler(config, 10, GeneratorRandom(0))
    argmax = torch.tensor([[1, 2, 3, 4]])
    # One free position at 0.01 nats, three pinned at zero: the plain mean (0.0025) would stop.
    entropy = torch.tensor([[0.01, 0.0, 0.0, 0.0]])
    pins = _pins([{1: 2, 2: 3, 3: 4}], 4)
    assert sampler.converged(argmax, entropy).item()  # what counting the pins would do
    assert not sampler.converged(argmax, entropy, pins).item()
    assert sampler.converged(argmax, torch.tensor([[0.001, 0.0, 0.0, 0.0]]), pins).item()
    # A row with every position pinned has nothing left to denoise.
    assert sampler.converged(argmax, torch.zeros(1, 4), _pins([{0: 1, 1: 2, 2: 3, 3: 4}], 4)).item()


@pytest.mark.parametrize("make_random", [lambda: ReferenceRandom(), lambda: GeneratorRandom(5)])
def test_no_pins_gives_todays_tokens_exactly(make_random):
    vocab, length = 64, 12
    logits = torch.randn(6, 2, length, vocab, generator=torch.Generator().manual_seed(2)) * 3

    def run(pins):
        torch.manual_seed(7)
        sampler = EntropyBoundSampler(SamplerConfig(), vocab, make_random())
        canvas = sampler.initial_canvas(2, length, torch.device("cpu"), pins)
        seen = [canvas]
        for step, step_logits in enumerate(logits):
            result = sampler.step(canvas, step_logits, 48 - step, pins)
            seen += [
                result.canvas,
                result.argmax,
                result.entropy,
                sampler.converged(result.argmax, result.entropy, pins),
            ]
            canvas = result.canvas
        return seen

    today = run(None)
    # An empty pin set is no pins at all.
    empty = run(CanvasPins.from_rows([{}, {}], length))
    assert all(a.equal(b) for a, b in zip(today, empty, strict=True))
    torch.manual_seed(7)
    plain = EntropyBoundSampler(SamplerConfig(), vocab, make_random())
    canvas = plain.initial_canvas(2, length, torch.device("cpu"))
    assert canvas.equal(today[0])
    for step, step_logits in enumerate(logits):
        result = plain.step(canvas, step_logits, 48 - step)
        assert result.canvas.equal(today[1 + 4 * step]) and result.entropy.equal(today[3 + 4 * step])
        canvas = result.canvas


def test_pins_do_not_shift_the_random_stream_of_free_positions():
    """Noise is drawn for pinned positions too, so a free position's first draw is the same."""
    length, vocab = 6, 30
    plain = EntropyBoundSampler(SamplerConfig(), vocab, GeneratorRandom(9)).initial_canvas(1, length, "cpu")
    pins = _pins([{1: 4, 4: 5}], length)
    pinned = EntropyBoundSampler(SamplerConfig(), vocab, GeneratorRandom(9)).initial_canvas(
        1, length, "cpu", pins
    )
    assert pinned[0, [0, 2, 3, 5]].equal(plain[0, [0, 2, 3, 5]]) and pinned[0, [1, 4]].tolist() == [4, 5]


def test_a_pinned_position_outside_the_canvas_is_refused():
    with pytest.raises(ConfigError):
        CanvasPins.from_rows([{8: 1}], 8)
