"""NVFP4 weights as NVIDIA's ModelOpt exports them (diffusiongemma.md 6.1), plain-torch reference.

A weight W [out, in] is stored as
  weight        uint8 [out, in/2]        two E2M1 codes per byte, low nibble = even column
  weight_scale  float8_e4m3fn [out, in/16]  one scale per block of 16 consecutive inputs
  weight_scale_2 float32 scalar          global scale, amax(W) / (6 * 448)
and W = e2m1(code) * weight_scale[row, col // 16] * weight_scale_2. A code's bit 3 is the sign,
bits 0-2 index the magnitudes {0, 0.5, 1, 1.5, 2, 3, 4, 6}. `input_scale` (the activation scale
of W4A4 kernels) is not needed by a weight-only dequantising implementation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

BLOCK = 16
E2M1_MAX = 6.0
E4M3_MAX = 448.0
E2M1_MAGNITUDES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)


def _code_table(device: torch.device) -> torch.Tensor:
    magnitudes = torch.tensor(E2M1_MAGNITUDES, dtype=torch.float32, device=device)
    return torch.cat([magnitudes, -magnitudes])  # codes 0-7 positive, 8-15 negative


@dataclass
class NVFP4Weight:
    """One quantised matrix; `shape` is the dequantised [out, in]."""

    packed: torch.Tensor  # uint8 [out, in/2]
    block_scale: torch.Tensor  # float8_e4m3fn [out, in/16]
    global_scale: torch.Tensor  # float32 scalar

    @property
    def shape(self) -> tuple[int, int]:
        return self.packed.shape[0], self.packed.shape[1] * 2

    def to(self, device: torch.device | str) -> NVFP4Weight:
        return NVFP4Weight(self.packed.to(device), self.block_scale.to(device), self.global_scale.to(device))

    def nbytes(self) -> int:
        return self.packed.numel() + self.block_scale.numel() + 4

    def dequantize(self, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
        return dequantize_nvfp4(self.packed, self.block_scale, self.global_scale, dtype)


def dequantize_nvfp4(
    packed: torch.Tensor,
    block_scale: torch.Tensor,
    global_scale: torch.Tensor,
    dtype: torch.dtype = torch.bfloat16,
) -> torch.Tensor:
    """uint8 [out, in/2] + e4m3 [out, in/16] + fp32 scalar -> [out, in] in `dtype`."""
    table = _code_table(packed.device)
    low = table[(packed & 0x0F).long()]
    high = table[(packed >> 4).long()]
    values = torch.stack([low, high], dim=-1).reshape(packed.shape[0], packed.shape[1] * 2)
    scales = block_scale.to(torch.float32).repeat_interleave(BLOCK, dim=1) * global_scale.to(torch.float32)
    return (values * scales).to(dtype)


def quantize_nvfp4(weight: torch.Tensor) -> NVFP4Weight:
    """Round a [out, in] matrix (in divisible by 16) to NVFP4 the way ModelOpt scales it."""
    out_features, in_features = weight.shape
    if in_features % BLOCK:
        raise ValueError(f"NVFP4 needs the input dimension divisible by {BLOCK}, got {in_features}")
    w = weight.detach().to(torch.float32)
    amax = w.abs().max().clamp(min=1e-12)
    global_scale = amax / (E2M1_MAX * E4M3_MAX)
    blocks = w.reshape(out_features, in_features // BLOCK, BLOCK)
    block_amax = blocks.abs().amax(dim=-1)
    block_scale = (block_amax / (E2M1_MAX * global_scale)).clamp(max=E4M3_MAX).to(torch.float8_e4m3fn)
    scale = block_scale.to(torch.float32) * global_scale
    scaled = blocks / torch.where(scale > 0, scale, torch.ones_like(scale))[..., None]
    magnitudes = torch.tensor(E2M1_MAGNITUDES, dtype=torch.float32, device=w.device)
    index = (scaled.abs()[..., None] - magnitudes).abs().argmin(dim=-1)  # nearest magnitude
    codes = (index | ((scaled < 0) & (index > 0)).to(index.dtype) << 3).to(torch.uint8)
    codes = codes.reshape(out_features, in_features)
    packed = codes[:, 0::2] | (codes[:, 1::2] << 4)
    return NVFP4Weight(packed.contiguous(), block_scale.contiguous(), global_scale.reshape(()))
