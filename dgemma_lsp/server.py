"""The language server: one short handler per LSP feature.

Each handler fetches the document, calls one domain function (completion.py, actions.py) and
converts the answer to LSP types. Blocking model work runs on one worker thread; handlers are
guarded so that no request can take the server down.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import traceback
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from lsprotocol import types
from pygls.exceptions import JsonRpcException
from pygls.lsp.server import LanguageServer
from pygls.protocol import LanguageServerProtocol, lsp_method
from pygls.protocol.json_rpc import JsonRPCNotification

from dgemma_lsp import __version__, actions
from dgemma_lsp.backends.base import Backend, BackendState, create_backend
from dgemma_lsp.completion import CancelToken, Completer, Outcome
from dgemma_lsp.documents import Document, DocumentStore, uri_to_path
from dgemma_lsp.positions import Encoding
from dgemma_lsp.settings import SECTION, Settings, parse_settings
from engine.errors import EngineError, GenerationCancelled
from engine.requests import InfillRequest

logger = logging.getLogger("dgemma_lsp")

STATUS_NOTIFICATION = "dgemma/status"
CMD_ACCEPT = "dgemma.acceptSuggestion"
CMD_STATUS = "dgemma.status"
CMD_APPLY_ACTION = "dgemma.applyCodeAction"

_IGNORED = JsonRPCNotification(method="$/dgemma/ignored", jsonrpc="ignored", params=None)


class DgemmaProtocol(LanguageServerProtocol):
    """pygls' protocol with two fixes: requests whose params do not deserialize get an
    InvalidParams answer (pygls 2.1.1 drops them and the client waits forever), and documents
    live in the server's own store (it needs every change as an edit for incremental parsing)."""

    def structure_message(self, data: dict[str, Any]):
        try:
            return super().structure_message(data)
        except JsonRpcException as error:
            method = data.get("method")
            if "id" in data and method:
                self._send_response(
                    data["id"],
                    error=types.ResponseError(
                        code=types.ErrorCodes.InvalidParams,
                        message=f"invalid params for {method}: {error.__cause__ or error}",
                    ),
                )
            logger.warning(
                "dropped a malformed %s message: %s", method or "response", error.__cause__ or error
            )
            return _IGNORED

    def handle_message(self, message):
        if message is _IGNORED:
            return
        super().handle_message(message)

    @lsp_method(types.TEXT_DOCUMENT_DID_OPEN)
    def lsp_text_document__did_open(self, params: types.DidOpenTextDocumentParams):
        if (handler := self.fm.features.get(types.TEXT_DOCUMENT_DID_OPEN)) is not None:
            yield handler, (params,), None

    @lsp_method(types.TEXT_DOCUMENT_DID_CHANGE)
    def lsp_text_document__did_change(self, params: types.DidChangeTextDocumentParams):
        if (handler := self.fm.features.get(types.TEXT_DOCUMENT_DID_CHANGE)) is not None:
            yield handler, (params,), None

    @lsp_method(types.TEXT_DOCUMENT_DID_CLOSE)
    def lsp_text_document__did_close(self, params: types.DidCloseTextDocumentParams):
        if (handler := self.fm.features.get(types.TEXT_DOCUMENT_DID_CLOSE)) is not None:
            yield handler, (params,), None


