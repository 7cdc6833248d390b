"""The fused denoiser-statistics kernel in Triton (see `kernels.denoiser_statistics` for the maths).

Importing this module defines the kernel: under `TRITON_INTERPRET=1` set the variable first.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.denoiser_statistics import DenoiserStatistics

# A finite start for the running max: with -inf, the first rescale would compute -inf * 0.
# (A global read inside a compiled kernel must be a constexpr.)
_FLOOR = tl.constexpr(-1.0e30)


@triton.jit
def _processed(x, softcap, inv_temperature, HAS_SOFTCAP: tl.constexpr):
    if HAS_SOFTCAP:
        # softcap * tanh(x / softcap), tanh from exp; |z| <= 20 keeps exp finite (tanh(20) = 1 in fp32).
        z = tl.minimum(tl.maximum(x / softcap, -20.0), 20.0)
        x = softcap * (1.0 - 2.0 / (tl.exp(2.0 * z) + 1.0))
    return x * inv_temperature


@triton.jit
def _denoiser_statistics_kernel(
    logits_ptr,
    uniform_ptr,
    probs_ptr,
    entropy_ptr,
    argmax_ptr,
    sample_ptr,
    vocab,
    s_lr,
    s_pr,
    softcap,
    inv_temperature,
    HAS_SOFTCAP: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    row_logits = logits_ptr + row * s_lr
    # Sweep 1: running max m, exp-sum s = sum e^(y-m), centred moment c = sum e^(y-m) (y-m), argmax.
    m = tl.full((), _FLOOR, tl.float32)
    s = tl.zeros((), tl.float32)
    c = tl.zeros((), tl.float32)
    best = tl.full((), _FLOOR, tl.float32)
    best_index = tl.zeros((), tl.int64)
    for start in range(0, vocab, BLOCK_V):
        offs = start + tl.arange(0, BLOCK_V)
        valid = offs < vocab
        x = tl.load(row_logits + offs, mask=valid, other=0.0).to(tl.float32)
        y = tl.where(valid, _processed(x, softcap, inv_temperature, HAS_SOFTCAP), _FLOOR)
        chunk_max = tl.max(y, axis=0)
        chunk_arg = tl.min(tl.where(y == chunk_max, offs, vocab), axis=0).to(tl.int64)
        better = chunk_max > best  # strict: the first maximum wins, as torch.argmax
        best_index = tl.where(better, chunk_arg, best_index)
        best = tl.maximum(best, chunk_max)
        m_new = tl.maximum(m, chunk_max)
        alpha = tl.exp(m - m_new)
        e = tl.where(valid, tl.exp(y - m_new), 0.0)
        c = alpha * (c + (m - m_new) * s) + tl.sum(e * (y - m_new), axis=0)
        s = alpha * s + tl.sum(e, axis=0)
        m = m_new
    inv_s = 1.0 / s
    tl.store(entropy_ptr + row, tl.log(s) - c * inv_s)
    tl.store(argmax_ptr + row, best_index)
    # Sweep 2: probabilities, and the first index whose cumulative mass exceeds u * s.
    target = tl.load(uniform_ptr + row).to(tl.float32) * s
    running = tl.zeros((), tl.float32)
    chosen = tl.full((), vocab, tl.int64)
    last_nonzero = tl.zeros((), tl.int64)
    row_probs = probs_ptr + row * s_pr
    for start in range(0, vocab, BLOCK_V):
        offs = start + tl.arange(0, BLOCK_V)
        valid = offs < vocab
        x = tl.load(row_logits + offs, mask=valid, other=0.0).to(tl.float32)
        y = _processed(x, softcap, inv_temperature, HAS_SOFTCAP)
        e = tl.where(valid, tl.exp(y - m), 0.0)
        tl.store(row_probs + offs, (e * inv_s).to(probs_ptr.dtype.element_ty), mask=valid)
        cdf = running + tl.cumsum(e, axis=0)
        hit = tl.min(tl.where((cdf > target) & valid, offs, vocab), axis=0).to(tl.int64)
        chosen = tl.minimum(chosen, hit)
        last_nonzero = tl.maximum(last_nonzero, tl.max(tl.where(e > 0, offs, 0), axis=0).to(tl.int64))
        running += tl.sum(e, axis=0)
    tl.store(sample_ptr + row, tl.where(chosen < vocab, chosen, last_nonzero))


def denoiser_statistics_triton(
    logits: torch.Tensor,
    uniform: torch.Tensor,
    temperature: float,
    softcap: float | None = 30.0,
    probs_dtype: torch.dtype = torch.float32,
    probs_out: torch.Tensor | None = None,
    block_v: int = 1024,
) -> DenoiserStatistics:
    rows, vocab = logits.shape
    if logits.stride(-1) != 1:
        logits = logits.contiguous()
    if probs_out is None:
        probs_out = torch.empty(rows, vocab, dtype=probs_dtype, device=logits.device)
    elif probs_out.shape != logits.shape or probs_out.stride(-1) != 1:
        raise ValueError("probs_out must be a row-major [R, V] tensor of the logits' shape")
    entropy = torch.empty(rows, dtype=torch.float32, device=logits.device)
    argmax = torch.empty(rows, dtype=torch.int64, device=logits.device)
    sample = torch.empty(rows, dtype=torch.int64, device=logits.device)
    _denoiser_statistics_kernel[(rows,)](
        logits,
        uniform.float().contiguous(),
        probs_out,
        entropy,
        argmax,
        sample,
        vocab,
        logits.stride(0),
        probs_out.stride(0),
        float(softcap or 1.0),
        1.0 / temperature,
        HAS_SOFTCAP=bool(softcap),
        BLOCK_V=min(block_v, triton.next_power_of_2(vocab)),
    )
    return DenoiserStatistics(probs_out, entropy, argmax, sample)
