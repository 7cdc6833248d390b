"""`dgemma bench-lsp` runs end to end (tiny model, one short line) and prints its figures."""

from __future__ import annotations

import json

import pytest

from engine.cli import main

pytestmark = pytest.mark.timeout(120)


def test_bench_lsp_prints_both_scenarios_side_by_side(lsp_checkpoint, tmp_path, capsys):
    source = tmp_path / "shapes.py"
    source.write_text("def area(r):\n    pi = 3.14159\n    return pi * r * r\n")
    out = tmp_path / "figures.json"
    code = main(
        [
            "bench-lsp",
            "--files",
            str(source),
            "--lines",
            "1",
            "--jumps",
            "1",
            "--model",
            str(lsp_checkpoint),
            "--steps",
            "2",
            "--json",
            str(out),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    for label in ("inline latency p50", "answered", "useful", "leave the file parseable", "first request"):
        assert label in printed
    assert "jump" in printed and "retype" in printed
    figures = json.loads(out.read_text())
    # Two code lines: one retyped (a request per character), the other jumped to (one request).
    assert figures["lines"] == 1 and figures["jumps"] == 1
    jump, retype = figures["scenarios"]["jump"], figures["scenarios"]["retype"]
    assert jump["requests"] == 1 and figures["first_request_ms"] == jump["latency_p50_ms"] > 0
    assert retype["requests"] >= 8 and figures["requests"] == retype["requests"]
    assert 0 <= retype["served_from_cache"] <= 1 and 0 <= jump["useful_share"] <= jump["shown_share"] <= 1
    # The context budget the server used, capped by the prefill it measured at load.
    assert 256 <= figures["context_budget"] <= 1024 and figures["prefill_ms"]


def test_bench_lsp_profile_times_the_stages_of_cold_requests(lsp_checkpoint, tmp_path, capsys):
    source = tmp_path / "shapes.py"
    source.write_text(
        "import math\n\n\ndef area(r):\n    pi = math.pi\n    return pi * r * r\n\n\n"
        "def perimeter(r):\n    double = 2 * r\n    return math.pi * double\n"
    )
    args = ["bench-lsp", "--profile", "--files", str(source), "--jumps", "3", "--model", str(lsp_checkpoint)]
    assert main([*args, "--steps", "2", "--setting", "prefillBudgetMs=0"]) == 0
    printed = capsys.readouterr().out
    assert "3 cold requests" in printed
    for stage in ("context building", "tokenising", "prefill", "denoising", "post-processing", "total"):
        assert stage in printed
    assert "1024 tokens" in printed and "current layout" in printed and "prefix-first layout" in printed
