"""End to end: the real `dgemma-lsp` process (pytest-lsp over stdio, VS Code 1.139's capabilities)
with `backend = "openai"`, pointed at our real HTTP server on a loopback port.

The strongest check: with the same checkpoint, seed and step budget, the remote backend (through
`/v1/completions` with `suffix`) gives exactly the suggestions the in-process engine gives. Then
cancellation reaches the server as a closed connection, and an unreachable or vanished endpoint
gives a clear status instead of silence.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import pytest_lsp
from lsprotocol import types
from pygls.exceptions import JsonRpcException
from pytest_lsp import LanguageClient

from engine import DiffusionConfig, DiffusionGemmaModel
from engine.random_model import write_random_checkpoint
from tests.http.conftest import BASE_CONFIG, LiveServer, free_port
from tests.lsp.conftest import SERVER, capabilities_of, open_document, start_session, wait_until_ready

pytestmark = pytest.mark.timeout(180)

URI = "file:///work/project/shapes.py"
SOURCE = """import math


class Circle:
    def __init__(self, radius):
        self.radius = radius

    def area(self):
        return math.pi * self.radius ** 2

    def perimeter(self):
        return 2 * math.pi * self.radius


def total_area(shapes):
    total = 0
    for shape in shapes:
        total += shape.area()
    return total


if __name__ == "__main__":
    circles = [Circle(r) for r in range(1, 4)]
    print(total_area(circles))
"""
CURSORS = ["return math.pi * ", "self.radius = ", "total += ", "for shape in ", "print(", "circles = "]


def typing_state(needle: str) -> tuple[str, types.Position]:
    """The file while the user types the line holding `needle`, cursor right after it."""
    lines = SOURCE.split("\n")
    for number, line in enumerate(lines):
        index = line.find(needle)
        if index != -1:
            lines[number] = line[: index + len(needle)]
            return "\n".join(lines), types.Position(line=number, character=index + len(needle))
    raise AssertionError(needle)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random DiffusionGemma with a 64-token canvas, as the language server tests use."""
    return write_random_checkpoint(tmp_path_factory.mktemp("remote") / "model", canvas_length=64, seed=0)


@pytest.fixture(scope="module")
def model(checkpoint: Path) -> DiffusionGemmaModel:
    """The checkpoint loaded once; each server below runs its own app (and metrics) over it."""
    return DiffusionGemmaModel.from_pretrained(
        checkpoint, config=DiffusionConfig(device="cpu", dtype="float32")
    )


@pytest.fixture(scope="module")
def remote(model: DiffusionGemmaModel):
    with LiveServer(model, BASE_CONFIG) as live:
        yield live


async def end_session(client: LanguageClient) -> None:
    if client.error is not None:
        return
    if client.capabilities is not None:
        await client.shutdown_session()
    else:
        client.exit(None)  # never initialized: without `exit` the process would wait forever


@pytest_lsp.fixture(config=SERVER)
async def lsp(lsp_client: LanguageClient):
    yield
    await end_session(lsp_client)


@pytest_lsp.fixture(config=SERVER)
async def local_lsp(lsp_client: LanguageClient):
    """A second `dgemma-lsp` process, for the in-process engine."""
    yield
    await end_session(lsp_client)


def remote_options(endpoint: str, **settings) -> dict:
    defaults = {"backend": "openai", "endpoint": endpoint, "steps": 2, "seed": 0}
    return {"dgemma": {**defaults, **settings}}


async def inline(client: LanguageClient, position: types.Position) -> list[str]:
    result = await client.text_document_inline_completion_async(
        types.InlineCompletionParams(
            text_document=types.TextDocumentIdentifier(uri=URI),
            position=position,
            context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Invoked),
        )
    )
    assert isinstance(result, types.InlineCompletionList)
    return [item.insert_text for item in result.items]


async def status(client: LanguageClient) -> dict:
    return await client.workspace_execute_command_async(types.ExecuteCommandParams(command="dgemma.status"))


async def suggestions(client: LanguageClient) -> list[list[str]]:
    answers = []
    for version, needle in enumerate(CURSORS, start=1):
        text, position = typing_state(needle)
        if version == 1:
            open_document(client, URI, text)
        else:
            client.text_document_did_change(
                types.DidChangeTextDocumentParams(
                    text_document=types.VersionedTextDocumentIdentifier(uri=URI, version=version),
                    content_changes=[types.TextDocumentContentChangeWholeDocument(text=text)],
                )
            )
        answers.append(await inline(client, position))
    return answers


