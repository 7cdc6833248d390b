"""The OpenAI-compatible server, over real HTTP on a loopback port: every endpoint with httpx and the
official `openai` client, streaming, batching, isolation between clients, auth, bad input,
oversized bodies, timeouts and disconnects. The model is tiny and random: only behaviour is checked.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import threading
import time

import httpx
import openai
import pytest

from tests.http.conftest import MODEL_NAME, LiveServer

pytestmark = pytest.mark.timeout(120)

CANVAS = 16  # the tiny checkpoint's canvas length


def client_for(server: LiveServer, api_key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url, api_key=api_key, max_retries=0, timeout=60)


def sse_events(lines: list[str]) -> list[dict | str]:
    """The `data:` payloads of a server-sent event stream (JSON decoded, `[DONE]` kept as text)."""
    events: list[dict | str] = []
    for line in lines:
        if line.startswith("data: "):
            payload = line[len("data: ") :]
            events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


# --- endpoints ----------------------------------------------------------------------------------


def test_models_health_and_metrics_endpoints(server: LiveServer, served_model):
    models = client_for(server).models.list()
    assert [m.id for m in models.data] == [MODEL_NAME]
    card = httpx.get(f"{server.url}/models").json()["data"][0]
    assert card["object"] == "model" and card["owned_by"] == "dgemma"
    assert card["max_model_len"] == served_model.context_length == 4096
    assert card["canvas_length"] == CANVAS and card["fim"] is True
    health = httpx.get(f"{server.root}/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    metrics = httpx.get(f"{server.root}/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    assert "dgemma_request_latency_seconds_bucket" in metrics.text


def test_completion_has_openai_shape_and_honours_the_diffusion_knobs(server: LiveServer, served_model):
    completion = client_for(server).completions.create(
        model=MODEL_NAME,
        prompt="def add(a, b):",
        max_tokens=40,
        seed=3,
        extra_body={"diffusion_steps": 3, "entropy_bound": 0.2, "t_min": 0.3, "t_max": 0.9},
    )
    assert completion.object == "text_completion" and completion.id.startswith("cmpl-")
    assert completion.model == MODEL_NAME and completion.created > 0
    choice = completion.choices[0]
    assert choice.index == 0 and isinstance(choice.text, str)
    usage = completion.usage
    assert usage.prompt_tokens == len(served_model.tokenizer.encode("def add(a, b):"))
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert 0 < usage.completion_tokens <= 40
    stats = completion.model_extra["diffusion"][0]
    # 40 tokens are three canvases of 16 unless EOS came first; each runs at most 3 steps.
    assert all(1 <= steps <= 3 for steps in stats["steps_per_canvas"])
    assert stats["canvases"] == len(stats["steps_per_canvas"]) <= 3
    if choice.finish_reason == "length":
        assert usage.completion_tokens == 40 and stats["canvases"] == 3
    # The same request with the same seed gives the same text as the SDK with the same knobs.
    expected = served_model.generate(
        "def add(a, b):",
        max_tokens=40,
        num_diffusion_steps=3,
        seed=3,
        entropy_bound=0.2,
        t_min=0.3,
        t_max=0.9,
    )
    assert choice.text == expected


def test_token_id_prompts_and_several_prompts_give_one_choice_each(server: LiveServer, served_model):
    ids = served_model.tokenizer.encode("import os")
    response = httpx.post(
        f"{server.url}/completions",
        json={"prompt": [ids, ids[:2]], "max_tokens": 5, "seed": 1},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    data = response.json()
    assert [c["index"] for c in data["choices"]] == [0, 1]
    assert data["usage"]["prompt_tokens"] == len(ids) + 2
    single = httpx.post(
        f"{server.url}/completions", json={"prompt": ids, "max_tokens": 5, "seed": 1}, timeout=60
    )
    assert single.json()["choices"][0]["text"] == data["choices"][0]["text"]
    # Streamed: each choice's canvases in turn, each with its own index and finish reason.
    body = {"prompt": [ids, ids[:2]], "max_tokens": 5, "seed": 1, "stream": True}
    with httpx.stream("POST", f"{server.url}/completions", json=body, timeout=60) as r:
        events = sse_events(list(r.iter_lines()))
    assert events[-1] == "[DONE]"
    for index in (0, 1):
        mine = [e["choices"][0] for e in events[:-1] if e["choices"][0]["index"] == index]
        assert "".join(c["text"] for c in mine) == data["choices"][index]["text"]
        finals = [c["finish_reason"] for c in mine if c["finish_reason"]]
        assert finals == [data["choices"][index]["finish_reason"]]


def test_streaming_completion_sends_one_chunk_per_committed_canvas(server: LiveServer):
    client = client_for(server)
    body = {"model": MODEL_NAME, "prompt": "class Stack:", "max_tokens": 3 * CANVAS, "seed": 11}
    whole = client.completions.create(**body)
    canvases = whole.model_extra["diffusion"][0]["canvases"]
    chunks = list(client.completions.create(**body, stream=True, stream_options={"include_usage": True}))
    texts = [c.choices[0].text for c in chunks if c.choices and c.choices[0].text]
    assert 1 <= len(texts) <= canvases
    assert "".join(texts) == whole.choices[0].text
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    # On the wire: `data: {...}` events, then `data: [DONE]`.
    with httpx.stream("POST", f"{server.url}/completions", json={**body, "stream": True}, timeout=60) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(list(r.iter_lines()))
    assert events[-1] == "[DONE]" and all(isinstance(e, dict) for e in events[:-1])
    assert all(e["object"] == "text_completion" and e["id"] == events[0]["id"] for e in events[:-1])


def test_stop_strings_cut_streamed_and_whole_answers_alike(server: LiveServer):
    client = client_for(server)
    body = {"model": MODEL_NAME, "prompt": "x = ", "max_tokens": 3 * CANVAS, "seed": 5}
    text = client.completions.create(**body).choices[0].text
    # A stop string that starts in the text after the first few characters.
    stop = next(
        text[i : i + 2]
        for i in range(3, len(text) - 2)
        if text[i : i + 2].strip() and "\n" not in text[i : i + 2]
    )
    cut = text[: text.find(stop)]
    whole = client.completions.create(**body, stop=[stop])
    assert whole.choices[0].text == cut and whole.choices[0].finish_reason == "stop"
    streamed = "".join(
        c.choices[0].text for c in client.completions.create(**body, stop=stop, stream=True) if c.choices
    )
    assert streamed == cut


def test_chat_goes_through_the_chat_template_with_the_system_prompt(server: LiveServer, served_model):
    client = client_for(server)
    messages = [
        {"role": "system", "content": "Answer with code only."},
        {"role": "user", "content": [{"type": "text", "text": "reverse a list"}]},
    ]
    reply = client.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=20, seed=2)
    assert reply.object == "chat.completion" and reply.id.startswith("chatcmpl-")
    choice = reply.choices[0]
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    template_messages = [messages[0], {"role": "user", "content": "reverse a list"}]
    assert reply.usage.prompt_tokens == len(served_model.chat_prompt_ids(template_messages))
    assert choice.message.content == served_model.chat(template_messages, max_tokens=20, seed=2)

    stream = client.chat.completions.create(
        model=MODEL_NAME, messages=messages, max_tokens=20, seed=2, stream=True
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == choice.message.content
    assert chunks[-1].choices[0].finish_reason == choice.finish_reason


def test_suffix_fills_the_hole_like_the_engines_infill(server: LiveServer, served_model):
    prefix, suffix = "def add(a, b):\n    ", "\n\nprint(add(1, 2))\n"
    completion = client_for(server).completions.create(
        model=MODEL_NAME,
        prompt=prefix,
        suffix=suffix,
        max_tokens=12,
        seed=4,
        extra_body={"diffusion_steps": 3},
    )
    expected = served_model.infill(prefix, suffix, max_tokens=12, num_diffusion_steps=3, seed=4)
    assert completion.choices[0].text == expected
    # Context snippets (llama.cpp's `input_extra`) reach the prompt: more prompt tokens.
    with_context = httpx.post(
        f"{server.url}/completions",
        json={
            "prompt": prefix,
            "suffix": suffix,
            "max_tokens": 12,
            "seed": 4,
            "input_extra": [{"filename": "util.py", "text": "def sub(a, b):\n    return a - b\n"}],
            "path": "main.py",
        },
        timeout=60,
    ).json()
    assert with_context["usage"]["prompt_tokens"] > completion.usage.prompt_tokens


# --- several clients at once ------------------------------------------------------------------------


async def test_seeded_clients_never_see_each_others_state(server: LiveServer):
    """Seeded requests give the same text alone and interleaved with other clients' traffic (which
    shares prompt prefixes, so the engine's prompt KV cache is reused and cropped between them)."""
    requests = [
        {"prompt": "def fibonacci(n):", "max_tokens": 20, "seed": 1},
        {"prompt": "def fibonacci(n):\n    if n < 2:", "max_tokens": 24, "seed": 2},
        {"prompt": "def fib", "max_tokens": 8, "seed": 3, "stop": ["\n"]},
        {"prompt": "import os", "max_tokens": 33, "seed": 4, "diffusion_steps": 3},
    ]
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
        alone = []
        for body in requests:
            response = await client.post("/completions", json=body)
            assert response.status_code == 200, response.text
            alone.append(response.json()["choices"][0]["text"])

        async def streamed(body: dict) -> str:
            text = ""
            async with client.stream("POST", "/completions", json={**body, "stream": True}) as response:
                async for line in response.aiter_lines():
                    if line.startswith("data: {"):
                        text += json.loads(line[6:])["choices"][0]["text"]
            return text

        async def whole(body: dict) -> str:
            response = await client.post("/completions", json=body)
            return response.json()["choices"][0]["text"]

        noise = [{"prompt": "def fibonacci(n):\n    return", "max_tokens": 10} for _ in range(3)]
        for _ in range(2):
            calls = [streamed(b) if i % 2 else whole(b) for i, b in enumerate(requests)]
            calls += [whole(b) for b in noise]
            results = await asyncio.gather(*calls)
            assert results[: len(requests)] == alone


