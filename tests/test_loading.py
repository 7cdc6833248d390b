"""Checkpoint loading: real layouts (sharded, NVFP4 ModelOpt), round trips, and every broken input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from engine import CheckpointError, DeviceError, DiffusionConfig, DiffusionGemmaModel, OutOfMemoryError
from engine.random_model import tiny_text_config, write_random_checkpoint
from kernels.nvfp4 import quantize_nvfp4


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), "pt") as handle:
        return {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118


def decoder_logits(model: DiffusionGemmaModel, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 512, (1, 12), generator=gen)
    canvas = torch.randint(0, 512, (1, 16), generator=gen)
    with torch.inference_mode():
        cache = model.transformer.new_cache()
        model.transformer.encode(ids, cache)
        return model.transformer.denoise(canvas, cache)


def copy_checkpoint(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def write_modelopt_nvfp4(source: Path, target: Path) -> dict[str, torch.Tensor]:
    """Re-save `source` the way NVIDIA's ModelOpt exports NVFP4 (diffusiongemma.md 6.1).

    Returns the dequantised stacked experts, the reference the loaded model must match.
    """
    copy_checkpoint(source, target)
    tensors = read_tensors(source / "model.safetensors")
    inter = json.loads((source / "config.json").read_text())["text_config"]["moe_intermediate_size"]
    reference: dict[str, torch.Tensor] = {}
    for key in [k for k in tensors if k.endswith("experts.gate_up_proj")]:
        prefix = key[: -len("gate_up_proj")]
        gate_up, down = tensors.pop(key), tensors.pop(prefix + "down_proj")
        dequantised_gate_up, dequantised_down = [], []
        for expert in range(gate_up.shape[0]):
            parts = {
                "gate_proj": gate_up[expert, :inter],
                "up_proj": gate_up[expert, inter:],
                "down_proj": down[expert],
            }
            restored = {}
            for proj, weight in parts.items():
                q = quantize_nvfp4(weight.to(torch.bfloat16))
                name = f"{prefix}{expert}.{proj}."
                tensors[name + "weight"] = q.packed
                tensors[name + "weight_scale"] = q.block_scale
                tensors[name + "weight_scale_2"] = q.global_scale.reshape(())
                tensors[name + "input_scale"] = torch.tensor(1.0)
                restored[proj] = q.dequantize(torch.float32)
            dequantised_gate_up.append(torch.cat([restored["gate_proj"], restored["up_proj"]]))
            dequantised_down.append(restored["down_proj"])
        reference[prefix + "gate_up_proj"] = torch.stack(dequantised_gate_up)
        reference[prefix + "down_proj"] = torch.stack(dequantised_down)
    save_file(tensors, str(target / "model.safetensors"))
    quant = {
        "producer": {"name": "modelopt", "version": "0.45.0"},
        "quantization": {
            "quant_algo": "NVFP4",
            "group_size": 16,
            "kv_cache_quant_algo": "FP8",
            "exclude_modules": ["lm_head", "*mlp*", "*router*", "*self_attn*", "*self_conditioning*"],
        },
    }
    (target / "hf_quant_config.json").write_text(json.dumps(quant))
    return reference


@pytest.fixture(scope="module")
def fp4_ready_checkpoint(tmp_path_factory) -> Path:
    """Expert dimensions divisible by 16, as NVFP4 needs."""
    return write_random_checkpoint(
        tmp_path_factory.mktemp("fp4") / "m", tiny_text_config(moe_intermediate_size=32), seed=3
    )


def test_modelopt_nvfp4_checkpoint_matches_its_dequantised_reference(fp4_ready_checkpoint, tmp_path):
    reference = write_modelopt_nvfp4(fp4_ready_checkpoint, tmp_path / "nvfp4")
    # The reference: the BF16 model with its experts replaced by the dequantised NVFP4 weights.
    dense_folder = copy_checkpoint(fp4_ready_checkpoint, tmp_path / "dense")
    tensors = read_tensors(dense_folder / "model.safetensors")
    tensors.update(reference)
    save_file(tensors, str(dense_folder / "model.safetensors"))
    expected = decoder_logits(
        DiffusionGemmaModel.from_pretrained(dense_folder, config=DiffusionConfig(dtype="float32"))
    )

    fp4 = DiffusionGemmaModel.from_pretrained(tmp_path / "nvfp4", config=DiffusionConfig(dtype="nvfp4"))
    experts = fp4.transformer.layers[2].experts
    assert experts.quantized is not None and experts.quantized[0][0].packed.dtype == torch.uint8
    assert torch.allclose(decoder_logits(fp4), expected, atol=1e-5)
    # Asked for float32, the same checkpoint is dequantised into dense experts.
    dense = DiffusionGemmaModel.from_pretrained(tmp_path / "nvfp4", config=DiffusionConfig(dtype="float32"))
    assert dense.transformer.layers[2].experts.quantized is None
    assert torch.allclose(decoder_logits(dense), expected, atol=1e-5)
    assert isinstance(fp4.generate("x = ", max_tokens=16, num_diffusion_steps=2), str)


def test_an_incomplete_nvfp4_checkpoint_names_what_is_missing(fp4_ready_checkpoint, tmp_path):
    write_modelopt_nvfp4(fp4_ready_checkpoint, tmp_path / "nvfp4")
    tensors = read_tensors(tmp_path / "nvfp4" / "model.safetensors")
    del tensors["model.decoder.layers.1.experts.5.up_proj.weight_scale"]
    save_file(tensors, str(tmp_path / "nvfp4" / "model.safetensors"))
    with pytest.raises(CheckpointError, match="layer 1 expert 5 up_proj"):
        DiffusionGemmaModel.from_pretrained(tmp_path / "nvfp4", config=DiffusionConfig(dtype="nvfp4"))


def test_sharded_checkpoint_with_index_loads_the_same_model(tiny_checkpoint, tmp_path):
    folder = copy_checkpoint(tiny_checkpoint, tmp_path / "sharded")
    tensors = read_tensors(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    keys = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    weight_map = {}
    for name, shard_keys in shards.items():
        save_file({k: tensors[k] for k in shard_keys}, str(folder / name))
        weight_map.update({k: name for k in shard_keys})
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map})
    )
    config = DiffusionConfig(dtype="float32")
    sharded = DiffusionGemmaModel.from_pretrained(folder, config=config)
    single = DiffusionGemmaModel.from_pretrained(tiny_checkpoint, config=config)
    assert torch.equal(decoder_logits(sharded), decoder_logits(single))
    (folder / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="lacks 1 weight shard"):
        DiffusionGemmaModel.from_pretrained(folder, config=config)


def test_transformers_reads_a_checkpoint_the_engine_wrote(tiny_checkpoint):
    transformers = pytest.importorskip("transformers", minversion="5.11")
    hf = transformers.DiffusionGemmaForBlockDiffusion.from_pretrained(
        tiny_checkpoint, dtype=torch.float32
    ).eval()
    ours = DiffusionGemmaModel.from_pretrained(tiny_checkpoint, config=DiffusionConfig(dtype="float32"))
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 512, (1, 12), generator=gen)
    canvas = torch.randint(0, 512, (1, 16), generator=gen)
    with torch.no_grad():
        expected = hf(input_ids=ids, decoder_input_ids=canvas).logits
    assert torch.allclose(decoder_logits(ours), expected, atol=1e-4)


# ---- what users get wrong ---------------------------------------------------------------------------


def test_missing_folder_and_bad_names(tmp_path):
    with pytest.raises(CheckpointError, match="not a hub id"):
        DiffusionGemmaModel.from_pretrained(str(tmp_path / "nowhere" / "deeper"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="has no config.json"):
        DiffusionGemmaModel.from_pretrained(tmp_path / "empty")
    (tmp_path / "file.bin").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="is a file"):
        DiffusionGemmaModel.from_pretrained(tmp_path / "file.bin")


def test_hub_id_offline_and_not_cached_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(CheckpointError, match="dgemma download google/diffusiongemma-26B-A4B-it"):
        DiffusionGemmaModel.from_pretrained("google/diffusiongemma-26B-A4B-it")


def test_unknown_architecture_is_named(tiny_checkpoint, tmp_path):
    folder = copy_checkpoint(tiny_checkpoint, tmp_path / "llama")
    config = json.loads((folder / "config.json").read_text())
    config.update(architectures=["LlamaForCausalLM"], model_type="llama")
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="unknown architecture.*LlamaForCausalLM"):
        DiffusionGemmaModel.from_pretrained(folder)


def test_corrupt_config_json(tiny_checkpoint, tmp_path):
    folder = copy_checkpoint(tiny_checkpoint, tmp_path / "badjson")
    (folder / "config.json").write_text("{ not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        DiffusionGemmaModel.from_pretrained(folder)


def test_truncated_weights_are_reported_as_corrupt(tiny_checkpoint, tmp_path):
    folder = copy_checkpoint(tiny_checkpoint, tmp_path / "truncated")
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        DiffusionGemmaModel.from_pretrained(folder)


def test_shape_mismatch_between_config_and_weights(tiny_checkpoint, tmp_path):
    folder = copy_checkpoint(tiny_checkpoint, tmp_path / "shapes")
    config = json.loads((folder / "config.json").read_text())
    config["text_config"]["intermediate_size"] = 128
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        CheckpointError, match=r"has shape \[(96, 64|64, 96)\] but config.json implies \[(128, 64|64, 128)\]"
    ):
        DiffusionGemmaModel.from_pretrained(folder)


def test_missing_tensor_and_missing_tokenizer(tiny_checkpoint, tmp_path):
    folder = copy_checkpoint(tiny_checkpoint, tmp_path / "missing")
    tensors = read_tensors(folder / "model.safetensors")
    del tensors["model.decoder.layers.3.router.scale"]
    save_file(tensors, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match="model.decoder.layers.3.router.scale"):
        DiffusionGemmaModel.from_pretrained(folder)
    (folder / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match="no tokenizer.json"):
        DiffusionGemmaModel.from_pretrained(folder)


def test_no_weights_at_all(tiny_checkpoint, tmp_path):
    folder = copy_checkpoint(tiny_checkpoint, tmp_path / "noweights")
    (folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"no \*\.safetensors"):
        DiffusionGemmaModel.from_pretrained(folder)


def test_not_enough_memory_to_load_is_said_before_allocating(tiny_checkpoint, monkeypatch):
    import engine.device

    monkeypatch.setattr(engine.device, "available_memory", lambda device: 1024)
    with pytest.raises(OutOfMemoryError, match=r"needs about .* GiB but cpu has 0.0 GiB free") as info:
        DiffusionGemmaModel.from_pretrained(tiny_checkpoint)
    assert "nvfp4" in str(info.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_asked_for_without_cuda(tiny_checkpoint):
    with pytest.raises(DeviceError, match="CUDA is not available"):
        DiffusionGemmaModel.from_pretrained(tiny_checkpoint, config=DiffusionConfig(device="cuda"))


def test_unknown_dtype_and_device_are_rejected():
    from engine import ConfigError

    with pytest.raises(ConfigError, match="unknown dtype"):
        DiffusionConfig(dtype="int3")
    with pytest.raises(ConfigError, match="unknown device"):
        DiffusionConfig(device="tpu")
