"""Fused routed-experts kernels in Triton (W4A16 NVFP4 and BF16), the device path of `kernels.moe`.

Two kernels over the expert blocks of `kernels.moe.sort_slots_by_expert` (one expert per block
of `block_m` sorted slots, the layout of vLLM's and SGLang's fused MoE):

1. gate/up: for one block and a tile of the intermediate dimension, both projections at once
   (gate rows and up rows of the same expert), then gelu_tanh(gate) * up in the epilogue, so the
   down projection reads one [slots, I] input;
2. down: that input times the expert's down projection, times the slot's router weight, written
   per slot; the k slots of a token are summed afterwards (deterministic, no atomics).

NVFP4 weights are dequantised inside the kernel (W4A16, for Hopper and Ada, which lack FP4
tensor cores): each uint8 holds two E2M1 codes, the low nibble for the even column, so the
activation tile is loaded as its even and its odd columns and multiplied by the low and the
high nibbles separately (no interleave); the E4M3 block-16 scale is decoded from its bits and
applied to the tile; the fp32 global scale multiplies the accumulator.

This module imports Triton and defines its kernels on import: under `TRITON_INTERPRET=1`
(CPU tests) the variable must be set before the first import (tests/kernels/conftest.py).
`tl.dot` takes the activations' dtype: fp16 or fp32 under the interpreter (its bf16 dot is
wrong), bf16 on a GPU.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.moe import DenseExperts, ExpertBlocks, NVFP4Experts, StackedExperts


@triton.jit
def _tanh(z):
    # tanh from exp (no libdevice dependency); |z| <= 20 keeps exp finite, and tanh(20) is 1 in fp32.
    z = tl.minimum(tl.maximum(z, -20.0), 20.0)
    return 1.0 - 2.0 / (tl.exp(2.0 * z) + 1.0)


@triton.jit
def _gelu_tanh(x):
    return 0.5 * x * (1.0 + _tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)))


@triton.jit
def _e2m1(code):
    """A 4-bit code (bit 3 sign, bits 0-2 index {0, .5, 1, 1.5, 2, 3, 4, 6}) -> fp32."""
    c = code.to(tl.int32)
    exponent = (c >> 1) & 3
    mantissa = (c & 1).to(tl.float32)
    power = ((tl.maximum(exponent - 1, 0) + 127) << 23).to(tl.float32, bitcast=True)  # 2^(e-1)
    magnitude = tl.where(exponent == 0, 0.5 * mantissa, power * (1.0 + 0.5 * mantissa))
    return tl.where((c & 8) != 0, -magnitude, magnitude)


@triton.jit
def _e4m3(byte):
    """The bits of a float8_e4m3fn (bias 7, subnormals m * 2^-9) -> fp32, on any GPU generation."""
    b = byte.to(tl.int32)
    exponent = (b >> 3) & 15
    mantissa = (b & 7).to(tl.float32)
    normal = ((exponent + 120) << 23).to(tl.float32, bitcast=True) * (1.0 + 0.125 * mantissa)
    magnitude = tl.where(exponent == 0, mantissa * 0.001953125, normal)
    return tl.where((b & 128) != 0, -magnitude, magnitude)


@triton.jit
def _nvfp4_tile(w_ptr, s_ptr, expert, rows, row_ok, cols, k_ok, s_we, s_wn, s_wk, s_se, s_sn, s_sk, dtype):
    """Low-nibble (even column) and high-nibble (odd column) halves of a weight tile [rows, cols],
    block scale applied; `cols` index the packed bytes, so byte c covers inputs 2c and 2c + 1."""
    mask = row_ok[:, None] & k_ok[None, :]
    packed = tl.load(w_ptr + expert * s_we + rows[:, None] * s_wn + cols[None, :] * s_wk, mask=mask, other=0)
    scale_byte = tl.load(
        s_ptr + expert * s_se + rows[:, None] * s_sn + (cols[None, :] // 8) * s_sk, mask=mask, other=0
    )
    scale = _e4m3(scale_byte)
    low = (_e2m1(packed & 15) * scale).to(dtype)
    high = (_e2m1(packed >> 4) * scale).to(dtype)
    return low, high


@triton.jit
def _gate_up_kernel(
    x_ptr,
    slot_ids_ptr,
    block_expert_ptr,
    used_ptr,
    h_ptr,
    w_ptr,
    s_ptr,
    g_ptr,
    inter,
    hidden,
    num_slots,
    s_xm,
    s_xk,
    s_we,
    s_wn,
    s_wk,
    s_se,
    s_sn,
    s_sk,
    s_hm,
    s_hn,
    TOP_K: tl.constexpr,
    NVFP4: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    if pid_m * BLOCK_M >= tl.load(used_ptr):
        return  # a padding block of the static grid
    expert = tl.load(block_expert_ptr + pid_m).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    slot = tl.load(slot_ids_ptr + offs_m)
    row_ok = slot < num_slots
    token = (slot // TOP_K).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < inter
    dtype = x_ptr.dtype.element_ty
    acc_gate = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_up = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, hidden, BLOCK_K):
        if NVFP4:
            cols = k0 // 2 + tl.arange(0, BLOCK_K // 2)
            k_ok = 2 * cols < hidden
            a_mask = row_ok[:, None] & k_ok[None, :]
            a_base = x_ptr + token[:, None] * s_xm
            a_even = tl.load(a_base + (2 * cols)[None, :] * s_xk, mask=a_mask, other=0.0)
            a_odd = tl.load(a_base + (2 * cols + 1)[None, :] * s_xk, mask=a_mask, other=0.0)
            g_low, g_high = _nvfp4_tile(
                w_ptr, s_ptr, expert, offs_n, n_ok, cols, k_ok, s_we, s_wn, s_wk, s_se, s_sn, s_sk, dtype
            )
            u_low, u_high = _nvfp4_tile(
                w_ptr,
                s_ptr,
                expert,
                inter + offs_n,
                n_ok,
                cols,
                k_ok,
                s_we,
                s_wn,
                s_wk,
                s_se,
                s_sn,
                s_sk,
                dtype,
            )
            acc_gate += tl.dot(a_even, tl.trans(g_low)) + tl.dot(a_odd, tl.trans(g_high))
            acc_up += tl.dot(a_even, tl.trans(u_low)) + tl.dot(a_odd, tl.trans(u_high))
        else:
            offs_k = k0 + tl.arange(0, BLOCK_K)
            k_ok = offs_k < hidden
            a = tl.load(
                x_ptr + token[:, None] * s_xm + offs_k[None, :] * s_xk,
                mask=row_ok[:, None] & k_ok[None, :],
                other=0.0,
            )
            w_mask = k_ok[:, None] & n_ok[None, :]
            w_base = w_ptr + expert * s_we + offs_k[:, None] * s_wk
            gate = tl.load(w_base + offs_n[None, :] * s_wn, mask=w_mask, other=0.0)
            up = tl.load(w_base + (inter + offs_n)[None, :] * s_wn, mask=w_mask, other=0.0)
            acc_gate += tl.dot(a, gate)
            acc_up += tl.dot(a, up)
    if NVFP4:
        acc_gate *= tl.load(g_ptr + expert * 2)
        acc_up *= tl.load(g_ptr + expert * 2 + 1)
    h = _gelu_tanh(acc_gate) * acc_up
    tl.store(
        h_ptr + offs_m[:, None] * s_hm + offs_n[None, :] * s_hn,
        h.to(h_ptr.dtype.element_ty),
        mask=n_ok[None, :],
    )


@triton.jit
def _down_kernel(
    h_ptr,
    slot_ids_ptr,
    block_expert_ptr,
    used_ptr,
    router_ptr,
    out_ptr,
    w_ptr,
    s_ptr,
    g_ptr,
    hidden,
    inter,
    num_slots,
    s_hm,
    s_hk,
    s_we,
    s_wn,
    s_wk,
    s_se,
    s_sn,
    s_sk,
    s_om,
    s_on,
    NVFP4: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    if pid_m * BLOCK_M >= tl.load(used_ptr):
        return
    expert = tl.load(block_expert_ptr + pid_m).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    slot = tl.load(slot_ids_ptr + offs_m)
    row_ok = slot < num_slots
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < hidden
    dtype = h_ptr.dtype.element_ty
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, inter, BLOCK_K):
        if NVFP4:
            cols = k0 // 2 + tl.arange(0, BLOCK_K // 2)
            k_ok = 2 * cols < inter
            a_base = h_ptr + offs_m[:, None] * s_hm
            a_even = tl.load(a_base + (2 * cols)[None, :] * s_hk, mask=k_ok[None, :], other=0.0)
            a_odd = tl.load(a_base + (2 * cols + 1)[None, :] * s_hk, mask=k_ok[None, :], other=0.0)
            w_low, w_high = _nvfp4_tile(
                w_ptr, s_ptr, expert, offs_n, n_ok, cols, k_ok, s_we, s_wn, s_wk, s_se, s_sn, s_sk, dtype
            )
            acc += tl.dot(a_even, tl.trans(w_low)) + tl.dot(a_odd, tl.trans(w_high))
        else:
            offs_k = k0 + tl.arange(0, BLOCK_K)
            k_ok = offs_k < inter
            a = tl.load(
                h_ptr + offs_m[:, None] * s_hm + offs_k[None, :] * s_hk, mask=k_ok[None, :], other=0.0
            )
            w = tl.load(
                w_ptr + expert * s_we + offs_k[:, None] * s_wk + offs_n[None, :] * s_wn,
                mask=k_ok[:, None] & n_ok[None, :],
                other=0.0,
            )
            acc += tl.dot(a, w)
    if NVFP4:
        acc *= tl.load(g_ptr + expert)
    router = tl.load(router_ptr + slot, mask=row_ok, other=0.0)
    acc *= router[:, None]
    tl.store(
        out_ptr + slot.to(tl.int64)[:, None] * s_om + offs_n[None, :] * s_on,
        acc,
        mask=row_ok[:, None] & n_ok[None, :],
    )


def moe_blocks_triton(
    x: torch.Tensor,
    blocks: ExpertBlocks,
    top_k_weights: torch.Tensor,
    experts: StackedExperts,
    block_n: int = 64,
    block_k: int = 64,
) -> torch.Tensor:
    """Same result as `kernels.moe.moe_blocks_torch`; two launches on grids of static size."""
    tokens, hidden = x.shape
    inter = experts.intermediate
    if block_k % 32:
        raise ValueError("block_k must be a multiple of 32 (two NVFP4 scale blocks per packed tile row)")
    if blocks.block_m < 16 or block_n < 16:
        raise ValueError("tl.dot needs tiles of at least 16 rows and columns")
    x = x.contiguous()
    h = torch.empty(blocks.capacity, inter, dtype=x.dtype, device=x.device)
    per_slot = torch.zeros(blocks.num_slots, hidden, dtype=torch.float32, device=x.device)
    router = top_k_weights.reshape(-1).float().contiguous()
    nvfp4 = isinstance(experts, NVFP4Experts)
    if nvfp4:
        gate_up_w, gate_up_s = experts.gate_up_packed, experts.gate_up_scale.view(torch.uint8)
        gate_up_g = experts.gate_up_global.contiguous()
        down_w, down_s = experts.down_packed, experts.down_scale.view(torch.uint8)
        down_g = experts.down_global.contiguous()
    else:
        assert isinstance(experts, DenseExperts)
        gate_up_w, down_w = experts.gate_up, experts.down
        # The scale arguments are unused when NVFP4 is off; any tensor with three strides will do.
        gate_up_s = down_s = gate_up_w
        gate_up_g = down_g = router
    grid = (blocks.num_blocks, triton.cdiv(inter, block_n))
    _gate_up_kernel[grid](
        x,
        blocks.slot_ids,
        blocks.block_expert,
        blocks.used_slots,
        h,
        gate_up_w,
        gate_up_s,
        gate_up_g,
        inter,
        hidden,
        blocks.num_slots,
        *x.stride(),
        *gate_up_w.stride(),
        *gate_up_s.stride(),
        *h.stride(),
        TOP_K=blocks.top_k,
        NVFP4=nvfp4,
        BLOCK_M=blocks.block_m,
        BLOCK_N=block_n,
        BLOCK_K=block_k,
    )
    grid = (blocks.num_blocks, triton.cdiv(hidden, block_n))
    _down_kernel[grid](
        h,
        blocks.slot_ids,
        blocks.block_expert,
        blocks.used_slots,
        router,
        per_slot,
        down_w,
        down_s,
        down_g,
        hidden,
        inter,
        blocks.num_slots,
        *h.stride(),
        *down_w.stride(),
        *down_s.stride(),
        *per_slot.stride(),
        NVFP4=nvfp4,
        BLOCK_M=blocks.block_m,
        BLOCK_N=block_n,
        BLOCK_K=block_k,
    )
    return per_slot.view(tokens, blocks.top_k, hidden).sum(dim=1).to(x.dtype)
