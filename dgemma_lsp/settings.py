"""The server's settings: one validated model, fed by `initializationOptions` and by
`workspace/configuration` (section `dgemma`).

Keys are accepted in snake_case (`max_lines`) and in the camelCase editors use (`maxLines`).
An invalid value never stops the server: it is reported and replaced by its default.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.alias_generators import to_camel

SECTION = "dgemma"

# Mirrors engine.config.DEVICES / DTYPES; kept here so settings load without the engine.
DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("auto", "float32", "bfloat16", "float16", "nvfp4")
BACKENDS = ("engine", "openai", "http")


class Settings(BaseModel):
    """Everything a user can set. Field docs are the user-facing documentation (README table)."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="ignore",
        validate_assignment=True,
        frozen=False,
    )

    enabled: bool = Field(True, description="Serve suggestions at all.")
    backend: Literal["engine", "openai", "http"] = Field(
        "engine",
        description="`engine`: the in-process engine; `openai` (alias `http`): a remote OpenAI-compatible "
        "server (`dgemma serve`, vLLM or SGLang serving DiffusionGemma) at `endpoint`.",
    )
    model: str | None = Field(
        None,
        description="Checkpoint folder or hub id for the in-process engine; empty = the embedded model. "
        "With backend `openai`: the served model name; empty = the first one in `/v1/models`.",
    )
    endpoint: str | None = Field(
        None, description="Base URL of the remote server, e.g. `http://gpu-box:8000/v1` (backend `openai`)."
    )
    api_key_env: str | None = Field(
        None, description="Environment variable holding the remote server's API key (sent as a Bearer token)."
    )
    remote_mode: Literal["auto", "completions", "chat"] = Field(
        "auto",
        description="How holes go to the remote server: `completions` (`/v1/completions` with `suffix`), "
        "`chat` (`/v1/chat/completions` with a hole-filling prompt, for vLLM/SGLang), `auto`: "
        "`completions` for a `dgemma serve` endpoint, `chat` otherwise.",
    )
    connect_timeout_ms: int = Field(
        2000, ge=50, le=60_000, description="Time to connect to the remote server before giving up."
    )
    device: str = Field("auto", description="`auto`, `cpu`, `cuda`, `cuda:N` or `mps`.")
    dtype: Literal["auto", "float32", "bfloat16", "float16", "nvfp4"] = Field(
        "auto", description="Weight dtype."
    )
    steps: int | None = Field(
        None, ge=1, le=256, description="Denoising steps per canvas; empty = the model's default."
    )
    seed: int | None = Field(
        None, description="Seed of the sampler, for reproducible suggestions; empty = a new draw each time."
    )
    max_lines: int = Field(8, ge=1, le=200, description="Most lines in a multi-line suggestion.")
    single_line_tokens: int = Field(24, ge=4, le=1024, description="Canvas length for a single-line hole.")
    multi_line_tokens: int = Field(64, ge=8, le=4096, description="Canvas length for a multi-line hole.")
    deadline_ms: int = Field(
        1500, ge=50, le=120_000, description="Time budget of one inline suggestion; late ones are dropped."
    )
    action_attempts: int = Field(
        3, ge=1, le=16, description="Answers (seeds) a code action tries before giving up on valid code."
    )
    action_deadline_ms: int = Field(30_000, ge=500, le=600_000, description="Time budget of one code action.")
    context_budget: int = Field(
        1024, ge=64, le=131_072, description="Prompt tokens for prefix, suffix and context snippets."
    )
    prefill_budget_ms: int = Field(
        80,
        ge=0,
        le=60_000,
        description="Time the prefill of a prompt with no reusable KV (a suggestion at a new place) may "
        "take: when the in-process model loads, it measures its prefill and caps `contextBudget` at "
        "the length that fits (halving from `contextBudget`, 256 at least). 0 = no cap (and "
        "suggestions repeatable with `seed` across machines).",
    )
    enabled_languages: list[str] = Field(
        default_factory=lambda: ["*"], description="LSP language ids to serve; `*` = all."
    )
    disabled_languages: list[str] = Field(default_factory=list, description="Language ids never served.")
    suggest_mid_word: bool = Field(False, description="Suggest when the cursor is inside an identifier.")
    suggest_in_comments: bool = Field(True, description="Suggest inside comments.")
    suggest_in_strings: bool = Field(True, description="Suggest inside string literals.")
    completion_fallback: Literal["auto", "always", "never"] = Field(
        "auto",
        description="Answer `textDocument/completion` with the suggestion: `auto` = only for clients "
        "without inline completion.",
    )
    max_file_chars: int = Field(1_000_000, ge=1_000, description="Larger documents get no suggestions.")

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if value.split(":")[0] not in DEVICES:
            raise ValueError(f"unknown device {value!r}; choose one of {', '.join(DEVICES)} (or cuda:N)")
        return value

    @field_validator("model", "endpoint")
    @classmethod
    def _empty_is_none(cls, value: str | None) -> str | None:
        return value or None

    @field_validator("enabled_languages", "disabled_languages")
    @classmethod
    def _lower(cls, value: list[str]) -> list[str]:
        return [v.strip().lower() for v in value if v.strip()]

    def language_enabled(self, language_id: str | None) -> bool:
        language = (language_id or "").lower()
        if language in self.disabled_languages:
            return False
        return "*" in self.enabled_languages or language in self.enabled_languages

    def backend_key(self) -> tuple:
        """Settings whose change needs a new backend (a model reload)."""
        return (
            self.backend,
            self.model,
            self.endpoint,
            self.device,
            self.dtype,
            self.api_key_env,
            self.remote_mode,
            self.connect_timeout_ms,
        )


