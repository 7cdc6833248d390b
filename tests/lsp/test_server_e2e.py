"""End to end: the real `dgemma-lsp` process over stdio, a real engine model (tiny and random, so
nothing here depends on suggestion quality), and the capabilities VS Code 1.139 and Neovim send.

What is checked is protocol behaviour and the post-processing guarantees: capabilities, model
loading with progress, inline items at realistic cursors, typing through a suggestion, utf-8 and
utf-16 positions, cancellation, the completion fallback, and code actions whose edits parse.
"""

from __future__ import annotations

import asyncio
import sysconfig
from pathlib import Path

import pytest
import pytest_lsp
from lsprotocol import types
from pygls.exceptions import JsonRpcException
from pytest_lsp import LanguageClient

from dgemma_lsp import syntax
from dgemma_lsp.client import server_status as status
from tests.lsp.conftest import (
    SERVER,
    capabilities_of,
    change_document,
    init_options,
    open_document,
    raw_request,
    start_session,
    wait_for,
    wait_for_status,
    wait_until_ready,
)

pytestmark = pytest.mark.timeout(120)

TEXTWRAP = Path(sysconfig.get_paths()["stdlib"]) / "textwrap.py"
URI = "file:///work/project/wrap.py"


def typing_state(source: str, needle: str) -> tuple[str, types.Position]:
    """The file as it is while the user types the line holding `needle`, cursor right after it."""
    lines = source.split("\n")
    for number, line in enumerate(lines):
        index = line.find(needle)
        if index != -1:
            cut = index + len(needle)
            lines[number] = line[:cut]
            return "\n".join(lines), types.Position(line=number, character=cut)
    raise AssertionError(f"{needle!r} not in the source")


CURSORS = [
    "chunks = ",
    "lines = ",
    "self.width = ",
    "return ",
    "if ",
    "for ",
    "text = ",
    "indent = ",
    "while ",
    "raise ValueError(",
]


async def inline(
    client: LanguageClient,
    uri: str,
    position: types.Position,
    kind=types.InlineCompletionTriggerKind.Automatic,
    selected=None,
):
    return await client.text_document_inline_completion_async(
        types.InlineCompletionParams(
            text_document=types.TextDocumentIdentifier(uri=uri),
            position=position,
            context=types.InlineCompletionContext(trigger_kind=kind, selected_completion_info=selected),
        )
    )


def assert_item_is_safe(item: types.InlineCompletionItem, text: str, position: types.Position) -> None:
    """The post-processing guarantees, checked on what the editor receives."""
    line = text.split("\n")[position.line]
    assert item.range is not None
    assert item.range.start == position and item.range.end.line == position.line
    assert item.range.end.character >= position.character
    insert = item.insert_text if isinstance(item.insert_text, str) else item.insert_text.value
    assert insert.strip(), "never empty or whitespace-only"
    assert not any(ord(c) < 32 and c not in "\t\n" for c in insert), "no control characters"
    assert "<|" not in insert and "<eos>" not in insert, "no special tokens"
    rest = line[position.character :]
    if rest.strip():
        assert "\n" not in insert, "a single line when text follows the cursor"
        assert insert != rest[: len(insert)], "never just the text that is already there"


# --- VS Code 1.139 ---------------------------------------------------------------------------


@pytest_lsp.fixture(config=SERVER)
async def vscode(lsp_client: LanguageClient, lsp_checkpoint):
    lsp_client.init_result = await start_session(  # type: ignore[attr-defined]
        lsp_client, capabilities_of("vscode@1.139"), init_options(lsp_checkpoint, seed=0)
    )
    yield
    await lsp_client.shutdown_session()


async def test_vscode_capabilities_progress_and_status(vscode: LanguageClient):
    result = vscode.init_result
    caps = result.capabilities
    assert caps.position_encoding == types.PositionEncodingKind.Utf16
    assert caps.inline_completion_provider == types.InlineCompletionOptions(work_done_progress=False)
    assert caps.completion_provider is not None
    assert caps.code_action_provider.resolve_provider is True
    assert "refactor.rewrite" in caps.code_action_provider.code_action_kinds
    assert "dgemma.status" in caps.execute_command_provider.commands
    assert result.server_info.name == "dgemma-lsp"

    state = await wait_until_ready(vscode)
    assert state["state"] == "ready", state

    # $/progress from begin to end, and the status notification for status bars (both are sent
    # after the state turns ready, so wait for them rather than for a fixed time).
    def reports() -> list:
        return [r for values in vscode.progress_reports.values() for r in values]

    await wait_for(lambda: any(isinstance(r, types.WorkDoneProgressEnd) for r in reports()))
    await wait_for(lambda: "ready" in vscode.statuses)
    reports = reports()
    assert isinstance(reports[0], types.WorkDoneProgressBegin)
    assert isinstance(reports[-1], types.WorkDoneProgressEnd) and "ready" in reports[-1].message
    assert "ready" in vscode.statuses
    assert any(r.method == "workspace/didChangeConfiguration" for r in vscode.registrations)


async def test_inline_completion_arrives_at_realistic_cursors(vscode: LanguageClient):
    await wait_until_ready(vscode)
    source = TEXTWRAP.read_text()
    items = 0
    for version, needle in enumerate(CURSORS, start=1):
        text, position = typing_state(source, needle)
        if version == 1:
            open_document(vscode, URI, text)
        else:
            vscode.text_document_did_change(
                types.DidChangeTextDocumentParams(
                    text_document=types.VersionedTextDocumentIdentifier(uri=URI, version=version),
                    content_changes=[types.TextDocumentContentChangeWholeDocument(text=text)],
                )
            )
        kind = (
            types.InlineCompletionTriggerKind.Invoked
            if version % 2
            else types.InlineCompletionTriggerKind.Automatic
        )
        result = await inline(vscode, URI, position, kind)
        assert isinstance(result, types.InlineCompletionList)
        for item in result.items:
            assert_item_is_safe(item, text, position)
            assert item.command is not None and item.command.command == "dgemma.acceptSuggestion"
            items += 1
    state = await status(vscode)
    assert state["model_calls"] >= 1 and state["errors"] == 0
    assert items >= 1, state


async def test_typing_through_a_suggestion_is_served_from_the_cache(vscode: LanguageClient):
    await wait_until_ready(vscode)
    # Astral characters before the cursor: utf-16 columns differ from string indices.
    source = 'GREETING = "héllo 😋 wörld"\n\n\n' + TEXTWRAP.read_text()
    found = None
    for version, needle in enumerate(CURSORS, start=1):
        text, position = typing_state(source, needle)
        if version == 1:
            open_document(vscode, URI, text)
        else:
            vscode.text_document_did_change(
                types.DidChangeTextDocumentParams(
                    text_document=types.VersionedTextDocumentIdentifier(uri=URI, version=version),
                    content_changes=[types.TextDocumentContentChangeWholeDocument(text=text)],
                )
            )
        result = await inline(vscode, URI, position)
        single = [i for i in result.items if "\n" not in i.insert_text and len(i.insert_text) >= 2]
        if single:
            found = (version, text, position, single[0].insert_text)
            break
    assert found is not None, "no single-line suggestion at any cursor"
    version, text, position, suggestion = found
    before = await status(vscode)
    typed = suggestion[0]
    change_document(
        vscode,
        URI,
        version + 1,
        (position.line, position.character),
        (position.line, position.character),
        typed,
    )
    moved = types.Position(
        line=position.line, character=position.character + len(typed.encode("utf-16-le")) // 2
    )
    result = await inline(vscode, URI, moved)
    after = await status(vscode)
    assert [i.insert_text for i in result.items] == [suggestion[1:]]
    assert result.items[0].range.start == moved
    assert list(result.items[0].command.arguments) == [{"source": "cache"}]
    assert after["model_calls"] == before["model_calls"] and after["cache_hits"] == before["cache_hits"] + 1


async def test_selected_completion_item_is_extended_on_its_range(vscode: LanguageClient):
    await wait_until_ready(vscode)
    text, position = typing_state(TEXTWRAP.read_text(), "chunks = self.")
    open_document(vscode, URI, text)
    start = types.Position(line=position.line, character=position.character)
    selected = types.SelectedCompletionInfo(
        range=types.Range(start=start, end=position), text="_split_chunks"
    )
    result = await inline(vscode, URI, position, types.InlineCompletionTriggerKind.Automatic, selected)
    for item in result.items:
        assert item.insert_text.startswith("_split_chunks") and item.range.start == start


async def slow_session(client: LanguageClient, checkpoint) -> types.InlineCompletionParams:
    """A server whose inline completions take seconds (256 denoising steps of a 64-token canvas on
    the tiny model), and the request for a cursor in an open document."""
    await start_session(
        client,
        capabilities_of("vscode@1.139"),
        init_options(checkpoint, steps=256, deadlineMs=60_000, singleLineTokens=64, seed=0),
    )
    await wait_until_ready(client)
    text, position = typing_state(TEXTWRAP.read_text(), "chunks = ")
    open_document(client, URI, text)
    return types.InlineCompletionParams(
        text_document=types.TextDocumentIdentifier(uri=URI),
        position=position,
        context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Automatic),
    )


