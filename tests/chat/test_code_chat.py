"""Chat offline: the embedded model (FIM tokens, no chat template of its own) answers a
conversation through engine/templates/code_chat.jinja, in the SDK, `dgemma generate --chat` and
`/v1/chat/completions` over real HTTP.

The embedded model is weak: these tests check what holds for every draw (text without special
tokens, the prompt built as designed, the finish reasons, the same answer on every route for one
seed), never whether the code is good.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from dataclasses import replace

import httpx
import openai
import pytest

from engine import DiffusionConfig, DiffusionGemmaModel
from engine.errors import ConfigError
from engine.loading import EMBEDDED_MODEL_DIR
from engine.prompting import FILE_SEP, FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX
from engine.random_model import write_random_checkpoint
from engine.tokenizer import CODE_CHAT_TEMPLATE, Tokenizer
from tests.http.conftest import BASE_CONFIG, LiveServer

pytestmark = pytest.mark.timeout(300)

# The first example of DiffusionGemma's own guide.
GUIDE_REQUEST = "Write a Python function to calculate fibonacci numbers"
SUFFIX = '\n\n\nif __name__ == "__main__":\n    main()\n'
SEEDS = (0, 1, 2, 3)


@pytest.fixture(scope="module")
def embedded() -> DiffusionGemmaModel:
    return DiffusionGemmaModel.from_pretrained(config=DiffusionConfig(device="cpu"))


def fim_body(rendered: str) -> str:
    """The Python file between <|fim_prefix|> and <|fim_middle|>."""
    return rendered.split(FIM_PREFIX, 1)[1].removesuffix(FIM_MIDDLE)


# --- the template ---------------------------------------------------------------------------------


def test_a_request_becomes_the_docstring_of_a_file_the_model_fills():
    tokenizer = Tokenizer.from_folder(EMBEDDED_MODEL_DIR)
    assert tokenizer.chat_template == CODE_CHAT_TEMPLATE.read_text(encoding="utf-8")
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": GUIDE_REQUEST}]
    rendered = tokenizer.apply_chat_template(messages)
    assert rendered == (
        f"<bos>{FILE_SEP}main.py\n{FIM_SUFFIX}{SUFFIX}{FIM_PREFIX}"
        f'"""Be brief.\n\n{GUIDE_REQUEST}"""\n\n{FIM_MIDDLE}'
    )
    # Without the generation prompt the file is there, the hole is not opened.
    assert tokenizer.apply_chat_template(messages, add_generation_prompt=False) == rendered.removesuffix(
        FIM_MIDDLE
    )


def test_earlier_answers_are_code_and_later_requests_comments():
    tokenizer = Tokenizer.from_folder(EMBEDDED_MODEL_DIR)
    messages = [
        {"role": "user", "content": "Write fib"},
        {"role": "assistant", "content": "def fib(n):\n    return n\n"},
        {"role": "user", "content": [{"type": "text", "text": "Now make it\nfaster"}]},
    ]
    body = fim_body(tokenizer.apply_chat_template(messages))
    assert body == '"""Write fib"""\n\ndef fib(n):\n    return n\n\n# Now make it\n# faster\n'
    tree = ast.parse(body)  # the conversation is a valid Python file
    assert ast.get_docstring(tree) == "Write fib"


@pytest.mark.parametrize("request_text", ['say "hi"', 'a \\ b """x"""', '""""', "ends with \\"])
def test_the_docstring_holds_the_request_exactly_whatever_its_quotes(request_text):
    tokenizer = Tokenizer.from_folder(EMBEDDED_MODEL_DIR)
    body = fim_body(tokenizer.apply_chat_template([{"role": "user", "content": request_text}]))
    assert ast.get_docstring(ast.parse(body), clean=False) == request_text


def test_a_checkpoint_with_its_own_template_keeps_it(tiny_checkpoint):
    tokenizer = Tokenizer.from_folder(tiny_checkpoint)
    assert tokenizer.has_fim_tokens
    assert tokenizer.chat_template == (tiny_checkpoint / "chat_template.jinja").read_text(encoding="utf-8")
    assert FIM_MIDDLE not in tokenizer.apply_chat_template([{"role": "user", "content": "hi"}])


