"""The device path of the routed experts: grouping on the device, the torch block path and the
fused Triton kernels (NVFP4 W4A16 and dense), each against the per-expert reference loop."""

from __future__ import annotations

import pytest
import torch

from kernels.moe import (
    DenseExperts,
    NVFP4Experts,
    expert_block_capacity,
    fused_moe,
    moe_reference,
    sort_slots_by_expert,
)
from kernels.nvfp4 import quantize_nvfp4
from tests.kernels.conftest import ON_GPU, kernel_dtypes

triton = pytest.importorskip("triton")

# (tokens, hidden, intermediate, experts, top_k): tiny, since each program instance of the
# interpreter costs about a millisecond; odd token counts leave partly padded blocks.
SHAPES = [(5, 64, 32, 4, 2), (33, 32, 64, 8, 2), (3, 64, 96, 8, 4)]


def routing(tokens: int, experts: int, top_k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    probs = torch.softmax(torch.randn(tokens, experts, generator=gen) * 2, dim=-1)
    weights, index = torch.topk(probs, top_k)
    return weights / weights.sum(-1, keepdim=True), index


def random_experts(experts: int, hidden: int, inter: int, seed: int) -> DenseExperts:
    gen = torch.Generator().manual_seed(seed)
    return DenseExperts(
        torch.randn(experts, 2 * inter, hidden, generator=gen) * 0.2,
        torch.randn(experts, hidden, inter, generator=gen) * 0.2,
    )


def quantized(dense: DenseExperts) -> NVFP4Experts:
    """Quantised in torch (the interpreter flushes e4m3 subnormals when it casts)."""
    key = (dense.gate_up.shape, float(dense.gate_up.sum()), float(dense.down.sum()))
    if key not in _QUANTIZED:
        _QUANTIZED[key] = _quantize(dense)
    stack = _QUANTIZED[key]
    return NVFP4Experts(*(getattr(stack, f).clone() for f in stack.__dataclass_fields__))


_QUANTIZED: dict = {}  # quantize_nvfp4 is slow on a loaded CPU: each stack once per session


def _quantize(dense: DenseExperts) -> NVFP4Experts:
    inter = dense.intermediate
    return NVFP4Experts.from_triples(
        [
            (quantize_nvfp4(gu[:inter]), quantize_nvfp4(gu[inter:]), quantize_nvfp4(d))
            for gu, d in zip(dense.gate_up, dense.down, strict=True)
        ]
    )


def reference(x, index, weights, experts) -> torch.Tensor:
    gate_up, down = experts.dense(torch.arange(experts.num_experts), torch.float32)
    return moe_reference(x.float(), index, weights, lambda e: (gate_up[e], down[e]))


@pytest.mark.parametrize("tokens,experts,top_k,block_m", [(5, 4, 2, 16), (40, 8, 2, 4), (1, 16, 8, 16)])
def test_slots_are_sorted_by_expert_into_single_expert_blocks(tokens, experts, top_k, block_m):
    _, index = routing(tokens, experts, top_k, seed=tokens)
    blocks = sort_slots_by_expert(index, experts, block_m)
    slots = tokens * top_k
    assert blocks.capacity == expert_block_capacity(tokens, top_k, experts, block_m)
    used = int(blocks.used_slots)
    real = blocks.slot_ids[blocks.slot_ids < slots]
    assert sorted(real.tolist()) == list(range(slots))  # every slot exactly once
    assert bool((blocks.slot_ids[used:] == slots).all())
    flat = index.reshape(-1)
    for block, expert in enumerate(blocks.block_expert.tolist()):
        ids = blocks.slot_ids[block * block_m : (block + 1) * block_m]
        ids = ids[ids < slots].long()
        if block * block_m >= used:
            assert expert == -1 and ids.numel() == 0
        else:
            assert ids.numel() > 0 and bool((flat[ids] == expert).all())
            assert ids.tolist() == sorted(ids.tolist())  # stable: slot order within an expert


def test_grouping_shapes_depend_on_sizes_alone():
    """Static shapes (what a CUDA graph needs): skewed and balanced routings give equal shapes."""
    balanced = torch.arange(32).reshape(16, 2) % 8
    skewed = torch.zeros(16, 2, dtype=torch.long)
    skewed[:, 1] = 1
    a, b = sort_slots_by_expert(balanced, 8, 16), sort_slots_by_expert(skewed, 8, 16)
    assert a.slot_ids.shape == b.slot_ids.shape and a.block_expert.shape == b.block_expert.shape
    assert int(a.used_slots) == 8 * 16 and int(b.used_slots) == 2 * 16


@pytest.mark.parametrize("tokens,hidden,inter,experts,top_k", SHAPES)
@pytest.mark.parametrize("nvfp4", [False, True], ids=["dense", "nvfp4"])
def test_torch_block_path_matches_the_per_expert_loop(tokens, hidden, inter, experts, top_k, nvfp4):
    x = torch.randn(tokens, hidden, generator=torch.Generator().manual_seed(1))
    weights, index = routing(tokens, experts, top_k, seed=2)
    stack = random_experts(experts, hidden, inter, seed=3)
    stack = quantized(stack) if nvfp4 else stack
    got = fused_moe(x, index, weights, stack, block_m=4, backend="torch")
    assert torch.allclose(got, reference(x, index, weights, stack), atol=1e-5)


def test_nvfp4_stack_keeps_the_loader_layout():
    """from_triples stacks `Experts.quantized` triples; dequantising a stacked expert gives each
    NVFP4Weight's own dequantisation, gate rows before up rows."""
    dense = random_experts(3, 32, 16, seed=4)
    triples = [
        (quantize_nvfp4(gu[:16]), quantize_nvfp4(gu[16:]), quantize_nvfp4(d))
        for gu, d in zip(dense.gate_up, dense.down, strict=True)
    ]
    stack = NVFP4Experts.from_triples(triples)
    assert stack.gate_up_packed.shape == (3, 32, 16) and stack.gate_up_scale.shape == (3, 32, 2)
    assert stack.down_packed.shape == (3, 32, 8) and stack.down_global.shape == (3,)
    gate_up, down = stack.dense(torch.tensor([2, 0]), torch.float32)
    gate, up, _ = triples[2]
    # The global scale is applied per row after the block scale: equal up to one fp32 rounding.
    expected = torch.cat([gate.dequantize(torch.float32), up.dequantize(torch.float32)])
    assert torch.allclose(gate_up[0], expected, rtol=1e-6, atol=0)
    assert torch.allclose(down[1], triples[0][2].dequantize(torch.float32), rtol=1e-6, atol=0)
    assert stack.nbytes() == sum(w.nbytes() for t in triples for w in t)


@pytest.mark.parametrize("tokens,hidden,inter,experts,top_k", SHAPES)
@pytest.mark.parametrize("nvfp4", [False, True], ids=["dense", "nvfp4"])
@pytest.mark.parametrize("dtype", kernel_dtypes(), ids=str)
def test_triton_kernels_match_the_torch_block_path(
    tokens, hidden, inter, experts, top_k, nvfp4, dtype, device
):
    """Same inputs in `dtype` for both; tolerance: fp32 accumulation in both, so the difference is
    the rounding of the [slots, I] intermediate and of the output to `dtype`."""
    x = torch.randn(tokens, hidden, generator=torch.Generator().manual_seed(5)).to(device, dtype)
    weights, index = (t.to(device) for t in routing(tokens, experts, top_k, seed=6))
    stack = random_experts(experts, hidden, inter, seed=7)
    if nvfp4:
        stack = quantized(stack)
        stack = NVFP4Experts(*(getattr(stack, f).to(device) for f in stack.__dataclass_fields__))
    else:
        stack = DenseExperts(stack.gate_up.to(device, dtype), stack.down.to(device, dtype))
    got = fused_moe(x, index, weights, stack, block_m=16, backend="triton")
    expected = fused_moe(x, index, weights, stack, block_m=16, backend="torch")
    exact = reference(x.float().cpu(), index.cpu(), weights.cpu(), _to_cpu(stack))
    tolerance = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}[dtype]
    assert got.dtype == dtype
    assert torch.allclose(got.float(), expected.float(), atol=tolerance, rtol=tolerance)
    assert torch.allclose(got.float().cpu(), exact, atol=3 * tolerance, rtol=3 * tolerance)