FIELD_NAMES = set(Settings.model_fields) | {to_camel(name) for name in Settings.model_fields}


def _section(raw: Any) -> dict[str, Any]:
    """The `dgemma` section of a settings payload, which may or may not be nested under "dgemma"."""
    if not isinstance(raw, dict):
        return {}
    nested = raw.get(SECTION)
    if isinstance(nested, dict):
        return nested
    return raw


def parse_settings(*payloads: Any, base: Settings | None = None) -> tuple[Settings, list[str]]:
    """Merge payloads (later ones win) over `base` and validate.

    Returns the settings and a list of problems for the user; every invalid value falls back to
    its default (or to the base's value) instead of failing the whole model.
    """
    merged: dict[str, Any] = base.model_dump() if base is not None else {}
    problems: list[str] = []
    for payload in payloads:
        if payload is None:
            continue
        if not isinstance(payload, dict):
            problems.append(f"settings must be an object, got {type(payload).__name__}; ignored")
            continue
        for key, value in _section(payload).items():
            if key == SECTION:
                continue
            if key not in FIELD_NAMES:
                problems.append(f"unknown setting {SECTION}.{key} ignored")
                continue
            if value is None and key not in {"model", "endpoint", "steps", "seed"}:
                continue
            merged[_snake(key)] = value
    for _ in range(len(Settings.model_fields) + 1):
        try:
            return Settings.model_validate(merged), problems
        except ValidationError as error:
            for item in error.errors():
                name = str(item["loc"][0]) if item["loc"] else ""
                if name in merged:
                    default = (
                        getattr(base, name)
                        if base is not None
                        else Settings.model_fields[name].get_default(call_default_factory=True)
                    )
                    problems.append(
                        f"invalid setting {SECTION}.{to_camel(name)}={merged[name]!r}: {item['msg']}; "
                        f"using {default!r}"
                    )
                    if base is not None:
                        merged[name] = getattr(base, name)
                    else:
                        merged.pop(name)
    return Settings(), problems


def _snake(key: str) -> str:
    if key in Settings.model_fields:
        return key
    for name in Settings.model_fields:
        if to_camel(name) == key:
            return name
    return key