async def test_requests_arriving_together_share_one_canvas_batch(start_server, served_model):
    batched = start_server(batch_window_ms=500, max_batch_size=8)
    prompts = ["a", "def f(x):", "import os\nimport sys", "class Point:\n    def __init__(self):"]

    async def fire(live: LiveServer) -> list[dict]:
        async with httpx.AsyncClient(base_url=live.url, timeout=60) as client:
            responses = await asyncio.gather(
                *(
                    client.post("/completions", json={"prompt": p, "max_tokens": 3 + 7 * i})
                    for i, p in enumerate(prompts)
                )
            )
        assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
        return [r.json() for r in responses]

    results = await fire(batched)
    assert [r["diffusion"][0]["batch_size"] for r in results] == [4, 4, 4, 4]
    for i, (prompt, result) in enumerate(zip(prompts, results, strict=True)):
        # Each client gets its own row: its own prompt length and its own token budget.
        assert result["usage"]["prompt_tokens"] == len(served_model.tokenizer.encode(prompt))
        assert result["usage"]["completion_tokens"] <= 3 + 7 * i
        if result["choices"][0]["finish_reason"] == "length":
            assert result["usage"]["completion_tokens"] == 3 + 7 * i
    assert batched.metric("dgemma_batch_size_count") == 1
    assert batched.metric("dgemma_batch_size_sum") == 4

    alone = start_server(batching=False)
    results = await fire(alone)
    assert [r["diffusion"][0]["batch_size"] for r in results] == [1, 1, 1, 1]
    assert alone.metric("dgemma_batch_size_count") == 4


