"""`POST /v1/completions`: text completion, or with `suffix` the hole between `prompt` and `suffix`."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from engine.requests import ContextSnippet, InfillRequest
from engine.server.batching import Job
from engine.server.errors import ApiError
from engine.server.schemas import CompletionChoice, CompletionRequest, CompletionResponse
from engine.server.serving import GENERATION_RESPONSES, Serving, ServingDep, diffusion_stats, usage

router = APIRouter()


def prompt_ids(serving: Serving, prompt: str | list[int]) -> list[int]:
    model = serving.model
    if isinstance(prompt, str):
        return model.tokenizer.encode(prompt, add_special_tokens=True)
    vocab = model.transformer.config.vocab_size
    bad = [t for t in prompt if not 0 <= t < vocab]
    if bad:
        raise ApiError(
            400, f"prompt: token ids out of the vocabulary (0..{vocab - 1}): {bad[:5]}", param="prompt"
        )
    return list(prompt)


def completion_jobs(serving: Serving, body: CompletionRequest) -> list[Job]:
    """Tokenize and check every prompt (runs in a worker thread: long prompts take a while)."""
    config = serving.config
    jobs = []
    max_tokens = body.max_tokens or min(config.default_completion_tokens, config.max_tokens_limit)
    for prompt in body.prompts():
        if body.suffix is None:
            ids = prompt_ids(serving, prompt)
            serving.check_length(len(ids), max_tokens)
            jobs.append(serving.new_job(body, ids, max_tokens))
            continue
        if not isinstance(prompt, str):
            raise ApiError(400, "suffix needs a text prompt, not token ids", param="prompt")
        snippets = [ContextSnippet(e.filename or "context", e.text) for e in body.input_extra or []]
        estimate = serving.model.count_tokens(prompt + body.suffix + "".join(s.text for s in snippets))
        serving.check_length(estimate, max_tokens)
        job = serving.new_job(body, None, max_tokens)
        job.infill = InfillRequest(
            prefix=prompt,
            suffix=body.suffix,
            language=body.language,
            path=body.path,
            snippets=snippets,
            max_tokens=max_tokens,
            num_diffusion_steps=body.diffusion_steps,
            seed=job.seed,
        )
        jobs.append(job)
    return jobs


@router.post(
    "/v1/completions",
    response_model=CompletionResponse,
    responses=GENERATION_RESPONSES,
)
async def completions(body: CompletionRequest, request: Request, serving: ServingDep) -> Any:
    """Text completion; with `suffix`, fill the hole between `prompt` and `suffix`."""
    jobs = await serving.accept(body, lambda: completion_jobs(serving, body))
    base = serving.envelope("cmpl", "text_completion")
    if body.stream:

        def choice(index: int, text: str | None, finish: str | None) -> dict:
            return {"index": index, "text": text or "", "finish_reason": finish, "logprobs": None}

        return serving.stream(jobs, body, base, choice)

    async def whole() -> CompletionResponse:
        results = await serving.run(jobs, request)
        serving.account(results)
        return CompletionResponse(
            id=base["id"],
            created=base["created"],
            model=base["model"],
            choices=[
                CompletionChoice(index=i, text=r.text, finish_reason=r.finish_reason)
                for i, r in enumerate(results)
            ],
            usage=usage(results),
            diffusion=diffusion_stats(results),
        )

    return await serving.answer(whole)
