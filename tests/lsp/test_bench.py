"""`dgemma bench-lsp` runs end to end (tiny model, one short line) and prints its figures."""

from __future__ import annotations

import json

import pytest

from engine.cli import main

pytestmark = pytest.mark.timeout(120)


def test_bench_lsp_prints_latency_cache_and_parse_figures(lsp_checkpoint, tmp_path, capsys):
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
    for label in ("inline latency p50 / p95", "served from cache", "leave the file parseable"):
        assert label in printed
    figures = json.loads(out.read_text())
    assert figures["lines"] == 1 and figures["requests"] >= 8
    assert figures["latency_p50_ms"] > 0 and 0 <= figures["served_from_cache"] <= 1
