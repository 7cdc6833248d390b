"""kernels/gpu_check.sh --dry-run: the device script runs end to end on the CPU (tiny shapes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")
ROOT = Path(__file__).resolve().parents[2]


def test_gpu_check_dry_run_passes_every_check_and_saves_its_report(tmp_path):
    out = subprocess.run(
        ["bash", "kernels/gpu_check.sh", "--dry-run"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OUT": str(tmp_path)},
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "all parts passed" in out.stdout
    assert "== compile: exit 0" in out.stdout and "all kernels compile" in out.stdout
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["failures"] == []
    checks = report["checks"]
    assert checks["fused MoE nvfp4 16 tokens within 2% of the fp32 reference"] is True
    assert checks["sampler statistics 16 rows agree with the reference"] is True
    assert set(report["projected_step_ms"]["nvfp4_16"]) == {"experts", "sampler", "vocabulary", "attention"}
    assert (tmp_path / "kernels.txt").read_text().count("PASS") == len(checks)


def test_gpu_check_refuses_to_run_for_real_without_cuda():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    out = subprocess.run(
        [sys.executable, "-m", "kernels.gpu_check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2 and "--dry-run" in out.stderr