async def test_cancel_request_stops_the_engine_between_steps(fresh_client: LanguageClient, lsp_checkpoint):
    params = await slow_session(fresh_client, lsp_checkpoint)
    future = fresh_client.protocol.send_request(
        types.TEXT_DOCUMENT_INLINE_COMPLETION, params, msg_id="slow-1"
    )
    await wait_for_status(fresh_client, lambda s: s["model_calls"] == 1)  # the engine is at work
    fresh_client.protocol.notify(types.CANCEL_REQUEST, types.CancelParams(id="slow-1"))
    with pytest.raises(JsonRpcException) as error:
        await asyncio.wrap_future(future)
    assert error.value.code == types.LSPErrorCodes.RequestCancelled
    # The engine stopped between steps: a generation that ran its 256 steps to the end and was
    # dropped afterwards would count as cancelled but not as interrupted.
    state = await wait_for_status(fresh_client, lambda s: s["interrupted"] >= 1)
    assert state["cancelled"] >= 1 and state["errors"] == 0
    fresh_client.workspace_did_change_configuration(
        types.DidChangeConfigurationParams(settings={"dgemma": {"steps": 2, "singleLineTokens": 8}})
    )
    result = await inline(fresh_client, URI, params.position)
    assert isinstance(result, types.InlineCompletionList)
    assert (await status(fresh_client))["model_calls"] == 2


async def test_a_newer_request_for_the_same_document_cancels_the_older(
    fresh_client: LanguageClient, lsp_checkpoint
):
    params = await slow_session(fresh_client, lsp_checkpoint)
    older = fresh_client.protocol.send_request(types.TEXT_DOCUMENT_INLINE_COMPLETION, params, msg_id="older")
    await wait_for_status(fresh_client, lambda s: s["model_calls"] == 1)  # the engine is at work
    newer = fresh_client.protocol.send_request(types.TEXT_DOCUMENT_INLINE_COMPLETION, params, msg_id="newer")
    result = await asyncio.wrap_future(older)
    assert isinstance(result, types.InlineCompletionList) and list(result.items) == []
    assert (await status(fresh_client))["interrupted"] == 1  # stopped between steps, not run out
    fresh_client.protocol.notify(types.CANCEL_REQUEST, types.CancelParams(id="newer"))
    with pytest.raises(JsonRpcException):
        await asyncio.wrap_future(newer)
    state = await status(fresh_client)
    assert state["cancelled"] >= 1


# --- Neovim -------------------------------------------------------------------------------------


@pytest_lsp.fixture(config=SERVER)
async def neovim012(lsp_client: LanguageClient, lsp_checkpoint):
    lsp_client.init_result = await start_session(  # type: ignore[attr-defined]
        lsp_client, capabilities_of("neovim@0.12"), init_options(lsp_checkpoint, seed=0)
    )
    yield
    await lsp_client.shutdown_session()


async def test_neovim_utf8_positions(neovim012: LanguageClient):
    assert neovim012.init_result.capabilities.position_encoding == types.PositionEncodingKind.Utf8
    await wait_until_ready(neovim012)
    source = 'GREETING = "héllo 😋 wörld"\n\n\n' + TEXTWRAP.read_text()
    for version, needle in enumerate(CURSORS, start=1):
        text, position = typing_state(source, needle)
        # Put astral and accented characters before the cursor on its own line.
        lines = text.split("\n")
        lines[position.line] = lines[position.line].replace(needle, "é😋=0;" + needle, 1)
        text = "\n".join(lines)
        column = len(lines[position.line].encode("utf-8"))
        position = types.Position(line=position.line, character=column)
        if version == 1:
            open_document(neovim012, URI, text)
        else:
            neovim012.text_document_did_change(
                types.DidChangeTextDocumentParams(
                    text_document=types.VersionedTextDocumentIdentifier(uri=URI, version=version),
                    content_changes=[types.TextDocumentContentChangeWholeDocument(text=text)],
                )
            )
        result = await inline(neovim012, URI, position)
        for item in result.items:
            # The range is in utf-8 bytes: it starts exactly at the end of the typed line.
            assert item.range.start == position
            assert_item_is_safe(item, text, position)
    assert (await status(neovim012))["position_encoding"] == "utf-8"


