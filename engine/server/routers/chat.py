"""`POST /v1/chat/completions`: system, user and assistant turns through the model's chat template."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from engine.server.batching import Job
from engine.server.schemas import AssistantMessage, ChatChoice, ChatCompletionRequest, ChatCompletionResponse
from engine.server.serving import GENERATION_RESPONSES, Serving, ServingDep, diffusion_stats, usage

router = APIRouter()


def chat_job(serving: Serving, body: ChatCompletionRequest) -> Job:
    model, config = serving.model, serving.config
    ids = model.chat_prompt_ids([m.as_template_message() for m in body.messages])
    room = model.context_length - len(ids)
    max_tokens = body.max_tokens or max(1, min(config.max_tokens_limit, room))
    serving.check_length(len(ids), max_tokens)
    return serving.new_job(body, ids, max_tokens)


@router.post(
    "/v1/chat/completions",
    response_model=ChatCompletionResponse,
    responses=GENERATION_RESPONSES,
)
async def chat_completions(body: ChatCompletionRequest, request: Request, serving: ServingDep) -> Any:
    """Chat completion: system, user and assistant turns through the model's chat template."""
    job = (await serving.accept(body, lambda: [chat_job(serving, body)]))[0]
    base = serving.envelope("chatcmpl", "chat.completion.chunk")
    if body.stream:

        def choice(index: int, text: str | None, finish: str | None) -> dict:
            delta = {"content": text} if text is not None else {}
            return {"index": index, "delta": delta, "finish_reason": finish, "logprobs": None}

        def head(index: int) -> dict:
            delta = {"role": "assistant", "content": ""}
            return {"index": index, "delta": delta, "finish_reason": None, "logprobs": None}

        return serving.stream([job], body, base, choice, head)

    async def whole() -> ChatCompletionResponse:
        results = await serving.run([job], request)
        serving.account(results)
        result = results[0]
        return ChatCompletionResponse(
            id=base["id"],
            created=base["created"],
            model=base["model"],
            choices=[
                ChatChoice(
                    index=0,
                    message=AssistantMessage(content=result.text),
                    finish_reason=result.finish_reason,
                )
            ],
            usage=usage(results),
            diffusion=diffusion_stats(results),
        )

    return await serving.answer(whole)
