"""The model the editor tests serve, shared by the pytest tests and the VS Code E2E script.

`DGEMMA_TEST_MODEL`: `embedded` (the model shipped in the package), a checkpoint folder, or
unset = the embedded model when it is installed, else a tiny random checkpoint written to a
folder. The tests assert editor behaviour, never the quality of a suggestion; a fixed `seed`
makes the server's answers repeatable.

    python -m tests.editors.models SCRATCH_DIR   # prints {"name": ..., "settings": {...}}
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class EditorModel:
    name: str  # for messages: "embedded", "tiny random", or the folder
    settings: dict  # the `dgemma` settings (camelCase) the editors pass to the server


def embedded_model_installed() -> bool:
    from engine.loading import EMBEDDED_MODEL_DIR

    return (EMBEDDED_MODEL_DIR / "config.json").is_file()


def model_settings(model: str | None, tiny: bool) -> dict:
    settings: dict = {
        "device": "cpu",
        "seed": 0,  # repeatable suggestions
        "prefillBudgetMs": 0,  # and prompts that do not depend on how loaded the machine is
        # Generous budgets: the test machines are small and shared; late suggestions are dropped.
        "deadlineMs": 30_000,
        "actionDeadlineMs": 180_000,
    }
    if model is not None:
        settings["model"] = model
    if tiny:
        # A random model's answers rarely parse: code actions try more seeds (as tests/lsp does).
        settings.update({"dtype": "float32", "steps": 4, "actionAttempts": 16})
    return settings


def is_toy(folder: Path) -> bool:
    """A toy-sized checkpoint (like engine.random_model's tiny ones): hidden size of at most 256."""
    try:
        config = json.loads((folder / "config.json").read_text())
        return int(config.get("text_config", config).get("hidden_size", 0)) <= 256
    except (OSError, ValueError, AttributeError):
        return False


class ModelError(Exception):
    pass


def resolve_test_model(scratch: Path) -> EditorModel:
    """The model named by DGEMMA_TEST_MODEL; a tiny random one is written under `scratch`."""
    choice = os.environ.get("DGEMMA_TEST_MODEL", "").strip()
    if choice == "embedded" or (not choice and embedded_model_installed()):
        if not embedded_model_installed():
            raise ModelError("DGEMMA_TEST_MODEL=embedded but the embedded model is not installed")
        return EditorModel("embedded", model_settings(None, tiny=False))
    if choice:
        folder = Path(choice).expanduser().resolve()
        if not (folder / "config.json").is_file():
            raise ModelError(f"DGEMMA_TEST_MODEL={choice}: no config.json in {folder}")
        return EditorModel(str(folder), model_settings(str(folder), tiny=is_toy(folder)))
    from engine.random_model import write_random_checkpoint

    folder = scratch / "tiny-model"
    if not (folder / "config.json").is_file():
        write_random_checkpoint(folder, canvas_length=64, seed=0)
    return EditorModel("tiny random", model_settings(str(folder), tiny=True))


if __name__ == "__main__":
    try:
        model = resolve_test_model(Path(sys.argv[1]).resolve())
    except ModelError as error:
        sys.exit(str(error))
    print(json.dumps(asdict(model)))
