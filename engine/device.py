"""Device and dtype choice, memory checks and the out-of-memory translation."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from engine.errors import OOM_HINT, DeviceError, OutOfMemoryError

NVFP4_FLOOR_BYTES = 18 * 10**9  # NVFP4 26B-A4B weights plus working memory (product.md)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(
            f"device {name!r} was asked for but CUDA is not available",
            hint="use device='cpu' (or 'auto'), or install a CUDA build of torch and check `dgemma doctor`",
        )
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise DeviceError(
            f"there is no GPU {device.index}", hint=f"this machine has {torch.cuda.device_count()}"
        )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError("device 'mps' was asked for but Metal is not available", hint="use device='cpu'")
    return device


def resolve_dtype(name: str, device: torch.device) -> tuple[torch.dtype, bool]:
    """(dtype of the unquantised weights and activations, whether experts are NVFP4)."""
    if name == "nvfp4":
        return (torch.bfloat16 if device.type == "cuda" else torch.float32), True
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16, False
        return torch.float32, False
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
    if device.type == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise DeviceError(
            f"{torch.cuda.get_device_name(device)} cannot run bfloat16",
            hint="use dtype='float16', 'float32' or 'nvfp4' on this GPU",
        )
    return dtype, False


def available_memory(device: torch.device) -> int | None:
    """Free bytes on `device`: CUDA's free memory, or the OS's MemAvailable for the CPU."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type == "cpu":
        try:
            with open("/proc/meminfo", encoding="ascii") as meminfo:
                for line in meminfo:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            return None
    return None


def check_memory(required: int, device: torch.device, what: str) -> None:
    free = available_memory(device)
    if free is not None and required > free:
        raise OutOfMemoryError(
            f"{what} needs about {required / 2**30:.1f} GiB but {device} has {free / 2**30:.1f} GiB free",
            hint=OOM_HINT,
        )


def is_oom(error: BaseException) -> bool:
    if isinstance(error, torch.OutOfMemoryError):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and (
        "out of memory" in text or "can't allocate memory" in text or "DefaultCPUAllocator" in text
    )


@contextlib.contextmanager
def translate_oom(what: str) -> Iterator[None]:
    """Turn torch's out-of-memory errors into an `OutOfMemoryError` that says what to do."""
    try:
        yield
    except (RuntimeError, torch.OutOfMemoryError) as error:
        if not is_oom(error):
            raise
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        raise OutOfMemoryError(f"out of memory while {what}", hint=OOM_HINT) from None
