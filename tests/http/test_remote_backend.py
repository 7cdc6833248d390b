"""The language server's remote backend (`backend = "openai"`) against our live HTTP server: both
request modes, auto-detection, cancellation by closing the connection, deadlines, API keys and
clear errors when the endpoint is unreachable."""

from __future__ import annotations

import threading
import time

import pytest

from dgemma_lsp.backends import BackendState, BackendUnavailable, create_backend
from dgemma_lsp.backends.http import HttpBackend, normalize_endpoint
from dgemma_lsp.settings import Settings, parse_settings
from engine.errors import DeadlineExceeded, GenerationCancelled
from engine.prompting import chat_infill_messages
from engine.prompting import strip_code_fence as strip_fence
from engine.requests import ContextSnippet, InfillRequest
from tests.http.conftest import MODEL_NAME, LiveServer, free_port

pytestmark = pytest.mark.timeout(120)

PREFIX, SUFFIX = "def area(r):\n    ", "\n\nprint(area(2))\n"


@pytest.fixture
def make_backend():
    backends: list[HttpBackend] = []

    def make(**settings) -> HttpBackend:
        backend = create_backend(Settings(backend="openai", **settings))
        assert isinstance(backend, HttpBackend)
        backends.append(backend)
        backend.start()
        return backend

    yield make
    for backend in backends:
        backend.close()


def request(**overrides) -> InfillRequest:
    values = {"prefix": PREFIX, "suffix": SUFFIX, "max_tokens": 12, "num_diffusion_steps": 2, "seed": 7}
    return InfillRequest(**{**values, **overrides})


def test_settings_select_the_remote_backend_by_the_issue_names():
    settings, problems = parse_settings(
        {
            "dgemma": {
                "backend": "openai",
                "endpoint": "http://gpu:8000",
                "apiKeyEnv": "K",
                "remoteMode": "chat",
            }
        }
    )
    assert problems == []
    assert (settings.backend, settings.endpoint, settings.api_key_env, settings.remote_mode) == (
        "openai",
        "http://gpu:8000",
        "K",
        "chat",
    )
    assert isinstance(create_backend(settings), HttpBackend)
    assert isinstance(create_backend(Settings(backend="http")), HttpBackend)
    _, problems = parse_settings({"dgemma": {"remoteMode": "fim"}})
    assert problems and "remoteMode" in problems[0]


def test_endpoints_are_normalized_to_the_v1_base():
    assert normalize_endpoint("http://h:8000") == "http://h:8000/v1"
    assert normalize_endpoint("http://h:8000/v1/") == "http://h:8000/v1"
    assert normalize_endpoint(" https://h/api/v1 ") == "https://h/api/v1"
    with pytest.raises(BackendUnavailable, match="not an http"):
        normalize_endpoint("h:8000")


def test_chat_replies_lose_their_code_fence():
    assert strip_fence("```python\nreturn 3.14 * r * r\n```") == "return 3.14 * r * r"
    assert strip_fence("```\nx = 1\n```\n") == "x = 1"
    assert strip_fence("x = 1") == "x = 1"
    assert strip_fence("a ```b``` c") == "a ```b``` c"


def test_auto_mode_uses_completions_with_suffix_on_dgemma_serve(
    server: LiveServer, served_model, make_backend
):
    backend = make_backend(endpoint=server.root)  # without /v1: normalized
    assert backend.state is BackendState.READY, backend.error
    assert backend.mode == "completions" and backend.model_name == MODEL_NAME
    assert backend.canvas_length == 16 and backend.context_length == 4096
    snippets = [ContextSnippet("geometry.py", "PI = 3.14159\n")]
    result = backend.infill(request(snippets=snippets, path="main.py", language="python"))
    local = served_model.infill_request(request(snippets=snippets, path="main.py", language="python"))
    assert result.text == local.text
    assert result.stats.prompt_tokens == local.stats.prompt_tokens
    assert result.stats.canvases == 1 and result.stats.steps_per_canvas == [2]


def test_chat_mode_sends_the_hole_filling_conversation(server: LiveServer, served_model, make_backend):
    backend = make_backend(endpoint=server.url, remote_mode="chat", model=MODEL_NAME)
    assert backend.mode == "chat"
    snippets = [ContextSnippet("geometry.py", "PI = 3.14159\n")]
    result = backend.infill(request(snippets=snippets, path="main.py", language="python"))
    messages = chat_infill_messages(PREFIX, SUFFIX, snippets, "main.py", "python")
    assert result.stats.prompt_tokens == len(served_model.chat_prompt_ids(messages))
    expected = served_model.chat(messages, max_tokens=12, num_diffusion_steps=2, seed=7)
    assert result.text == strip_fence(expected)


