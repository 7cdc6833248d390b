"""The VS Code extension: it type-checks, its unit tests pass, `vsce package` makes a .vsix with the
bundled client and the server wheel it installs on first start; and (when code-server, Chromium and
node 24 are installed, see editors/tests/install-tools.sh) the end-to-end tests in real VS Code
pass: with the server of this checkout, and from a clean profile where the extension installs its
own."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from tests.editors.conftest import REPO

pytestmark = [pytest.mark.editor, pytest.mark.slow, pytest.mark.timeout(900)]

EXTENSION = REPO / "editors" / "vscode"


def npm(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["npm", *args], cwd=EXTENSION, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture(scope="module")
def extension_deps() -> None:
    if shutil.which("npm") is None:
        pytest.skip("no npm (Node.js 20+) on PATH")
    installed = EXTENSION / "node_modules" / ".package-lock.json"
    lock = EXTENSION / "package-lock.json"
    if installed.exists() and installed.stat().st_mtime >= lock.stat().st_mtime:
        return
    run = npm("ci", "--no-audit", "--no-fund", "--loglevel=error")
    if run.returncode != 0:
        pytest.skip(f"npm ci failed (registry unreachable?): {run.stderr[-1500:]}")


def test_extension_type_checks(extension_deps):
    run = subprocess.run(
        ["npx", "tsc", "--noEmit", "-p", "."], cwd=EXTENSION, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_extension_unit_tests(extension_deps):
    run = npm("test", timeout=300)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "# fail 0" in run.stdout and "# pass" in run.stdout


def test_vsce_packages_a_self_contained_vsix(extension_deps, tmp_path):
    vsix = tmp_path / "dgemma.vsix"
    run = subprocess.run(
        ["npx", "vsce", "package", "--out", str(vsix)],
        cwd=EXTENSION,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "DGEMMA_PYTHON": sys.executable},  # builds the server wheel
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    names = set(zipfile.ZipFile(vsix).namelist())
    assert {"extension/package.json", "extension/dist/extension.js", "extension/readme.md"} <= names
    assert not any("node_modules" in n or n.startswith("extension/src/") for n in names), sorted(names)
    bundle = zipfile.ZipFile(vsix).read("extension/dist/extension.js").decode()
    # vscode-languageclient is bundled (esbuild), `vscode` is left to the editor.
    assert "textDocument/inlineCompletion" in bundle and 'require("vscode")' in bundle
    # Exactly one server wheel, holding the server, the engine, the embedded model and the chat template.
    wheels = [n for n in names if n.startswith("extension/server/") and n.endswith(".whl")]
    assert len(wheels) == 1 and wheels[0].startswith("extension/server/dgemma_lsp-"), wheels
    with zipfile.ZipFile(vsix) as outer, outer.open(wheels[0]) as inner_file:
        wheel = zipfile.ZipFile(io.BytesIO(inner_file.read()))
    inside = set(wheel.namelist())
    assert {
        "dgemma_lsp/__main__.py",
        "dgemma_lsp/server.py",
        "engine/api.py",
        "engine/embedded/model.safetensors",
        "engine/embedded/tokenizer.json",
        "engine/templates/code_chat.jinja",
    } <= inside
    assert not any(n.startswith("tests/") for n in inside)
    metadata = next(n for n in inside if n.endswith(".dist-info/METADATA"))
    assert "Requires-Dist: torch" in wheel.read(metadata).decode()


def run_e2e(*args: str, timeout: float) -> subprocess.CompletedProcess:
    """editors/vscode/e2e/run-e2e.sh: skipped (exit 77) when its tools are not installed."""
    env = dict(os.environ)
    env.setdefault("DGEMMA_PYTHON", sys.executable)
    run = subprocess.run(
        ["bash", str(EXTENSION / "e2e" / "run-e2e.sh"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    if run.returncode == 77:
        pytest.skip(run.stderr.strip().splitlines()[-1] if run.stderr.strip() else "tools missing")
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]
    return run


def test_vscode_end_to_end_in_code_server():
    assert "E2E OK" in run_e2e(timeout=840).stdout


@pytest.mark.timeout(1800)
def test_vscode_installs_its_own_server_from_a_clean_profile():
    """No server named, a fresh extension storage: the extension creates its environment, installs
    torch and the wheel shipped in the .vsix (minutes), shows the progress, and that server answers."""
    out = run_e2e("--self-install", timeout=1750).stdout
    assert "E2E OK" in out and "SELF-INSTALL OK" in out