def test_nvfp4_kernel_decodes_every_e4m3_scale_including_subnormals(device):
    """Block scales drawn from every finite positive e4m3 byte (0x01-0x07 are subnormal)."""
    gen = torch.Generator().manual_seed(8)
    experts, hidden, inter = 2, 64, 32
    stack = quantized(random_experts(experts, hidden, inter, seed=9))
    for name in ("gate_up_scale", "down_scale"):
        scale = getattr(stack, name)
        raw = torch.randint(0, 0x7F, scale.shape, generator=gen, dtype=torch.uint8)
        raw.view(-1)[:0x7F] = torch.arange(0x7F, dtype=torch.uint8)
        setattr(stack, name, raw.view(torch.float8_e4m3fn))
    # A small global scale keeps the products of 448-sized scales inside fp16's range.
    stack.gate_up_global.fill_(1.0 / 2048)
    stack.down_global.fill_(1.0 / 2048)
    stack = NVFP4Experts(*(getattr(stack, f).to(device) for f in stack.__dataclass_fields__))
    x = torch.randn(6, hidden, generator=gen).to(device, torch.float16)
    weights, index = (t.to(device) for t in routing(6, experts, 1, seed=10))
    got = fused_moe(x, index, weights, stack, backend="triton")
    expected = fused_moe(x, index, weights, stack, backend="torch")
    assert torch.isfinite(expected).all()
    assert torch.allclose(got.float(), expected.float(), atol=2e-2, rtol=2e-2)