@pytest_lsp.fixture(config=SERVER)
async def neovim011(lsp_client: LanguageClient, lsp_checkpoint):
    await start_session(lsp_client, capabilities_of("neovim@0.11"), init_options(lsp_checkpoint, seed=0))
    yield
    await lsp_client.shutdown_session()


async def test_completion_fallback_for_clients_without_inline_completion(neovim011: LanguageClient):
    await wait_until_ready(neovim011)
    source = TEXTWRAP.read_text()
    items = []
    for version, needle in enumerate(CURSORS, start=1):
        text, position = typing_state(source, needle)
        if version == 1:
            open_document(neovim011, URI, text)
        else:
            neovim011.text_document_did_change(
                types.DidChangeTextDocumentParams(
                    text_document=types.VersionedTextDocumentIdentifier(uri=URI, version=version),
                    content_changes=[types.TextDocumentContentChangeWholeDocument(text=text)],
                )
            )
        result = await neovim011.text_document_completion_async(
            types.CompletionParams(text_document=types.TextDocumentIdentifier(uri=URI), position=position)
        )
        assert isinstance(result, types.CompletionList) and result.is_incomplete
        for item in result.items:
            edit = item.text_edit
            assert edit.range.end.line == position.line == edit.range.start.line
            assert edit.range.start.character <= position.character <= edit.range.end.character
            line = text.split("\n")[position.line]
            word = line[edit.range.start.character : position.character]
            assert edit.new_text.startswith(word) and edit.new_text[len(word) :].strip()
            items.append(item)
    assert items, "no completion item at any cursor"


async def test_completion_is_left_to_inline_completion_in_vscode(vscode: LanguageClient):
    await wait_until_ready(vscode)
    text, position = typing_state(TEXTWRAP.read_text(), "chunks = ")
    open_document(vscode, URI, text)
    result = await vscode.text_document_completion_async(
        types.CompletionParams(text_document=types.TextDocumentIdentifier(uri=URI), position=position)
    )
    assert result.items == [] or list(result.items) == []
    assert (await status(vscode))["model_calls"] == 0


# --- code actions ---------------------------------------------------------------------------------

ACTIONS_PY = """import math


class Shape:
    def __init__(self, kind, size):
        self.kind = kind
        self.size = size

    def area(self):
        pass

    def perimeter(self):
        if self.kind == "circle":
            ...
        # TODO: squares
        return ...


def describe(shape):
    name = shape.kind.title()
    size = round(shape.size, 2)
    return f"{name} of size {size}"
"""

ACTIONS_JS = """function add(a, b) {
}

function scale(values, factor) {
  return values.map((v) => v * factor);
}
"""


def apply_workspace_edit(text: str, edit: types.WorkspaceEdit, uri: str) -> str:
    if edit.document_changes:
        edits = [e for change in edit.document_changes for e in change.edits]
        assert all(change.text_document.uri == uri for change in edit.document_changes)
    else:
        edits = list(edit.changes[uri])
    lines = text.split("\n")
    starts = [0]
    for line in lines[:-1]:
        starts.append(starts[-1] + len(line) + 1)

    def offset(position: types.Position) -> int:
        # utf-16 columns; the test files are ASCII.
        return starts[position.line] + position.character

    for e in sorted(edits, key=lambda e: offset(e.range.start), reverse=True):
        text = text[: offset(e.range.start)] + e.new_text + text[offset(e.range.end) :]
    return text


async def list_actions(client, uri, start, end=None):
    return await client.text_document_code_action_async(
        types.CodeActionParams(
            text_document=types.TextDocumentIdentifier(uri=uri),
            range=types.Range(start=start, end=end or start),
            context=types.CodeActionContext(diagnostics=[], trigger_kind=types.CodeActionTriggerKind.Invoked),
        )
    )