class DgemmaServer(LanguageServer):
    def __init__(self) -> None:
        super().__init__("dgemma-lsp", __version__, protocol_cls=DgemmaProtocol, max_workers=4)
        self.settings = Settings()
        self.init_options: Any = None
        self.documents = DocumentStore()
        self.completer = Completer(self.documents, self.settings)
        self.backend: Backend | None = None
        self.encoding = Encoding.UTF16
        self.model_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dgemma-model")
        self.load_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dgemma-load")
        self.inflight: dict[str, CancelToken] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self.pending_problems: list[str] = []
        self._shown: set[str] = set()
        self._load_task: asyncio.Future | None = None
        # Set once no model load is under way (the model is ready, failed, or none is configured);
        # clear until the first settings arrive and while a model loads. Requests wait on it.
        self.model_settled = asyncio.Event()
        self.load_progress: dict | None = None  # {"message", "percentage"} while the model loads

    # --- messages to the user ----------------------------------------------------------------

    def log(self, message: str, kind: types.MessageType = types.MessageType.Log) -> None:
        logger.info(message)
        try:
            self.window_log_message(types.LogMessageParams(type=kind, message=message))
        except Exception:  # no transport yet (unit use) or the client is gone
            logger.debug("could not send a log message", exc_info=True)

    def report(
        self,
        message: str,
        kind: types.MessageType = types.MessageType.Error,
        error: BaseException | None = None,
    ):
        """Log every time; show each distinct message to the user once (no spam)."""
        detail = "".join(traceback.format_exception(error)) if error is not None else ""
        self.log(message + (f"\n{detail}" if detail else ""), kind)
        if message in self._shown:
            return
        if len(self._shown) > 200:
            self._shown.clear()
        self._shown.add(message)
        try:
            self.window_show_message(types.ShowMessageParams(type=kind, message=f"dgemma: {message}"))
        except Exception:
            logger.debug("could not show a message", exc_info=True)

    def report_server_error(self, error: Exception, source) -> None:
        self.report(f"internal error ({type(error).__name__}: {error})", error=error)

    def call_soon(self, fn: Callable, *args) -> None:
        """Run `fn` on the event loop (transport writes must not come from worker threads)."""
        if self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(fn, *args)

    def send_status(self, progress: dict | None = None) -> None:
        """`progress`: the load step this notification reports (the load thread may be further on)."""
        try:
            status = self.status()
            if progress is not None:
                status["progress"] = progress
            self.protocol.notify(STATUS_NOTIFICATION, status)
        except Exception:
            logger.debug("could not send the status", exc_info=True)

    def status(self) -> dict:
        backend = self.backend
        return {
            "state": backend.state.value if backend is not None else "none",
            "enabled": self.settings.enabled,
            "backend": backend.description if backend is not None else None,
            "error": str(backend.error) if backend is not None and backend.error is not None else None,
            "documents": len(self.documents),
            "cache_entries": len(self.completer.cache),
            "cache_chars": self.completer.cache.chars,
            "token_cache_entries": len(self.completer.counter),
            "inflight": len(self.inflight),
            "position_encoding": self.encoding.value,
            "progress": self.load_progress,
            "context_budget": self.completer.context_budget(),
            "prefill_ms": getattr(backend, "prefill_ms", None),
            **self.completer.stats.as_dict(),
        }

    # --- settings and backend -----------------------------------------------------------------

    def apply_settings(self, *payloads: Any) -> None:
        settings, problems = parse_settings(self.init_options, *payloads)
        for problem in problems:
            self.report(problem, types.MessageType.Warning)
        previous = self.settings
        self.settings = settings
        self.completer.settings = settings
        self.documents.max_chars = settings.max_file_chars
        if self.backend is None or previous.backend_key() != settings.backend_key():
            self.start_backend()
        else:
            self.send_status()  # e.g. suggestions turned on or off

    def start_backend(self) -> None:
        old = self.backend
        if old is not None:
            old.close()
        try:
            backend = create_backend(self.settings)
        except EngineError as error:
            self.backend = None
            self.completer.set_backend(None)
            self.report(str(error))
            self.model_settled.set()
            return
        self.backend = backend
        self.completer.set_backend(backend)
        if self.loop is not None:
            self.model_settled.clear()
            self.load_progress = {"message": "starting", "percentage": 0}
            self._load_task = asyncio.ensure_future(self._load(backend))

    async def _load(self, backend: Backend) -> None:
        token = str(uuid.uuid4())
        window = self.client_capabilities.window if self.protocol.client_capabilities else None
        progress = bool(window and window.work_done_progress)
        if progress:
            try:
                await self.work_done_progress.create_async(token)
                self.work_done_progress.begin(
                    token,
                    types.WorkDoneProgressBegin(title="dgemma", message="loading the model", percentage=0),
                )
            except Exception:
                progress = False

        def on_progress(message: str, percentage: int | None) -> None:
            # From the load thread: $/progress for clients that show it, dgemma/status for the rest.
            self.load_progress = {"message": message, "percentage": percentage}
            self.call_soon(self.send_status, self.load_progress)
            if progress:
                value = types.WorkDoneProgressReport(message=message, percentage=percentage)
                self.call_soon(self.work_done_progress.report, token, value)

        started = time.monotonic()
        self.send_status()
        await asyncio.get_running_loop().run_in_executor(self.load_executor, backend.start, on_progress)
        seconds = time.monotonic() - started
        if backend is not self.backend:
            backend.close()  # settings changed while it loaded (the newer load settles)
            return
        self.load_progress = None
        self.model_settled.set()
        self.completer.set_backend(backend)
        if backend.state is BackendState.READY:
            message = f"model ready: {backend.description} (loaded in {seconds:.1f} s)"
            self.log(message, types.MessageType.Info)
        else:
            message = f"the model could not be loaded: {backend.error}"
            self.report(message, error=backend.error if not isinstance(backend.error, EngineError) else None)
        if progress:
            self.work_done_progress.end(token, types.WorkDoneProgressEnd(message=message))
        self.send_status()

    # --- suggestions ------------------------------------------------------------------------

    def document(self, uri: str) -> Document | None:
        return self.documents.get(uri)

    def model_ready(self) -> bool:
        return self.backend is not None and self.backend.state is BackendState.READY

    async def wait_for_model(self, deadline: float, token: CancelToken | None = None) -> bool:
        """Wait until the model is ready (True), or its load failed, `deadline` (monotonic) passed
        or `token` was cancelled (False). A request that arrives during start-up waits here
        instead of getting an empty answer that tells the client nothing."""
        while not self.model_ready():
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.model_settled.is_set() or (token is not None and token.cancelled):
                return self.model_ready()
            # Short slices: a newer request for the document cancels `token` from another task.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.model_settled.wait(), timeout=min(remaining, 0.05))
        return True

    def supersede(self, uri: str) -> CancelToken:
        """A token for a new request on `uri`; the document's previous request is cancelled."""
        token = CancelToken()
        previous = self.inflight.get(uri)
        if previous is not None:
            previous.cancel("superseded by a newer request")
        self.inflight[uri] = token
        return token

    def release(self, uri: str, token: CancelToken) -> None:
        if self.inflight.get(uri) is token:
            del self.inflight[uri]

    async def plan_when_loaded(self, document: Document, offset: int, started: float) -> Outcome:
        """Plan a request that arrived before the model was ready, once it is (within the deadline)."""
        token = self.supersede(document.uri)
        try:
            ready = await self.wait_for_model(started + self.settings.deadline_ms / 1000, token)
        finally:
            self.release(document.uri, token)
        if not ready:
            if not self.model_settled.is_set():
                self.send_status()  # why the answer is empty: still loading, and how far
            state = self.backend.state.value if self.backend is not None else "none"
            reason = token.reason if token.cancelled else f"model {state} at the deadline"
            return Outcome(None, "not-ready", reason)
        self.completer.stats.waited_for_model += 1
        return self.completer.plan(document, offset, again=True)

    async def suggest(self, document: Document, offset: int, started: float) -> Outcome:
        outcome = self.completer.plan(document, offset)
        if outcome.source == "not-ready":
            outcome = await self.plan_when_loaded(document, offset, started)
        if outcome.plan is None:
            return outcome
        token = self.supersede(document.uri)
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(
                self.model_executor, self.completer.generate, outcome.plan, token, started
            )
        except asyncio.CancelledError:
            token.cancel("$/cancelRequest")
            raise
        finally:
            self.release(document.uri, token)

    def infill_for_action(self, token: CancelToken, deadline: float) -> tuple[Callable, Callable]:
        """(one hole, several holes) functions for a code action, with its cancel token and deadline."""
        backend = self.backend

        def prepare(request: InfillRequest) -> InfillRequest:
            if backend is None or backend.state is not BackendState.READY:
                raise actions.ActionError("the model is not loaded yet")
            request.should_stop = token
            request.deadline = deadline
            request.num_diffusion_steps = self.settings.steps
            return request

        def infill(request: InfillRequest) -> str:
            return backend.infill(prepare(request)).text

        def infill_many(requests: list[InfillRequest]) -> list[str]:
            return backend.infill_many([prepare(r) for r in requests])

        return infill, infill_many

    def shutdown_work(self) -> None:
        for token in list(self.inflight.values()):
            token.cancel("shutdown")
        if self.backend is not None:
            self.backend.close()


