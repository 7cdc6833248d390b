"""Finding, reading and writing checkpoints (diffusiongemma.md sections 2 and 6).

A checkpoint is a Hugging Face folder: `config.json`, `generation_config.json`, `tokenizer.json`,
optionally `chat_template.jinja`, and safetensors weights, sharded with an index or not. It can
be a local folder, a hub id (downloaded into the hub cache, `HF_HUB_OFFLINE` respected) or, with
no argument, the embedded model shipped in this package.

Weights are read tensor by tensor into a model built on the meta device, so peak memory is the
model itself. Vision-tower tensors are skipped. NVIDIA ModelOpt NVFP4 checkpoints (per-expert U8
E2M1 pairs, FP8 E4M3 block scales, FP32 global scales) load into `kernels.nvfp4.NVFP4Weight`s;
a BF16 checkpoint asked for as `nvfp4` has its experts quantised while loading.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from engine.config import ModelConfig
from engine.device import check_memory
from engine.errors import CheckpointError, ConfigError
from engine.model import DiffusionGemmaTransformer, checkpoint_name, local_name
from engine.sampler import SamplerConfig
from kernels.nvfp4 import NVFP4Weight, quantize_nvfp4

log = logging.getLogger(__name__)

EMBEDDED_MODEL_DIR = Path(__file__).resolve().parent / "embedded"
# What the engine reads from a hub repository (`dgemma download` fetches only these).
CHECKPOINT_FILES = [
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "hf_quant_config.json",
    "model.safetensors.index.json",
    "*.safetensors",
]
_EXPERT_KEY = re.compile(r"^layers\.(\d+)\.experts\.(\d+)\.(gate_proj|up_proj|down_proj)\.(\w+)$")


# ---- finding a checkpoint ------------------------------------------------------------------------


def looks_like_hub_id(name: str) -> bool:
    return bool(re.fullmatch(r"[\w.-]+/[\w.-]+", name))


def resolve_model_path(
    model: str | Path | None, revision: str | None = None, local_files_only: bool = False
) -> Path:
    """A local folder for `model`: itself, the embedded model (None), or a hub snapshot."""
    if model is None or str(model) in ("", "embedded"):
        if not (EMBEDDED_MODEL_DIR / "config.json").is_file():
            raise CheckpointError(
                f"the embedded model is not installed in {EMBEDDED_MODEL_DIR}",
                hint="reinstall dgemma-lsp, or pass a model folder or hub id",
            )
        return EMBEDDED_MODEL_DIR
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise CheckpointError(
                f"{path} is a file, not a checkpoint folder", hint="pass the folder that holds config.json"
            )
        if not (path / "config.json").is_file():
            raise CheckpointError(
                f"{path} has no config.json", hint="pass the folder of a DiffusionGemma checkpoint"
            )
        return path
    if not looks_like_hub_id(str(model)):
        raise CheckpointError(
            f"no folder {model!r} and it is not a hub id (owner/name)",
            hint="pass a checkpoint folder or a hub id such as google/diffusiongemma-26B-A4B-it",
        )
    return download(str(model), revision=revision, local_files_only=local_files_only)


def download(repo_id: str, revision: str | None = None, local_files_only: bool = False) -> Path:
    """Fetch the files the engine needs into the hub cache (with progress bars) and return the folder."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        folder = snapshot_download(
            repo_id, revision=revision, allow_patterns=CHECKPOINT_FILES, local_files_only=local_files_only
        )
    except GatedRepoError:
        raise CheckpointError(
            f"{repo_id} is gated on the hub",
            hint="accept its licence on huggingface.co, then `huggingface-cli login` or set HF_TOKEN",
        ) from None
    except RepositoryNotFoundError:
        raise CheckpointError(
            f"{repo_id} does not exist on the hub (or is private)", hint="check the spelling"
        ) from None
    except RevisionNotFoundError:
        raise CheckpointError(
            f"{repo_id} has no revision {revision!r}", hint="omit revision for the main branch"
        ) from None
    except LocalEntryNotFoundError:
        raise CheckpointError(
            f"{repo_id} is not in the local hub cache and the hub cannot be reached "
            "(offline, HF_HUB_OFFLINE=1, or no network)",
            hint=f"run `dgemma download {repo_id}` where there is network access, or pass a local folder",
        ) from None
    except (HfHubHTTPError, OSError) as error:
        raise CheckpointError(
            f"downloading {repo_id} failed: {error}",
            hint=f"check the network, then run `dgemma download {repo_id}` again (finished files are kept)",
        ) from None
    return Path(folder)


