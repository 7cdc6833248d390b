"""Request and response bodies of the OpenAI-compatible API (pydantic), with the diffusion extras.

Requests follow OpenAI's `/v1/completions` and `/v1/chat/completions`, plus the fields the
desktop runtimes for DiffusionGemma and SGLang/vLLM's diffusion front-ends accept:
`diffusion_steps` (alias `num_diffusion_steps`), the sampler knobs of diffusiongemma.md 4.1
(`entropy_bound`, `t_min`, `t_max`, `stability_threshold`, `confidence_threshold`) and `seed`.

OpenAI fields fall in three groups:
- used: `model`, `prompt`, `suffix`, `messages`, `max_tokens` (`max_completion_tokens`), `stop`,
  `stream`, `stream_options.include_usage`, `seed`;
- accepted and ignored, as SGLang does for DiffusionGemma (4.5): `temperature`, `top_p`, `top_k`
  (the sampler's temperature schedule is `t_max` -> `t_min`), `user`;
- rejected with a 400 that says why: `n` > 1, `best_of` > 1, `echo`, `logprobs`, `top_logprobs`,
  penalties, `logit_bias`, `tools`, `response_format` other than text.
Fields nobody defined are ignored, as vLLM does, so that clients adding new fields keep working.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, model_validator

from engine.requests import SAMPLER_KNOBS

# Hard limits that keep a single request from taking the server down; the server's own limits
# (`max_tokens`, steps) are checked against its configuration in app.py.
MAX_STOP_STRINGS = 16
MAX_STOP_CHARS = 256
MAX_PROMPTS = 64
MAX_MESSAGES = 1024
MAX_STABILITY = 1024
SEED_MAX = 2**63 - 1


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


class DiffusionParameters(BaseModel):
    """What both endpoints share: the diffusion knobs, stop strings, streaming and the ignored
    and rejected OpenAI sampling fields."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True, allow_inf_nan=False)

    model: str | None = Field(None, description="The served model name (`GET /v1/models`); optional.")
    diffusion_steps: int | None = Field(
        None,
        ge=1,
        validation_alias=AliasChoices("diffusion_steps", "num_diffusion_steps"),
        description="Denoising step budget per canvas (alias `num_diffusion_steps`); default: the server's.",
    )
    entropy_bound: float | None = Field(
        None, gt=0, le=1e6, description="Summed entropy accepted per step, nats (default 0.1)."
    )
    t_min: float | None = Field(None, ge=1e-3, le=1e3, description="Temperature at the last step (0.4).")
    t_max: float | None = Field(None, ge=1e-3, le=1e3, description="Temperature at the first step (0.8).")
    stability_threshold: int | None = Field(
        None, ge=0, le=MAX_STABILITY, description="Steps the argmax canvas must stay unchanged (1)."
    )
    confidence_threshold: float | None = Field(
        None, ge=0, le=1e6, description="Mean entropy below which a stable canvas stops early (0.005)."
    )
    seed: int | None = Field(
        None,
        ge=0,
        le=SEED_MAX,
        description="Reproducible sampling. A seeded request always runs alone (never batched), so the "
        "same seed gives the same text whatever else the server is doing.",
    )
    stop: str | list[str] | None = Field(
        None, description=f"Up to {MAX_STOP_STRINGS} strings; the text ends before the first one."
    )
    stream: bool = Field(False, description="Server-sent events, one chunk per committed canvas.")
    stream_options: StreamOptions | None = None
    # Accepted and ignored (documented above).
    temperature: float | None = Field(None, ge=0, le=2, description="Accepted, no effect (use t_min/t_max).")
    top_p: float | None = Field(None, ge=0, le=1, description="Accepted, no effect.")
    top_k: int | None = Field(None, ge=-1, description="Accepted, no effect.")
    user: str | None = Field(None, description="Accepted, no effect.")
    # Rejected unless left at their defaults.
    n: int | None = Field(None, description="Only 1.")
    presence_penalty: float | None = Field(None, description="Only 0: penalties do not apply to a canvas.")
    frequency_penalty: float | None = Field(None, description="Only 0.")
    repetition_penalty: float | None = Field(None, description="Only 1.")
    logit_bias: dict[str, float] | None = Field(None, description="Not supported.")

    @model_validator(mode="after")
    def _check_common(self) -> DiffusionParameters:
        problems = []
        if self.n not in (None, 1):
            problems.append("n > 1 is not supported: send one request per completion")
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name) not in (None, 0):
                problems.append(f"{name} is not supported by a diffusion model (leave it at 0)")
        if self.repetition_penalty not in (None, 1):
            problems.append("repetition_penalty is not supported by a diffusion model (leave it at 1)")
        if self.logit_bias:
            problems.append("logit_bias is not supported by a diffusion model")
        stops = self.stop_list()
        if len(stops) > MAX_STOP_STRINGS:
            problems.append(f"stop: at most {MAX_STOP_STRINGS} strings")
        if any(len(s) > MAX_STOP_CHARS for s in stops):
            problems.append(f"stop: each string at most {MAX_STOP_CHARS} characters")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop)
        return [s for s in stops if s]

    def sampler_knobs(self) -> dict[str, float | int]:
        knobs = {k: getattr(self, k) for k in SAMPLER_KNOBS}
        return {k: v for k, v in knobs.items() if v is not None}

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class InputExtra(BaseModel):
    """A context snippet for infilling (the name llama.cpp's `/infill` uses)."""

    model_config = ConfigDict(extra="ignore")

    filename: str = Field("", max_length=4096)
    text: str


