"""How many bytes a model needs on its device, from `config.json` alone (issue 11 deliverable 4).

The model is built on the meta device (no memory), and three parts are added up:

- **weights by kind** (embedding, attention, dense MLP, router, experts, self-conditioning, norms
  and scalars), experts as NVFP4 (uint8 codes, e4m3 block-16 scales, fp32 global) when the dtype
  is `nvfp4`, or on the host with `cpu_offload_unused_experts`;
- **the KV cache** as `engine.cache.KVCache` allocates it: each layer's buffer is grown to what
  is needed plus as much again (at least 256 entries), never shrunk, sliding layers trimmed in
  length but not in capacity; full-attention layers store V (the normed K) as a second tensor;
- **activations of one denoising step** of a canvas batch: what the step keeps alive at its peak,
  vocabulary-sized buffers first. With the torch sampler (the engine's path today) that is the
  logits, processed logits and probabilities of this step and of the last, 20 bytes per
  batch x canvas x vocabulary element; with the fused denoiser-statistics kernel
  (`kernels.denoiser_statistics`, probabilities written over the bf16 logits and fed to
  self-conditioning as they are) it is 2 x 2 bytes. Then attention scores (bounded by
  `attention_slicing`), the routed experts' intermediate buffers and the dequantised expert
  weights of the per-expert path.

CUDA's own context (a few hundred MiB outside torch's allocator) is not counted.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch

from engine.config import SLIDING, ModelConfig, TextConfig

# The language server's default prompt budget (dgemma_lsp.settings: context_budget): what the
# HTTP server receives from an editor by default. The server itself caps nothing below the model's
# 262,144 positions, so this is the context the default setup actually caches.
DEFAULT_PROMPT_TOKENS = 1024
ATTENTION_SLICE = 128  # queries per slice for attention_slicing=True (engine.api)
GiB = 2**30


@dataclass(frozen=True)
class Workload:
    """What is cached and denoised: one prompt, then canvases until `new_tokens` are generated."""

    prompt_tokens: int = DEFAULT_PROMPT_TOKENS
    new_tokens: int | None = None  # None: one canvas
    canvas_length: int | None = None  # None: the checkpoint's
    batch: int = 1


@dataclass
class MemoryPlan:
    dtype: str
    workload: dict
    attention_slicing: bool
    cpu_offload_unused_experts: bool
    fused_sampler: bool
    weights_bytes: dict[str, int]
    host_weights_bytes: int  # experts kept on the host by cpu_offload_unused_experts
    kv_cache_bytes: int
    kv_capacity_tokens: dict[str, int]
    activation_bytes: dict[str, int]
    total_bytes: int = 0
    gpu_free_bytes: int | None = None
    fits: bool | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _weight_kind(name: str) -> str:
    if name.startswith("embed_tokens"):
        return "embedding"
    if name.startswith("self_conditioning"):
        return "self_conditioning"
    if ".self_attn." in name and not name.endswith("norm.weight"):
        return "attention"
    if ".mlp." in name:
        return "dense_mlp"
    if ".router." in name:
        return "router"
    if ".experts." in name:
        return "experts"
    return "norms_and_scalars"


def weights_by_kind(text: TextConfig, dtype: torch.dtype, nvfp4_experts: bool) -> dict[str, int]:
    """Bytes per kind of the model built on the meta device (RoPE tables under `rope_tables`)."""
    from engine.model import DiffusionGemmaTransformer

    with torch.device("meta"):
        model = DiffusionGemmaTransformer(text)
    kinds: dict[str, int] = {}
    for name, param in model.named_parameters():
        kind = _weight_kind(name)
        if kind == "experts" and nvfp4_experts:
            continue
        kinds[kind] = kinds.get(kind, 0) + param.numel() * dtype.itemsize
    if nvfp4_experts:
        d, inter = text.hidden_size, text.moe_intermediate_size
        # Per expert: gate and up [I, d] and down [d, I], each codes + block scales + global.
        per_matrix = inter * d // 2 + inter * d // 16 + 4
        kinds["experts"] = text.num_hidden_layers * text.num_experts * 3 * per_matrix
    kinds["rope_tables"] = sum(b.numel() * b.element_size() for b in model.buffers())
    return kinds


def kv_capacity(prompt: int, canvases: int, canvas: int, sliding_keep: int | None) -> int:
    """Entries a layer's buffer holds after the prompt and `canvases` canvases (KVCache's rules)."""
    capacity = length = 0

    def need(tokens: int) -> None:
        nonlocal capacity
        if tokens > capacity:
            capacity = tokens + max(tokens, 256)

    def trim() -> None:
        nonlocal length
        if sliding_keep is not None:
            slack = max(sliding_keep, 512)
            if length > sliding_keep + 2 * slack:
                length = sliding_keep + slack

    need(prompt)
    length = prompt
    trim()
    for index in range(canvases):
        need(length + canvas)  # the decoder's scratch room for the canvas keys
        if index + 1 < canvases:  # commit: only when another canvas follows (engine.generation)
            length += canvas
            trim()
    return capacity


def plan_memory(
    config: ModelConfig,
    dtype: str = "bfloat16",
    workload: Workload | None = None,
    attention_slicing: bool = False,
    cpu_offload_unused_experts: bool = False,
    fused_sampler: bool = False,
    gpu_free_bytes: int | None = None,
    device: str = "cuda",
) -> MemoryPlan:
    """The plan for `dtype` (DiffusionConfig's names) on a device type ("cuda" or "cpu").

    As `engine.device.resolve_dtype` chooses: "nvfp4" keeps NVFP4 experts and the rest in bf16 on
    CUDA, fp32 on the CPU; "auto" is bf16 on CUDA, fp32 on the CPU.
    """
    text = config.text
    workload = workload or Workload()
    nvfp4 = dtype == "nvfp4"
    full_precision = dtype == "float32" or (device == "cpu" and dtype in ("auto", "nvfp4"))
    element = torch.float32 if full_precision else torch.float16  # bf16 and fp16: 2 bytes each
    weights = weights_by_kind(text, element, nvfp4)
    host = 0
    if cpu_offload_unused_experts:
        host = weights.pop("experts")
    canvas = workload.canvas_length or config.canvas_length
    batch = workload.batch
    new_tokens = workload.new_tokens or canvas
    canvases = max(1, math.ceil(new_tokens / canvas))
    keep = text.sliding_window - 1
    capacity = {
        "sliding": kv_capacity(workload.prompt_tokens, canvases, canvas, keep),
        "full": kv_capacity(workload.prompt_tokens, canvases, canvas, None),
    }
    kv = 0
    for layer in range(text.num_hidden_layers):
        kind = "sliding" if text.layer_types[layer] == SLIDING else "full"
        per_entry = text.layer_kv_heads(layer) * text.layer_head_dim(layer) * element.itemsize
        kv += 2 * batch * capacity[kind] * per_entry  # keys and values
    activations = step_activations(
        text, element, batch, canvas, capacity, attention_slicing, fused_sampler, device
    )
    if cpu_offload_unused_experts or nvfp4:
        # The per-expert path dequantises one expert at a time: its dense weights plus the fp32
        # intermediates of `dequantize_nvfp4` (codes, scales, product) while it runs.
        expert = 3 * text.moe_intermediate_size * text.hidden_size
        activations["expert_weights_in_flight"] = expert * (element.itemsize + (3 * 4 if nvfp4 else 0))
    plan = MemoryPlan(
        dtype=dtype,
        workload={**asdict(workload), "canvas_length": canvas, "new_tokens": new_tokens},
        attention_slicing=attention_slicing,
        cpu_offload_unused_experts=cpu_offload_unused_experts,
        fused_sampler=fused_sampler,
        weights_bytes=weights,
        host_weights_bytes=host,
        kv_cache_bytes=kv,
        kv_capacity_tokens=capacity,
        activation_bytes=activations,
    )
    plan.total_bytes = sum(weights.values()) + kv + sum(activations.values())
    if gpu_free_bytes is not None:
        plan.gpu_free_bytes = gpu_free_bytes
        plan.fits = plan.total_bytes <= gpu_free_bytes
    plan.notes.append("CUDA's context (a few hundred MiB outside torch's allocator) is not included")
    if not fused_sampler:
        plan.notes.append(
            "vocabulary buffers as the torch sampler holds them; the fused denoiser-statistics "
            "kernel needs 4 bytes per element instead of 20"
        )
    return plan


def step_activations(
    text: TextConfig,
    element: torch.dtype,
    batch: int,
    canvas: int,
    kv_capacity_tokens: dict[str, int],
    attention_slicing: bool,
    fused_sampler: bool,
    device: str = "cuda",
) -> dict[str, int]:
    """Peak bytes alive during one denoising step, by the buffer that holds them."""
    rows = batch * canvas
    vocab_elements = rows * text.vocab_size
    if fused_sampler:
        # bf16 logits overwritten by probabilities, plus the last step's probabilities (self-conditioning).
        vocabulary = vocab_elements * 2 * element.itemsize
    else:
        # During the sampler step: this step's fp32 logits, processed logits and probabilities
        # and the last step's processed logits and probabilities (its result is still held):
        # 5 x 4 bytes; in half precision also the self-conditioning input cast to 2 bytes.
        vocabulary = vocab_elements * (20 if element.itemsize == 4 else 22)
    queries = min(canvas, ATTENTION_SLICE) if attention_slicing else canvas
    attention = 0
    if device == "cuda":
        # SDPA's math path, which the full-attention heads (512 wide) take on a GPU: scores and
        # weights in the activations' dtype and an fp32 softmax. The CPU's fused SDPA kernel
        # works in blocks and holds no score matrix.
        keys = kv_capacity_tokens["full"]
        attention = batch * text.num_attention_heads * queries * keys * (2 * element.itemsize + 4)
    hidden = rows * text.hidden_size * element.itemsize
    routed = rows * text.top_k_experts
    experts = routed * (2 * text.moe_intermediate_size * 2 + text.hidden_size) * element.itemsize
    dense = rows * 3 * text.intermediate_size * element.itemsize
    return {
        "vocabulary": vocabulary,
        "attention_scores": attention,
        # Residual stream, norms and projections of one layer: a dozen hidden-sized tensors.
        "hidden_states": 12 * hidden,
        "routed_experts": experts + dense,
    }


def format_plan(plan: MemoryPlan) -> list[str]:
    """Lines for `dgemma doctor`."""

    def gib(value: int) -> str:
        return f"{value / GiB:8.2f} GiB"

    w = plan.workload
    lines = [
        f"memory plan   dtype {plan.dtype}, prompt {w['prompt_tokens']} + {w['new_tokens']} new tokens, "
        f"canvas {w['canvas_length']} x batch {w['batch']}, attention_slicing {plan.attention_slicing}, "
        f"cpu_offload_unused_experts {plan.cpu_offload_unused_experts}, fused sampler {plan.fused_sampler}"
    ]
    for kind, value in sorted(plan.weights_bytes.items(), key=lambda kv: -kv[1]):
        lines.append(f"  weights  {kind:<26}{gib(value)}")
    if plan.host_weights_bytes:
        lines.append(f"  host     experts (offloaded)         {gib(plan.host_weights_bytes)}")
    lines.append(f"  KV cache {plan.kv_capacity_tokens!s:<26}{gib(plan.kv_cache_bytes)}")
    for kind, value in plan.activation_bytes.items():
        lines.append(f"  step     {kind:<26}{gib(value)}")
    verdict = ""
    if plan.fits is not None:
        verdict = f" of {plan.gpu_free_bytes / GiB:.2f} GiB free: {'fits' if plan.fits else 'does NOT fit'}"
    lines.append(f"  total    {'':<26}{gib(plan.total_bytes)}{verdict}")
    return lines


# ---- `dgemma doctor --model ...` -------------------------------------------------------------------


def add_doctor_options(parser) -> None:
    """The memory-plan options of `dgemma doctor` (registered by engine.commands)."""
    parser.add_argument(
        "--model", default=None, help="checkpoint folder (config.json is enough) or hub id: plan its memory"
    )
    parser.add_argument(
        "--dtype", default="nvfp4", choices=("auto", "float32", "bfloat16", "float16", "nvfp4")
    )
    parser.add_argument("--prompt-tokens", type=int, default=DEFAULT_PROMPT_TOKENS)
    parser.add_argument("--new-tokens", type=int, default=None, help="default: one canvas")
    parser.add_argument("--batch", type=int, default=1, help="canvases denoised together")
    parser.add_argument("--attention-slicing", action="store_true")
    parser.add_argument("--cpu-offload-experts", action="store_true")
    parser.add_argument(
        "--plan-device", default="cuda", choices=("cuda", "cpu"), help="device to plan for (default cuda)"
    )
    parser.add_argument(
        "--fused-sampler",
        action="store_true",
        help="plan for the fused denoiser-statistics kernel instead of the torch sampler",
    )


def read_model_config(model: str, revision: str | None = None) -> ModelConfig:
    """config.json of a local folder, or of a hub repository (that one file is fetched)."""
    from pathlib import Path

    from engine.errors import CheckpointError

    folder = Path(model).expanduser()
    if folder.is_dir():
        return ModelConfig.from_file(folder / "config.json")
    if folder.is_file() and folder.name == "config.json":
        return ModelConfig.from_file(folder)
    try:
        from huggingface_hub import hf_hub_download

        path = hf_hub_download(model, "config.json", revision=revision)
    except Exception as error:  # offline, unknown repository, gated...: the hub's own message
        raise CheckpointError(
            f"{model} is neither a local folder nor a reachable hub repository ({error})",
            hint="pass a folder holding the checkpoint's config.json",
        ) from None
    return ModelConfig.from_file(path)


def doctor_plan(args, report: dict) -> list[str]:
    """`dgemma doctor --model`: the plan for the checkpoint, against the largest free GPU memory.

    Adds it to `report` under `memory_plan` (what --json prints) and returns the lines to print;
    without --model, nothing.
    """
    if not getattr(args, "model", None):
        return []
    free = max((gpu["free_gib"] for gpu in report.get("gpus", [])), default=None)
    config = read_model_config(args.model)
    workload = Workload(prompt_tokens=args.prompt_tokens, new_tokens=args.new_tokens, batch=args.batch)
    plan = plan_memory(
        config,
        args.dtype,
        workload,
        attention_slicing=args.attention_slicing,
        cpu_offload_unused_experts=args.cpu_offload_experts,
        fused_sampler=args.fused_sampler,
        gpu_free_bytes=None if free is None else int(free * GiB),
        device=args.plan_device,
    )
    report["memory_plan"] = plan.to_dict()
    return format_plan(plan)
