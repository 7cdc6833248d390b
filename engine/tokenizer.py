"""Tokenizer and chat template of a checkpoint folder (diffusiongemma.md section 5).

`tokenizer.json` is read with the `tokenizers` library, so a raw prompt gets exactly what
transformers gives it: the tokenizer's own post-processor (e.g. Gemma's `<bos>`). A prompt
rendered by the chat template already carries its special tokens and is encoded without adding
them again. The template (`chat_template.jinja`, or `chat_template` in `tokenizer_config.json`) is
rendered with Jinja2 in a sandbox, with the same options and helpers transformers provides.
A checkpoint with FIM tokens and no template of its own (the embedded model) gets the code-chat
template of engine/templates/code_chat.jinja: the conversation as a Python file to fill.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer as HFTokenizer

from engine.errors import CheckpointError, ConfigError
from engine.prompting import FIM_TOKENS

CODE_CHAT_TEMPLATE = Path(__file__).with_name("templates") / "code_chat.jinja"


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(
    value: Any, ensure_ascii: bool = False, indent: int | None = None, separators=None, sort_keys=False
) -> str:
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _token_content(value: Any) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value


class Tokenizer:
    def __init__(
        self,
        tokenizer: HFTokenizer,
        chat_template: str | None = None,
        special_tokens: dict[str, str] | None = None,
    ):
        self.backend = tokenizer
        self.chat_template = chat_template
        self.special_tokens = special_tokens or {}
        self._template: jinja2.Template | None = None
        added = tokenizer.get_added_tokens_decoder()
        self.special_ids = {i for i, token in added.items() if token.special}

    @classmethod
    def from_folder(cls, folder: str | Path) -> Tokenizer:
        folder = Path(folder)
        path = folder / "tokenizer.json"
        if not path.is_file():
            raise CheckpointError(
                f"{folder} has no tokenizer.json", hint="the engine needs the checkpoint's tokenizer.json"
            )
        try:
            backend = HFTokenizer.from_file(str(path))
        except Exception as error:  # tokenizers raises a plain Exception on bad JSON
            raise CheckpointError(
                f"{path} cannot be read ({error})", hint="the file is corrupt: download the checkpoint again"
            ) from None
        template, special = None, {}
        config_path = folder / "tokenizer_config.json"
        if config_path.is_file():
            try:
                tokenizer_config = json.loads(config_path.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                raise CheckpointError(
                    f"{config_path} is not valid JSON ({error})", hint="download it again"
                ) from None
            for name in ("bos_token", "eos_token", "pad_token", "unk_token"):
                content = _token_content(tokenizer_config.get(name))
                if content:
                    special[name] = content
            raw = tokenizer_config.get("chat_template")
            if isinstance(raw, list):  # named templates: take the default one
                raw = next((t.get("template") for t in raw if t.get("name") == "default"), None)
            template = raw
        jinja_path = folder / "chat_template.jinja"
        if jinja_path.is_file():
            template = jinja_path.read_text(encoding="utf-8")
        if not template and all(backend.token_to_id(t) is not None for t in FIM_TOKENS):
            template = CODE_CHAT_TEMPLATE.read_text(encoding="utf-8")
        return cls(backend, template, special)

    # ---- ids -------------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def token_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    @property
    def has_fim_tokens(self) -> bool:
        return all(self.token_id(t) is not None for t in FIM_TOKENS)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_batch(self, texts: list[str], add_special_tokens: bool = True) -> list[list[int]]:
        return [e.ids for e in self.backend.encode_batch(texts, add_special_tokens=add_special_tokens)]

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.backend.decode(ids, skip_special_tokens=skip_special_tokens)

    # ---- chat ------------------------------------------------------------------------------

    def _compiled_template(self) -> jinja2.Template:
        if self._template is None:
            if not self.chat_template:
                raise ConfigError(
                    "this model has no chat template",
                    hint="use generate() with a raw prompt, or add chat_template.jinja to the model folder",
                )
            env = ImmutableSandboxedEnvironment(
                trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]
            )
            env.filters["tojson"] = _tojson
            env.globals["raise_exception"] = _raise_exception
            env.globals["strftime_now"] = _strftime_now
            try:
                self._template = env.from_string(self.chat_template)
            except jinja2.TemplateSyntaxError as error:
                raise CheckpointError(
                    f"the chat template does not parse: {error}", hint="fix chat_template.jinja"
                ) from None
        return self._template

    def apply_chat_template(
        self, messages: list[dict[str, Any]], add_generation_prompt: bool = True, **variables: Any
    ) -> str:
        for message in messages:
            if not isinstance(message, dict) or "role" not in message:
                raise ConfigError(
                    f"a chat message must be a dict with 'role' and 'content', got {message!r}",
                    hint='e.g. [{"role": "system", "content": "..."}, {"role": "user", "content": "..."}]',
                )
        try:
            return self._compiled_template().render(
                messages=messages,
                add_generation_prompt=add_generation_prompt,
                **self.special_tokens,
                **variables,
            )
        except jinja2.exceptions.TemplateError as error:
            raise ConfigError(f"the chat template rejected these messages: {error}") from None
