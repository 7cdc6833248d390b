"""Attention for both modes (diffusiongemma.md 3.3): scale 1.0, grouped KV heads, boolean masks.

`attention` calls PyTorch's fused `scaled_dot_product_attention`. With `slice_size`, queries are
processed in slices of that many rows, so the score matrix held at once is bounded by
heads x slice_size x keys instead of heads x queries x keys (the `attention_slicing` option).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def attention_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, is_causal: bool = False
) -> torch.Tensor:
    """Plain maths: softmax(q k^T + mask) v in fp32, key/value heads repeated for each query group."""
    groups = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(groups, dim=1)
    v = v.repeat_interleave(groups, dim=1)
    scores = (q @ k.transpose(-1, -2)).float()
    if is_causal:
        t, s = q.shape[2], k.shape[2]
        causal = torch.ones(t, s, dtype=torch.bool, device=q.device).tril(diagonal=s - t)
        scores = scores.masked_fill(~causal, float("-inf"))
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return (scores.softmax(dim=-1).to(q.dtype)) @ v


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    is_causal: bool = False,
    slice_size: int | None = None,
) -> torch.Tensor:
    """q [B, H, T, D], k/v [B, Hkv, S, D], mask [B, 1, T, S] bool (True = visible) -> [B, H, T, D].

    `is_causal` (no mask, T == S) is the prompt fast path.
    """
    gqa = q.shape[1] != k.shape[1]
    queries = q.shape[2]
    if not slice_size or queries <= slice_size:
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=is_causal, scale=1.0, enable_gqa=gqa
        )
    if is_causal and mask is None:
        mask = torch.ones(queries, k.shape[2], dtype=torch.bool, device=q.device).tril(
            diagonal=k.shape[2] - queries
        )
        mask = mask[None, None]
    out = torch.empty_like(q)
    for start in range(0, queries, slice_size):
        end = min(start + slice_size, queries)
        part_mask = None if mask is None else mask[:, :, start:end]
        out[:, :, start:end] = F.scaled_dot_product_attention(
            q[:, :, start:end], k, v, attn_mask=part_mask, scale=1.0, enable_gqa=gqa
        )
    return out