# ---- generation_config.json ----------------------------------------------------------------------


def read_generation_config(folder: Path) -> tuple[dict[str, Any], list[int] | None]:
    """Sampler defaults and EOS ids from `generation_config.json` (diffusiongemma.md 1.4)."""
    path = folder / "generation_config.json"
    if not path.is_file():
        return {}, None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(
            f"{path} is not valid JSON ({error})", hint="download the checkpoint again"
        ) from None
    overrides: dict[str, Any] = {}
    for knob in ("max_denoising_steps", "t_min", "t_max", "stability_threshold", "confidence_threshold"):
        if data.get(knob) is not None:
            overrides[knob] = data[knob]
    sampler = data.get("sampler_config") or {}
    if isinstance(sampler, dict) and sampler.get("entropy_bound") is not None:
        overrides["entropy_bound"] = float(sampler["entropy_bound"])
    eos = data.get("eos_token_id")
    if isinstance(eos, int):
        eos = [eos]
    return overrides, eos


def write_generation_config(folder: Path, sampler: SamplerConfig, eos_ids: list[int], pad_id: int) -> None:
    data = {
        "max_new_tokens": None,
        "max_denoising_steps": sampler.max_denoising_steps,
        "sampler_config": {"_cls_name": "EntropyBoundSamplerConfig", "entropy_bound": sampler.entropy_bound},
        "t_min": sampler.t_min,
        "t_max": sampler.t_max,
        "stability_threshold": sampler.stability_threshold,
        "confidence_threshold": sampler.confidence_threshold,
        "eos_token_id": list(eos_ids),
        "pad_token_id": pad_id,
    }
    (folder / "generation_config.json").write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


# ---- weights -------------------------------------------------------------------------------------


def weight_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (json.JSONDecodeError, KeyError, UnicodeDecodeError) as error:
            raise CheckpointError(
                f"{index} is unreadable ({error})", hint="download the checkpoint again"
            ) from None
        files = sorted({folder / name for name in weight_map.values()})
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise CheckpointError(
                f"{folder} lacks {len(missing)} weight shard(s) listed in its index: {', '.join(missing[:3])}",
                hint="the download is incomplete: run `dgemma download` again",
            )
        return files
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise CheckpointError(
            f"{folder} has no *.safetensors weights",
            hint="the engine reads safetensors checkpoints (PyTorch .bin files are not supported)",
        )
    return files


def quantization_algorithm(folder: Path, config: ModelConfig) -> str | None:
    path = folder / "hf_quant_config.json"
    if path.is_file():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise CheckpointError(f"{path} is not valid JSON ({error})") from None
        algo = (data.get("quantization") or data).get("quant_algo")
        return str(algo).upper() if algo else None
    quant = config.extra.get("quantization_config") or {}
    if quant.get("quant_method") == "modelopt" and quant.get("quant_algo"):
        return str(quant["quant_algo"]).upper()
    return None


def _open(path: Path):
    try:
        return safe_open(str(path), framework="pt", device="cpu")
    except Exception as error:  # SafetensorError and OSError both mean an unusable file
        raise CheckpointError(
            f"{path} is corrupt or truncated ({error})",
            hint="delete it and download the checkpoint again (`dgemma download MODEL`)",
        ) from None


def estimated_bytes(config: ModelConfig, dtype: torch.dtype, nvfp4_experts: bool) -> int:
    other = config.parameter_count() - expert_parameters(config)
    element = torch.tensor([], dtype=dtype).element_size()
    experts = expert_parameters(config) * (NVFP4_BYTES_PER_WEIGHT if nvfp4_experts else element)
    return int(other * element + experts)


def expert_parameters(config: ModelConfig) -> int:
    t = config.text
    return t.num_hidden_layers * t.num_experts * 3 * t.hidden_size * t.moe_intermediate_size


# NVFP4: 4 bits per weight plus one FP8 scale per block of 16 weights.
NVFP4_BYTES_PER_WEIGHT = 0.5 + 1 / 16


