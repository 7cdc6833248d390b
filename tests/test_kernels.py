"""Each kernel against its plain-torch reference, over shapes and dtypes."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from kernels.attention import attention, attention_reference
from kernels.moe import moe_grouped, moe_reference
from kernels.nvfp4 import E2M1_MAGNITUDES, dequantize_nvfp4, quantize_nvfp4


@pytest.mark.parametrize("heads,kv_heads,queries,keys", [(4, 2, 16, 40), (4, 4, 7, 7), (8, 1, 33, 65)])
@pytest.mark.parametrize("slice_size", [None, 5, 64])
def test_attention_matches_reference_with_masks_and_slices(heads, kv_heads, queries, keys, slice_size):
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(2, heads, queries, 16, generator=gen)
    k = torch.randn(2, kv_heads, keys, 16, generator=gen)
    v = torch.randn(2, kv_heads, keys, 16, generator=gen)
    mask = torch.rand(2, 1, queries, keys, generator=gen) > 0.3
    mask[..., 0] = True  # every query sees something
    got = attention(q, k, v, mask, slice_size=slice_size)
    assert torch.allclose(got, attention_reference(q, k, v, mask), atol=1e-5)


def test_sliced_causal_attention_matches_unsliced():
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 2, 50, 8, generator=gen) for _ in range(3))
    assert torch.allclose(
        attention(q, k, v, None, is_causal=True, slice_size=7),
        attention_reference(q, k, v, None, True),
        atol=1e-5,
    )


def test_attention_slicing_bounds_peak_memory():
    """Peak RSS of one long attention call in fresh processes, on SDPA's math backend (the one that
    materialises scores; GPUs fall back to it for DiffusionGemma's 512-wide full-attention heads):
    slicing must cut the score matrix."""
    script = textwrap.dedent(
        """
        import resource, sys, torch
        from torch.nn.attention import SDPBackend, sdpa_kernel
        from kernels.attention import attention
        torch.set_num_threads(1)
        slice_size = int(sys.argv[1]) or None
        q = torch.randn(1, 8, 4096, 16); k = torch.randn(1, 8, 4096, 16); v = torch.randn(1, 8, 4096, 16)
        mask = torch.ones(1, 1, 4096, 4096, dtype=torch.bool)
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        with sdpa_kernel(SDPBackend.MATH):
            attention(q, k, v, mask, slice_size=slice_size)
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base)
        """
    )

    def growth_kib(slice_size: int) -> int:
        out = subprocess.run(
            [sys.executable, "-c", script, str(slice_size)], capture_output=True, text=True, check=True
        )
        return int(out.stdout.strip())

    whole, sliced = growth_kib(0), growth_kib(256)
    # Unsliced, the fp32 scores alone are 8 x 4096 x 4096 x 4 B = 512 MiB; sliced, 32 MiB.
    assert whole > 300 * 1024
    assert sliced < whole / 4


@pytest.mark.parametrize("tokens,experts,top_k", [(64, 16, 2), (5, 8, 2), (257, 16, 4), (3, 128, 8)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_grouped_experts_match_the_per_expert_loop(tokens, experts, top_k, dtype):
    gen = torch.Generator().manual_seed(2)
    d, inter = 32, 24
    x = torch.randn(tokens, d, generator=gen).to(dtype)
    gate_up = (torch.randn(experts, 2 * inter, d, generator=gen) * 0.2).to(dtype)
    down = (torch.randn(experts, d, inter, generator=gen) * 0.2).to(dtype)
    probs = torch.softmax(torch.randn(tokens, experts, generator=gen), -1)
    weights, index = torch.topk(probs, top_k)

    def expert(e: int):
        return gate_up[e], down[e]

    reference = moe_reference(x, index, weights, expert)
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    assert torch.allclose(moe_grouped(x, index, weights, expert), reference, atol=tolerance)
    assert torch.allclose(
        moe_grouped(x, index, weights, expert, stacked=(gate_up, down)), reference, atol=tolerance
    )


def test_nvfp4_decodes_every_code_and_nibble_order():
    codes = torch.arange(16, dtype=torch.uint8)
    packed = (codes[0::2] | (codes[1::2] << 4)).reshape(1, 8)  # low nibble = even column
    scale = torch.ones(1, 1).to(torch.float8_e4m3fn)
    values = dequantize_nvfp4(packed, scale, torch.tensor(1.0), torch.float32)[0].tolist()
    magnitudes = list(E2M1_MAGNITUDES)
    assert values == magnitudes + [-m for m in magnitudes]


def test_nvfp4_block_and_global_scales_multiply():
    packed = torch.full((1, 16), 0x22, dtype=torch.uint8)  # code 2 = 1.0 everywhere
    scale = torch.tensor([[2.0, 0.5]]).to(torch.float8_e4m3fn)
    values = dequantize_nvfp4(packed, scale, torch.tensor(3.0), torch.float32)[0]
    assert values[:16].eq(6.0).all() and values[16:].eq(1.5).all()


@pytest.mark.parametrize("shape", [(24, 64), (64, 32), (8, 16)])
def test_nvfp4_quantisation_round_trips_within_fp4_precision(shape):
    w = torch.randn(*shape, generator=torch.Generator().manual_seed(3))
    q = quantize_nvfp4(w)
    assert q.packed.dtype == torch.uint8 and q.packed.shape == (shape[0], shape[1] // 2)
    assert q.block_scale.dtype == torch.float8_e4m3fn and q.block_scale.shape == (shape[0], shape[1] // 16)
    assert q.global_scale.item() == pytest.approx(w.abs().max().item() / (6 * 448), rel=1e-6)
    restored = q.dequantize(torch.float32)
    assert ((restored - w).norm() / w.norm()).item() < 0.15
    assert quantize_nvfp4(restored).dequantize(torch.float32).allclose(restored, atol=1e-6)
