"""Fixtures for the language server tests: client capabilities of real editors, a tiny model,
and a helper that starts the real `dgemma-lsp` process over stdio."""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import json
import os
import shutil
import sys
import time
from pathlib import Path

import pytest
import pytest_lsp
from lsprotocol import types
from pygls.protocol import default_converter
from pytest_lsp import ClientServerConfig, LanguageClient, client_capabilities

from dgemma_lsp.client import change_document as change_document
from dgemma_lsp.client import open_document as open_document
from dgemma_lsp.client import server_status
from engine.random_model import write_random_checkpoint

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
VSCODE_CAPABILITIES = HERE / "clients" / "vscode_v1.139.json"


def server_command() -> list[str]:
    """The installed `dgemma-lsp` script next to this interpreter, else the same entry point via -m."""
    script = Path(sys.executable).with_name("dgemma-lsp")
    if script.exists():
        return [str(script)]
    found = shutil.which("dgemma-lsp")
    if found and Path(found).resolve().parent == Path(sys.executable).resolve().parent:
        return [found]
    return [sys.executable, "-m", "dgemma_lsp"]


def server_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env.setdefault("HF_HUB_OFFLINE", "1")
    return env


SERVER = ClientServerConfig(server_command=server_command(), server_env=server_env())


def capabilities_of(client: str) -> types.ClientCapabilities:
    """What a real editor sends in `initialize` (editors-testing.md section 1)."""
    if client == "vscode@1.139":
        data = json.loads(VSCODE_CAPABILITIES.read_text())
        return default_converter().structure(data["capabilities"], types.ClientCapabilities)
    if client == "neovim@0.11":
        # Neovim 0.11 announces no inline completion (the completion fallback serves it).
        return client_capabilities("neovim@v0.11.0")
    if client == "neovim@0.12":
        caps = copy.deepcopy(client_capabilities("neovim@v0.11.0"))
        caps.text_document.inline_completion = types.InlineCompletionClientCapabilities(
            dynamic_registration=False
        )
        return caps
    raise ValueError(client)


@pytest.fixture(scope="session")
def lsp_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random DiffusionGemma (canvas 64, FIM tokens) in the real checkpoint layout."""
    return write_random_checkpoint(tmp_path_factory.mktemp("lsp") / "model", canvas_length=64, seed=0)


def init_options(model: Path, **settings) -> dict:
    """Settings for the tiny random model: code actions try more seeds, as its answers rarely parse.
    No device-measured context cap: prompts (and so seeded answers) must not depend on the load."""
    defaults = {
        "model": str(model),
        "device": "cpu",
        "dtype": "float32",
        "steps": 4,
        "actionAttempts": 8,
        "prefillBudgetMs": 0,
    }
    return {"dgemma": {**defaults, **settings}}


@pytest_lsp.fixture(config=SERVER)
async def fresh_client(lsp_client: LanguageClient):
    """A started server that the test initializes itself (own capabilities and settings)."""
    yield
    if lsp_client.capabilities is not None and lsp_client.error is None:
        await lsp_client.shutdown_session()


def add_client_handlers(client: LanguageClient) -> None:
    """What real editors do and pytest-lsp's client does not: accept dynamic registrations, keep
    the server's status notifications, apply workspace edits."""
    client.registrations = []  # type: ignore[attr-defined]
    client.statuses = []  # type: ignore[attr-defined]
    client.status_updates = []  # type: ignore[attr-defined]
    client.applied_edits = []  # type: ignore[attr-defined]

    @client.feature(types.CLIENT_REGISTER_CAPABILITY)
    def register(ls: LanguageClient, params: types.RegistrationParams) -> None:
        ls.registrations.extend(params.registrations)  # type: ignore[attr-defined]

    @client.feature("dgemma/status")
    def status(ls: LanguageClient, params) -> None:
        state = params.get("state") if isinstance(params, dict) else getattr(params, "state", None)
        ls.statuses.append(state)  # type: ignore[attr-defined]
        ls.status_updates.append(params)  # type: ignore[attr-defined]

    @client.feature(types.WORKSPACE_APPLY_EDIT)
    def apply_edit(
        ls: LanguageClient, params: types.ApplyWorkspaceEditParams
    ) -> types.ApplyWorkspaceEditResult:
        ls.applied_edits.append(params.edit)  # type: ignore[attr-defined]
        return types.ApplyWorkspaceEditResult(applied=True)


async def start_session(
    client: LanguageClient, capabilities: types.ClientCapabilities, options: dict | None
) -> types.InitializeResult:
    add_client_handlers(client)
    return await client.initialize_session(
        types.InitializeParams(
            capabilities=capabilities,
            initialization_options=options,
            root_uri=(REPO / "tests" / "lsp").as_uri(),
        )
    )


async def wait_until_ready(client: LanguageClient, timeout: float = 60.0) -> dict:
    """Poll `dgemma.status` until the model has loaded (or failed)."""
    end = time.monotonic() + timeout
    status: dict = {}
    while time.monotonic() < end:
        status = await server_status(client)
        if status and status.get("state") in ("ready", "failed"):
            return status
        await asyncio.sleep(0.1)
    raise TimeoutError(f"the model did not load in {timeout} s: {status}")


async def wait_for_status(client: LanguageClient, condition, timeout: float = 60.0) -> dict:
    """Poll `dgemma.status` until `condition(status)` holds: for work the server finishes after it
    has answered (a cancelled generation stops at its next denoising step)."""
    end = time.monotonic() + timeout
    status: dict = {}
    while time.monotonic() < end:
        status = await server_status(client)
        if status and condition(status):
            return status
        await asyncio.sleep(0.05)
    raise TimeoutError(f"the server's status did not reach the condition in {timeout} s: {status}")


async def wait_for(condition, timeout: float = 30.0) -> None:
    """Wait until a client-side `condition()` holds (notifications arrive asynchronously)."""
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise TimeoutError("the condition did not hold in time")
        await asyncio.sleep(0.05)


async def raw_request(client: LanguageClient, method: str, params) -> object:
    """Send a request and return the JSON result unparsed (lsprotocol's client-side hook reads any
    code action that carries a `command` as a bare Command, losing its kind)."""
    msg_id = f"raw-{time.monotonic_ns()}"
    future = client.protocol.send_request(method, params, msg_id=msg_id)
    client.protocol._result_types[msg_id] = None
    return await asyncio.wrap_future(future)


async def send_raw(client: LanguageClient, message: dict) -> object:
    """Send a JSON-RPC request exactly as given (no typed params, so malformed ones go through)."""
    future: concurrent.futures.Future = concurrent.futures.Future()
    client.protocol._request_futures[message["id"]] = future
    client.protocol._send_data(message)
    return await asyncio.wrap_future(future)