def test_a_model_without_fim_tokens_or_template_still_has_no_chat(tmp_path):
    folder = write_random_checkpoint(tmp_path / "plain", fim_tokens=False)
    (folder / "chat_template.jinja").unlink()
    tokenizer = Tokenizer.from_folder(folder)
    with pytest.raises(ConfigError, match="no chat template"):
        tokenizer.apply_chat_template([{"role": "user", "content": "hi"}])


# --- the SDK ---------------------------------------------------------------------------------------


def test_model_chat_answers_the_guide_request_with_text_for_every_seed(embedded):
    messages = [{"role": "user", "content": GUIDE_REQUEST}]
    ids = embedded.chat_prompt_ids(messages)
    tokenizer = embedded.tokenizer
    assert ids[0] == tokenizer.token_id("<bos>") and ids.count(tokenizer.token_id("<bos>")) == 1
    assert ids[-1] == tokenizer.token_id(FIM_MIDDLE)
    for seed in SEEDS:
        result = embedded.run(embedded.chat_request(messages, max_tokens=128, seed=seed))
        reply, stats = result.text, result.stats
        assert reply.strip(), f"seed {seed}: empty reply"
        assert "<|" not in reply and "<bos>" not in reply and "<pad>" not in reply
        assert stats.prompt_tokens == len(ids)
        assert stats.finish_reason in ("stop", "length")
        if stats.finish_reason == "length":
            assert stats.generated_tokens == 128
        assert embedded.chat(messages, max_tokens=128, seed=seed) == reply  # seeded: repeatable


# --- the command line -----------------------------------------------------------------------------


def dgemma(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", *args],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )


def test_dgemma_generate_with_an_instruction_prints_the_chat_answer(embedded):
    out = dgemma("generate", GUIDE_REQUEST, "--chat", "--device", "cpu", "--seed", "1", "--max-tokens", "128")
    assert out.returncode == 0, out.stderr
    messages = [{"role": "user", "content": GUIDE_REQUEST}]
    expected = embedded.chat(messages, max_tokens=128, seed=1)
    assert out.stdout == expected + "\n" and out.stdout.strip()
    assert f"prompt {len(embedded.chat_prompt_ids(messages))} tokens" in out.stderr

    with_system = dgemma(
        "generate", GUIDE_REQUEST, "--system", "Be brief.", "--device", "cpu", "--seed", "1", "--quiet"
    )
    assert with_system.returncode == 0, with_system.stderr
    system_messages = [{"role": "system", "content": "Be brief."}, *messages]
    assert with_system.stdout == embedded.chat(system_messages, max_tokens=256, seed=1) + "\n"


# --- /v1/chat/completions over HTTP ---------------------------------------------------------------


@pytest.fixture(scope="module")
def embedded_server(embedded):
    with LiveServer(embedded, replace(BASE_CONFIG, model_name="embedded")) as live:
        yield live


def test_chat_completions_streamed_and_not_return_the_models_answer(embedded_server, embedded):
    client = openai.OpenAI(base_url=embedded_server.url, api_key="unused", max_retries=0, timeout=120)
    messages = [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": GUIDE_REQUEST}]
    template_messages = [{"role": "system", "content": "Be brief."}, messages[1]]
    reply = client.chat.completions.create(model="embedded", messages=messages, max_tokens=96, seed=2)
    choice = reply.choices[0]
    assert choice.message.role == "assistant" and choice.message.content.strip()
    assert choice.finish_reason in ("stop", "length")
    assert reply.usage.prompt_tokens == len(embedded.chat_prompt_ids(template_messages))
    assert choice.message.content == embedded.chat(template_messages, max_tokens=96, seed=2)
    if choice.finish_reason == "length":
        assert reply.usage.completion_tokens == 96

    chunks = list(
        client.chat.completions.create(
            model="embedded", messages=messages, max_tokens=96, seed=2, stream=True
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == choice.message.content
    assert chunks[-1].choices[0].finish_reason == choice.finish_reason


def test_chat_no_longer_answers_400_on_the_embedded_model(embedded_server):
    response = httpx.post(
        f"{embedded_server.url}/chat/completions",
        json={"model": "embedded", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["choices"][0]["finish_reason"] in ("stop", "length")
    assert isinstance(body["choices"][0]["message"]["content"], str)