@dataclass(frozen=True)
class LoadPlan:
    """What loading will do, decided before any tensor is read (2.4, 6.1)."""

    folder: Path
    config: ModelConfig
    files: list[Path]
    dtype: torch.dtype
    device: torch.device
    stored_nvfp4: bool  # the checkpoint holds ModelOpt NVFP4 experts
    keep_quantized: bool  # experts stay NVFP4 in memory (dequantised per call)
    experts_on_cpu: bool  # experts live in CPU memory; each call copies the routed ones over
    expert_device: torch.device
    device_bytes: int  # what the device must hold


def plan_load(
    folder: Path,
    config: ModelConfig,
    dtype: torch.dtype,
    device: torch.device,
    nvfp4_experts: bool,
    experts_on_cpu: bool = False,
) -> LoadPlan:
    """Find the weights, validate the checkpoint's quantisation against the request, size the memory."""
    files = weight_files(folder)
    checkpoint_quant = quantization_algorithm(folder, config)
    if checkpoint_quant not in (None, "NVFP4"):
        raise CheckpointError(
            f"{folder} is quantised as {checkpoint_quant}, which this engine does not read",
            hint="use the BF16 checkpoint or NVIDIA's NVFP4 one (nvidia/diffusiongemma-26B-A4B-it-NVFP4)",
        )
    stored_nvfp4 = checkpoint_quant == "NVFP4"
    text = config.text
    if nvfp4_experts and not stored_nvfp4 and (text.hidden_size % 16 or text.moe_intermediate_size % 16):
        raise ConfigError(
            f"dtype='nvfp4' quantises experts in blocks of 16, but this model's expert matrices are "
            f"{text.moe_intermediate_size} x {text.hidden_size}",
            hint="use dtype='bfloat16' or 'float32' for this model",
        )
    keep_quantized = nvfp4_experts or (stored_nvfp4 and experts_on_cpu)
    device_bytes = estimated_bytes(config, dtype, keep_quantized)
    if experts_on_cpu:  # the experts live in CPU memory instead
        per_weight = NVFP4_BYTES_PER_WEIGHT if keep_quantized else dtype.itemsize
        device_bytes -= int(expert_parameters(config) * per_weight)
    return LoadPlan(
        folder=folder,
        config=config,
        files=files,
        dtype=dtype,
        device=device,
        stored_nvfp4=stored_nvfp4,
        keep_quantized=keep_quantized,
        experts_on_cpu=experts_on_cpu,
        expert_device=torch.device("cpu") if experts_on_cpu else device,
        device_bytes=device_bytes,
    )


def build_empty_model(plan: LoadPlan) -> DiffusionGemmaTransformer:
    """The model built on the meta device, then given uninitialised storage (weights come next).

    Experts that stay quantised get no dense storage at all; experts kept on the CPU get theirs there.
    """
    dtype, device = plan.dtype, plan.device
    with torch.device("meta"):
        model = DiffusionGemmaTransformer(plan.config.text).to(dtype)
    expert_shapes = [
        (layer.experts.gate_up_proj.shape, layer.experts.down_proj.shape) for layer in model.layers
    ]
    if plan.keep_quantized or plan.experts_on_cpu:
        for layer in model.layers:
            layer.experts.gate_up_proj = nn.Parameter(torch.empty(0, dtype=dtype), requires_grad=False)
            layer.experts.down_proj = nn.Parameter(torch.empty(0, dtype=dtype), requires_grad=False)
    model = model.to_empty(device=device)
    if plan.experts_on_cpu and not plan.keep_quantized:
        for layer, (gate_up_shape, down_shape) in zip(model.layers, expert_shapes, strict=True):
            layer.experts.gate_up_proj = nn.Parameter(
                torch.empty(gate_up_shape, dtype=dtype, device=plan.expert_device), requires_grad=False
            )
            layer.experts.down_proj = nn.Parameter(
                torch.empty(down_shape, dtype=dtype, device=plan.expert_device), requires_grad=False
            )
    model.reset_buffers()
    model.requires_grad_(False)
    return model


def checkpoint_tensors(files: list[Path]) -> Iterator[tuple[Path, str, str, torch.Tensor]]:
    """(file, checkpoint key, our name, tensor) for every text-model tensor of the checkpoint."""
    for path in files:
        with _open(path) as handle:
            for key in handle.keys():  # noqa: SIM118 (safe_open handles are not dicts)
                name = local_name(key)
                if name is None:
                    continue  # vision tower, multimodal projector
                try:
                    tensor = handle.get_tensor(key)
                except Exception as error:
                    raise CheckpointError(
                        f"{path.name}: tensor {key} cannot be read ({error})",
                        hint="the file is corrupt or truncated: download the checkpoint again",
                    ) from None
                yield path, key, name, tensor


