"""The entropy-bound renoising sampler on its own (diffusiongemma.md 4.1-4.2)."""

from __future__ import annotations

import math

import pytest
import torch

from engine.errors import ConfigError
from engine.sampler import (
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
