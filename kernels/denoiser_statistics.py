"""Per-position statistics of one denoising step (diffusiongemma.md 3.6 step 6 and 4.2), fused.

From the decoder's raw vocabulary logits x [R, V] (R = batch x canvas positions):
  y = softcap * tanh(x / softcap) / temperature          the processed logits
  p = softmax(y)                                          self-conditioning input, sampling
  H = -sum p log p = log Z - sum p (y - m)  (m = max y)   entropy for the acceptance rule
  argmax y, and one categorical draw by the inverse CDF of p with one uniform number per row
(the draw `engine.sampler.inverse_cdf_sample` makes, so a seeded generator gives the same kind
of sample).

`denoiser_statistics_reference` is the plain maths over whole rows. The Triton kernel
(`kernels.denoiser_statistics_triton`, SGLang's `denoiser_statistics` is the model) is one launch
with one program per row: a first sweep keeps a running max, the exp-sum and the *centred* first
moment sum e^(y-m) (y-m), rescaled when the max moves (no cancellation, no stored
log-probabilities), and the argmax; a second sweep writes p in the requested dtype (bf16 for the
self-conditioning matmul on a GPU, possibly over the logits buffer itself) and finds the sample
with a running cumulative sum. `denoiser_statistics` dispatches: Triton on CUDA, the reference
elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kernels.moe import triton_available


@dataclass
class DenoiserStatistics:
    probs: torch.Tensor  # [R, V] softmax of the processed logits, in the requested dtype
    entropy: torch.Tensor  # fp32 [R], nats
    argmax: torch.Tensor  # int64 [R]
    sample: torch.Tensor  # int64 [R]


def processed_logits(logits: torch.Tensor, softcap: float | None, temperature: float) -> torch.Tensor:
    y = logits.float()
    if softcap:
        y = torch.tanh(y / softcap) * softcap
    return y / temperature


def denoiser_statistics_reference(
    logits: torch.Tensor,
    uniform: torch.Tensor,
    temperature: float,
    softcap: float | None = 30.0,
    probs_dtype: torch.dtype = torch.float32,
) -> DenoiserStatistics:
    """logits [R, V] (any float dtype), uniform [R] in [0, 1) -> the statistics, in fp32 maths."""
    y = processed_logits(logits, softcap, temperature)
    top = y.max(dim=-1, keepdim=True).values
    weight = torch.exp(y - top)  # unnormalised probabilities, the largest exactly 1
    total = weight.sum(dim=-1, keepdim=True)
    probs = weight / total
    entropy = torch.log(total[:, 0]) - (probs * (y - top)).sum(dim=-1)
    cdf = torch.cumsum(weight, dim=-1)
    target = uniform.float()[:, None] * total
    sample = torch.searchsorted(cdf, target, right=True)[:, 0]
    last_nonzero = (weight > 0).cumsum(-1).argmax(-1)  # where rounding pushes the target past the end
    sample = torch.where(sample < logits.shape[-1], sample, last_nonzero)
    return DenoiserStatistics(probs.to(probs_dtype), entropy, y.argmax(dim=-1), sample)


def denoiser_statistics(
    logits: torch.Tensor,
    uniform: torch.Tensor,
    temperature: float,
    softcap: float | None = 30.0,
    probs_dtype: torch.dtype = torch.float32,
    probs_out: torch.Tensor | None = None,
    backend: str = "auto",
) -> DenoiserStatistics:
    """The fused kernel on CUDA ("auto" or "triton"), the reference elsewhere ("torch").

    `probs_out` [R, V] receives the probabilities (it may be `logits` itself: each element is read
    before it is overwritten), so a step allocates no second vocabulary-sized buffer.
    """
    if backend == "auto":
        backend = "triton" if logits.is_cuda and triton_available() else "torch"
    if backend == "triton":
        from kernels.denoiser_statistics_triton import denoiser_statistics_triton

        return denoiser_statistics_triton(logits, uniform, temperature, softcap, probs_dtype, probs_out)
    if backend != "torch":
        raise ValueError(f"unknown denoiser-statistics backend {backend!r}")
    stats = denoiser_statistics_reference(logits, uniform, temperature, softcap, probs_dtype)
    if probs_out is not None:
        probs_out.copy_(stats.probs)
        stats.probs = probs_out
    return stats