class CompletionRequest(DiffusionParameters):
    """`POST /v1/completions`."""

    prompt: str | list[str] | list[int] | list[list[int]] = Field(
        ..., description="Text, token ids, or a list of either (one choice each)."
    )
    suffix: str | None = Field(
        None,
        description="Text after the hole: the completion fills the gap between prompt and suffix "
        "(native FIM tokens where the model has them, else the hole-filling chat prompt).",
    )
    max_tokens: int | None = Field(
        None, ge=1, description="Tokens to generate (default 16, as OpenAI); with `suffix`, the hole size."
    )
    input_extra: list[InputExtra] | None = Field(
        None, max_length=256, description="Context snippets for `suffix` requests (as llama.cpp `/infill`)."
    )
    path: str | None = Field(None, max_length=4096, description="File path of the hole (`suffix` requests).")
    language: str | None = Field(None, max_length=64, description="Language of the hole (`suffix` requests).")
    echo: bool | None = Field(None, description="Only false.")
    best_of: int | None = Field(None, description="Only 1.")
    logprobs: int | None = Field(None, description="Not supported.")

    @model_validator(mode="after")
    def _check_completion(self) -> CompletionRequest:
        problems = []
        if self.echo:
            problems.append("echo is not supported")
        if self.best_of not in (None, 1):
            problems.append("best_of > 1 is not supported")
        if self.logprobs is not None:
            problems.append(
                "logprobs are not supported: a diffusion model commits whole canvases, not one sampled "
                "token at a time"
            )
        if self.suffix is not None and self.sampler_knobs():
            problems.append(
                f"sampler knobs ({', '.join(SAMPLER_KNOBS)}) "
                "cannot be combined with suffix; diffusion_steps and seed can"
            )
        if self.suffix is None and (self.input_extra or self.path or self.language):
            problems.append("input_extra, path and language only apply to requests with a suffix")
        if isinstance(self.prompt, list):
            if not self.prompt:
                problems.append("prompt: give at least one prompt (or token)")
            elif len(self.prompt) > MAX_PROMPTS and not isinstance(self.prompt[0], int):
                problems.append(f"prompt: at most {MAX_PROMPTS} prompts per request")
            elif isinstance(self.prompt[0], list) and any(not p for p in self.prompt):
                problems.append("prompt: a list of token ids is empty")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def prompts(self) -> list[str | list[int]]:
        """One entry per choice: text or token ids."""
        if isinstance(self.prompt, str):
            return [self.prompt]
        if self.prompt and isinstance(self.prompt[0], int):
            return [list(self.prompt)]  # type: ignore[arg-type]
        return list(self.prompt)  # type: ignore[arg-type]


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["text"] = Field(..., description="Only text parts are supported.")
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "model"]
    content: str | list[ContentPart] | None = None
    name: str | None = None

    def as_template_message(self) -> dict[str, str]:
        """What the chat template reads: OpenAI's `developer` is a system turn, `model` an assistant one."""
        role = {"developer": "system", "model": "assistant"}.get(self.role, self.role)
        if isinstance(self.content, list):
            text = "".join(part.text for part in self.content)
        else:
            text = self.content or ""
        return {"role": role, "content": text}


class ChatCompletionRequest(DiffusionParameters):
    """`POST /v1/chat/completions`."""

    messages: list[ChatMessage] = Field(..., min_length=1, max_length=MAX_MESSAGES)
    max_tokens: int | None = Field(
        None,
        ge=1,
        validation_alias=AliasChoices("max_tokens", "max_completion_tokens"),
        description="Tokens to generate (alias `max_completion_tokens`); default: as many as the server allows.",
    )
    logprobs: bool | None = Field(None, description="Not supported.")
    top_logprobs: int | None = Field(None, description="Not supported.")
    tools: list[Any] | None = Field(None, description="Not supported.")
    tool_choice: Any = Field(None, description="Not supported.")
    functions: list[Any] | None = Field(None, description="Not supported.")
    response_format: dict[str, Any] | None = Field(None, description='Only {"type": "text"}.')

    @model_validator(mode="after")
    def _check_chat(self) -> ChatCompletionRequest:
        problems = []
        if self.logprobs or self.top_logprobs:
            problems.append("logprobs are not supported by a diffusion model")
        if self.tools or self.functions or self.tool_choice not in (None, "none"):
            problems.append("tools and function calling are not supported by this server")
        if self.response_format is not None and self.response_format.get("type", "text") != "text":
            problems.append("response_format: only {'type': 'text'} is supported")
        if problems:
            raise ValueError("; ".join(problems))
        return self


# ---- responses ------------------------------------------------------------------------------------


class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | None = None


class DiffusionStats(BaseModel):
    """How the diffusion engine produced a choice (not in OpenAI's API; clients ignore it)."""

    canvases: int
    steps_per_canvas: list[int]
    batch_size: int = Field(..., description="Requests that shared this canvas batch (1 = ran alone).")
    seconds: float


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: Literal["stop", "length"] | None
    logprobs: None = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage
    diffusion: list[DiffusionStats] = Field(default_factory=list)


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: Literal["stop", "length"] | None
    logprobs: None = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    diffusion: list[DiffusionStats] = Field(default_factory=list)


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "dgemma"
    max_model_len: int = Field(..., description="Context length in tokens (vLLM's name for it).")
    canvas_length: int = Field(..., description="Tokens denoised together in one canvas.")
    fim: bool = Field(..., description="Whether the model has fill-in-the-middle tokens.")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail
