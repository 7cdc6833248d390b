"""Start-up over a real stdio session: requests that arrive while the model loads wait for it
(up to their deadline) and the client sees the load's progress.

These requests are deterministically early: the client writes them right after `initialized`,
and the server only creates its backend once the client has answered its
`workspace/configuration` request, an answer that comes after them in the pipe.
"""

from __future__ import annotations

import asyncio

import pytest
from lsprotocol import types
from pytest_lsp import LanguageClient

from dgemma_lsp import actions
from dgemma_lsp.client import server_status as status
from dgemma_lsp.documents import Document
from tests.lsp.conftest import (
    add_client_handlers,
    capabilities_of,
    init_options,
    open_document,
    wait_for,
    wait_until_ready,
)

pytestmark = pytest.mark.timeout(120)

URI = "file:///work/project/start.py"
TEXT = "def total(values):\n    result = 0\n    for value in values:\n        result += \n    return result\n"
CURSOR = types.Position(line=3, character=18)  # after "result += "


def send_inline(client: LanguageClient) -> asyncio.Future:
    """Write the request now (an `*_async` client method would only write it when awaited)."""
    params = types.InlineCompletionParams(
        text_document=types.TextDocumentIdentifier(uri=URI),
        position=CURSOR,
        context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Automatic),
    )
    return asyncio.wrap_future(client.protocol.send_request(types.TEXT_DOCUMENT_INLINE_COMPLETION, params))


async def initialize(client: LanguageClient, checkpoint, **settings) -> None:
    """`initialize` and `initialized`, without waiting for anything after them."""
    add_client_handlers(client)
    await client.initialize_session(
        types.InitializeParams(
            capabilities=capabilities_of("vscode@1.139"),
            initialization_options=init_options(checkpoint, seed=0, **settings),
        )
    )


async def test_an_inline_request_during_start_up_waits_for_the_model(
    fresh_client: LanguageClient, lsp_checkpoint
):
    await initialize(fresh_client, lsp_checkpoint, deadlineMs=60_000)
    open_document(fresh_client, URI, TEXT)
    result = await send_inline(fresh_client)
    assert isinstance(result, types.InlineCompletionList)
    state = await status(fresh_client)
    # Answered by the model once it had loaded, not with an instant empty list.
    assert state["state"] == "ready" and state["progress"] is None
    assert state["waited_for_model"] == 1 and state["model_calls"] == 1, state
    assert state["requests"] == 1 and state["errors"] == 0


async def test_the_client_sees_the_load_progress(fresh_client: LanguageClient, lsp_checkpoint):
    await initialize(fresh_client, lsp_checkpoint)
    await wait_until_ready(fresh_client)
    await wait_for(lambda: "ready" in fresh_client.statuses)
    # dgemma/status: loading with the load's steps and a percentage, then ready without them.
    updates = fresh_client.status_updates  # pygls hands unknown notifications' params as objects
    loading = [u for u in updates if u.state == "loading"]
    messages = [u.progress.message for u in loading if u.progress is not None]
    assert "importing the engine" in messages and "warming up" in messages, loading
    assert all(0 <= u.progress.percentage <= 100 for u in loading if u.progress is not None)
    assert updates[-1].state == "ready" and updates[-1].progress is None
    # $/progress: begin, the same steps as reports, end.
    await wait_for(
        lambda: any(
            isinstance(r, types.WorkDoneProgressEnd)
            for values in fresh_client.progress_reports.values()
            for r in values
        )
    )
    reports = [r for values in fresh_client.progress_reports.values() for r in values]
    assert isinstance(reports[0], types.WorkDoneProgressBegin)
    assert "warming up" in [r.message for r in reports if isinstance(r, types.WorkDoneProgressReport)]


async def test_a_newer_request_during_start_up_ends_the_wait_of_the_older(
    fresh_client: LanguageClient, lsp_checkpoint
):
    await initialize(fresh_client, lsp_checkpoint, deadlineMs=60_000)
    open_document(fresh_client, URI, TEXT)
    older = send_inline(fresh_client)
    newer = send_inline(fresh_client)
    older_result, newer_result = await asyncio.gather(older, newer)
    assert list(older_result.items) == []  # superseded while it waited: no model call for it
    assert isinstance(newer_result, types.InlineCompletionList)
    state = await status(fresh_client)
    assert state["waited_for_model"] == 1 and state["model_calls"] == 1, state


async def test_a_request_during_start_up_for_a_closed_document_stops_waiting(
    fresh_client: LanguageClient, lsp_checkpoint
):
    await initialize(fresh_client, lsp_checkpoint, deadlineMs=60_000)
    open_document(fresh_client, URI, TEXT)
    request = send_inline(fresh_client)
    fresh_client.text_document_did_close(
        types.DidCloseTextDocumentParams(text_document=types.TextDocumentIdentifier(uri=URI))
    )
    assert list((await request).items) == []
    state = await wait_until_ready(fresh_client)
    assert state["waited_for_model"] == 0 and state["model_calls"] == 0, state


ADD_JS = "function add(a, b) {\n}\n"


async def test_a_code_action_resolved_during_start_up_waits_for_the_model(
    fresh_client: LanguageClient, lsp_checkpoint
):
    # The action as the server would list it (listing needs no model), resolved at once.
    document = Document("file:///p/add.js", ADD_JS, "javascript", 1)
    docstring = next(
        c
        for c in actions.find_actions(ADD_JS, "javascript", document.tree(), 5, 5)
        if c.action == "docstring"
    )
    data = {"uri": document.uri, "version": 1, "action": "docstring", "range": [5, 5]}
    data.update(start=docstring.start, end=docstring.end)
    await initialize(fresh_client, lsp_checkpoint)
    open_document(fresh_client, document.uri, ADD_JS, "javascript")
    action = types.CodeAction(title=docstring.title, kind=docstring.kind, data=data)
    resolving = asyncio.wrap_future(fresh_client.protocol.send_request(types.CODE_ACTION_RESOLVE, action))
    resolved = await resolving
    # Not "the model is not loaded yet": it waited, then wrote the docstring.
    assert resolved.edit is not None, [m.message for m in fresh_client.messages]
    assert (await status(fresh_client))["state"] == "ready"
    assert not any("not loaded yet" in m.message for m in fresh_client.messages)