async def test_remote_backend_suggests_exactly_what_the_in_process_engine_does(
    lsp: LanguageClient, local_lsp: LanguageClient, remote: LiveServer, checkpoint: Path
):
    # The same document, cursors, checkpoint, seed and steps: remotely, and through the in-process
    # engine. Deadlines are generous so that a loaded machine cannot drop a suggestion on one side.
    common = {"steps": 2, "seed": 0, "deadlineMs": 60_000, "prefillBudgetMs": 0}  # the same prompts
    await start_session(lsp, capabilities_of("vscode@1.139"), remote_options(remote.url, **common))
    engine_options = {"model": str(checkpoint), "device": "cpu", "dtype": "float32", **common}
    await start_session(local_lsp, capabilities_of("vscode@1.139"), {"dgemma": engine_options})
    state = await wait_until_ready(lsp)
    assert state["state"] == "ready", state
    assert state["backend"] == f"openai ({remote.url}, model tiny, completions mode)"
    assert (await wait_until_ready(local_lsp))["state"] == "ready"

    before = await asyncio.to_thread(
        remote.metric, "dgemma_requests_total", endpoint="/v1/completions", status="200"
    )
    remote_answers = await suggestions(lsp)
    state = await status(lsp)
    assert state["errors"] == 0 and state["deadline_exceeded"] == 0 and state["model_calls"] >= 1, state
    after = await asyncio.to_thread(
        remote.metric, "dgemma_requests_total", endpoint="/v1/completions", status="200"
    )
    assert after - before == state["model_calls"]

    local_answers = await suggestions(local_lsp)
    assert remote_answers == local_answers
    assert any(remote_answers), "no suggestion at any cursor: the comparison would prove nothing"


async def test_cancel_request_closes_the_connection_and_stops_the_server(
    lsp: LanguageClient, model: DiffusionGemmaModel
):
    with LiveServer(model, BASE_CONFIG) as live:
        # 256 denoising steps of a 64-token canvas take seconds on the tiny model.
        options = remote_options(live.url, steps=256, deadlineMs=60_000, singleLineTokens=64)
        await start_session(lsp, capabilities_of("vscode@1.139"), options)
        assert (await wait_until_ready(lsp))["state"] == "ready"
        text, position = typing_state("self.radius = ")
        open_document(lsp, URI, text)
        params = types.InlineCompletionParams(
            text_document=types.TextDocumentIdentifier(uri=URI),
            position=position,
            context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Automatic),
        )
        future = lsp.protocol.send_request(types.TEXT_DOCUMENT_INLINE_COMPLETION, params, msg_id="slow-1")
        # Cancel once the remote engine works on it (a fixed sleep races a loaded machine).
        assert await asyncio.to_thread(live.wait_metric, "dgemma_requests_running", 1) == 1
        lsp.protocol.notify(types.CANCEL_REQUEST, types.CancelParams(id="slow-1"))
        with pytest.raises(JsonRpcException) as error:
            await asyncio.wrap_future(future)
        assert error.value.code == types.LSPErrorCodes.RequestCancelled
        cancelled = await asyncio.to_thread(
            live.wait_metric, "dgemma_requests_cancelled_total", 1, reason="disconnect"
        )
        assert cancelled == 1
        assert (await status(lsp))["cancelled"] >= 1


async def test_an_unreachable_endpoint_gives_a_clear_status(lsp: LanguageClient):
    endpoint = f"http://127.0.0.1:{free_port()}/v1"
    await start_session(lsp, capabilities_of("vscode@1.139"), remote_options(endpoint))
    state = await wait_until_ready(lsp)
    assert state["state"] == "failed"
    assert f"the endpoint {endpoint} is unreachable" in state["error"]
    await asyncio.sleep(0.2)
    assert any("unreachable" in m.message for m in lsp.messages), lsp.messages
    text, position = typing_state("total += ")
    open_document(lsp, URI, text)
    assert await inline(lsp, position) == []


async def test_an_endpoint_that_goes_away_is_reported_in_the_status(
    lsp: LanguageClient, model: DiffusionGemmaModel
):
    live = LiveServer(model, BASE_CONFIG).__enter__()
    try:
        await start_session(lsp, capabilities_of("vscode@1.139"), remote_options(live.url))
        assert (await wait_until_ready(lsp))["state"] == "ready"
    finally:
        await asyncio.to_thread(live.__exit__, None, None, None)
    text, position = typing_state("total += ")
    open_document(lsp, URI, text)
    assert await inline(lsp, position) == []
    state = await status(lsp)
    assert state["errors"] == 1 and "is unreachable" in (state["error"] or ""), state