@dataclass
class ReadWeights:
    """What `read_weights` filled in, and the per-expert NVFP4 parts still to be installed."""

    loaded: set[str] = field(default_factory=set)
    nvfp4_parts: dict[tuple[int, int, str], dict[str, torch.Tensor]] = field(default_factory=dict)


def read_weights(model: DiffusionGemmaTransformer, plan: LoadPlan) -> ReadWeights:
    """Copy every checkpoint tensor into its parameter (checking names and shapes), quantising
    stacked experts where the plan keeps them NVFP4 and collecting ModelOpt's per-expert parts."""
    params = dict(model.named_parameters())
    read = ReadWeights()
    for path, key, name, tensor in checkpoint_tensors(plan.files):
        match = _EXPERT_KEY.match(name)
        if match:
            layer, expert, proj, part = int(match[1]), int(match[2]), match[3], match[4]
            read.nvfp4_parts.setdefault((layer, expert, proj), {})[part] = tensor
            continue
        if name not in params:
            raise CheckpointError(
                f"{path.name} has tensor {key}, which a DiffusionGemma model with this config.json lacks",
                hint="config.json and the weights disagree: they come from different checkpoints",
            )
        if plan.keep_quantized and ".experts." in name:
            _quantize_stacked(model, name, tensor, plan.dtype, plan.expert_device)
        else:
            param = params[name]
            if tuple(tensor.shape) != tuple(param.shape):
                raise CheckpointError(
                    f"tensor {key} has shape {list(tensor.shape)} but config.json implies {list(param.shape)}",
                    hint="config.json and the weights disagree: they come from different checkpoints",
                )
            param.data.copy_(tensor.to(param.dtype))
        read.loaded.add(name)
    return read


def finish_loading(model: DiffusionGemmaTransformer, plan: LoadPlan, read: ReadWeights) -> None:
    """The fix-ups after reading: NVFP4 experts installed, encoder scalars filled in where a repack
    lacks them, and every expected tensor accounted for."""
    if read.nvfp4_parts:
        _install_nvfp4_experts(
            model, read.nvfp4_parts, plan.dtype, plan.expert_device, plan.keep_quantized, read.loaded
        )
    if plan.keep_quantized:
        for layer_index, layer in enumerate(model.layers):
            if layer.experts.quantized is None:
                raise CheckpointError(
                    f"layer {layer_index} has no expert weights", hint="the checkpoint is incomplete"
                )
    params = {name for name, _ in model.named_parameters()}
    expected = params - ({n for n in params if ".experts." in n} if plan.keep_quantized else set())
    encoder_scalars = {n for n in expected if n.endswith("encoder_layer_scalar")}
    if encoder_scalars and not (encoder_scalars & read.loaded):
        # Some repacks store one scalar per layer; the released checkpoint's two copies are equal (2.4.2).
        log.warning("checkpoint has no encoder layer scalars; using the decoder's")
        for layer in model.layers:
            layer.encoder_layer_scalar.data.copy_(layer.layer_scalar.data)
        read.loaded |= encoder_scalars
    missing = sorted(expected - read.loaded)
    if missing:
        raise CheckpointError(
            f"{plan.folder} lacks {len(missing)} tensor(s), e.g. {', '.join(checkpoint_name(n) for n in missing[:3])}",
            hint="the checkpoint is incomplete or is not a DiffusionGemma text model",
        )


def load_transformer(plan: LoadPlan) -> DiffusionGemmaTransformer:
    """Build the model and fill it from the folder's safetensors (2.4 loader rules), in steps:
    the plan (found, validated, sized: `plan_load`), the memory check, the model on the meta device,
    the tensors read, the fix-ups."""
    check_memory(plan.device_bytes, plan.device, f"loading {plan.folder.name}")
    model = build_empty_model(plan)
    read = read_weights(model, plan)
    finish_loading(model, plan, read)
    return model