async def test_seeded_and_streaming_requests_run_alone_while_others_batch(start_server):
    live = start_server(batch_window_ms=300)
    async with httpx.AsyncClient(base_url=live.url, timeout=60) as client:

        async def stream() -> int:
            async with client.stream(
                "POST", "/completions", json={"prompt": "y", "max_tokens": 4, "stream": True}
            ) as r:
                return len([line async for line in r.aiter_lines() if line.startswith("data: {")])

        seeded = [
            client.post("/completions", json={"prompt": "x", "max_tokens": 4, "seed": i}) for i in range(2)
        ]
        plain = [client.post("/completions", json={"prompt": "z", "max_tokens": 4}) for _ in range(2)]
        *responses, chunks = await asyncio.gather(*seeded, *plain, stream())
    assert chunks >= 1
    assert [r.json()["diffusion"][0]["batch_size"] for r in responses] == [1, 1, 2, 2]
    assert live.metric("dgemma_batch_size_count") == 4  # two seeded, one stream, one batch of two
    assert live.metric("dgemma_batch_size_sum") == 5


async def test_a_client_that_hangs_up_leaves_its_batch_mates_alone(start_server):
    live = start_server(batch_window_ms=600)
    async with httpx.AsyncClient(base_url=live.url, timeout=60) as client:

        async def impatient() -> None:
            with pytest.raises(httpx.ReadTimeout):
                await client.post("/completions", json={"prompt": "q", "max_tokens": 4}, timeout=0.2)

        *responses, _ = await asyncio.gather(
            *(client.post("/completions", json={"prompt": p, "max_tokens": 4}) for p in ("a", "b")),
            impatient(),
        )
    assert [r.status_code for r in responses] == [200, 200]
    assert [r.json()["diffusion"][0]["batch_size"] for r in responses] == [2, 2]
    assert live.wait_metric("dgemma_requests_cancelled_total", 1, reason="disconnect") == 1


