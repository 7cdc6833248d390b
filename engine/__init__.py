"""The DiffusionGemma engine: model, sampler, caches, checkpoint loading and the Python SDK.

The names below are imported on first use (PEP 562), so `import engine.requests`,
`engine.errors`, `engine.prompting` or `engine.rows` (the types the language server shares)
does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Public name -> the module that defines it.
_EXPORTS = {
    "DiffusionGemmaModel": "engine.api",
    "GenerationStream": "engine.api",
    "DiffusionConfig": "engine.config",
    "ModelConfig": "engine.config",
    "TextConfig": "engine.config",
    "CheckpointError": "engine.errors",
    "ConfigError": "engine.errors",
    "DeadlineExceeded": "engine.errors",
    "DeviceError": "engine.errors",
    "EngineError": "engine.errors",
    "GenerationCancelled": "engine.errors",
    "OutOfMemoryError": "engine.errors",
    "PromptTooLongError": "engine.errors",
    "BatchResult": "engine.requests",
    "ContextSnippet": "engine.requests",
    "GenerationRequest": "engine.requests",
    "GenerationResult": "engine.requests",
    "GenerationStats": "engine.requests",
    "InfillRequest": "engine.requests",
    "InfillResult": "engine.requests",
    "MemoryPlan": "engine.memory_plan",
    "Workload": "engine.memory_plan",
    "plan_memory": "engine.memory_plan",
    "EntropyBoundSampler": "engine.sampler",
    "SamplerConfig": "engine.sampler",
}

__all__ = [
    "BatchResult",
    "CheckpointError",
    "ConfigError",
    "ContextSnippet",
    "DeadlineExceeded",
    "DeviceError",
    "DiffusionConfig",
    "DiffusionGemmaModel",
    "EngineError",
    "EntropyBoundSampler",
    "GenerationCancelled",
    "GenerationRequest",
    "GenerationResult",
    "GenerationStats",
    "GenerationStream",
    "InfillRequest",
    "InfillResult",
    "MemoryPlan",
    "ModelConfig",
    "OutOfMemoryError",
    "PromptTooLongError",
    "SamplerConfig",
    "TextConfig",
    "Workload",
    "plan_memory",
]

if TYPE_CHECKING:
    from engine.api import DiffusionGemmaModel, GenerationStream
    from engine.config import DiffusionConfig, ModelConfig, TextConfig
    from engine.errors import (
        CheckpointError,
        ConfigError,
        DeadlineExceeded,
        DeviceError,
        EngineError,
        GenerationCancelled,
        OutOfMemoryError,
        PromptTooLongError,
    )
    from engine.memory_plan import MemoryPlan, Workload, plan_memory
    from engine.requests import (
        BatchResult,
        ContextSnippet,
        GenerationRequest,
        GenerationResult,
        GenerationStats,
        InfillRequest,
        InfillResult,
    )
    from engine.sampler import EntropyBoundSampler, SamplerConfig


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
