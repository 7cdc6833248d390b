"""The DiffusionGemma text model (diffusiongemma.md section 3), one module for both modes.

The same weights run as a causal **encoder** that writes the prompt (and every committed canvas)
into a `KVCache`, and as a bidirectional **decoder** over one canvas that reads that cache and
never writes it. The two modes differ only in the per-layer scalar, the attention mask and the
self-conditioning block at the decoder's input.

Module and parameter names mirror the checkpoint's `model.decoder.*` keys so loading is a rename
(engine/loading.py). The encoder's layer scalars, the one tensor the encoder owns, live beside
the decoder's as `layers.N.encoder_layer_scalar`.

Training (engine/training) uses the same two entry points with gradients on: `encode` into a
fresh `TrainingKVCache` (`new_training_cache()`), then `denoise` a corrupted canvas against it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.cache import KVCache, TrainingKVCache
from engine.config import SLIDING, TextConfig
from kernels.attention import attention
from kernels.moe import moe_grouped
from kernels.nvfp4 import NVFP4Weight


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    """y = x * (mean(x^2) + eps)^-1/2 [* w], computed in fp32, returned in x's dtype (3.1)."""
    y = F.rms_norm(x.float(), (x.shape[-1],), None if weight is None else weight.float(), eps)
    return y.type_as(x)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


def fuse_linears(linears: list[nn.Linear]) -> torch.Tensor:
    """One [sum(out), in] weight for projections of the same input; each Linear keeps a view into it
    (no second copy), so loading, saving and `state_dict` see the usual names."""
    fused = torch.cat([linear.weight.detach() for linear in linears])
    start = 0
    for linear in linears:
        rows = linear.weight.shape[0]
        linear.weight.data = fused[start : start + rows]
        start += rows
    return fused


