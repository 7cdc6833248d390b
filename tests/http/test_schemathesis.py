"""Property-based fuzzing of the live server from its own OpenAPI document: no input may cause a 5xx.

Schemathesis generates valid and invalid bodies for every operation in `/openapi.json` (random
prompts, knobs at their bounds, wrong types, missing fields...). The server runs with small limits
so that every generated request finishes quickly.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.http.conftest import LiveServer

pytestmark = pytest.mark.timeout(300)


def test_openapi_document_lists_every_endpoint(server: LiveServer):
    document = httpx.get(f"{server.root}/openapi.json").json()
    assert {"/v1/completions", "/v1/chat/completions", "/v1/models", "/health", "/metrics"} <= set(
        document["paths"]
    )
    completion = document["components"]["schemas"]["CompletionRequest"]["properties"]
    assert {"prompt", "suffix", "max_tokens", "diffusion_steps", "stop", "stream", "seed"} <= set(completion)


def test_schemathesis_finds_no_server_error(start_server, tmp_path: Path):
    live = start_server(
        max_tokens_limit=8, max_diffusion_steps=2, request_timeout_s=60.0, max_body_bytes=64 * 1024
    )
    st = Path(sys.executable).with_name("st")
    command = [str(st)] if st.exists() else [sys.executable, "-m", "schemathesis.cli"]
    command += [
        "run",
        f"{live.root}/openapi.json",
        "--checks",
        "not_a_server_error",
        "--max-examples",
        "40",
        "--seed",
        "1",
        "--workers",
        "1",
        "--phases",
        "examples,fuzzing",
        "--generation-database",
        "none",
        "--request-timeout",
        "60",
        "--suppress-health-check",
        "all",
        "--no-color",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=280, cwd=tmp_path)
    report = result.stdout[-6000:] + result.stderr[-2000:]
    assert result.returncode == 0, report
    assert "No issues found" in result.stdout or "passed" in result.stdout, report
    # It really sent requests to the generating endpoints.
    assert live.metric("dgemma_requests_total", endpoint="/v1/completions", status="200") > 0, report
    assert live.metric("dgemma_requests_total", endpoint="/v1/chat/completions", status="200") > 0, report