server = DgemmaServer()


def guarded(default: Any = None):
    """Never let an exception out of a handler: log it, show it once, answer `default`."""

    def decorate(handler):
        if asyncio.iscoroutinefunction(handler):

            @functools.wraps(handler)
            async def wrapper(ls: DgemmaServer, *args):
                try:
                    return await handler(ls, *args)
                except asyncio.CancelledError:
                    raise
                except Exception as error:
                    ls.report(f"{handler.__name__} failed: {type(error).__name__}: {error}", error=error)
                    return default() if callable(default) else default

        else:

            @functools.wraps(handler)
            def wrapper(ls: DgemmaServer, *args):
                try:
                    return handler(ls, *args)
                except Exception as error:
                    ls.report(f"{handler.__name__} failed: {type(error).__name__}: {error}", error=error)
                    return default() if callable(default) else default

        return wrapper

    return decorate


def position_of(ls: DgemmaServer, document: Document, offset: int) -> types.Position:
    line, character = document.position_at(offset, ls.encoding)
    return types.Position(line=line, character=character)


def offset_of(ls: DgemmaServer, document: Document, position: types.Position) -> int:
    return document.offset_at(position.line, position.character, ls.encoding)


# --- lifecycle ------------------------------------------------------------------------------


@server.feature(types.INITIALIZE)
@guarded()
def initialize(ls: DgemmaServer, params: types.InitializeParams) -> None:
    ls.encoding = Encoding.parse(ls.workspace.position_encoding)
    ls.init_options = params.initialization_options
    root = params.root_uri or (params.workspace_folders[0].uri if params.workspace_folders else None)
    ls.completer.root = uri_to_path(root) if root else None
    ls.settings, ls.pending_problems = parse_settings(ls.init_options)
    ls.completer.settings = ls.settings
    ls.documents.max_chars = ls.settings.max_file_chars


