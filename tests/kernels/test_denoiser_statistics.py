"""The fused denoiser-statistics kernel against the plain maths, and the reference against the
engine sampler's own formulas."""

from __future__ import annotations

import math

import pytest
import torch

from engine.sampler import inverse_cdf_sample
from kernels.denoiser_statistics import denoiser_statistics, denoiser_statistics_reference, processed_logits
from tests.kernels.conftest import ON_GPU

pytest.importorskip("triton")

# (rows, vocab, block_v): a vocabulary of several chunks, one ragged, and one chunk wider than V.
SHAPES = [(3, 100, 32), (4, 1000, 256), (2, 77, 1024)]


def logits_and_uniform(rows: int, vocab: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(rows, vocab, generator=gen) * 8, torch.rand(rows, generator=gen)


def test_reference_agrees_with_the_sampler_formulas():
    logits, uniform = logits_and_uniform(5, 300, seed=0)
    stats = denoiser_statistics_reference(logits, uniform, temperature=0.6, softcap=30.0)
    processed = torch.tanh(logits / 30) * 30 / 0.6
    log_probs = torch.log_softmax(processed, dim=-1)
    assert torch.allclose(stats.probs, log_probs.exp(), atol=1e-6)
    assert torch.allclose(stats.entropy, -(log_probs.exp() * log_probs).sum(-1), atol=1e-5)
    assert torch.equal(stats.argmax, processed.argmax(-1))
    assert torch.equal(stats.sample, inverse_cdf_sample(stats.probs, uniform[:, None], block=64))


def test_reference_samples_follow_the_distribution():
    """Many uniforms on one row: the draws' frequencies are the probabilities."""
    logits = torch.tensor([[0.0, 1.0, 2.0, -1.0]])
    uniform = (torch.arange(4000) + 0.5) / 4000
    draws = [
        int(denoiser_statistics_reference(logits, u[None], 1.0, softcap=None).sample) for u in uniform[::10]
    ]
    counts = torch.bincount(torch.tensor(draws), minlength=4).float() / len(draws)
    assert torch.allclose(counts, torch.softmax(logits[0], -1), atol=0.01)


@pytest.mark.parametrize("rows,vocab,block_v", SHAPES)
@pytest.mark.parametrize("softcap", [30.0, None], ids=["softcap", "no-softcap"])
@pytest.mark.parametrize(
    "logits_dtype,probs_dtype",
    [(torch.float32, torch.float32), (torch.float16, torch.float16)]
    + ([(torch.bfloat16, torch.bfloat16)] if ON_GPU else []),
    ids=str,
)
def test_kernel_matches_reference(rows, vocab, block_v, softcap, logits_dtype, probs_dtype, device):
    from kernels.denoiser_statistics_triton import denoiser_statistics_triton

    logits, uniform = logits_and_uniform(rows, vocab, seed=vocab)
    logits, uniform = logits.to(device, logits_dtype), uniform.to(device)
    got = denoiser_statistics_triton(logits, uniform, 0.7, softcap, probs_dtype, block_v=block_v)
    expected = denoiser_statistics_reference(logits, uniform, 0.7, softcap, probs_dtype)
    # fp32 maths in both; tanh from exp in the kernel costs ~1e-7 relative on the logits.
    probs_tol = 1e-6 if probs_dtype == torch.float32 else 4e-3
    assert got.probs.dtype == probs_dtype
    assert torch.allclose(got.probs.float(), expected.probs.float(), atol=probs_tol, rtol=1e-2)
    assert torch.allclose(got.entropy, expected.entropy, atol=1e-5)
    assert torch.equal(got.argmax, expected.argmax)
    assert torch.equal(got.sample, expected.sample)


def test_kernel_writes_probabilities_over_the_logits(device):
    logits, uniform = logits_and_uniform(3, 500, seed=11)
    logits = logits.to(device)
    expected = denoiser_statistics_reference(logits, uniform.to(device), 0.5)
    got = denoiser_statistics(logits, uniform.to(device), 0.5, probs_out=logits, backend="triton")
    assert got.probs.data_ptr() == logits.data_ptr()
    assert torch.allclose(logits, expected.probs, atol=1e-6)
    assert torch.equal(got.sample, expected.sample)


def test_peaked_and_flat_rows_have_zero_and_maximal_entropy(device):
    vocab = 200
    logits = torch.zeros(2, vocab)
    logits[0, 17] = 1e4  # softcap bounds it at 30 / T: still essentially one-hot at T = 0.05
    stats = denoiser_statistics(
        logits.to(device), torch.tensor([0.3, 0.999]).to(device), 0.05, backend="triton"
    )
    assert int(stats.argmax[0]) == 17 and int(stats.sample[0]) == 17
    assert float(stats.entropy[0]) == pytest.approx(0.0, abs=1e-4)
    assert float(stats.entropy[1]) == pytest.approx(math.log(vocab), abs=1e-5)
    assert int(stats.sample[1]) == int(0.999 * vocab)  # a flat row: the u-quantile


def test_processed_logits_is_the_engine_softcap_then_temperature():
    x = torch.tensor([[-100.0, 0.0, 5.0, 100.0]])
    assert torch.allclose(processed_logits(x, 30.0, 0.5), torch.tanh(x / 30) * 30 / 0.5)
    assert torch.equal(processed_logits(x, None, 2.0), x / 2)
