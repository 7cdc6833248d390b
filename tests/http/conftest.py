"""Fixtures for the HTTP server tests: the real app on uvicorn, on a free loopback port, in a thread.

Every server here is the real thing: a bound socket, uvicorn's HTTP stack, the engine thread and a
tiny random DiffusionGemma (nothing depends on output quality). Servers are stopped at teardown.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import replace

import httpx
import pytest
import uvicorn

from engine import DiffusionConfig, DiffusionGemmaModel
from engine.server import ServerConfig, create_app
from engine.server.commands import bind

MODEL_NAME = "tiny"


class LiveServer:
    """`create_app` on uvicorn in a background thread; `url` is the `/v1` base."""

    def __init__(self, model: DiffusionGemmaModel, config: ServerConfig):
        self.model = model
        self.config = config
        self.app = create_app(model, config)
        self.socket = bind("127.0.0.1", 0)
        self.port = self.socket.getsockname()[1]
        self.root = f"http://127.0.0.1:{self.port}"
        self.url = f"{self.root}/v1"
        self.server = uvicorn.Server(
            uvicorn.Config(self.app, log_level="warning", access_log=False, timeout_graceful_shutdown=2)
        )
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        end = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > end or not self.thread.is_alive():
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)
        self.socket.close()

    def metric(self, name: str, **labels: str) -> float:
        """The value of one Prometheus sample (0 when absent)."""
        text = httpx.get(f"{self.root}/metrics", timeout=10).text
        wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        for line in text.splitlines():
            match = re.match(r"^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)$", line)
            if not match or match.group(1) != name:
                continue
            found = ",".join(sorted((match.group(2) or "{}")[1:-1].split(","))) if match.group(2) else ""
            if found == wanted:
                return float(match.group(3))
        return 0.0

    def wait_metric(self, name: str, at_least: float, timeout: float = 20.0, **labels: str) -> float:
        end = time.monotonic() + timeout
        value = self.metric(name, **labels)
        while value < at_least and time.monotonic() < end:
            time.sleep(0.05)
            value = self.metric(name, **labels)
        return value


@pytest.fixture(scope="session")
def served_model(tiny_checkpoint) -> DiffusionGemmaModel:
    """The tiny model (canvas 16, context 4096, FIM tokens), 2 denoising steps by default."""
    return DiffusionGemmaModel.from_pretrained(
        tiny_checkpoint, config=DiffusionConfig(device="cpu", dtype="float32", num_diffusion_steps=2)
    )


BASE_CONFIG = ServerConfig(model_name=MODEL_NAME, max_tokens_limit=256, request_timeout_s=60.0)


@pytest.fixture
def start_server(served_model):
    """Start servers with `ServerConfig` overrides; all are stopped at teardown."""
    with contextlib.ExitStack() as stack:

        def start(**overrides) -> LiveServer:
            return stack.enter_context(LiveServer(served_model, replace(BASE_CONFIG, **overrides)))

        yield start


@pytest.fixture(scope="module")
def server(served_model) -> Iterator[LiveServer]:
    """One shared server with the default batching window."""
    with LiveServer(served_model, BASE_CONFIG) as live:
        yield live


def free_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
