"""Over real HTTP: every served model name is accepted (vLLM's `--served-model-name NAME [NAME ...]`),
other names get a 404 that names the served ones, and concurrent requests get their own figures."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from engine.cli import build_parser
from engine.server.commands import server_config

pytestmark = pytest.mark.timeout(120)


def test_serve_takes_several_served_model_names_the_first_being_the_main_one():
    args = build_parser().parse_args(["serve", "--served-model-name", "coder", "dgemma", "gpt-x"])
    config = server_config(args, "embedded")
    assert config.model_name == "coder" and config.served_model_names == ("coder", "dgemma", "gpt-x")
    default = server_config(build_parser().parse_args(["serve"]), "embedded")
    assert default.served_model_names == ("dgemma-embedded",)


def test_every_served_name_is_accepted_and_listed_with_the_first_first(start_server):
    live = start_server(model_name="coder", model_aliases=("dgemma", "gpt-x"))
    listed = httpx.get(f"{live.url}/models", timeout=30).json()["data"]
    assert [card["id"] for card in listed] == ["coder", "dgemma", "gpt-x"]
    for name in ("coder", "dgemma", "gpt-x"):
        body = {"model": name, "prompt": "x", "max_tokens": 2, "seed": 1}
        response = httpx.post(f"{live.url}/completions", json=body, timeout=60)
        assert response.status_code == 200, response.text
        assert response.json()["model"] == "coder"  # responses carry the main name, as vLLM's do
        chat = {"model": name, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "seed": 1}
        assert httpx.post(f"{live.url}/chat/completions", json=chat, timeout=60).status_code == 200


def test_another_name_gets_a_404_that_names_the_served_ones(start_server):
    live = start_server(model_name="coder", model_aliases=("dgemma",))
    response = httpx.post(f"{live.url}/completions", json={"model": "gpt-4", "prompt": "x"}, timeout=30)
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["code"] == "model_not_found" and error["param"] == "model"
    assert "'gpt-4'" in error["message"] and "'coder', 'dgemma'" in error["message"]


async def test_two_concurrent_requests_each_get_their_own_figures(start_server, served_model):
    """A long-prompt short answer and a short-prompt long answer, in flight together (one of them
    streamed): each response reports its own prompt, completion and canvas figures, the ones the
    same request gets alone from the SDK."""
    bodies = [
        {"prompt": "def f(x):\n    return x * 2\n" * 6, "max_tokens": 5, "seed": 11, "diffusion_steps": 2},
        {"prompt": "y =", "max_tokens": 40, "seed": 12, "diffusion_steps": 3},
    ]
    expected = []
    for body in bodies:
        result = served_model.run(
            served_model.request(
                body["prompt"],
                body["max_tokens"],
                seed=body["seed"],
                num_diffusion_steps=body["diffusion_steps"],
            )
        )
        expected.append(
            (result.stats.prompt_tokens, result.completion_tokens, result.stats.steps_per_canvas, result.text)
        )
    assert expected[0][0] > 5 * expected[1][0]  # the two are easy to tell apart
    live = start_server()

    async with httpx.AsyncClient(base_url=live.url, timeout=60) as client:

        async def whole(body: dict) -> tuple:
            response = await client.post("/completions", json=body)
            assert response.status_code == 200, response.text
            data = response.json()
            usage, diffusion = data["usage"], data["diffusion"][0]
            text = data["choices"][0]["text"]
            return usage["prompt_tokens"], usage["completion_tokens"], diffusion["steps_per_canvas"], text

        async def streamed(body: dict) -> tuple:
            text, usage = "", None
            payload = {**body, "stream": True, "stream_options": {"include_usage": True}}
            async with client.stream("POST", "/completions", json=payload) as response:
                async for line in response.aiter_lines():
                    if not line.startswith("data: {"):
                        continue
                    event = json.loads(line[6:])
                    if event["choices"]:
                        text += event["choices"][0]["text"]
                    if event.get("usage"):
                        usage = event["usage"]
            return usage["prompt_tokens"], usage["completion_tokens"], text

        for _ in range(2):
            first, second = await asyncio.gather(whole(bodies[0]), whole(bodies[1]))
            assert [first, second] == expected
            first, streamed_second = await asyncio.gather(whole(bodies[0]), streamed(bodies[1]))
            assert first == expected[0]
            prompt_tokens, completion_tokens, _, text = expected[1]
            assert streamed_second == (prompt_tokens, completion_tokens, text)
