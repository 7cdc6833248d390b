"""Shared fixtures: tiny DiffusionGemma checkpoints in the real file layout."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.random_model import write_random_checkpoint


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random model (vocab 512, 6 layers, canvas 16, FIM tokens) saved by the engine."""
    return write_random_checkpoint(tmp_path_factory.mktemp("tiny") / "model", canvas_length=16, seed=0)