# --- bad input and abuse --------------------------------------------------------------------------------


BAD_COMPLETIONS = [
    ({}, "prompt: Field required"),
    ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
    ({"prompt": "x", "max_tokens": "many"}, "max_tokens"),
    ({"prompt": "x", "max_tokens": 100_000}, "more than this server allows"),
    ({"prompt": "x", "diffusion_steps": 0}, "diffusion_steps"),
    ({"prompt": "x", "num_diffusion_steps": 100_000}, "diffusion_steps=100000 is more than"),
    ({"prompt": "x", "entropy_bound": -1}, "entropy_bound"),
    ({"prompt": "x", "t_min": 0}, "t_min"),
    ({"prompt": "x", "stability_threshold": 10**9}, "stability_threshold"),
    ({"prompt": "x", "seed": -5}, "seed"),
    ({"prompt": "x", "n": 2}, "n > 1 is not supported"),
    ({"prompt": "x", "logprobs": 3}, "logprobs are not supported"),
    ({"prompt": "x", "echo": True}, "echo is not supported"),
    ({"prompt": "x", "best_of": 3}, "best_of"),
    ({"prompt": "x", "presence_penalty": 0.5}, "presence_penalty is not supported"),
    ({"prompt": "x", "logit_bias": {"5": 1}}, "logit_bias"),
    ({"prompt": "x", "stop": ["a"] * 40}, "at most 16 strings"),
    ({"prompt": [], "max_tokens": 1}, "at least one"),
    ({"prompt": [[]], "max_tokens": 1}, "empty"),
    ({"prompt": [10**9]}, "out of the vocabulary"),
    ({"prompt": [1, 2], "suffix": "y"}, "suffix needs a text prompt"),
    ({"prompt": "x", "suffix": "y", "t_max": 0.5}, "cannot be combined with suffix"),
    ({"prompt": "x", "input_extra": [{"text": "y"}]}, "only apply to requests with a suffix"),
    ({"prompt": "x", "temperature": 7}, "temperature"),
    ({"prompt": [5] * 4090, "max_tokens": 16}, "maximum context length is 4096"),
]


@pytest.mark.parametrize(("body", "message"), BAD_COMPLETIONS)
def test_bad_completion_requests_get_400_with_a_clear_message(server: LiveServer, body: dict, message: str):
    response = httpx.post(f"{server.url}/completions", json=body, timeout=30)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert message in error["message"], error["message"]


BAD_CHATS = [
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "role"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, "text"),
    ({"messages": [{"role": "user", "content": "x"}], "logprobs": True}, "logprobs"),
    ({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}, "tools"),
    (
        {"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_object"}},
        "response_format",
    ),
    ({"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 0}, "max_completion_tokens"),
    ({"messages": [{"role": "user", "content": "word " * 5000}]}, "maximum context length"),
]


@pytest.mark.parametrize(("body", "message"), BAD_CHATS)
def test_bad_chat_requests_get_400_with_a_clear_message(server: LiveServer, body: dict, message: str):
    response = httpx.post(f"{server.url}/chat/completions", json=body, timeout=30)
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]["message"]


def test_malformed_json_and_wrong_model_and_unknown_paths(server: LiveServer):
    response = httpx.post(
        f"{server.url}/completions", content=b'{"prompt": ', headers={"content-type": "application/json"}
    )
    assert response.status_code == 400 and "not valid JSON" in response.json()["error"]["message"]
    response = httpx.post(f"{server.url}/completions", json={"prompt": "x", "model": "gpt-4"})
    assert response.status_code == 404 and response.json()["error"]["code"] == "model_not_found"
    response = httpx.get(f"{server.url}/engines")
    assert response.status_code == 404 and "error" in response.json()