def test_several_holes_go_out_together_and_match_one_by_one(server: LiveServer, make_backend):
    backend = make_backend(endpoint=server.url)
    holes = [request(seed=s, prefix=p) for s, p in enumerate(["def a():\n    ", "x = ", "for i in "])]
    assert backend.infill_many(holes) == [backend.infill(hole).text for hole in holes]


def test_cancelling_several_holes_hangs_up_on_all_of_them(start_server, make_backend):
    live = start_server()
    backend = make_backend(endpoint=live.url, remote_mode="chat")
    cancelled = threading.Event()
    threading.Timer(0.3, cancelled.set).start()
    slow = [request(max_tokens=256, num_diffusion_steps=256, seed=s) for s in range(3)]
    slow[0].should_stop = cancelled.is_set
    with pytest.raises(GenerationCancelled):
        backend.infill_many(slow)
    assert live.wait_metric("dgemma_requests_cancelled_total", 3, reason="disconnect") == 3


def test_cancelling_closes_the_connection_and_stops_the_server(start_server, make_backend):
    live = start_server()
    backend = make_backend(endpoint=live.url, remote_mode="chat")
    cancelled = threading.Event()
    threading.Timer(0.3, cancelled.set).start()
    with pytest.raises(GenerationCancelled):
        backend.infill(request(max_tokens=256, num_diffusion_steps=256, should_stop=cancelled.is_set))
    assert live.wait_metric("dgemma_requests_cancelled_total", 1, reason="disconnect") == 1
    # The backend stays usable.
    assert isinstance(backend.infill(request()).text, str)


def test_a_deadline_stops_waiting_and_the_server(start_server, make_backend):
    live = start_server()
    backend = make_backend(endpoint=live.url, remote_mode="chat")
    with pytest.raises(DeadlineExceeded):
        backend.infill(request(max_tokens=256, num_diffusion_steps=256, deadline=time.monotonic() + 0.3))
    assert live.wait_metric("dgemma_requests_cancelled_total", 1, reason="disconnect") == 1


def test_an_unreachable_endpoint_fails_with_a_clear_status(make_backend):
    backend = make_backend(endpoint=f"http://127.0.0.1:{free_port()}/v1")
    assert backend.state is BackendState.FAILED
    assert isinstance(backend.error, BackendUnavailable)
    assert "is unreachable" in str(backend.error) and "dgemma serve" in str(backend.error)
    missing = make_backend()
    assert missing.state is BackendState.FAILED and "needs dgemma.endpoint" in str(missing.error)


def test_an_endpoint_that_goes_away_is_reported_until_it_answers_again(start_server, make_backend):
    live = start_server()
    backend = make_backend(endpoint=live.url)
    assert backend.state is BackendState.READY
    live.__exit__(None, None, None)  # the server goes down
    with pytest.raises(BackendUnavailable, match="unreachable"):
        backend.infill(request())
    assert "unreachable" in str(backend.error)


def test_api_keys_come_from_the_named_environment_variable(start_server, make_backend, monkeypatch):
    live = start_server(api_key="team-key")
    monkeypatch.setenv("DGEMMA_TEST_KEY", "team-key")
    backend = make_backend(endpoint=live.url, api_key_env="DGEMMA_TEST_KEY")
    assert backend.state is BackendState.READY, backend.error
    assert isinstance(backend.infill(request()).text, str)
    monkeypatch.setenv("DGEMMA_TEST_KEY", "wrong")
    wrong = make_backend(endpoint=live.url, api_key_env="DGEMMA_TEST_KEY")
    assert wrong.state is BackendState.FAILED and "refused the API key" in str(wrong.error)
    unset = make_backend(endpoint=live.url, api_key_env="DGEMMA_TEST_KEY_UNSET")
    assert unset.state is BackendState.FAILED and "DGEMMA_TEST_KEY_UNSET" in str(unset.error)


def test_a_model_the_server_does_not_serve_is_named_in_the_error(server: LiveServer, make_backend):
    backend = make_backend(endpoint=server.url, model="gemma-7b")
    assert backend.state is BackendState.FAILED
    assert "gemma-7b" in str(backend.error) and MODEL_NAME in str(backend.error)