@server.feature(types.INITIALIZED)
@guarded()
async def initialized(ls: DgemmaServer, params: types.InitializedParams) -> None:
    ls.loop = asyncio.get_running_loop()
    for problem in ls.pending_problems:
        ls.report(problem, types.MessageType.Warning)
    ls.pending_problems = []
    workspace = ls.client_capabilities.workspace
    configuration = None
    if workspace is not None and workspace.configuration:
        try:
            items = await ls.workspace_configuration_async(
                types.ConfigurationParams(items=[types.ConfigurationItem(section=SECTION)])
            )
            configuration = items[0] if items else None
        except Exception as error:
            ls.log(f"workspace/configuration failed: {error}", types.MessageType.Warning)
    if (
        workspace is not None
        and workspace.did_change_configuration
        and workspace.did_change_configuration.dynamic_registration
    ):
        registration = types.Registration(
            id=str(uuid.uuid4()),
            method=types.WORKSPACE_DID_CHANGE_CONFIGURATION,
            register_options=types.DidChangeConfigurationRegistrationOptions(section=SECTION),
        )
        try:
            await ls.client_register_capability_async(types.RegistrationParams(registrations=[registration]))
        except Exception as error:
            ls.log(f"could not register for configuration changes: {error}", types.MessageType.Warning)
    ls.backend = None
    ls.apply_settings(configuration)


@server.feature(types.SHUTDOWN)
@guarded()
def shutdown(ls: DgemmaServer, params: None) -> None:
    ls.shutdown_work()


@server.feature(types.WORKSPACE_DID_CHANGE_CONFIGURATION)
@guarded()
async def did_change_configuration(ls: DgemmaServer, params: types.DidChangeConfigurationParams) -> None:
    payload = params.settings
    if not (isinstance(payload, dict) and isinstance(payload.get(SECTION), dict)):
        workspace = ls.client_capabilities.workspace
        if workspace is not None and workspace.configuration:
            items = await ls.workspace_configuration_async(
                types.ConfigurationParams(items=[types.ConfigurationItem(section=SECTION)])
            )
            payload = items[0] if items else None
    ls.apply_settings(payload)


# --- documents ------------------------------------------------------------------------------


@server.feature(types.TEXT_DOCUMENT_DID_OPEN)
@guarded()
def did_open(ls: DgemmaServer, params: types.DidOpenTextDocumentParams) -> None:
    item = params.text_document
    ls.documents.open(item.uri, item.text, item.language_id, item.version)


