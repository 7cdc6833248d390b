"""The DiffusionGemma engine: model, sampler, caches, checkpoint loading and the Python SDK."""

from engine.api import DiffusionGemmaModel
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
from engine.requests import ContextSnippet, GenerationStats, InfillRequest, InfillResult
from engine.sampler import EntropyBoundSampler, SamplerConfig

__all__ = [
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
    "GenerationStats",
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
