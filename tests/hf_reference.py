"""Tiny transformers DiffusionGemma models for parity tests (diffusiongemma.md 8.1)."""

from __future__ import annotations

from pathlib import Path

import torch

from engine.random_model import train_tokenizer, write_tokenizer

TINY_TEXT_CONFIG = dict(
    vocab_size=512,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=6,
    layer_types=["sliding_attention"] * 5 + ["full_attention"],
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    global_head_dim=32,
    num_global_key_value_heads=1,
    sliding_window=8,
    num_experts=8,
    top_k_experts=2,
    moe_intermediate_size=24,
    use_bidirectional_attention="vision",
    eos_token_id=[1, 106],
    max_position_embeddings=4096,
)
TINY_VISION_CONFIG = dict(
    model_type="gemma4_vision",
    hidden_size=16,
    intermediate_size=32,
    num_hidden_layers=1,
    num_attention_heads=2,
    num_key_value_heads=2,
    head_dim=8,
)


def build_hf_model(folder: Path, seed: int = 0, canvas_length: int = 16, **text_overrides):
    """A transformers DiffusionGemmaForBlockDiffusion with every 1-D parameter randomised, saved to `folder`."""
    from transformers import DiffusionGemmaConfig, DiffusionGemmaForBlockDiffusion

    text = {**TINY_TEXT_CONFIG, **text_overrides}
    config = DiffusionGemmaConfig(
        text_config=text, vision_config=TINY_VISION_CONFIG, canvas_length=canvas_length, eos_token_id=[1, 106]
    )
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = DiffusionGemmaForBlockDiffusion(config).float().eval()
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim == 1:
                param.copy_(1 + 0.3 * torch.randn(param.shape, generator=generator))
        # Layer scalars are buffers in transformers, one set per mode: make the two differ.
        for layer in list(model.model.decoder.layers) + list(model.model.encoder.language_model.layers):
            layer.layer_scalar.copy_(1 + 0.3 * torch.randn(1, generator=generator))
    model.save_pretrained(folder)
    write_tokenizer(folder, train_tokenizer(512, fim_tokens=False))
    return model