@server.feature(types.TEXT_DOCUMENT_DID_CHANGE)
@guarded()
def did_change(ls: DgemmaServer, params: types.DidChangeTextDocumentParams) -> None:
    document = ls.document(params.text_document.uri)
    if document is None:
        ls.log(
            f"didChange for a document that is not open: {params.text_document.uri}",
            types.MessageType.Warning,
        )
        return
    for change in params.content_changes:
        if isinstance(change, types.TextDocumentContentChangePartial):
            start, end = change.range.start, change.range.end
            document.apply_change(
                (start.line, start.character),
                (end.line, end.character),
                change.text,
                ls.encoding,
                params.text_document.version,
            )
        else:
            document.apply_change(None, None, change.text, ls.encoding, params.text_document.version)


@server.feature(types.TEXT_DOCUMENT_DID_CLOSE)
@guarded()
def did_close(ls: DgemmaServer, params: types.DidCloseTextDocumentParams) -> None:
    uri = params.text_document.uri
    token = ls.inflight.pop(uri, None)
    if token is not None:
        token.cancel("document closed")
    ls.documents.close(uri)
    ls.completer.forget(uri)


# --- inline completion ----------------------------------------------------------------------


@server.feature(
    types.TEXT_DOCUMENT_INLINE_COMPLETION, types.InlineCompletionOptions(work_done_progress=False)
)
@guarded(default=lambda: types.InlineCompletionList(items=[]))
async def inline_completion(
    ls: DgemmaServer, params: types.InlineCompletionParams
) -> types.InlineCompletionList:
    started = time.monotonic()
    document = ls.document(params.text_document.uri)
    if document is None or not document.completable:
        if document is not None:
            ls.completer.stats.skipped += 1  # too large or binary: not even positions are computed
        return types.InlineCompletionList(items=[])
    selected = params.context.selected_completion_info if params.context else None
    if selected is not None:
        return await inline_with_selected_item(ls, document, selected, started)
    offset = offset_of(ls, document, params.position)
    outcome = await ls.suggest(document, offset, started)
    ls.log(f"inline {outcome.source}: {outcome.reason}")
    if outcome.suggestion is None or document.text[:offset] != outcome_before(outcome, document, offset):
        return types.InlineCompletionList(items=[])
    start = position_of(ls, document, offset)
    end = position_of(ls, document, offset + outcome.suggestion.replace_after)
    return types.InlineCompletionList(items=[inline_item(outcome, outcome.suggestion.text, start, end)])


def outcome_before(outcome: Outcome, document: Document, offset: int) -> str:
    """The text before the cursor the suggestion was made for (the document may have changed)."""
    return outcome.plan.before if outcome.plan is not None else document.text[:offset]


def inline_item(
    outcome: Outcome, text: str, start: types.Position, end: types.Position
) -> types.InlineCompletionItem:
    return types.InlineCompletionItem(
        insert_text=text,
        range=types.Range(start=start, end=end),
        command=types.Command(
            title="dgemma: accepted", command=CMD_ACCEPT, arguments=[{"source": outcome.source}]
        ),
    )


async def inline_with_selected_item(
    ls: DgemmaServer, document: Document, selected: types.SelectedCompletionInfo, started: float
) -> types.InlineCompletionList:
    """The completion popup has an item selected: suggest what follows it, on the item's range
    (the spec requires the inline item to extend the selected one)."""
    start = offset_of(ls, document, selected.range.start)
    end = offset_of(ls, document, selected.range.end)
    text = document.text[:start] + selected.text + document.text[end:]
    virtual = Document(
        document.uri, text, document.language_id, document.version, max_chars=document.max_chars
    )
    outcome = await ls.suggest(virtual, start + len(selected.text), started)
    if outcome.suggestion is None:
        return types.InlineCompletionList(items=[])
    replaced_end = position_of(ls, document, end + outcome.suggestion.replace_after)
    item = inline_item(outcome, selected.text + outcome.suggestion.text, selected.range.start, replaced_end)
    return types.InlineCompletionList(items=[item])


# --- completion fallback --------------------------------------------------------------------


def completion_fallback_active(ls: DgemmaServer) -> bool:
    mode = ls.settings.completion_fallback
    if mode != "auto":
        return mode == "always"
    text_document = ls.client_capabilities.text_document if ls.protocol.client_capabilities else None
    return not (text_document is not None and text_document.inline_completion is not None)


