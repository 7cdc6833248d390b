"""Routed experts (diffusiongemma.md 3.4): y_t = sum_j w_tj * down_e(gelu(gate_e x_t) * up_e x_t).

`moe_reference` is the plain per-expert loop. `moe_grouped` sorts the token slots by expert and
runs the experts as one padded batched matmul when routing is balanced enough, which on a CPU
removes most of the per-expert dispatch cost; both accumulate each token's experts in
ascending expert order, as transformers does.

Experts are reached through `expert_weights(e) -> (gate_up [2I, d], down [d, I])` so that
quantised (NVFP4) or CPU-offloaded experts plug in without changing the maths.

The device path (below the line) needs no host synchronisation: `sort_slots_by_expert` groups
the slots on the device into blocks of one expert, `fused_moe` runs a whole routed-experts layer
over those blocks with the Triton kernels of `kernels.moe_triton` on CUDA, or with
`moe_blocks_torch` elsewhere, on `DenseExperts` or `NVFP4Experts` stacks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kernels.nvfp4 import NVFP4Weight, dequantize_nvfp4

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


# ---- the device path (no host syncs, static shapes) ----------------------------------------------
#
# The layout of vLLM's and SGLang's fused MoE kernels: every (token, j) pair of the top-k routing
# is a *slot* (slot = token * k + j). Slots are sorted by expert and each expert's run is padded to
# a multiple of `block_m`, so that a block of `block_m` consecutive sorted slots belongs to exactly
# one expert; one kernel program then multiplies one block by one expert's weights. Every tensor
# has a shape fixed by (tokens, k, experts, block_m) alone, and nothing is read back to the host,
# so the step can be captured in a CUDA graph.


@dataclass(frozen=True)
class ExpertBlocks:
    """Token slots sorted by expert, padded so that each block of `block_m` slots has one expert."""

    slot_ids: torch.Tensor  # int32 [capacity]: the slot in each sorted position; `num_slots` = padding
    block_expert: torch.Tensor  # int32 [capacity // block_m]: each block's expert, -1 past the used blocks
    used_slots: torch.Tensor  # int32 [1]: sorted positions in use (a multiple of block_m), on the device
    block_m: int
    num_slots: int  # tokens * k
    top_k: int

    @property
    def capacity(self) -> int:
        return self.slot_ids.shape[0]

    @property
    def num_blocks(self) -> int:
        return self.block_expert.shape[0]


def expert_block_capacity(tokens: int, top_k: int, num_experts: int, block_m: int) -> int:
    """The most sorted positions any routing of `tokens` x `top_k` slots can need (a static bound):
    every slot, plus at most block_m - 1 padding for each expert that receives a slot."""
    slots = tokens * top_k
    bound = slots + min(num_experts, slots) * (block_m - 1)
    return -(-bound // block_m) * block_m


def sort_slots_by_expert(top_k_index: torch.Tensor, num_experts: int, block_m: int) -> ExpertBlocks:
    """Device-side grouping of the routed slots (no .tolist(), .item() or bincount to the host)."""
    tokens, top_k = top_k_index.shape
    device = top_k_index.device
    slots = tokens * top_k
    capacity = expert_block_capacity(tokens, top_k, num_experts, block_m)
    flat = top_k_index.reshape(-1).to(torch.int64)
    # scatter_add_ keeps the count on the device (torch.bincount reads its maximum back to the host).
    counts = torch.zeros(num_experts, dtype=torch.int64, device=device).scatter_add_(
        0, flat, torch.ones_like(flat)
    )
    padded = (counts + block_m - 1) // block_m * block_m
    padded_end = torch.cumsum(padded, 0)
    order = torch.argsort(flat, stable=True)  # slots in expert order, ties by slot
    sorted_expert = flat[order]
    rank = torch.arange(slots, device=device) - (torch.cumsum(counts, 0) - counts)[sorted_expert]
    position = (padded_end - padded)[sorted_expert] + rank
    slot_ids = torch.full((capacity,), slots, dtype=torch.int32, device=device)
    slot_ids.scatter_(0, position, order.to(torch.int32))
    block_start = torch.arange(0, capacity, block_m, device=device)
    block_expert = torch.searchsorted(padded_end, block_start, right=True)
    block_expert = torch.where(block_expert < num_experts, block_expert, -1).to(torch.int32)
    return ExpertBlocks(slot_ids, block_expert, padded_end[-1:].to(torch.int32), block_m, slots, top_k)


@dataclass
class DenseExperts:
    """BF16 (or fp16/fp32) experts stacked as the checkpoint stores them, gate rows before up rows."""

    gate_up: torch.Tensor  # [E, 2I, d]
    down: torch.Tensor  # [E, d, I]

    @property
    def num_experts(self) -> int:
        return self.gate_up.shape[0]

    @property
    def intermediate(self) -> int:
        return self.down.shape[2]

    def dense(self, experts: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        return self.gate_up[experts].to(dtype), self.down[experts].to(dtype)


@dataclass
class NVFP4Experts:
    """Every expert's three NVFP4 matrices stacked, each in the ModelOpt layout of `kernels.nvfp4`
    (uint8 [out, in/2] low nibble = even column, e4m3 [out, in/16] block scales, fp32 global)."""

    gate_up_packed: torch.Tensor  # uint8 [E, 2I, d/2], gate rows then up rows
    gate_up_scale: torch.Tensor  # float8_e4m3fn [E, 2I, d/16]
    gate_up_global: torch.Tensor  # fp32 [E, 2]: the gate's and the up projection's global scales
    down_packed: torch.Tensor  # uint8 [E, d, I/2]
    down_scale: torch.Tensor  # float8_e4m3fn [E, d, I/16]
    down_global: torch.Tensor  # fp32 [E]

    @classmethod
    def from_triples(cls, triples: list[tuple[NVFP4Weight, NVFP4Weight, NVFP4Weight]]) -> NVFP4Experts:
        """From `Experts.quantized` (one (gate, up, down) triple per expert, as the loader builds it)."""
        return cls(
            torch.stack([torch.cat([g.packed, u.packed]) for g, u, _ in triples]),
            torch.stack([torch.cat([g.block_scale, u.block_scale]) for g, u, _ in triples]),
            torch.stack([torch.stack([g.global_scale, u.global_scale]) for g, u, _ in triples]).float(),
            torch.stack([d.packed for _, _, d in triples]),
            torch.stack([d.block_scale for _, _, d in triples]),
            torch.stack([d.global_scale for _, _, d in triples]).float(),
        )

    @property
    def num_experts(self) -> int:
        return self.gate_up_packed.shape[0]

    @property
    def intermediate(self) -> int:
        return self.down_packed.shape[2] * 2

    def nbytes(self) -> int:
        parts = (self.gate_up_packed, self.gate_up_scale, self.gate_up_global)
        parts += (self.down_packed, self.down_scale, self.down_global)
        return sum(p.numel() * p.element_size() for p in parts)

    def dense(self, experts: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Dequantised [n, 2I, d] and [n, d, I] for the experts listed (the torch fallback)."""
        n, inter = experts.shape[0], self.intermediate
        gate_up = _dequantize_rows(self.gate_up_packed[experts], self.gate_up_scale[experts])
        row_global = self.gate_up_global[experts].repeat_interleave(inter, dim=1)  # [n, 2I]
        down = _dequantize_rows(self.down_packed[experts], self.down_scale[experts])
        gate_up = (gate_up * row_global[..., None]).to(dtype)
        down = (down * self.down_global[experts][:, None, None]).to(dtype)
        return gate_up.reshape(n, 2 * inter, -1), down


