"""Configuration: the checkpoint's architecture (`config.json`) and the user's run options.

`ModelConfig` reads and writes the real DiffusionGemma `config.json` layout (diffusiongemma.md
section 1): a top-level `DiffusionGemmaConfig` with a nested `text_config`. Both spellings of the
full-attention geometry are understood: the released checkpoint's `global_head_dim` /
`num_global_key_value_heads` and the `per_layer_config` map that transformers >= 5.2x writes.

`DiffusionConfig` holds what a user chooses per load (device, dtype, memory options) and the
sampler defaults for every call (steps, temperatures...).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from engine.errors import CheckpointError, ConfigError

SUPPORTED_ARCHITECTURES = ("DiffusionGemmaForBlockDiffusion",)
SUPPORTED_MODEL_TYPES = ("diffusion_gemma",)
SLIDING = "sliding_attention"
FULL = "full_attention"


@dataclass
class TextConfig:
    """The `text_config` block: the shared transformer stack (diffusiongemma.md 1.2)."""

    vocab_size: int = 262_144
    hidden_size: int = 2816
    intermediate_size: int = 2112
    moe_intermediate_size: int = 704
    num_hidden_layers: int = 30
    layer_types: list[str] = field(default_factory=lambda: ([SLIDING] * 5 + [FULL]) * 5)
    sliding_window: int = 1024
    num_attention_heads: int = 16
    num_key_value_heads: int = 8
    head_dim: int = 256
    global_head_dim: int = 512
    num_global_key_value_heads: int = 2
    num_experts: int = 128
    top_k_experts: int = 8
    max_position_embeddings: int = 262_144
    rms_norm_eps: float = 1e-6
    final_logit_softcapping: float = 30.0
    hidden_activation: str = "gelu_pytorch_tanh"
    attention_bias: bool = False
    tie_word_embeddings: bool = True
    pad_token_id: int = 0
    bos_token_id: int = 2
    eos_token_id: list[int] = field(default_factory=lambda: [1])
    rope_parameters: dict[str, dict[str, Any]] = field(
        default_factory=lambda: {
            SLIDING: {"rope_type": "default", "rope_theta": 10_000.0},
            FULL: {"rope_type": "proportional", "partial_rotary_factor": 0.25, "rope_theta": 1_000_000.0},
        }
    )

    def is_sliding(self, layer: int) -> bool:
        return self.layer_types[layer] == SLIDING

    def layer_head_dim(self, layer: int) -> int:
        return self.head_dim if self.is_sliding(layer) else self.global_head_dim

    def layer_kv_heads(self, layer: int) -> int:
        return self.num_key_value_heads if self.is_sliding(layer) else self.num_global_key_value_heads

    def validate(self) -> None:
        problems = []
        if len(self.layer_types) != self.num_hidden_layers:
            problems.append(
                f"layer_types has {len(self.layer_types)} entries for {self.num_hidden_layers} layers"
            )
        unknown = sorted(set(self.layer_types) - {SLIDING, FULL})
        if unknown:
            problems.append(f"unknown layer types {unknown}")
        for layer in range(min(len(self.layer_types), self.num_hidden_layers)):
            if self.num_attention_heads % self.layer_kv_heads(layer):
                problems.append(
                    f"layer {layer}: {self.num_attention_heads} query heads do not divide "
                    f"into {self.layer_kv_heads(layer)} key/value heads"
                )
                break
        if not 0 < self.top_k_experts <= self.num_experts:
            problems.append(f"top_k_experts={self.top_k_experts} with num_experts={self.num_experts}")
        if self.hidden_activation not in ("gelu_pytorch_tanh", "gelu_tanh"):
            problems.append(
                f"hidden_activation {self.hidden_activation!r} (DiffusionGemma uses gelu_pytorch_tanh)"
            )
        for kind in set(self.layer_types):
            rope = self.rope_parameters.get(kind)
            if not rope or rope.get("rope_type") not in ("default", "proportional"):
                problems.append(f"rope_parameters[{kind!r}] = {rope!r} is not a supported RoPE")
        if problems:
            raise CheckpointError(
                "config.json describes a model this engine cannot build: " + "; ".join(problems),
                hint="check that the folder holds a DiffusionGemma checkpoint and that config.json is intact",
            )


@dataclass
class ModelConfig:
    """The whole `config.json`."""

    text: TextConfig = field(default_factory=TextConfig)
    canvas_length: int = 256
    eos_token_id: list[int] = field(default_factory=lambda: [1, 106])
    architectures: list[str] = field(default_factory=lambda: list(SUPPORTED_ARCHITECTURES))
    model_type: str = "diffusion_gemma"
    # Everything else in the file (vision config, token ids for images...) is kept for round trips.
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config.json") -> ModelConfig:
        architectures = data.get("architectures") or []
        model_type = data.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES and not set(architectures) & set(SUPPORTED_ARCHITECTURES):
            raise CheckpointError(
                f"{source}: unknown architecture {architectures or model_type!r}",
                hint="dgemma runs DiffusionGemma checkpoints (architecture DiffusionGemmaForBlockDiffusion, "
                "model_type diffusion_gemma), e.g. google/diffusiongemma-26B-A4B-it",
            )
        text_data = data.get("text_config")
        if not isinstance(text_data, dict):
            raise CheckpointError(
                f"{source} has no text_config block", hint="the file is not a DiffusionGemma config"
            )
        text = _text_config_from_dict(text_data, source)
        eos = _as_list(data.get("eos_token_id", text.eos_token_id))
        known = {"text_config", "canvas_length", "eos_token_id", "architectures", "model_type"}
        config = cls(
            text=text,
            canvas_length=int(data.get("canvas_length") or 256),
            eos_token_id=eos,
            architectures=list(architectures) or list(SUPPORTED_ARCHITECTURES),
            model_type=model_type or "diffusion_gemma",
            extra={k: v for k, v in data.items() if k not in known},
        )
        return config

    @classmethod
    def from_file(cls, path: str | Path) -> ModelConfig:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise CheckpointError(
                f"{path} is missing", hint="a checkpoint folder needs its config.json"
            ) from None
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise CheckpointError(
                f"{path} is not valid JSON ({error})",
                hint="the file is corrupt: download the checkpoint again",
            ) from None
        if not isinstance(data, dict):
            raise CheckpointError(f"{path} does not hold a JSON object", hint="download the checkpoint again")
        return cls.from_dict(data, source=str(path))

    def to_dict(self) -> dict[str, Any]:
        """The real config.json layout (what transformers' DiffusionGemmaConfig reads)."""
        text = asdict(self.text)
        text["model_type"] = "diffusion_gemma_text"
        text["use_bidirectional_attention"] = "vision"
        # Written in both spellings so every reader (the released files, transformers >= 5.2x) agrees.
        text["per_layer_config"] = {
            str(i): {
                "head_dim": self.text.global_head_dim,
                "num_key_value_heads": self.text.num_global_key_value_heads,
            }
            for i, kind in enumerate(self.text.layer_types)
            if kind == FULL
        }
        data = {
            "architectures": list(self.architectures),
            "model_type": self.model_type,
            "canvas_length": self.canvas_length,
            "eos_token_id": list(self.eos_token_id),
            "tie_word_embeddings": True,
            **{k: v for k, v in self.extra.items() if k != "tie_word_embeddings"},
            "text_config": text,
        }
        return data

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")

    def parameter_count(self) -> int:
        t = self.text
        total = t.vocab_size * t.hidden_size + t.hidden_size  # embedding (tied) + final norm
        total += 3 * t.hidden_size * t.intermediate_size + t.hidden_size  # self-conditioning
        for layer in range(t.num_hidden_layers):
            hd, kv = t.layer_head_dim(layer), t.layer_kv_heads(layer)
            q = t.num_attention_heads * hd
            attn = (
                t.hidden_size * q * 2 + t.hidden_size * kv * hd * (2 if t.is_sliding(layer) else 1) + 2 * hd
            )
            mlp = 3 * t.hidden_size * t.intermediate_size
            moe = t.num_experts * 3 * t.hidden_size * t.moe_intermediate_size
            router = t.num_experts * t.hidden_size + t.hidden_size + t.num_experts
            norms = 7 * t.hidden_size + 2
            total += attn + mlp + moe + router + norms
        return total


def _as_list(value: Any) -> list[int]:
    if value is None:
        return []
    if isinstance(value, int):
        return [value]
    return [int(v) for v in value]


def _text_config_from_dict(data: dict[str, Any], source: str) -> TextConfig:
    defaults = TextConfig()
    names = {f.name for f in fields(TextConfig)}
    values = {k: v for k, v in data.items() if k in names}
    config = TextConfig(**{**asdict(defaults), **values})
    config.eos_token_id = _as_list(data.get("eos_token_id", defaults.eos_token_id))
    if "layer_types" not in data:
        # transformers' default pattern: five sliding layers, then one full layer.
        config.layer_types = [FULL if (i + 1) % 6 == 0 else SLIDING for i in range(config.num_hidden_layers)]
        config.layer_types[-1] = FULL
    if "num_global_key_value_heads" not in data:
        config.num_global_key_value_heads = config.num_key_value_heads
    per_layer = data.get("per_layer_config") or {}
    for index, override in per_layer.items():
        layer = int(index)
        if layer < len(config.layer_types) and config.layer_types[layer] == FULL:
            config.global_head_dim = int(override.get("head_dim", config.global_head_dim))
            config.num_global_key_value_heads = int(
                override.get("num_key_value_heads", config.num_global_key_value_heads)
            )
    if data.get("final_logit_softcapping") is None:
        config.final_logit_softcapping = 30.0
    try:
        config.validate()
    except CheckpointError as error:
        raise CheckpointError(f"{source}: {error.message}", hint=error.hint) from None
    return config


DTYPES = ("auto", "float32", "bfloat16", "float16", "nvfp4")
DEVICES = ("auto", "cpu", "cuda", "mps")


@dataclass
class DiffusionConfig:
    """What the user chooses: where and how to run, and the sampler defaults (diffusiongemma.md 4.1).

    `num_diffusion_steps` is the step budget per canvas (`max_denoising_steps`); the temperature
    schedule runs from `t_max` to `t_min` over that budget. Sampler fields left as None take the
    checkpoint's `generation_config.json`, then the published defaults.
    """

    num_diffusion_steps: int | None = None
    device: str = "auto"
    dtype: str = "auto"
    attention_slicing: bool | int = False
    cpu_offload_unused_experts: bool = False
    seed: int | None = None
    # Draw random numbers from the global torch generator in transformers' order, so that
    # `torch.manual_seed(seed)` + transformers' generate gives the same tokens (diffusiongemma.md 4.4).
    reference_rng: bool = False
    entropy_bound: float | None = None
    t_min: float | None = None
    t_max: float | None = None
    stability_threshold: int | None = None
    confidence_threshold: float | None = None
    # Committed tokens a sliding layer shows the canvas (diffusiongemma.md 3.8); None = sliding_window - 1.
    sliding_window_retention: int | None = None
    # Keep the previous prompt's KV cache and reuse its longest common token prefix.
    reuse_prompt_cache: bool = True
    # Download from the hub when the model is not a local folder (respects HF_HUB_OFFLINE).
    local_files_only: bool = False
    revision: str | None = None

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ConfigError(f"unknown dtype {self.dtype!r}", hint=f"choose one of {', '.join(DTYPES)}")
        base_device = self.device.split(":")[0]
        if base_device not in DEVICES:
            raise ConfigError(f"unknown device {self.device!r}", hint=f"choose one of {', '.join(DEVICES)}")
        if self.num_diffusion_steps is not None and self.num_diffusion_steps < 1:
            raise ConfigError("num_diffusion_steps must be at least 1", hint="the published default is 48")
        slicing = self.attention_slicing
        if not isinstance(slicing, bool) and (not isinstance(slicing, int) or slicing < 1):
            raise ConfigError(
                "attention_slicing must be True, False or a positive number of queries per slice"
            )
        if self.sliding_window_retention is not None and self.sliding_window_retention < 0:
            raise ConfigError("sliding_window_retention must be >= 0")
