"""The `dgemma` console script, run as a user runs it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from engine import DiffusionConfig, DiffusionGemmaModel


def dgemma(*args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


STATS_LINE = re.compile(r"\[(\d+) tokens, (\d+) canvas\(es\), steps per canvas \[([\d, ]*)\], ")


def test_generate_prints_text_and_stats(tiny_checkpoint):
    args = ("def add(a, b):", "--model", str(tiny_checkpoint), "--steps", "2", "--max-tokens", "20")
    out = dgemma("generate", *args, "--seed", "7")
    assert out.returncode == 0, out.stderr
    # What holds for every draw: a random model may meet <eos> in any canvas (20 tokens are two
    # canvases of 16 unless it does), and each canvas runs at most the 2 steps asked for.
    stats = STATS_LINE.search(out.stderr)
    assert stats is not None, out.stderr
    tokens, canvases = int(stats[1]), int(stats[2])
    steps = [int(s) for s in stats[3].split(",") if s.strip()]
    assert 0 <= tokens <= 20 and canvases == len(steps) and 1 <= canvases <= 2
    assert all(1 <= s <= 2 for s in steps)
    if tokens == 20:
        assert canvases == 2
    # The printed text is the SDK's for the same seed.
    model = DiffusionGemmaModel.from_pretrained(tiny_checkpoint, config=DiffusionConfig(seed=7))
    result = model.run(model.request("def add(a, b):", max_tokens=20, num_diffusion_steps=2))
    assert out.stdout == result.text + "\n"
    assert result.stats.generated_tokens == tokens


def test_generate_chat_with_a_system_prompt(tiny_checkpoint):
    out = dgemma(
        "generate",
        "hello",
        "--system",
        "be brief",
        "--model",
        str(tiny_checkpoint),
        "--steps",
        "1",
        "--max-tokens",
        "8",
    )
    assert out.returncode == 0, out.stderr


def test_infill_command(tiny_checkpoint):
    out = dgemma(
        "infill", "def f(x):\\n    return ", "\\n", "--model", str(tiny_checkpoint), "--steps", "1", "--quiet"
    )
    assert out.returncode == 0, out.stderr


def test_bad_model_path_is_one_line_of_error_not_a_traceback(tmp_path):
    out = dgemma("generate", "x", "--model", str(tmp_path))
    assert out.returncode == 1
    assert out.stderr.startswith("error: ") and "Traceback" not in out.stderr
    assert "has no config.json" in out.stderr


def test_download_offline_explains_itself(tmp_path):
    out = dgemma(
        "download",
        "google/diffusiongemma-26B-A4B-it",
        env={"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path)},
    )
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "not in the local hub cache" in out.stderr


def test_download_fetches_only_engine_files_from_the_cache(tiny_checkpoint, tmp_path):
    """A hub snapshot already in the cache is resolved offline: the real huggingface_hub code path."""
    repo = tmp_path / "hub" / "models--acme--tiny-dg"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    for item in tiny_checkpoint.iterdir():
        (snapshot / item.name).write_bytes(item.read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub")}
    out = dgemma("download", "acme/tiny-dg", env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(snapshot)
    out = dgemma("generate", "x", "--model", "acme/tiny-dg", "--steps", "1", "--max-tokens", "4", env=env)
    assert out.returncode == 0, out.stderr


def test_doctor_reports_versions_and_the_nvfp4_floor():
    out = dgemma("doctor", "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["python"].count(".") == 2 and report["torch"]
    assert report["nvfp4_floor_gib"] == pytest.approx(16.8, abs=0.1)
    assert isinstance(report["nvfp4_floor_met"], bool) and report["advice"]
    text = dgemma("doctor")
    assert "NVFP4 floor" in text.stdout and "advice:" in text.stdout


@pytest.mark.slow
def test_bench_prints_both_implementations_and_the_ratio():
    pytest.importorskip("transformers", minversion="5.11")
    out = dgemma(
        "bench",
        "--hidden",
        "64",
        "--layers",
        "2",
        "--experts",
        "4",
        "--vocab",
        "512",
        "--canvas",
        "16",
        "--steps",
        "2",
        "--canvases",
        "1",
        "--prompt-tokens",
        "16",
        "--repeats",
        "1",
    )
    assert out.returncode == 0, out.stderr
    assert "ours, warm prompt cache" in out.stdout and "transformers 5." in out.stdout
    assert "speed-up vs transformers" in out.stdout
