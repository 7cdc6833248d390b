"""A minimal LSP client that starts the real `dgemma-lsp` process, for `dgemma bench-lsp` and
`dgemma suggest` (what an editor does, without the editor)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path

from dgemma_lsp.positions import Encoding, code_units, column_to_index


def _ignore(*args) -> None:
    """These commands do not show the server's log and status notifications."""


async def start_server(settings: dict):
    """Start `python -m dgemma_lsp` over stdio with `settings` and wait until its model is loaded.

    Returns `(client, status, seconds)`; `status` is the server's `dgemma.status` answer, whose
    `state` is `ready` or `failed` (then `error` says why).
    """
    from lsprotocol import types
    from pygls.lsp.client import LanguageClient

    client = LanguageClient("dgemma-cli", "1")
    for method in (types.WINDOW_LOG_MESSAGE, types.WINDOW_SHOW_MESSAGE, "dgemma/status"):
        client.feature(method)(_ignore)
    repo = Path(__file__).resolve().parent.parent
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(repo), env.get("PYTHONPATH", "")) if p)
    started = time.monotonic()
    await client.start_io(sys.executable, "-m", "dgemma_lsp", env=env)
    capabilities = types.ClientCapabilities(
        general=types.GeneralClientCapabilities(position_encodings=[types.PositionEncodingKind.Utf16]),
        text_document=types.TextDocumentClientCapabilities(
            inline_completion=types.InlineCompletionClientCapabilities(),
            synchronization=types.TextDocumentSyncClientCapabilities(),
        ),
    )
    await client.initialize_async(
        types.InitializeParams(capabilities=capabilities, initialization_options={"dgemma": settings})
    )
    client.initialized(types.InitializedParams())
    state = await server_status(client)
    while state.get("state") == "loading":
        await asyncio.sleep(0.2)
        state = await server_status(client)
    return client, state, time.monotonic() - started


async def server_status(client) -> dict:
    from lsprotocol import types

    return await client.workspace_execute_command_async(types.ExecuteCommandParams(command="dgemma.status"))


async def stop_server(client) -> None:
    try:
        await asyncio.wait_for(client.shutdown_async(None), timeout=10)
        client.exit(None)
        await asyncio.wait_for(client.stop(), timeout=10)
    except Exception:
        if client._server is not None and client._server.returncode is None:
            client._server.kill()


def utf16_length(text: str) -> int:
    return code_units(text, Encoding.UTF16)


def replaced_chars(rest: str, replaced) -> int:
    """Characters at the start of `rest` (the line after the cursor) that an item's range replaces."""
    return column_to_index(rest, replaced.end.character - replaced.start.character, Encoding.UTF16)


def open_document(client, uri: str, text: str, language: str = "python", version: int = 1) -> None:
    from lsprotocol import types

    client.text_document_did_open(
        types.DidOpenTextDocumentParams(
            text_document=types.TextDocumentItem(uri=uri, language_id=language, version=version, text=text)
        )
    )


def change_document(client, uri: str, version: int, start, end, text: str) -> None:
    """Replace the range from `start` to `end` ((line, character) each) with `text`."""
    from lsprotocol import types

    client.text_document_did_change(
        types.DidChangeTextDocumentParams(
            text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=version),
            content_changes=[
                types.TextDocumentContentChangePartial(
                    range=types.Range(
                        start=types.Position(line=start[0], character=start[1]),
                        end=types.Position(line=end[0], character=end[1]),
                    ),
                    text=text,
                )
            ],
        )
    )


def settings_from_args(args, **settings) -> dict:
    """Server settings from the common options (`--model`, `--steps`, `--setting KEY=JSON`)."""
    if args.model:
        settings["model"] = args.model
    if args.steps:
        settings["steps"] = args.steps
    for item in args.setting:
        key, _, value = item.partition("=")
        try:
            settings[key] = json.loads(value)
        except json.JSONDecodeError:  # a bare string: KEY=cuda
            settings[key] = value
    return settings
