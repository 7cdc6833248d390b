"""The memory plan: real 26B-A4B shapes against the 18 GiB floor, a tiny model against the bytes it
really allocates, and `dgemma doctor --model` on a folder holding only config.json."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from dgemma_lsp.settings import Settings
from engine.api import DiffusionGemmaModel
from engine.config import DiffusionConfig, ModelConfig
from engine.memory_plan import DEFAULT_PROMPT_TOKENS, GiB, Workload, kv_capacity, plan_memory
from engine.random_model import tiny_text_config, write_random_checkpoint

REAL = ModelConfig()  # the published DiffusionGemma 26B-A4B text shapes


def test_default_prompt_is_what_the_language_server_sends():
    assert Settings().context_budget == DEFAULT_PROMPT_TOKENS


def test_real_nvfp4_weights_by_kind():
    plan = plan_memory(REAL, "nvfp4")
    t = REAL.text
    experts = t.num_hidden_layers * t.num_experts * 3 * t.hidden_size * t.moe_intermediate_size
    matrices = t.num_hidden_layers * t.num_experts * 3  # codes + e4m3 block scales + one fp32 global
    assert plan.weights_bytes["experts"] == experts * (0.5 + 1 / 16) + 4 * matrices
    # Everything but the experts stays bf16: 2 bytes a parameter (performance.md 5.1: 25.25 B in all).
    others = sum(v for k, v in plan.weights_bytes.items() if k not in ("experts", "rope_tables"))
    assert others == 2 * (REAL.parameter_count() - experts)
    assert sum(plan.weights_bytes.values()) == pytest.approx(17.67e9, rel=1e-3)


def test_real_nvfp4_shapes_fit_18_gib_at_the_default_context_with_the_fused_sampler():
    """1,024 prompt tokens and one 256-token canvas, batch 1 (the editor's default request).

    GPU memory is sold in binary units (a "24 GB" card holds 24 GiB). The torch sampler's fp32
    vocabulary buffers (20 bytes x 256 x 262,144) take it over 18 GiB; the fused
    denoiser-statistics kernel (4 bytes) brings it under.
    """
    fused = plan_memory(REAL, "nvfp4", fused_sampler=True)
    torch_sampler = plan_memory(REAL, "nvfp4")
    assert fused.total_bytes < 18 * GiB
    vocab_elements = 256 * REAL.text.vocab_size
    assert torch_sampler.total_bytes - fused.total_bytes == (22 - 4) * vocab_elements
    assert torch_sampler.total_bytes > 18 * GiB  # why the fused kernel matters (README)


def test_the_sdk_exposes_the_plan():
    import engine

    plan = engine.plan_memory(engine.ModelConfig(), "nvfp4", engine.Workload(prompt_tokens=2048))
    assert isinstance(plan, engine.MemoryPlan) and plan.to_dict()["total_bytes"] == plan.total_bytes


def test_memory_options_lower_the_plan():
    base = plan_memory(REAL, "nvfp4", Workload(prompt_tokens=8192))
    sliced = plan_memory(REAL, "nvfp4", Workload(prompt_tokens=8192), attention_slicing=True)
    offload = plan_memory(REAL, "nvfp4", Workload(prompt_tokens=8192), cpu_offload_unused_experts=True)
    assert sliced.activation_bytes["attention_scores"] * 2 == base.activation_bytes["attention_scores"]
    assert "experts" not in offload.weights_bytes
    assert offload.host_weights_bytes == base.weights_bytes["experts"]
    assert plan_memory(REAL, "bfloat16").total_bytes > 50e9  # BF16 needs a datacenter GPU


def test_kv_capacity_follows_the_cache_growth_rule():
    assert kv_capacity(100, 1, 16, None) == 356  # 100 + max(100, 256), room for the canvas
    assert kv_capacity(1000, 1, 256, None) == 2000
    assert kv_capacity(1000, 3, 256, None) == 2000  # 1512 + canvas scratch fits in 2000
    assert kv_capacity(1000, 5, 256, None) == 2 * 2024  # 1768 + 256 > 2000: grows once


@pytest.fixture(scope="module")
def nvfp4_ready_checkpoint(tmp_path_factory):
    """Tiny, with expert matrices divisible by 16 so dtype='nvfp4' applies; a 4,096 vocabulary so
    the vocabulary buffers weigh as they do in the real model."""
    text = tiny_text_config(vocab_size=4096, moe_intermediate_size=32)
    return write_random_checkpoint(tmp_path_factory.mktemp("plan") / "model", text, canvas_length=64)


def allocated_during(call) -> int:
    """Peak of the CPU bytes allocated (and not yet freed) while `call` runs, from the profiler's
    memory events in time order."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        call()
    events = sorted((e for e in prof.events() if e.self_cpu_memory_usage), key=lambda e: e.time_range.start)
    running = peak = 0
    for event in events:
        running += event.self_cpu_memory_usage
        peak = max(peak, running)
    return peak


@pytest.mark.parametrize("dtype", ["float32", "nvfp4"])
def test_plan_matches_the_bytes_a_tiny_model_allocates(nvfp4_ready_checkpoint, dtype):
    torch.manual_seed(0)
    config = DiffusionConfig(
        device="cpu", dtype=dtype, seed=0, num_diffusion_steps=2, reuse_prompt_cache=False
    )
    model = DiffusionGemmaModel.from_pretrained(nvfp4_ready_checkpoint, config=config)
    transformer = model.transformer
    weights = sum(p.numel() * p.element_size() for p in transformer.parameters())
    weights += sum(b.numel() * b.element_size() for b in transformer.buffers())
    for layer in transformer.layers:
        for triple in layer.experts.quantized or []:
            weights += sum(w.nbytes() for w in triple)
    prompt = list(range(4, 304))
    peak = allocated_during(lambda: model.generate_ids(prompt, max_tokens=64, confidence_threshold=1e-9))
    plan = plan_memory(
        ModelConfig.from_file(nvfp4_ready_checkpoint / "config.json"),
        dtype,
        Workload(prompt_tokens=len(prompt), new_tokens=64),
        device="cpu",
    )
    assert sum(plan.weights_bytes.values()) == weights
    step = plan.kv_cache_bytes + sum(plan.activation_bytes.values())
    assert step == pytest.approx(peak, rel=0.08)  # the KV cache and the step's peak, allocated here
    assert sum(plan.weights_bytes.values()) + step == pytest.approx(weights + peak, rel=0.05)


def test_plan_kv_matches_the_cache_the_engine_keeps(nvfp4_ready_checkpoint):
    config = DiffusionConfig(device="cpu", dtype="float32", seed=0, num_diffusion_steps=1)
    model = DiffusionGemmaModel.from_pretrained(nvfp4_ready_checkpoint, config=config)
    prompt = list(range(4, 504))
    model.generate_ids(prompt, max_tokens=128, confidence_threshold=1e-9)  # two canvases: one commit
    plan = plan_memory(
        ModelConfig.from_file(nvfp4_ready_checkpoint / "config.json"),
        "float32",
        Workload(prompt_tokens=len(prompt), new_tokens=128),
        device="cpu",
    )
    assert model.prefix_cache.cache.nbytes() == plan.kv_cache_bytes


def test_doctor_plans_a_folder_holding_only_config_json(tmp_path):
    REAL.save(tmp_path / "config.json")
    out = subprocess.run(
        [sys.executable, "-m", "engine.cli", "doctor", "--model", str(tmp_path), "--json", "--fused-sampler"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert out.returncode == 0, out.stderr
    plan = json.loads(out.stdout)["memory_plan"]
    assert plan["dtype"] == "nvfp4" and plan["fused_sampler"] is True
    assert plan["total_bytes"] == plan_memory(REAL, "nvfp4", fused_sampler=True).total_bytes
    assert set(plan["weights_bytes"]) >= {"experts", "attention", "embedding", "dense_mlp"}
    assert plan["fits"] is None or isinstance(plan["fits"], bool)


def test_doctor_says_what_is_missing(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "engine.cli", "doctor", "--model", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 1 and "config.json" in out.stderr
