"""Kernel tests run the Triton kernels under Triton's CPU interpreter unless a GPU is present.

`TRITON_INTERPRET` is read when `@triton.jit` runs, i.e. when a `kernels.*_triton` module is first
imported, so it is set here, before any test module of this folder imports one. The engine never
imports those modules off CUDA, so other tests cannot have defined the kernels earlier.
"""

from __future__ import annotations

import os

import pytest
import torch

ON_GPU = torch.cuda.is_available()
if not ON_GPU:
    os.environ["TRITON_INTERPRET"] = "1"


@pytest.fixture
def device() -> torch.device:
    return torch.device("cuda" if ON_GPU else "cpu")


def kernel_dtypes() -> list[torch.dtype]:
    """Activation dtypes to test: the interpreter's tl.dot is wrong on bf16 (triton #11584)."""
    return [torch.float16, torch.bfloat16] if ON_GPU else [torch.float16, torch.float32]