@server.feature(types.TEXT_DOCUMENT_COMPLETION, types.CompletionOptions(resolve_provider=False))
@guarded(default=lambda: types.CompletionList(is_incomplete=True, items=[]))
async def completion(ls: DgemmaServer, params: types.CompletionParams) -> types.CompletionList:
    started = time.monotonic()
    document = ls.document(params.text_document.uri)
    if document is None or not document.completable or not completion_fallback_active(ls):
        return types.CompletionList(is_incomplete=False, items=[])
    offset = offset_of(ls, document, params.position)
    outcome = await ls.suggest(document, offset, started)
    if outcome.suggestion is None or document.text[:offset] != outcome_before(outcome, document, offset):
        return types.CompletionList(is_incomplete=True, items=[])
    suggestion = outcome.suggestion
    line_start = document.text.rfind("\n", 0, offset) + 1
    word_start = offset
    while word_start > line_start and (
        document.text[word_start - 1].isalnum() or document.text[word_start - 1] in "_$"
    ):
        word_start -= 1
    word = document.text[word_start:offset]
    new_text = word + suggestion.text
    first_line = new_text.splitlines()[0] if new_text.strip() else new_text
    label = first_line.strip() or new_text.strip().splitlines()[0]
    edit_range = types.Range(
        start=position_of(ls, document, word_start),
        end=position_of(ls, document, offset + suggestion.replace_after),
    )
    language = document.grammar or document.language_id or ""
    item = types.CompletionItem(
        label=label[:80] + ("…" if len(label) > 80 else ""),
        kind=types.CompletionItemKind.Snippet,
        detail="dgemma suggestion",
        documentation=types.MarkupContent(
            kind=types.MarkupKind.Markdown, value=f"```{language}\n{new_text}\n```"
        ),
        filter_text=first_line,
        sort_text="0",
        preselect=True,
        insert_text_format=types.InsertTextFormat.PlainText,
        text_edit=types.TextEdit(range=edit_range, new_text=new_text),
        command=types.Command(
            title="dgemma: accepted", command=CMD_ACCEPT, arguments=[{"source": outcome.source}]
        ),
    )
    return types.CompletionList(is_incomplete=True, items=[item])


# --- code actions ---------------------------------------------------------------------------


def client_resolves_edits(ls: DgemmaServer) -> bool:
    text_document = ls.client_capabilities.text_document if ls.protocol.client_capabilities else None
    code_action = text_document.code_action if text_document is not None else None
    support = code_action.resolve_support if code_action is not None else None
    return bool(code_action and code_action.data_support and support and "edit" in support.properties)


@server.feature(
    types.TEXT_DOCUMENT_CODE_ACTION,
    types.CodeActionOptions(code_action_kinds=["refactor.rewrite", *actions.KINDS], resolve_provider=True),
)
@guarded(default=list)
def code_action(ls: DgemmaServer, params: types.CodeActionParams) -> list[types.CodeAction]:
    document = ls.document(params.text_document.uri)
    if document is None or not document.completable or not ls.settings.enabled:
        return []
    if not ls.settings.language_enabled(document.language_id):
        return []
    start = offset_of(ls, document, params.range.start)
    end = offset_of(ls, document, params.range.end)
    candidates = actions.find_actions(document.text, document.grammar, document.tree(), start, end)
    only = params.context.only if params.context else None
    if only:
        candidates = [c for c in candidates if any(c.kind == k or c.kind.startswith(k + ".") for k in only)]
    resolvable = client_resolves_edits(ls)
    result = []
    for candidate in candidates:
        data = {
            "uri": document.uri,
            "version": document.version,
            "action": candidate.action,
            "start": candidate.start,
            "end": candidate.end,
            "range": [start, end],
        }
        action = types.CodeAction(title=candidate.title, kind=candidate.kind)
        if resolvable:
            action.data = data
        else:
            action.command = types.Command(title=candidate.title, command=CMD_APPLY_ACTION, arguments=[data])
        result.append(action)
    return result