def _dequantize_rows(packed: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """[..., out, in/2] + [..., out, in/16] -> fp32 [..., out, in] without the global scale."""
    lead = packed.shape[:-1]
    one = torch.ones((), dtype=torch.float32, device=packed.device)
    flat = dequantize_nvfp4(packed.reshape(-1, packed.shape[-1]), scale.reshape(-1, scale.shape[-1]), one)
    return flat.to(torch.float32).reshape(*lead, -1)


StackedExperts = DenseExperts | NVFP4Experts


def moe_blocks_torch(
    x: torch.Tensor, blocks: ExpertBlocks, top_k_weights: torch.Tensor, experts: StackedExperts
) -> torch.Tensor:
    """The device path in plain torch: one batched matmul over the padded blocks (static shapes).

    Each block gathers its expert's weights, so this costs a copy of the weights per block: it is
    the reference of the Triton kernels and the path off CUDA, not a fast path.
    """
    tokens, d = x.shape
    valid = blocks.slot_ids < blocks.num_slots
    slot = torch.where(valid, blocks.slot_ids, 0).long()
    a = (x[slot // blocks.top_k] * valid[:, None]).reshape(blocks.num_blocks, blocks.block_m, d)
    expert = blocks.block_expert.clamp(min=0).long()
    gate_up, down = experts.dense(expert, x.dtype)
    gate, up = torch.bmm(a, gate_up.transpose(1, 2)).float().chunk(2, dim=-1)
    h = (F.gelu(gate, approximate="tanh") * up).to(x.dtype)
    y = torch.bmm(h, down.transpose(1, 2)).float().reshape(blocks.capacity, d)
    y = y * (top_k_weights.reshape(-1).float()[slot] * valid)[:, None]
    per_slot = torch.zeros(blocks.num_slots + 1, d, dtype=torch.float32, device=x.device)
    per_slot.index_copy_(0, torch.where(valid, slot, blocks.num_slots), y)
    return per_slot[:-1].reshape(tokens, blocks.top_k, d).sum(dim=1).to(x.dtype)


def fused_moe(
    x: torch.Tensor,
    top_k_index: torch.Tensor,
    top_k_weights: torch.Tensor,
    experts: StackedExperts,
    block_m: int = 16,
    backend: str = "auto",
) -> torch.Tensor:
    """A whole routed-experts layer on the device path: x [N, d], top-k ids and fp32 weights [N, k].

    `backend`: "triton" (the fused kernels of `kernels.moe_triton`), "torch" (`moe_blocks_torch`)
    or "auto" (Triton on CUDA when it is installed, torch elsewhere).
    """
    blocks = sort_slots_by_expert(top_k_index, experts.num_experts, block_m)
    if backend == "auto":
        backend = "triton" if x.is_cuda and triton_available() else "torch"
    if backend == "triton":
        from kernels.moe_triton import moe_blocks_triton

        return moe_blocks_triton(x, blocks, top_k_weights, experts)
    if backend != "torch":
        raise ValueError(f"unknown MoE backend {backend!r}")
    return moe_blocks_torch(x, blocks, top_k_weights, experts)


def stack_experts(experts) -> StackedExperts:
    """The stack of an `engine.model.Experts` module as the loader filled it: its NVFP4 triples, or
    its dense [E, 2I, d] / [E, d, I] parameters (any memory layout; the kernels take strides)."""
    if getattr(experts, "offload_device", None) is not None:
        raise ValueError("CPU-offloaded experts are not on the device: stream the routed ones first")
    if experts.quantized is not None:
        return NVFP4Experts.from_triples(list(experts.quantized))
    return DenseExperts(experts.gate_up_proj.data, experts.down_proj.data)


def routed_experts_layer(
    residual: torch.Tensor,
    experts_input: torch.Tensor,
    router: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    stack: StackedExperts,
    block_m: int = 16,
    backend: str = "auto",
) -> torch.Tensor:
    """The routed half of a MoE layer (diffusiongemma.md 3.4) on the device path, [N, d] in and out.

    `router` (engine.model.Router) reads the un-normed residual and returns fp32 top-k weights,
    expert ids and probabilities; the experts read their own normed input. Routing, grouping and
    the experts all stay on the device.
    """
    weights, index, _ = router(residual)
    return fused_moe(experts_input, index, weights, stack, block_m=block_m, backend=backend)


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True