def _quantize_stacked(
    model: DiffusionGemmaTransformer,
    name: str,
    tensor: torch.Tensor,
    dtype: torch.dtype,
    device: torch.device,
) -> None:
    """BF16 stacked experts -> NVFP4 per expert while loading (dtype='nvfp4' on a BF16 checkpoint)."""
    layer = model.layers[int(name.split(".")[1])]
    experts = layer.experts
    if experts.quantized is None:
        experts.quantized = [[None, None, None] for _ in range(experts.num_experts)]  # type: ignore[misc]
    inter = model.config.moe_intermediate_size
    for expert in range(tensor.shape[0]):
        weight = tensor[expert]
        if name.endswith("gate_up_proj"):
            experts.quantized[expert][0] = quantize_nvfp4(weight[:inter]).to(device)  # type: ignore[index]
            experts.quantized[expert][1] = quantize_nvfp4(weight[inter:]).to(device)  # type: ignore[index]
        else:
            experts.quantized[expert][2] = quantize_nvfp4(weight).to(device)  # type: ignore[index]
    if all(all(part is not None for part in e) for e in experts.quantized):  # type: ignore[union-attr]
        experts.quantized = [tuple(e) for e in experts.quantized]  # type: ignore[misc]


def _install_nvfp4_experts(
    model: DiffusionGemmaTransformer,
    parts: dict[tuple[int, int, str], dict[str, torch.Tensor]],
    dtype: torch.dtype,
    device: torch.device,
    keep_quantized: bool,
    loaded: set[str],
) -> None:
    """Per-expert ModelOpt tensors -> NVFP4Weight triples (or dense stacked experts)."""
    config = model.config
    for layer_index, layer in enumerate(model.layers):
        triples = []
        for expert in range(config.num_experts):
            weights = []
            for proj in ("gate_proj", "up_proj", "down_proj"):
                part = parts.get((layer_index, expert, proj))
                if not part or not {"weight", "weight_scale", "weight_scale_2"} <= set(part):
                    raise CheckpointError(
                        f"layer {layer_index} expert {expert} {proj} is missing NVFP4 tensors",
                        hint="the NVFP4 checkpoint is incomplete: download it again",
                    )
                if part["weight"].dtype != torch.uint8:
                    raise CheckpointError(
                        f"layer {layer_index} expert {expert} {proj}.weight is {part['weight'].dtype}, not packed uint8",
                        hint="per-expert tensors are read as ModelOpt NVFP4 only",
                    )
                weights.append(
                    NVFP4Weight(
                        part["weight"], part["weight_scale"], part["weight_scale_2"].float().reshape(())
                    )
                )
            gate, up, down = weights
            expected = [(config.moe_intermediate_size, config.hidden_size)] * 2 + [
                (config.hidden_size, config.moe_intermediate_size)
            ]
            if [w.shape for w in weights] != expected:
                raise CheckpointError(
                    f"layer {layer_index} expert {expert} has shapes {[w.shape for w in weights]}, expected {expected}",
                    hint="config.json and the weights disagree",
                )
            triples.append((gate.to(device), up.to(device), down.to(device)))
        if keep_quantized:
            layer.experts.quantized = triples
        else:
            gate_up = torch.stack(
                [torch.cat([g.dequantize(dtype), u.dequantize(dtype)]) for g, u, _ in triples]
            )
            down = torch.stack([d.dequantize(dtype) for _, _, d in triples])
            layer.experts.gate_up_proj.data.copy_(gate_up)
            layer.experts.down_proj.data.copy_(down)
        loaded.update(
            {f"layers.{layer_index}.experts.gate_up_proj", f"layers.{layer_index}.experts.down_proj"}
        )


# ---- writing -------------------------------------------------------------------------------------


def save_checkpoint(
    model: DiffusionGemmaTransformer,
    config: ModelConfig,
    folder: str | Path,
    sampler: SamplerConfig | None = None,
    tokenizer_folder: str | Path | None = None,
) -> Path:
    """Write the real layout (2.1): config.json, model.safetensors, generation_config.json (+ tokenizer)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config.save(folder / "config.json")
    tensors = {
        checkpoint_name(name): param.detach().to("cpu").contiguous()
        for name, param in model.named_parameters()
        if param.numel()
    }
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    write_generation_config(folder, sampler or SamplerConfig(), config.eos_token_id, config.text.pad_token_id)
    if tokenizer_folder is not None:
        for name in (
            "tokenizer.json",
            "tokenizer_config.json",
            "chat_template.jinja",
            "special_tokens_map.json",
        ):
            source = Path(tokenizer_folder) / name
            if source.is_file() and source.resolve() != (folder / name).resolve():
                (folder / name).write_bytes(source.read_bytes())
    return folder