async def compute_action(ls: DgemmaServer, data: Any) -> tuple[types.WorkspaceEdit | None, str | None]:
    """The edit for an action listed earlier (found again on the current text)."""
    if not isinstance(data, dict) or not isinstance(data.get("uri"), str):
        return None, "this code action has lost its data; ask for code actions again"
    deadline = time.monotonic() + ls.settings.action_deadline_ms / 1000
    if not await ls.wait_for_model(deadline):  # an action asked for during start-up waits for the model
        ls.send_status()
        return None, "the model is not loaded yet"
    document = ls.document(data["uri"])  # read after the wait: the text may have changed meanwhile
    if document is None:
        return None, "the document is no longer open"
    rng = data.get("range") or [data.get("start", 0), data.get("end", 0)]
    start, end = int(rng[0]), int(rng[1])
    if data.get("version") != document.version:
        # Edited since the list was made: the range is only a hint now.
        start, end = min(start, len(document.text)), min(end, len(document.text))
    tree = document.tree()
    candidates = actions.find_actions(document.text, document.grammar, tree, start, end)
    candidate = next((c for c in candidates if c.action == data.get("action")), None)
    if candidate is None:
        return None, "this code action no longer applies here"
    backend = ls.backend
    token = CancelToken()
    snapshot_text, snapshot_tree, version = (
        document.text,
        (tree.copy() if tree is not None else None),
        document.version,
    )
    infill, infill_many = ls.infill_for_action(token, deadline)
    work = functools.partial(
        actions.compute,
        candidate,
        snapshot_text,
        document.grammar,
        snapshot_tree,
        infill,
        ls.completer.counter,
        backend.canvas_length,
        ls.settings.context_budget,
        document.path,
        ls.settings.action_attempts,
        infill_many,
    )
    try:
        edits = await asyncio.get_running_loop().run_in_executor(ls.model_executor, work)
    except asyncio.CancelledError:
        token.cancel("$/cancelRequest")
        raise
    except actions.ActionError as error:
        return None, str(error)
    except GenerationCancelled as error:
        return None, f"stopped: {error.message}"
    if document.version != version or ls.document(data["uri"]) is not document:
        return None, "the document changed while the action ran; try again"
    return workspace_edit(ls, document, edits), None


def workspace_edit(ls: DgemmaServer, document: Document, edits: list[actions.Edit]) -> types.WorkspaceEdit:
    text_edits = [
        types.TextEdit(
            range=types.Range(start=position_of(ls, document, e.start), end=position_of(ls, document, e.end)),
            new_text=e.new_text,
        )
        for e in edits
    ]
    workspace = ls.client_capabilities.workspace if ls.protocol.client_capabilities else None
    changes_support = workspace.workspace_edit if workspace is not None else None
    if changes_support is not None and changes_support.document_changes:
        identifier = types.OptionalVersionedTextDocumentIdentifier(uri=document.uri, version=document.version)
        return types.WorkspaceEdit(
            document_changes=[types.TextDocumentEdit(text_document=identifier, edits=text_edits)]
        )
    return types.WorkspaceEdit(changes={document.uri: text_edits})


@server.feature(types.CODE_ACTION_RESOLVE)
async def code_action_resolve(ls: DgemmaServer, action: types.CodeAction) -> types.CodeAction:
    # Resolve must answer with the action itself, also when something goes wrong.
    try:
        edit, problem = await compute_action(ls, action.data)
    except asyncio.CancelledError:
        raise
    except Exception as error:
        ls.report(f"code_action_resolve failed: {type(error).__name__}: {error}", error=error)
        return action
    if problem is not None:
        ls.report(problem, types.MessageType.Warning)
        return action
    action.edit = edit
    return action


# --- commands -------------------------------------------------------------------------------


@server.command(CMD_ACCEPT)
@guarded()
def accept_suggestion(ls: DgemmaServer, *args: Any) -> None:
    ls.completer.stats.accepted += 1


@server.command(CMD_STATUS)
@guarded()
def status(ls: DgemmaServer, *args: Any) -> dict:
    return ls.status()


@server.command(CMD_APPLY_ACTION)
@guarded()
async def apply_code_action(ls: DgemmaServer, *args: Any) -> bool:
    """For clients that cannot resolve code actions: compute the action and apply its edit."""
    edit, problem = await compute_action(ls, args[0] if args else None)
    if problem is not None:
        ls.report(problem, types.MessageType.Warning)
        return False
    result = await ls.workspace_apply_edit_async(types.ApplyWorkspaceEditParams(edit=edit, label="dgemma"))
    return bool(result and result.applied)
