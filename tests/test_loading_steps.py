"""Checkpoint loading step by step (engine/loading.py): plan, build on meta, read tensors, fix-ups.

`tests/test_loading.py` covers the whole load end to end; here each step is called on its own,
with the input that makes it fail.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from engine.config import ModelConfig
from engine.errors import CheckpointError, ConfigError
from engine.loading import (
    build_empty_model,
    checkpoint_tensors,
    expert_parameters,
    finish_loading,
    plan_load,
    read_weights,
)

CPU = torch.device("cpu")


def config_of(folder: Path) -> ModelConfig:
    return ModelConfig.from_file(folder / "config.json")


def tensors_of(folder: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(folder / "model.safetensors"), "pt") as handle:
        return {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118


def rewrite(folder: Path, tensors: dict[str, torch.Tensor]) -> None:
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})


@pytest.fixture
def checkpoint(tiny_checkpoint, tmp_path) -> Path:
    return Path(shutil.copytree(tiny_checkpoint, tmp_path / "copy"))


def test_the_plan_sizes_device_memory_and_leaves_cpu_experts_out(tiny_checkpoint):
    config = config_of(tiny_checkpoint)
    plan = plan_load(tiny_checkpoint, config, torch.float32, CPU, nvfp4_experts=False)
    assert plan.files == [tiny_checkpoint / "model.safetensors"]
    assert not plan.stored_nvfp4 and not plan.keep_quantized and plan.expert_device == CPU
    assert plan.device_bytes == config.parameter_count() * 4
    offloaded = plan_load(tiny_checkpoint, config, torch.float32, CPU, False, experts_on_cpu=True)
    assert offloaded.device_bytes == plan.device_bytes - expert_parameters(config) * 4


def test_the_plan_rejects_a_quantisation_it_cannot_read(checkpoint):
    (checkpoint / "hf_quant_config.json").write_text(json.dumps({"quantization": {"quant_algo": "FP8"}}))
    with pytest.raises(CheckpointError, match="quantised as FP8"):
        plan_load(checkpoint, config_of(checkpoint), torch.float32, CPU, nvfp4_experts=False)


def test_the_plan_rejects_nvfp4_for_experts_not_in_blocks_of_16(tiny_checkpoint):
    config = config_of(tiny_checkpoint)  # moe_intermediate_size 24
    assert config.text.moe_intermediate_size % 16
    with pytest.raises(ConfigError, match="blocks of 16"):
        plan_load(tiny_checkpoint, config, torch.bfloat16, CPU, nvfp4_experts=True)


def test_the_empty_model_has_no_meta_tensors_and_no_dense_storage_for_quantised_experts(tiny_checkpoint):
    config = config_of(tiny_checkpoint)
    plan = plan_load(tiny_checkpoint, config, torch.float32, CPU, nvfp4_experts=False)
    model = build_empty_model(plan)
    assert not any(p.is_meta for p in model.parameters())
    assert all(not p.requires_grad for p in model.parameters())
    experts = model.layers[0].experts
    assert experts.gate_up_proj.shape == (8, 48, 64)
    quantised = build_empty_model(replace(plan, keep_quantized=True))
    assert quantised.layers[0].experts.gate_up_proj.numel() == 0


def test_checkpoint_tensors_skip_the_vision_tower_and_report_a_bad_tensor(checkpoint):
    tensors = tensors_of(checkpoint)
    tensors["model.vision_tower.patch_embed.weight"] = torch.zeros(2, 2)
    rewrite(checkpoint, tensors)
    names = {name for _, _, name, _ in checkpoint_tensors([checkpoint / "model.safetensors"])}
    assert "embed_tokens.weight" in names and not any("vision" in n for n in names)
    truncated = checkpoint / "model.safetensors"
    truncated.write_bytes(truncated.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="corrupt or truncated|cannot be read"):
        list(checkpoint_tensors([truncated]))


def test_reading_weights_rejects_tensors_the_config_has_no_room_for(checkpoint):
    config = config_of(checkpoint)
    tensors = tensors_of(checkpoint)
    tensors["model.decoder.layers.0.extra.weight"] = torch.zeros(3)
    rewrite(checkpoint, tensors)
    plan = plan_load(checkpoint, config, torch.float32, CPU, nvfp4_experts=False)
    with pytest.raises(CheckpointError, match="layers.0.extra.weight, which a DiffusionGemma model"):
        read_weights(build_empty_model(plan), plan)


def test_reading_weights_fills_every_parameter_with_the_checkpoints_values(tiny_checkpoint):
    config = config_of(tiny_checkpoint)
    plan = plan_load(tiny_checkpoint, config, torch.float32, CPU, nvfp4_experts=False)
    model = build_empty_model(plan)
    read = read_weights(model, plan)
    assert read.loaded == {name for name, _ in model.named_parameters()} and not read.nvfp4_parts
    expected = tensors_of(tiny_checkpoint)["model.decoder.layers.2.router.proj.weight"]
    assert torch.equal(model.layers[2].router.proj.weight, expected)


def test_fix_ups_fill_missing_encoder_scalars_and_name_a_missing_tensor(checkpoint):
    config = config_of(checkpoint)
    tensors = tensors_of(checkpoint)
    for key in [k for k in tensors if k.startswith("model.encoder.")]:
        del tensors[key]  # a repack with one scalar per layer
    rewrite(checkpoint, tensors)
    plan = plan_load(checkpoint, config, torch.float32, CPU, nvfp4_experts=False)
    model = build_empty_model(plan)
    read = read_weights(model, plan)
    finish_loading(model, plan, read)
    for layer in model.layers:
        assert torch.equal(layer.encoder_layer_scalar, layer.layer_scalar)
    read.loaded.discard("layers.1.mlp.up_proj.weight")
    with pytest.raises(
        CheckpointError, match=r"lacks 1 tensor\(s\), e.g. model.decoder.layers.1.mlp.up_proj"
    ):
        finish_loading(model, plan, read)
