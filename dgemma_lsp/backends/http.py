"""The remote backend: holes go to an OpenAI-compatible server (`dgemma serve`, or vLLM / SGLang
serving DiffusionGemma across GPUs) instead of a model in this process.

Two ways to ask (setting `remote_mode`):
- `completions`: `POST /v1/completions` with `prompt` = prefix and `suffix`, plus dgemma's
  extensions (`input_extra` context snippets, `path`, `language`); `dgemma serve` turns it into a
  native FIM prompt or the hole-filling chat prompt, whichever the model needs.
- `chat`: `POST /v1/chat/completions` with the hole-filling conversation of `engine/prompting.py`
  (DiffusionGemma has no FIM tokens, and vLLM/SGLang have no `suffix` for it); a code fence around
  the reply is removed, as the in-process engine does.
- `auto` (the default) asks `GET /v1/models` once: `completions` when the server is `dgemma serve`
  (`owned_by: dgemma`), `chat` otherwise.
`diffusion_steps` and `seed` go along as extra body fields when set; servers that do not know
them ignore them.

Requests run on a private event loop thread with one pooled `httpx.AsyncClient`; `infill` (called
on the language server's model thread) waits for the answer while polling the cancel token and
the deadline, and cancelling closes the connection, which stops the generation on the server.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import re
import threading
import time
from typing import Any

import httpx

from dgemma_lsp.backends.base import Backend, BackendUnavailable, ProgressCallback
from engine.errors import DeadlineExceeded, EngineError, GenerationCancelled
from engine.prompting import chat_infill_messages, strip_code_fence
from engine.requests import GenerationStats, InfillRequest, InfillResult

POLL_S = 0.02
# Budget of a call that comes without a deadline (model discovery, code actions without one).
DEFAULT_TIMEOUT_S = 60.0
DISCOVERY_TIMEOUT_S = 10.0  # `GET /v1/models` when the backend starts
DEFAULT_CANVAS = 256  # DiffusionGemma's canvas (diffusiongemma.md 4.1)
DEFAULT_CONTEXT = 8192


def normalize_endpoint(endpoint: str) -> str:
    """`http://host:8000`, `http://host:8000/` and `http://host:8000/v1` all mean `.../v1`."""
    url = endpoint.strip().rstrip("/")
    if not re.match(r"^https?://", url):
        raise BackendUnavailable(
            f"the endpoint {endpoint!r} is not an http(s) URL", hint="e.g. http://127.0.0.1:8080/v1"
        )
    return url if url.endswith("/v1") else url + "/v1"


class HttpBackend(Backend):
    name = "openai"

    def __init__(self, settings):
        super().__init__(settings)
        self.base_url: str | None = None
        self.model_name: str | None = settings.model
        self.mode: str = settings.remote_mode
        self.server_kind = "unknown"
        self._canvas = DEFAULT_CANVAS
        self._context = DEFAULT_CONTEXT
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._client: httpx.AsyncClient | None = None

    # --- lifecycle ----------------------------------------------------------------------------

    def load(self, progress: ProgressCallback) -> None:
        if not self.settings.endpoint:
            raise BackendUnavailable(
                "backend 'openai' needs dgemma.endpoint", hint="e.g. http://127.0.0.1:8080/v1"
            )
        self.base_url = normalize_endpoint(self.settings.endpoint)
        headers = {}
        variable = self.settings.api_key_env
        if variable:
            key = os.environ.get(variable)
            if not key:
                raise BackendUnavailable(
                    f"the environment variable {variable} (dgemma.apiKeyEnv) is not set",
                    hint="export it before starting the editor, or clear dgemma.apiKeyEnv",
                )
            headers["Authorization"] = f"Bearer {key}"
        self._start_loop(headers)
        progress(f"connecting to {self.base_url}", 30)
        data = self._call("GET", "/models", None, time.monotonic() + DISCOVERY_TIMEOUT_S, None)
        cards = [c for c in (data.get("data") or []) if isinstance(c, dict) and c.get("id")]
        if not cards:
            raise BackendUnavailable(f"{self.base_url}/models lists no model")
        card = next((c for c in cards if c["id"] == self.model_name), None)
        if card is None and self.model_name:
            names = ", ".join(c["id"] for c in cards)
            raise BackendUnavailable(
                f"{self.base_url} does not serve the model {self.model_name!r}",
                hint=f"set dgemma.model to one of: {names}",
            )
        card = card or cards[0]
        self.model_name = card["id"]
        self.server_kind = "dgemma" if card.get("owned_by") == "dgemma" else str(card.get("owned_by") or "")
        if self.mode == "auto":
            self.mode = "completions" if self.server_kind == "dgemma" else "chat"
        if isinstance(card.get("canvas_length"), int) and card["canvas_length"] > 0:
            self._canvas = card["canvas_length"]
        if isinstance(card.get("max_model_len"), int) and card["max_model_len"] > 0:
            self._context = card["max_model_len"]

    def _start_loop(self, headers: dict[str, str]) -> None:
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()

        self._thread = threading.Thread(target=run, name="dgemma-http", daemon=True)
        self._thread.start()
        ready.wait()
        self._loop = loop

        async def make_client() -> httpx.AsyncClient:
            return httpx.AsyncClient(base_url=self.base_url or "", headers=headers)

        self._client = asyncio.run_coroutine_threadsafe(make_client(), loop).result()

    def close(self) -> None:
        loop, client = self._loop, self._client
        self._loop = self._client = None
        if loop is not None:
            if client is not None and not loop.is_closed():
                # Closing must never fail: the connections die with the loop anyway.
                with contextlib.suppress(Exception):
                    asyncio.run_coroutine_threadsafe(client.aclose(), loop).result(timeout=2)
            loop.call_soon_threadsafe(loop.stop)
            if self._thread is not None:
                self._thread.join(timeout=2)
        super().close()

    # --- work ---------------------------------------------------------------------------------

    def infill(self, request: InfillRequest) -> InfillResult:
        started = time.monotonic()
        deadline = request.deadline if request.deadline is not None else started + DEFAULT_TIMEOUT_S
        path, body = self._body(request)
        data = self._tracked(self._request("POST", path, body, deadline), deadline, request.should_stop)
        return self._result(data, started)

    def infill_many(self, requests: list[InfillRequest]) -> list[str]:
        """All holes as concurrent requests (vLLM, SGLang and `dgemma serve` batch what arrives
        together); the first request's cancel token and deadline govern them all."""
        if len(requests) < 2:
            return super().infill_many(requests)
        started = time.monotonic()
        first = requests[0]
        deadline = first.deadline if first.deadline is not None else started + DEFAULT_TIMEOUT_S
        bodies = [self._body(request) for request in requests]

        async def together() -> list[dict[str, Any]]:
            tasks = [asyncio.ensure_future(self._request("POST", p, b, deadline)) for p, b in bodies]
            try:
                return list(await asyncio.gather(*tasks))
            finally:
                for task in tasks:  # one failed or we were cancelled: hang up on the others too
                    task.cancel()

        answers = self._tracked(together(), deadline, first.should_stop)
        return [self._result(data, started).text for data in answers]

    def _body(self, request: InfillRequest) -> tuple[str, dict[str, Any]]:
        body: dict[str, Any] = {"model": self.model_name, "max_tokens": request.max_tokens}
        if request.num_diffusion_steps is not None:
            body["diffusion_steps"] = request.num_diffusion_steps
        if request.seed is not None:
            body["seed"] = request.seed
        if self.mode == "completions":
            body["prompt"] = request.prefix
            body["suffix"] = request.suffix
            body["input_extra"] = [{"filename": s.path, "text": s.text} for s in request.snippets]
            if request.path:
                body["path"] = request.path
            if request.language:
                body["language"] = request.language
            return "/completions", body
        body["messages"] = chat_infill_messages(
            request.prefix, request.suffix, request.snippets, request.path, request.language
        )
        return "/chat/completions", body

    def _result(self, data: dict[str, Any], started: float) -> InfillResult:
        choices = data.get("choices") or [{}]
        choice = choices[0] if isinstance(choices[0], dict) else {}
        if self.mode == "completions":
            text = choice.get("text") or ""
        else:
            text = strip_code_fence((choice.get("message") or {}).get("content") or "")
        usage = data.get("usage") or {}
        diffusion = (data.get("diffusion") or [{}])[0] or {}
        stats = GenerationStats(
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            cached_prompt_tokens=int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0),
            generated_tokens=int(usage.get("completion_tokens") or 0),
            canvases=int(diffusion.get("canvases") or 0),
            steps_per_canvas=list(diffusion.get("steps_per_canvas") or []),
            seconds=time.monotonic() - started,
            finish_reason=choice.get("finish_reason") or "length",
        )
        return InfillResult(text, stats)

    def _tracked(self, work: Any, deadline: float, should_stop: Any) -> Any:
        """`_wait`, remembering an unreachable endpoint in `error` (dgemma.status shows it) until a
        request succeeds again."""
        try:
            result = self._wait(work, deadline, should_stop)
        except BackendUnavailable as error:
            self.error = error
            raise
        self.error = None
        return result

    def _call(
        self, method: str, path: str, body: dict | None, deadline: float, should_stop: Any
    ) -> dict[str, Any]:
        return self._wait(self._request(method, path, body, deadline), deadline, should_stop)

    def _wait(self, work: Any, deadline: float, should_stop: Any) -> Any:
        """Run a coroutine on the loop thread; wait for it while watching the cancel token and deadline."""
        if self._loop is None or self._client is None:
            work.close()
            raise BackendUnavailable("the remote backend is closed")
        future = asyncio.run_coroutine_threadsafe(work, self._loop)
        while True:
            try:
                return future.result(timeout=POLL_S)
            except concurrent.futures.TimeoutError:
                if should_stop is not None and should_stop():
                    future.cancel()  # closes the connection: the server stops generating
                    raise GenerationCancelled() from None
                if time.monotonic() > deadline:
                    future.cancel()
                    raise DeadlineExceeded() from None

    async def _request(self, method: str, path: str, body: dict | None, deadline: float) -> dict[str, Any]:
        assert self._client is not None
        url = f"{self.base_url}{path}"
        remaining = max(0.05, deadline - time.monotonic())
        connect = min(self.settings.connect_timeout_ms / 1000, remaining)
        timeout = httpx.Timeout(remaining, connect=connect)
        try:
            response = await self._client.request(method, path, json=body, timeout=timeout)
        except httpx.ConnectTimeout:
            raise BackendUnavailable(
                f"the endpoint {self.base_url} is unreachable (no connection within {connect:g} s)",
                hint="check dgemma.endpoint and that the server is running",
            ) from None
        except httpx.ConnectError as error:
            raise BackendUnavailable(
                f"the endpoint {self.base_url} is unreachable ({error})",
                hint="start the server (dgemma serve, vllm serve or sglang serve) or fix dgemma.endpoint",
            ) from None
        except httpx.TimeoutException:
            raise DeadlineExceeded(f"{url} did not answer in time") from None
        except httpx.HTTPError as error:
            raise BackendUnavailable(f"{url} failed: {type(error).__name__}: {error}") from None
        if response.status_code in (401, 403):
            raise BackendUnavailable(
                f"{self.base_url} refused the API key ({response.status_code})",
                hint="put the key in the environment variable named by dgemma.apiKeyEnv",
            )
        if response.status_code >= 400:
            raise EngineError(f"{url} answered {response.status_code}: {error_message(response)}")
        try:
            data = response.json()
        except ValueError:
            raise EngineError(f"{url} answered something that is not JSON") from None
        if not isinstance(data, dict):
            raise EngineError(f"{url} answered JSON that is not an object")
        return data

    # --- what the completer asks ----------------------------------------------------------------

    @property
    def canvas_length(self) -> int:
        return self._canvas

    @property
    def context_length(self) -> int:
        return self._context

    @property
    def description(self) -> str:
        where = self.base_url or self.settings.endpoint or "no endpoint"
        return f"openai ({where}, model {self.model_name or '?'}, {self.mode} mode)"


def error_message(response: httpx.Response) -> str:
    try:
        data = response.json()
    except ValueError:
        return response.text[:300]
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if isinstance(error, str):
            return error
        if data.get("detail"):
            return str(data["detail"])[:300]
        if data.get("message"):
            return str(data["message"])[:300]
    return response.text[:300]
