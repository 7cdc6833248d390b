"""No request kills the server: malformed params, unknown URIs and methods, huge and binary files,
positions out of range, handler errors (logged every time, shown once), and memory that stays
bounded over thousands of requests. All against the real `dgemma-lsp` process."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
import pytest_lsp
from lsprotocol import types
from pygls.exceptions import JsonRpcException
from pytest_lsp import LanguageClient

from dgemma_lsp.client import server_status as status
from tests.lsp.conftest import (
    SERVER,
    capabilities_of,
    change_document,
    init_options,
    open_document,
    raw_request,
    send_raw,
    start_session,
    wait_until_ready,
)

# One server for the whole module: every test also checks that it is still serving afterwards.
pytestmark = [pytest.mark.timeout(180), pytest.mark.asyncio(loop_scope="module")]

SAMPLE = "import os\n\n\ndef join(parts):\n    return os.path.join(*parts)\n\n\nresult = join(['a', 'b'])\n"


@pytest_lsp.fixture(config=SERVER, scope="module")
async def client(lsp_client: LanguageClient, lsp_checkpoint):
    await start_session(lsp_client, capabilities_of("vscode@1.139"), init_options(lsp_checkpoint, seed=0))
    await wait_until_ready(lsp_client)
    yield
    await lsp_client.shutdown_session()


def inline_params(uri: str, line: int, character: int) -> types.InlineCompletionParams:
    return types.InlineCompletionParams(
        text_document=types.TextDocumentIdentifier(uri=uri),
        position=types.Position(line=line, character=character),
        context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Automatic),
    )


async def code_actions(client: LanguageClient, uri: str, end_line: int):
    """The code actions for lines 0 to `end_line` (column 0 both)."""
    return await client.text_document_code_action_async(
        types.CodeActionParams(
            text_document=types.TextDocumentIdentifier(uri=uri),
            range=types.Range(
                start=types.Position(line=0, character=0), end=types.Position(line=end_line, character=0)
            ),
            context=types.CodeActionContext(diagnostics=[]),
        )
    )


async def still_serving(client: LanguageClient) -> None:
    uri = f"file:///alive/{time.monotonic_ns()}.py"
    open_document(client, uri, SAMPLE)
    result = await client.text_document_inline_completion_async(inline_params(uri, 7, 9))
    assert isinstance(result, types.InlineCompletionList)
    assert (await status(client))["state"] == "ready"


@pytest.mark.parametrize(
    "params",
    [
        {
            "textDocument": {"uri": "file:///x.py"},
            "position": {"line": -1, "character": 0},
            "context": {"triggerKind": 2},
        },
        {"textDocument": {"uri": "file:///x.py"}, "context": {"triggerKind": 2}},
        {
            "textDocument": {"uri": "file:///x.py"},
            "position": {"line": "one", "character": 0},
            "context": {"triggerKind": 2},
        },
        {"textDocument": "file:///x.py", "position": {"line": 0, "character": 0}},
        None,
    ],
)
async def test_malformed_params_get_an_invalid_params_answer(client: LanguageClient, params):
    message = {"jsonrpc": "2.0", "id": f"bad-{id(params)}", "method": types.TEXT_DOCUMENT_INLINE_COMPLETION}
    if params is not None:
        message["params"] = params
    with pytest.raises(JsonRpcException) as error:
        await asyncio.wait_for(send_raw(client, message), timeout=10)
    assert error.value.code == types.ErrorCodes.InvalidParams
    await still_serving(client)


async def test_unknown_methods_uris_and_documents(client: LanguageClient):
    with pytest.raises(JsonRpcException) as error:
        await raw_request(client, "dgemma/noSuchMethod", {"x": 1})
    assert error.value.code == types.ErrorCodes.MethodNotFound
    client.protocol.notify("dgemma/noSuchNotification", {"x": 1})
    result = await client.text_document_inline_completion_async(
        inline_params("file:///never/opened.py", 0, 0)
    )
    assert list(result.items) == []
    completion = await client.text_document_completion_async(
        types.CompletionParams(
            text_document=types.TextDocumentIdentifier(uri="file:///never/opened.py"),
            position=types.Position(line=0, character=0),
        )
    )
    assert list(completion.items) == []
    actions = await code_actions(client, "file:///never/opened.py", 0)
    assert actions == [] or list(actions) == []
    change_document(client, "file:///never/opened.py", 2, (0, 0), (0, 0), "x")
    client.text_document_did_close(
        types.DidCloseTextDocumentParams(
            text_document=types.TextDocumentIdentifier(uri="file:///never/opened.py")
        )
    )
    await still_serving(client)


async def test_positions_and_ranges_out_of_range_are_clamped(client: LanguageClient):
    uri = "file:///p/clamp.py"
    open_document(client, uri, SAMPLE)
    for line, character in [(10_000, 0), (0, 10_000), (7, 999), (2**31 - 1, 2**31 - 1)]:
        result = await client.text_document_inline_completion_async(inline_params(uri, line, character))
        assert isinstance(result, types.InlineCompletionList)
    change_document(client, uri, 2, (500, 3), (900, 0), "# appended\n")
    change_document(client, uri, 3, (5, 80), (2, 0), "")  # end before start
    await still_serving(client)


async def test_huge_and_binary_files_get_no_suggestion_quickly(client: LanguageClient):
    before = await status(client)
    huge = "x = 1\n" * 400_000  # 2.4 MB
    open_document(client, "file:///p/huge.py", huge)
    result = await client.text_document_inline_completion_async(
        inline_params("file:///p/huge.py", 200_000, 4)
    )
    assert list(result.items) == []  # and no model call (below): skipped before any work
    open_document(client, "file:///p/blob.bin", "PK\x03\x04\x00\x00\x14\x00" * 100, language="plaintext")
    result = await client.text_document_inline_completion_async(inline_params("file:///p/blob.bin", 0, 4))
    assert list(result.items) == []
    actions = await code_actions(client, "file:///p/huge.py", 100_000)
    assert list(actions) == []
    state = await status(client)
    assert state["skipped"] - before["skipped"] >= 2 and state["model_calls"] == before["model_calls"]
    await still_serving(client)


async def test_a_failing_handler_is_logged_every_time_and_shown_once(client: LanguageClient):
    bogus = types.CodeAction(
        title="dgemma: implement f()", kind="refactor.rewrite.implement", data={"uri": 42}
    )
    for _ in range(3):
        resolved = await client.code_action_resolve_async(bogus)
        assert resolved.edit is None
    broken = types.CodeAction(
        title="dgemma: implement f()",
        kind="refactor.rewrite.implement",
        data={"uri": "file:///p/x.py", "range": ["a", "b"]},
    )
    open_document(client, "file:///p/x.py", SAMPLE)
    for _ in range(3):
        await client.code_action_resolve_async(broken)
    await asyncio.sleep(0.2)
    lost = [m for m in client.messages if "lost its data" in m.message]
    failed = [m for m in client.messages if "code_action_resolve failed" in m.message]
    assert len(lost) == 1 and len(failed) == 1
    assert sum("code_action_resolve failed" in m.message for m in client.log_messages) == 3
    await still_serving(client)


async def test_memory_stays_bounded_over_thousands_of_requests(client: LanguageClient):
    pid = client._server.pid

    def rss_mb() -> float:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    async def churn(rounds: int) -> None:
        for i in range(rounds):
            uri = f"file:///churn/{i}.py"
            text = SAMPLE + f"\nvalue_{i} = join(['x'])\n" * 20
            open_document(client, uri, text)
            change_document(client, uri, 2, (8, 0), (8, 0), f"# edit {i}\n")
            # Mid-identifier (no model call), then a cache-served repeat of a model call.
            await client.text_document_inline_completion_async(inline_params(uri, 4, 12))
            await client.text_document_inline_completion_async(inline_params(uri, 7, 3))
            if i % 10 == 0:
                await client.text_document_inline_completion_async(inline_params(uri, 10, 8))
                await client.text_document_inline_completion_async(inline_params(uri, 10, 8))
            if i % 2 == 0:
                client.text_document_did_close(
                    types.DidCloseTextDocumentParams(text_document=types.TextDocumentIdentifier(uri=uri))
                )

    await churn(300)  # warm up allocator pools and caches
    before = rss_mb()
    await churn(1200)
    after = rss_mb()
    state = await status(client)
    assert state["requests"] >= 3000
    assert state["cache_entries"] <= 64 and state["inflight"] == 0
    assert state["documents"] <= 500
    assert after - before < 60, (before, after)
