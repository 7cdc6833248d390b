"""Routed experts (diffusiongemma.md 3.4): y_t = sum_j w_tj * down_e(gelu(gate_e x_t) * up_e x_t).

`moe_reference` is the plain per-expert loop. `moe_grouped` sorts the token slots by expert and
runs the experts as one padded batched matmul when routing is balanced enough, which on a CPU
removes most of the per-expert dispatch cost; both accumulate each token's experts in
ascending expert order, as transformers does.

Experts are reached through `expert_weights(e) -> (gate_up [2I, d], down [d, I])` so that
quantised (NVFP4) or CPU-offloaded experts plug in without changing the maths.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

ExpertWeights = Callable[[int], tuple[torch.Tensor, torch.Tensor]]


def _expert_mlp(x: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
    gate, up = F.linear(x, gate_up).chunk(2, dim=-1)
    return F.linear(F.gelu(gate, approximate="tanh") * up, down)


def moe_reference(
    x: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor, expert_weights: ExpertWeights
) -> torch.Tensor:
    """x [N, d]; top_k_index [N, k]; top_k_weights [N, k] fp32 -> [N, d] in x's dtype."""
    out = torch.zeros_like(x)
    for expert in torch.unique(top_k_index).tolist():
        token, slot = torch.where(top_k_index == expert)
        gate_up, down = expert_weights(expert)
        y = _expert_mlp(x[token], gate_up, down) * top_k_weights[token, slot, None]
        out.index_add_(0, token, y.to(out.dtype))
    return out


def moe_grouped(
    x: torch.Tensor,
    top_k_index: torch.Tensor,
    top_k_weights: torch.Tensor,
    expert_weights: ExpertWeights,
    stacked: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Same result as `moe_reference`.

    `stacked` = (gate_up [E, 2I, d], down [E, d, I]) enables the padded batched-matmul path.
    """
    tokens, k = top_k_index.shape
    flat_expert = top_k_index.reshape(-1)
    order = torch.argsort(flat_expert, stable=True)
    sorted_expert = flat_expert[order]
    token_of = order // k
    xs = x[token_of]
    counts = torch.bincount(flat_expert, minlength=1 if stacked is None else stacked[0].shape[0])
    counts_list = counts.tolist()
    used = [e for e, c in enumerate(counts_list) if c]
    max_count = max(counts_list)
    if stacked is not None and max_count * len(used) <= 2 * tokens * k:
        gate_up_all, down_all = stacked
        index = torch.tensor(used, device=x.device)
        starts = torch.cumsum(counts, 0) - counts
        group = torch.searchsorted(index, sorted_expert)
        rank = torch.arange(tokens * k, device=x.device) - starts[sorted_expert]
        padded = x.new_zeros(len(used), max_count, x.shape[-1])
        padded[group, rank] = xs
        # [E, d, 2I] and [E, I, d]: contiguous when the experts are stored transposed (see
        # `Experts.prepare_for_inference`), the layout batched matmul reads fastest.
        gate_up_t, down_t = gate_up_all.transpose(1, 2), down_all.transpose(1, 2)
        if len(used) < gate_up_t.shape[0]:
            gate_up_t, down_t = gate_up_t[index], down_t[index]
        gate, up = torch.bmm(padded, gate_up_t).chunk(2, dim=-1)
        y = torch.bmm(F.gelu(gate, approximate="tanh") * up, down_t)[group, rank]
    else:
        pieces = []
        start = 0
        for expert, count in enumerate(counts_list):
            if count:
                gate_up, down = expert_weights(expert)
                pieces.append(_expert_mlp(xs[start : start + count], gate_up, down))
                start += count
        y = torch.cat(pieces)
    y = y * top_k_weights.reshape(-1)[order, None]
    return torch.zeros_like(x).index_add_(0, token_of, y.to(x.dtype))