def test_the_openai_client_raises_on_bad_requests(server: LiveServer):
    client = client_for(server)
    with pytest.raises(openai.BadRequestError, match="n > 1 is not supported"):
        client.completions.create(model=MODEL_NAME, prompt="x", n=2)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="other", messages=[{"role": "user", "content": "x"}])


def test_oversized_bodies_get_413_before_parsing(start_server):
    live = start_server(max_body_bytes=2048)
    big = {"prompt": "x" * 4000, "max_tokens": 1}
    response = httpx.post(f"{live.url}/completions", json=big)
    assert response.status_code == 413 and "2048 bytes" in response.json()["error"]["message"]

    def chunks():  # no Content-Length: the limit is counted while reading
        for _ in range(8):
            yield b" " * 512
        yield json.dumps(big).encode()

    response = httpx.post(
        f"{live.url}/completions", content=chunks(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    assert httpx.post(f"{live.url}/completions", json={"prompt": "x", "max_tokens": 1}).status_code == 200


def test_api_key_is_required_on_v1_when_set(start_server):
    live = start_server(api_key="s3cret")
    body = {"prompt": "x", "max_tokens": 2}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
        response = httpx.post(f"{live.url}/completions", json=body, headers=headers)
        assert response.status_code == 401, headers
        assert response.json()["error"]["code"] == "invalid_api_key"
        assert response.headers["www-authenticate"] == "Bearer"
    assert httpx.get(f"{live.url}/models").status_code == 401
    with pytest.raises(openai.AuthenticationError):
        client_for(live, api_key="wrong").completions.create(model=MODEL_NAME, prompt="x", max_tokens=2)
    good = client_for(live, api_key="s3cret")
    assert good.completions.create(model=MODEL_NAME, prompt="x", max_tokens=2).choices[0].text is not None
    assert [m.id for m in good.models.list().data] == [MODEL_NAME]
    assert httpx.get(f"{live.root}/health").status_code == 200
    assert httpx.get(f"{live.root}/metrics").status_code == 200


def test_generation_past_the_request_timeout_gets_504(start_server):
    live = start_server(request_timeout_s=0.3)
    slow = {"prompt": "x", "max_tokens": 256, "diffusion_steps": 64, "confidence_threshold": 0}
    response = httpx.post(f"{live.url}/completions", json=slow, timeout=30)
    assert response.status_code == 504, response.text
    assert "request timeout (0.3 s)" in response.json()["error"]["message"]
    with httpx.stream("POST", f"{live.url}/completions", json={**slow, "stream": True}, timeout=30) as r:
        events = sse_events(list(r.iter_lines()))
    assert events[-1] == "[DONE]" and events[-2]["error"]["code"] == "timeout"
    assert live.wait_metric("dgemma_requests_cancelled_total", 2, reason="deadline") >= 2
    # The engine is free again.
    assert httpx.post(f"{live.url}/completions", json={"prompt": "x", "max_tokens": 2}).status_code == 200


def test_a_slow_body_gets_408(start_server):
    live = start_server(body_timeout_s=0.3)
    with socket.create_connection(("127.0.0.1", live.port)) as sock:
        sock.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n{"prompt": '
        )
        sock.settimeout(10)
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 408")


# 16 canvases of 256 steps: seconds even on a fast machine, so a cancellation always has time to land.
LONG = {"prompt": "x", "max_tokens": 256, "diffusion_steps": 256, "confidence_threshold": 0}


def test_a_client_that_disconnects_mid_stream_cancels_its_generation(start_server):
    live = start_server()
    with httpx.stream("POST", f"{live.url}/completions", json={**LONG, "stream": True}, timeout=60) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                break  # the first canvas arrived; hang up
    assert live.wait_metric("dgemma_requests_cancelled_total", 1, reason="disconnect") == 1
    # The generation stopped between denoising steps, long before its 16 canvases.
    time.sleep(0.5)
    assert live.metric("dgemma_canvases_total") < 8
    assert httpx.post(f"{live.url}/completions", json={"prompt": "x", "max_tokens": 2}).status_code == 200


def test_a_client_that_disconnects_while_waiting_cancels_its_generation(start_server):
    live = start_server()
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{live.url}/completions", json=LONG, timeout=httpx.Timeout(60, read=0.5))
    assert live.wait_metric("dgemma_requests_cancelled_total", 1, reason="disconnect") == 1
    time.sleep(0.5)
    assert live.metric("dgemma_canvases_total") < 8


def test_stopping_the_server_stops_a_running_generation(start_server):
    live = start_server()
    caller = threading.Thread(target=lambda: httpx.post(f"{live.url}/completions", json=LONG, timeout=60))
    caller.start()
    live.wait_metric("dgemma_requests_running", 1)
    live.__exit__(None, None, None)
    assert not live.app.state.scheduler.alive
    registry = live.app.state.metrics.registry
    assert registry.get_sample_value("dgemma_canvases_total") < 8
    caller.join(60)


def test_a_full_queue_answers_429(start_server):
    live = start_server(max_queue=1)
    with httpx.stream("POST", f"{live.url}/completions", json={**LONG, "stream": True}, timeout=60) as r:
        lines = r.iter_lines()  # kept open: closing it would hang up
        next(line for line in lines if line.startswith("data: {"))  # running: the queue is empty
        waiting = threading.Thread(
            target=lambda: httpx.post(
                f"{live.url}/completions", json={"prompt": "x", "max_tokens": 1}, timeout=60
            )
        )
        waiting.start()  # a second request waits in the queue
        end = time.monotonic() + 20
        while httpx.get(f"{live.root}/health").json()["queue_depth"] < 1 and time.monotonic() < end:
            time.sleep(0.02)
        response = httpx.post(f"{live.url}/completions", json={"prompt": "x", "max_tokens": 1})
        assert response.status_code == 429 and response.headers["retry-after"] == "1"
        assert response.json()["error"]["type"] == "rate_limit_error"
    waiting.join(60)  # hanging up the stream freed the engine for the waiting request


# --- metrics ------------------------------------------------------------------------------------------


def test_metrics_count_requests_tokens_steps_and_latency(start_server):
    live = start_server()
    for _ in range(2):
        assert (
            httpx.post(
                f"{live.url}/completions",
                json={"prompt": "x", "max_tokens": 20, "diffusion_steps": 3},
                timeout=60,
            ).status_code
            == 200
        )
    httpx.post(f"{live.url}/completions", json={"prompt": "x", "max_tokens": 0})
    assert live.metric("dgemma_requests_total", endpoint="/v1/completions", status="200") == 2
    assert live.metric("dgemma_requests_total", endpoint="/v1/completions", status="400") == 1
    assert live.metric("dgemma_request_latency_seconds_count", endpoint="/v1/completions") == 3
    assert live.metric("dgemma_generation_tokens_total") > 0
    assert live.metric("dgemma_prompt_tokens_total") == 2 * 2  # <bos> x
    canvases = live.metric("dgemma_canvases_total")
    assert 2 <= canvases <= 4
    assert live.metric("dgemma_denoising_steps_per_canvas_count") == canvases
    assert live.metric("dgemma_denoising_steps_per_canvas_bucket", le="4.0") == canvases


# --- the command line ---------------------------------------------------------------------------------


def test_dgemma_serve_and_bench_serve_from_the_command_line(tiny_checkpoint):
    command = [
        sys.executable,
        "-m",
        "engine.cli",
        "serve",
        "--model",
        str(tiny_checkpoint),
        "--device",
        "cpu",
    ]
    command += ["--dtype", "float32", "--steps", "2", "--port", "0", "--api-key", "k", "--no-warmup"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        assert "http://127.0.0.1:" in line and "API key required" in line, line + process.stderr.read()
        url = line.split()[2]
        client = openai.OpenAI(base_url=url, api_key="k", max_retries=0)
        assert [m.id for m in client.models.list().data] == ["model"]
        assert isinstance(
            client.completions.create(model="model", prompt="x", max_tokens=3).choices[0].text, str
        )
        load = ["--requests", "4", "--concurrency", "2", "--max-tokens", "8", "--steps", "2", "--warmup", "1"]
        bench = subprocess.run(
            [sys.executable, "-m", "engine.cli", "bench-serve", "--url", url, "--api-key", "k", *load],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert bench.returncode == 0, bench.stderr
        assert "p50 ms" in bench.stdout and "as configured" in bench.stdout
        row = next(line for line in bench.stdout.splitlines() if line.startswith("as configured"))
        assert row.split()[-1] == "0"  # no errors
    finally:
        process.terminate()
        process.wait(15)
