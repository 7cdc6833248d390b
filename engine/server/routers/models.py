"""`GET /v1/models`: the served model under each of its names."""

from __future__ import annotations

from fastapi import APIRouter

from engine.server.schemas import ErrorResponse, ModelCard, ModelList
from engine.server.serving import ServingDep

router = APIRouter()


@router.get("/v1/models", response_model=ModelList, responses={401: {"model": ErrorResponse}})
async def models(serving: ServingDep) -> ModelList:
    """The served model under each of its names (the main one first), with its context and
    canvas lengths and whether it has FIM tokens."""
    model = serving.model
    cards = [
        ModelCard(
            id=name,
            created=serving.created,
            max_model_len=model.context_length,
            canvas_length=model.canvas_length,
            fim=bool(model.has_fim_tokens),
        )
        for name in serving.config.served_model_names
    ]
    return ModelList(data=cards)
