"""`dgemma ship-model`: copy a trained checkpoint into the package as the embedded model.

The weights are stored in bfloat16 (half the bytes of float32; the loader casts them back to the
compute dtype, float32 on a CPU), the other files are copied as they are, and the model card
(`README.md`) is kept if the destination already has one.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

COPIED = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json")
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def ship(source: str | Path, destination: str | Path, dtype: str = "bfloat16") -> int:
    """Write `destination` from the checkpoint folder `source`; returns the folder's size in bytes."""
    source, destination = Path(source), Path(destination)
    destination.mkdir(parents=True, exist_ok=True)
    for name in COPIED:
        if (source / name).is_file():
            shutil.copyfile(source / name, destination / name)
    tensors = {}
    with safe_open(str(source / "model.safetensors"), framework="pt") as handle:
        for key in handle.keys():  # noqa: SIM118 (safe_open handles are not dicts)
            tensor = handle.get_tensor(key)
            tensors[key] = tensor.to(DTYPES[dtype]) if tensor.is_floating_point() else tensor
    save_file(tensors, str(destination / "model.safetensors"), metadata={"format": "pt"})
    for path in destination.iterdir():
        if path.is_file():
            path.chmod(0o644)  # readable by whoever installs the package
    return sum(p.stat().st_size for p in destination.iterdir() if p.is_file())