def test_the_interpreter_runs_the_kernels_off_gpu():
    """Guards the conftest: off a GPU the kernels must be interpreted, or the tests above would not
    have run them on CPU tensors at all."""
    from kernels import moe_triton

    kind = type(moe_triton._gate_up_kernel).__name__
    assert kind == ("JITFunction" if ON_GPU else "InterpretedFunction")


def _to_cpu(stack):
    return type(stack)(*(getattr(stack, f).cpu() for f in stack.__dataclass_fields__))


@pytest.mark.parametrize("dtype", ["float32", "nvfp4"])
def test_a_loaded_layer_gives_the_engine_result_on_the_device_path(tiny_checkpoint_nvfp4, dtype):
    """The stack of a layer as the loader filled it (dense, or NVFP4 triples) with the engine's own
    Router, against that layer's `Experts.forward` (the engine's per-expert or grouped path)."""
    from engine.api import DiffusionGemmaModel
    from engine.config import DiffusionConfig
    from kernels.moe import routed_experts_layer, stack_experts

    model = DiffusionGemmaModel.from_pretrained(
        tiny_checkpoint_nvfp4, config=DiffusionConfig(device="cpu", dtype=dtype)
    )
    layer = model.transformer.layers[1]
    gen = torch.Generator().manual_seed(12)
    residual = torch.randn(20, layer.router.proj.in_features, generator=gen)
    experts_input = layer.pre_feedforward_layernorm_2(residual)
    weights, index, _ = layer.router(residual)
    expected = layer.experts(experts_input, index, weights)
    stack = stack_experts(layer.experts)
    assert isinstance(stack, NVFP4Experts if dtype == "nvfp4" else DenseExperts)
    got = routed_experts_layer(residual, experts_input, layer.router, stack, block_m=4, backend="torch")
    assert torch.allclose(got, expected, atol=1e-5)
    half = routed_experts_layer(
        residual.half(),
        experts_input.half(),
        lambda r: layer.router(r.float()),
        _half(stack),
        backend="triton",
    )
    assert torch.allclose(half.float(), expected, atol=2e-2, rtol=2e-2)


def _half(stack):
    if isinstance(stack, DenseExperts):
        return DenseExperts(stack.gate_up.half(), stack.down.half())
    return stack


@pytest.fixture(scope="module")
def tiny_checkpoint_nvfp4(tmp_path_factory):
    """The tiny model with expert matrices divisible by 16, so that dtype='nvfp4' applies."""
    from engine.random_model import tiny_text_config, write_random_checkpoint

    text = tiny_text_config(moe_intermediate_size=32)
    return write_random_checkpoint(tmp_path_factory.mktemp("moe") / "model", text, canvas_length=16)


def test_the_device_path_runs_on_the_meta_device():
    """Meta tensors have shapes and no values: a path that runs on them computes every shape from
    the sizes alone and cannot read anything back to the host (.item(), .tolist(), bincount,
    nonzero...), which on CUDA would each be a synchronisation."""
    from kernels.denoiser_statistics import denoiser_statistics
    from kernels.moe import moe_grouped

    def meta(t: torch.Tensor) -> torch.Tensor:
        return t.to("meta")

    x = meta(torch.randn(24, 64))
    weights, index = (meta(t) for t in routing(24, 8, 2, seed=14))
    dense, stack = random_experts(8, 64, 32, seed=15), quantized(random_experts(8, 64, 32, seed=15))
    dense = DenseExperts(meta(dense.gate_up), meta(dense.down))
    stack = NVFP4Experts(*(meta(getattr(stack, f)) for f in stack.__dataclass_fields__))
    blocks = sort_slots_by_expert(index, 8, 16)
    assert blocks.slot_ids.shape == (expert_block_capacity(24, 2, 8, 16),)
    assert fused_moe(x, index, weights, dense, backend="torch").shape == (24, 64)
    assert fused_moe(x, index, weights, stack, backend="torch").shape == (24, 64)
    stats = denoiser_statistics(meta(torch.randn(6, 300)), meta(torch.rand(6)), 0.7, backend="torch")
    assert stats.sample.shape == (6,) and stats.probs.shape == (6, 300)
    with pytest.raises(NotImplementedError, match="bincount"):  # the engine's current path cannot
        moe_grouped(x, index, weights, lambda e: (dense.gate_up[e], dense.down[e]))