def rope_inverse_frequencies(config: TextConfig, kind: str) -> torch.Tensor:
    """Inverse frequencies for a layer kind (3.2); proportional RoPE zeroes all but a fraction."""
    params = config.rope_parameters[kind]
    head_dim = config.head_dim if kind == SLIDING else config.global_head_dim
    theta = float(params["rope_theta"])
    if params.get("rope_type", "default") == "proportional":
        rotated = int(float(params.get("partial_rotary_factor", 1.0)) * head_dim // 2)
        exponents = torch.arange(0, 2 * rotated, 2, dtype=torch.int64).float() / head_dim
        inv = 1.0 / theta**exponents
        inv = torch.cat([inv, torch.zeros(head_dim // 2 - rotated)])
        return inv / float(params.get("factor", 1.0))
    dim = int(head_dim * float(params.get("partial_rotary_factor", 1.0)))
    return 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float) / dim)


def rope_tables(
    inv_freq: torch.Tensor, positions: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin [B, T, D] for absolute positions [B, T], computed in fp32 and cast (3.2)."""
    freqs = positions[..., None].float() * inv_freq.to(positions.device)
    angles = torch.cat([freqs, freqs], dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE on x [B, T, H, D] with cos/sin [B, T, D]."""
    cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


class Attention(nn.Module):
    """Sliding layers: own V projection. Full layers: V = rms0(raw K projection) (3.3, 2.4.3)."""

    def __init__(self, config: TextConfig, layer: int):
        super().__init__()
        self.sliding = config.is_sliding(layer)
        self.head_dim = config.layer_head_dim(layer)
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.layer_kv_heads(layer)
        self.eps = config.rms_norm_eps
        d, q_dim, kv_dim = (
            config.hidden_size,
            self.num_heads * self.head_dim,
            self.num_kv_heads * self.head_dim,
        )
        self.q_proj = nn.Linear(d, q_dim, bias=config.attention_bias)
        self.k_proj = nn.Linear(d, kv_dim, bias=config.attention_bias)
        self.v_proj = nn.Linear(d, kv_dim, bias=config.attention_bias) if self.sliding else None
        self.o_proj = nn.Linear(q_dim, d, bias=config.attention_bias)
        self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
        self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
        self.slice_size: int | None = None
        self.fused: torch.Tensor | None = None  # q|k|v weights in one matrix, set for inference

    def fuse(self) -> None:
        projections = [self.q_proj, self.k_proj] + ([self.v_proj] if self.v_proj is not None else [])
        self.fused = fuse_linears(projections)

    def project(
        self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q [B, H, T, D] and this pass's k, v [B, Hkv, T, D] (3.3 steps 1-3)."""
        batch, tokens, _ = h.shape
        q_dim, kv_dim = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        if self.fused is not None:
            projected = F.linear(h, self.fused)
            q_flat, k_flat = projected[..., :q_dim], projected[..., q_dim : q_dim + kv_dim]
            v_flat = projected[..., q_dim + kv_dim :] if self.sliding else None
        else:
            q_flat, k_flat = self.q_proj(h), self.k_proj(h)
            v_flat = self.v_proj(h) if self.sliding else None
        q = self.q_norm(q_flat.reshape(batch, tokens, self.num_heads, self.head_dim))
        q = apply_rope(q, cos, sin).transpose(1, 2)
        k_raw = k_flat.reshape(batch, tokens, self.num_kv_heads, self.head_dim)
        v = v_flat.reshape(batch, tokens, self.num_kv_heads, self.head_dim) if self.sliding else k_raw
        k = apply_rope(self.k_norm(k_raw), cos, sin).transpose(1, 2)
        v = rms_norm(v, None, self.eps).transpose(1, 2)
        return q, k, v

    def attend(
        self,
        q: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        mask: torch.Tensor | None,
        is_causal: bool,
    ) -> torch.Tensor:
        """Attention over the given keys, heads concatenated, output projection (3.3 steps 5-6)."""
        batch, _, tokens, _ = q.shape
        out = attention(q, keys, values, mask, is_causal=is_causal, slice_size=self.slice_size)
        return self.o_proj(out.transpose(1, 2).reshape(batch, tokens, self.num_heads * self.head_dim))

    def forward(
        self,
        h: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        cache: KVCache,
        layer: int,
        mask: torch.Tensor | None,
        is_causal: bool,
        commit: bool,
    ) -> torch.Tensor:
        """This pass's K/V go through the cache, committed (encoder) or not (decoder) (3.3 step 4)."""
        q, k, v = self.project(h, cos, sin)
        keys, values = cache.extend(layer, k, v, commit)
        return self.attend(q, keys, values, mask, is_causal)


class GatedMLP(nn.Module):
    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)
        self.fused: torch.Tensor | None = None

    def fuse(self) -> None:
        self.fused = fuse_linears([self.gate_proj, self.up_proj])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused is not None:
            gate, up = F.linear(x, self.fused).chunk(2, dim=-1)
        else:
            gate, up = self.gate_proj(x), self.up_proj(x)
        return self.down_proj(F.gelu(gate, approximate="tanh") * up)


class Router(nn.Module):
    """softmax over all experts of (rms0(r) * scale * d^-1/2) W^T, top-k, renormalise, per-expert scale."""

    def __init__(self, config: TextConfig):
        super().__init__()
        self.top_k = config.top_k_experts
        self.eps = config.rms_norm_eps
        self.root = config.hidden_size**-0.5
        self.proj = nn.Linear(config.hidden_size, config.num_experts, bias=False)
        self.scale = nn.Parameter(torch.ones(config.hidden_size))
        self.per_expert_scale = nn.Parameter(torch.ones(config.num_experts))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns (top-k weights fp32 [N, k], expert ids [N, k], all probabilities fp32 [N, E])."""
        h = rms_norm(x, None, self.eps) * self.scale * self.root
        probs = torch.softmax(self.proj(h), dim=-1, dtype=torch.float32)
        weights, index = torch.topk(probs, self.top_k, dim=-1)
        weights = weights / weights.sum(dim=-1, keepdim=True)
        return weights * self.per_expert_scale[index], index, probs


class Experts(nn.Module):
    """Stacked experts, gate and up fused gate-first (2.2); NVFP4 or CPU-offloaded variants (6.1)."""

    def __init__(self, config: TextConfig):
        super().__init__()
        e, d, i = config.num_experts, config.hidden_size, config.moe_intermediate_size
        self.num_experts = e
        self.gate_up_proj = nn.Parameter(torch.empty(e, 2 * i, d))
        self.down_proj = nn.Parameter(torch.empty(e, d, i))
        # Set by the loader for NVFP4 checkpoints: per expert (gate, up, down) quantised weights.
        self.quantized: list[tuple[NVFP4Weight, NVFP4Weight, NVFP4Weight]] | None = None
        # Set by `offload_to_cpu`: the compute device routed experts are copied to.
        self.offload_device: torch.device | None = None
        self.fetched: list[int] = []  # experts copied to the device by the last call (offload mode)

    def prepare_for_inference(self) -> None:
        """Store the stacked experts transposed ([E, in, out] in memory), as batched matmul wants them."""
        if self.quantized is None and self.offload_device is None and self.gate_up_proj.numel():
            self.gate_up_proj.data = self.gate_up_proj.data.transpose(1, 2).contiguous().transpose(1, 2)
            self.down_proj.data = self.down_proj.data.transpose(1, 2).contiguous().transpose(1, 2)

    @property
    def compute_dtype(self) -> torch.dtype:
        return self.down_proj.dtype

    def expert_weights(self, expert: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.quantized is not None:
            gate, up, down = self.quantized[expert]
            device, dtype = self.offload_device or gate.packed.device, self.compute_dtype
            if self.offload_device is not None:
                gate, up, down = gate.to(device), up.to(device), down.to(device)
                self.fetched.append(expert)
            return torch.cat([gate.dequantize(dtype), up.dequantize(dtype)]), down.dequantize(dtype)
        if self.offload_device is not None:
            self.fetched.append(expert)
            return (
                self.gate_up_proj[expert].to(self.offload_device, non_blocking=True),
                self.down_proj[expert].to(self.offload_device, non_blocking=True),
            )
        return self.gate_up_proj[expert], self.down_proj[expert]

    def forward(self, x: torch.Tensor, index: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        self.fetched = []
        resident = self.quantized is None and self.offload_device is None
        stacked = (self.gate_up_proj, self.down_proj) if resident else None
        return moe_grouped(x, index, weights, self.expert_weights, stacked=stacked)


class Layer(nn.Module):
    """One Gemma 4 MoE layer (3.4): attention, then a dense MLP and the experts side by side."""

    def __init__(self, config: TextConfig, layer: int):
        super().__init__()
        d, eps = config.hidden_size, config.rms_norm_eps
        self.self_attn = Attention(config, layer)
        self.mlp = GatedMLP(d, config.intermediate_size)
        self.router = Router(config)
        self.experts = Experts(config)
        self.input_layernorm = RMSNorm(d, eps)
        self.post_attention_layernorm = RMSNorm(d, eps)
        self.pre_feedforward_layernorm = RMSNorm(d, eps)
        self.post_feedforward_layernorm_1 = RMSNorm(d, eps)
        self.pre_feedforward_layernorm_2 = RMSNorm(d, eps)
        self.post_feedforward_layernorm_2 = RMSNorm(d, eps)
        self.post_feedforward_layernorm = RMSNorm(d, eps)
        # Separate scalars for the two modes (2.4.2), equal in the released checkpoint.
        self.layer_scalar = nn.Parameter(torch.ones(1))
        self.encoder_layer_scalar = nn.Parameter(torch.ones(1))

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        cache: KVCache,
        index: int,
        mask: torch.Tensor | None,
        is_causal: bool,
        encoder: bool,
    ) -> torch.Tensor:
        """One layer; the encoder commits this pass's K/V to `cache`, the decoder only reads it."""
        attn = self.self_attn(self.input_layernorm(x), cos, sin, cache, index, mask, is_causal, encoder)
        x = x + self.post_attention_layernorm(attn)
        dense = self.post_feedforward_layernorm_1(self.mlp(self.pre_feedforward_layernorm(x)))
        flat = x.reshape(-1, x.shape[-1])
        weights, index, _ = self.router(flat)
        routed = self.experts(self.pre_feedforward_layernorm_2(flat), index, weights).reshape(x.shape)
        routed = self.post_feedforward_layernorm_2(routed)
        x = x + self.post_feedforward_layernorm(dense + routed)
        scalar = self.encoder_layer_scalar if encoder else self.layer_scalar
        return x * scalar


class SelfConditioning(nn.Module):
    """x0 = rms0(e + gmlp(rms(u; pre_norm))), u the previous step's soft embedding (3.6)."""

    def __init__(self, config: TextConfig):
        super().__init__()
        self.eps = config.rms_norm_eps
        self.pre_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.fused: torch.Tensor | None = None

    def fuse(self) -> None:
        self.fused = fuse_linears([self.gate_proj, self.up_proj])

    def forward(self, embeds: torch.Tensor, soft_embeds: torch.Tensor | None) -> torch.Tensor:
        if soft_embeds is None:  # first step: u = 0 gives g = 0 exactly
            return rms_norm(embeds, None, self.eps)
        n = self.pre_norm(soft_embeds)
        if self.fused is not None:
            gate, up = F.linear(n, self.fused).chunk(2, dim=-1)
        else:
            gate, up = self.gate_proj(n), self.up_proj(n)
        signal = self.down_proj(F.gelu(gate, approximate="tanh") * up)
        return rms_norm(embeds + signal, None, self.eps)


class DiffusionGemmaTransformer(nn.Module):
    """The shared stack with its two entry points, `encode` and `denoise`."""

    def __init__(self, config: TextConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList([Layer(config, i) for i in range(config.num_hidden_layers)])
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_conditioning = SelfConditioning(config)
        for kind in set(config.layer_types):
            self.register_buffer(f"inv_freq_{kind}", rope_inverse_frequencies(config, kind), persistent=False)
        # Committed keys a sliding layer shows the canvas (3.8): HF's default path keeps window - 1.
        self.sliding_window_retention = config.sliding_window - 1

    def prepare_for_inference(self) -> None:
        """Fuse projections that share an input and lay experts out for batched matmul (inference only)."""
        self.requires_grad_(False)
        for layer in self.layers:
            layer.self_attn.fuse()
            layer.mlp.fuse()
            layer.experts.prepare_for_inference()
        self.self_conditioning.fuse()

    def reset_buffers(self) -> None:
        """Recompute the RoPE tables (after `to_empty` or a device move from the meta device)."""
        for kind in set(self.config.layer_types):
            setattr(self, f"inv_freq_{kind}", rope_inverse_frequencies(self.config, kind).to(self.device))

    @torch.no_grad()
    def init_weights(self, std: float = 0.02, generator: torch.Generator | None = None) -> None:
        """Random initialisation for new models: normal(0, std) matrices, unit norms and scalars."""
        for param in self.parameters():
            if param.ndim >= 2:
                param.copy_(torch.randn(param.shape, generator=generator) * std)
            else:
                param.fill_(1.0)

    # ---- helpers -------------------------------------------------------------------------------

    @property
    def dtype(self) -> torch.dtype:
        return self.embed_tokens.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.embed_tokens.weight.device

    def new_cache(self) -> KVCache:
        """An empty inference cache; sliding layers keep what the encoder and decoder can still see."""
        keep = max(self.config.sliding_window - 1, self.sliding_window_retention)
        return KVCache(sliding=self._sliding_layers(), keep_sliding=keep)

    def new_training_cache(self) -> TrainingKVCache:
        """An empty cache that gradients flow through (never trimmed, appended by concatenation)."""
        return TrainingKVCache(sliding=self._sliding_layers())

    def _sliding_layers(self) -> list[bool]:
        return [self.config.is_sliding(i) for i in range(len(self.layers))]

    def set_attention_slicing(self, slice_size: int | None) -> None:
        for layer in self.layers:
            layer.self_attn.slice_size = slice_size

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """E[ids] * sqrt(d), the scale rounded to the weight dtype first (3.1)."""
        weight = self.embed_tokens.weight
        scale = torch.tensor(self.config.hidden_size**0.5, device=weight.device).to(weight.dtype)
        return F.embedding(ids, weight) * scale

    def soft_embed(
        self, logits: torch.Tensor | None = None, probs: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(softmax(logits) @ E) * sqrt(d): the self-conditioning input (3.6 step 2).

        `probs` may be passed instead when the caller already holds softmax(logits) in fp32.
        """
        weight = self.embed_tokens.weight
        if probs is None:
            probs = torch.softmax(logits, dim=-1, dtype=torch.float32)
        scale = torch.tensor(self.config.hidden_size**0.5, device=weight.device).to(weight.dtype)
        return (probs.to(weight.dtype) @ weight) * scale

    def _rope(
        self, positions: torch.Tensor, dtype: torch.dtype
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        return {
            kind: rope_tables(getattr(self, f"inv_freq_{kind}"), positions, dtype)
            for kind in set(self.config.layer_types)
        }

    def _first_layer(self, kind: str) -> int:
        return self.config.layer_types.index(kind)

    # ---- encoder -------------------------------------------------------------------------------

    def encode(
        self,
        ids: torch.Tensor,
        cache: KVCache,
        valid: torch.Tensor | None = None,
        return_hidden: bool = False,
    ) -> torch.Tensor | None:
        """Run `ids` [B, T] causally after what `cache` holds and append their K/V to it (3.5, 3.7).

        `valid` [B, T] marks left padding (False) when prompts of different lengths share a batch;
        padded rows get positions counted from their first real token.
        """
        batch, tokens = ids.shape
        if valid is not None and cache.length:
            raise ValueError("padding is only supported for the first chunk a cache receives")
        if valid is not None and bool(valid.all()):
            valid = None
        start = (
            cache.next_positions()
            if cache.length
            else torch.zeros(batch, dtype=torch.long, device=ids.device)
        )
        if valid is None:
            positions = start[:, None] + torch.arange(tokens, device=ids.device)
        else:
            positions = (torch.cumsum(valid.long(), dim=1) - 1).clamp(min=0)
        x = self.embed(ids)
        rope = self._rope(positions, x.dtype)
        masks = {
            kind: self._encoder_mask(kind, cache, positions, valid) for kind in set(self.config.layer_types)
        }
        for i, layer in enumerate(self.layers):
            kind = self.config.layer_types[i]
            mask, is_causal = masks[kind]
            x = layer(x, *rope[kind], cache, i, mask, is_causal, encoder=True)
        cache.append_tokens(ids, positions, valid)
        cache.trim()
        return self.norm(x) if return_hidden else None

    def _encoder_mask(
        self, kind: str, cache: KVCache, positions: torch.Tensor, valid: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, bool]:
        """Causal; sliding layers see keys with q - window < k <= q. (mask, use SDPA's is_causal)."""
        window = self.config.sliding_window if kind == SLIDING else None
        tokens = positions.shape[1]
        layer = self._first_layer(kind)
        past_positions = cache.layer_positions(layer)
        if past_positions is None and valid is None and (window is None or tokens <= window):
            return None, True
        key_positions = positions if past_positions is None else torch.cat([past_positions, positions], dim=1)
        q = positions[:, :, None]
        k = key_positions[:, None, :]
        visible = k <= q
        if window is not None:
            visible &= k > q - window
        if past_positions is not None:
            past_valid = cache.layer_valid(layer)
            key_valid = (
                None
                if past_valid is None
                else torch.cat([past_valid, torch.ones_like(positions, dtype=torch.bool)], 1)
            )
        else:
            key_valid = valid
        if key_valid is not None:
            visible &= key_valid[:, None, :]
            # A padding query sees only itself, so its row stays finite (its keys are masked for all).
            own = torch.eye(tokens, dtype=torch.bool, device=positions.device)
            visible[:, :, -tokens:] |= own & ~key_valid[:, -tokens:, None]
        return visible[:, None], False

    # ---- decoder -------------------------------------------------------------------------------

    def denoise(
        self,
        canvas: torch.Tensor,
        cache: KVCache,
        self_conditioning_logits: torch.Tensor | None = None,
        self_conditioning_mask: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
        self_conditioning_probs: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One bidirectional pass over `canvas` [B, C] reading `cache`; softcapped fp32 logits [B, C, V] (3.6).

        `self_conditioning_logits` are the previous step's processed logits (temperature-divided,
        softcapped); `self_conditioning_probs`, their fp32 softmax, may be given instead (the
        sampler has it already); `self_conditioning_mask` [B] zeroes the signal per row (training).
        """
        batch, length = canvas.shape
        if positions is None:
            start = (
                cache.next_positions()
                if cache.length
                else torch.zeros(batch, dtype=torch.long, device=canvas.device)
            )
            positions = start[:, None] + torch.arange(length, device=canvas.device)
        embeds = self.embed(canvas)
        soft = None
        if self_conditioning_logits is not None or self_conditioning_probs is not None:
            soft = self.soft_embed(self_conditioning_logits, self_conditioning_probs)
            if self_conditioning_mask is not None:
                soft = soft * self_conditioning_mask.to(soft.dtype)[:, None, None]
        x = self.self_conditioning(embeds, soft)
        rope = self._rope(positions, x.dtype)
        masks = {kind: self._decoder_mask(kind, cache, positions) for kind in set(self.config.layer_types)}
        for i, layer in enumerate(self.layers):
            kind = self.config.layer_types[i]
            x = layer(x, *rope[kind], cache, i, masks[kind], False, encoder=False)
        return self.logits(self.norm(x))

    def _decoder_mask(self, kind: str, cache: KVCache, positions: torch.Tensor) -> torch.Tensor | None:
        """Canvas keys: all visible. Cached keys: all (full) or the last `retention` (sliding)."""
        layer = self._first_layer(kind)
        past_positions = cache.layer_positions(layer)
        if past_positions is None:
            return None
        past_valid = cache.layer_valid(layer)
        retention = self.sliding_window_retention if kind == SLIDING else None
        if past_valid is None and (retention is None or past_positions.shape[1] <= retention):
            return None
        visible = (
            torch.ones_like(past_positions, dtype=torch.bool) if past_valid is None else past_valid.clone()
        )
        if retention is not None:
            visible &= past_positions >= (positions[:, :1] - retention)
        canvas = torch.ones(positions.shape, dtype=torch.bool, device=positions.device)
        keys = torch.cat([visible, canvas], dim=1)  # [B, S + C]
        return keys[:, None, None, :].expand(-1, 1, positions.shape[1], -1)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Tied output projection, fp32, softcapped: 30 tanh(l / 30) (3.6 step 6)."""
        logits = F.linear(hidden, self.embed_tokens.weight).float()
        cap = self.config.final_logit_softcapping
        if torch.is_grad_enabled():
            return torch.tanh(logits / cap) * cap
        return logits.div_(cap).tanh_().mul_(cap)  # in place: three passes over [B, C, V], no copies

    # ---- memory options --------------------------------------------------------------------------

    def offload_experts_to_cpu(self, device: torch.device) -> None:
        """Keep every expert on the CPU; each layer copies only its routed experts to `device`."""
        for layer in self.layers:
            experts = layer.experts
            experts.offload_device = device
            experts.gate_up_proj.data = experts.gate_up_proj.data.cpu()
            experts.down_proj.data = experts.down_proj.data.cpu()
            if device.type == "cuda":
                experts.gate_up_proj.data = experts.gate_up_proj.data.pin_memory()
                experts.down_proj.data = experts.down_proj.data.pin_memory()
            if experts.quantized is not None:
                experts.quantized = [tuple(w.to("cpu") for w in e) for e in experts.quantized]  # type: ignore[misc]

    def experts_fetched(self) -> list[list[int]]:
        return [list(layer.experts.fetched) for layer in self.layers]


def checkpoint_name(name: str) -> str:
    """Our parameter name -> the checkpoint's key (2.1)."""
    if name.endswith("encoder_layer_scalar"):
        return "model.encoder.language_model." + name.replace("encoder_layer_scalar", "layer_scalar")
    return "model.decoder." + name


def local_name(key: str) -> str | None:
    """A checkpoint key -> our parameter name, or None for tensors a text model skips (vision)."""
    if key.startswith("model.decoder."):
        return key[len("model.decoder.") :]
    prefix = "model.encoder.language_model.layers."
    if key.startswith(prefix) and key.endswith(".layer_scalar"):
        return "layers." + key[len(prefix) :].replace("layer_scalar", "encoder_layer_scalar")
    return None