@pytest.mark.parametrize(
    ("uri", "text", "language", "where", "selection", "kinds"),
    [
        (
            "file:///p/shapes.py",
            ACTIONS_PY,
            "python",
            "pass",
            None,
            {"refactor.rewrite.implement", "refactor.rewrite.docstring"},
        ),
        (
            "file:///p/shapes.py",
            ACTIONS_PY,
            "python",
            '"circle"',
            None,
            {"refactor.rewrite.fillPlaceholders", "refactor.rewrite.docstring"},
        ),
        (
            "file:///p/shapes.py",
            ACTIONS_PY,
            "python",
            "name = ",
            "    name = shape.kind.title()\n    size = round(shape.size, 2)",
            {"refactor.rewrite.selection", "refactor.rewrite.docstring"},
        ),
        (
            "file:///p/add.js",
            ACTIONS_JS,
            "javascript",
            "add(a, b) {",
            None,
            {"refactor.rewrite.implement", "refactor.rewrite.docstring"},
        ),
    ],
)
async def test_every_code_action_returns_an_edit_that_parses(
    vscode: LanguageClient, uri, text, language, where, selection, kinds
):
    await wait_until_ready(vscode)
    open_document(vscode, uri, text, language)
    index = text.index(where)
    line = text[:index].count("\n")
    start = types.Position(line=line, character=index - (text.rfind("\n", 0, index) + 1))
    end = None
    if selection is not None:
        sel_start = text.index(selection)
        sel_end = sel_start + len(selection)
        start = types.Position(
            line=text[:sel_start].count("\n"), character=sel_start - (text.rfind("\n", 0, sel_start) + 1)
        )
        end = types.Position(
            line=text[:sel_end].count("\n"), character=sel_end - (text.rfind("\n", 0, sel_end) + 1)
        )
    calls_before = (await status(vscode))["model_calls"]
    listed = await list_actions(vscode, uri, start, end)
    assert {a.kind for a in listed} == kinds
    assert all(a.edit is None and a.data is not None for a in listed), "computed on resolve, not when listed"
    assert (await status(vscode))["model_calls"] == calls_before, "listing must be cheap"
    baseline = syntax.text_error_count(language, text)
    for action in listed:
        resolved = await vscode.code_action_resolve_async(action)
        assert resolved.edit is not None, (action.title, [m.message for m in vscode.messages])
        after = apply_workspace_edit(text, resolved.edit, uri)
        assert after != text
        assert syntax.text_error_count(language, after) <= baseline, (action.title, after)


async def test_code_actions_for_clients_without_resolve_apply_through_a_command(
    fresh_client: LanguageClient, lsp_checkpoint
):
    caps = capabilities_of("neovim@0.11")
    caps.text_document.code_action.resolve_support = None
    caps.text_document.code_action.data_support = False
    await start_session(fresh_client, caps, init_options(lsp_checkpoint, seed=0))
    await wait_until_ready(fresh_client)
    uri = "file:///p/add.js"
    open_document(fresh_client, uri, ACTIONS_JS, "javascript")
    params = types.CodeActionParams(
        text_document=types.TextDocumentIdentifier(uri=uri),
        range=types.Range(start=types.Position(line=0, character=5), end=types.Position(line=0, character=5)),
        context=types.CodeActionContext(diagnostics=[]),
    )
    listed = await raw_request(fresh_client, types.TEXT_DOCUMENT_CODE_ACTION, params)
    docstring = next(a for a in listed if a["kind"] == "refactor.rewrite.docstring")
    assert "data" not in docstring and docstring["command"]["command"] == "dgemma.applyCodeAction"
    applied = await fresh_client.workspace_execute_command_async(
        types.ExecuteCommandParams(
            command=docstring["command"]["command"], arguments=docstring["command"]["arguments"]
        )
    )
    assert applied is True
    edit = fresh_client.applied_edits[-1]
    after = apply_workspace_edit(ACTIONS_JS, edit, uri)
    assert after.startswith("/**") and syntax.text_error_count("javascript", after) == 0


async def test_settings_from_initialization_options_and_workspace_configuration(
    fresh_client: LanguageClient, lsp_checkpoint
):
    # The client answers workspace/configuration (section dgemma) with this:
    fresh_client.set_configuration({"enabledLanguages": ["go"], "maxLines": "many"}, section="dgemma")
    await start_session(fresh_client, capabilities_of("vscode@1.139"), init_options(lsp_checkpoint, steps=-4))
    await wait_until_ready(fresh_client)
    await asyncio.sleep(0.2)
    warnings = [m.message for m in fresh_client.messages if m.type == types.MessageType.Warning]
    assert any("dgemma.steps=-4" in w for w in warnings), warnings
    assert any("dgemma.maxLines='many'" in w for w in warnings), warnings
    text, position = typing_state(TEXTWRAP.read_text(), "chunks = ")
    open_document(fresh_client, URI, text)
    await inline(fresh_client, URI, position)
    state = await status(fresh_client)
    assert state["model_calls"] == 0 and state["skipped"] == 1  # python is not an enabled language
    # A pushed change of the section takes effect at once.
    fresh_client.workspace_did_change_configuration(
        types.DidChangeConfigurationParams(settings={"dgemma": {"enabledLanguages": ["*"]}})
    )
    await inline(fresh_client, URI, position)
    assert (await status(fresh_client))["model_calls"] == 1
