"""`GET /health` and `GET /metrics`, both open without the API key (as vLLM's)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from engine.server.metrics import CONTENT_TYPE
from engine.server.serving import ServingDep

router = APIRouter()


@router.get("/health")
async def health(serving: ServingDep) -> dict:
    """Liveness: 200 while the engine thread runs."""
    return {"status": "ok", "model": serving.config.model_name, "queue_depth": serving.scheduler.queue_depth}


@router.get("/metrics", response_class=Response)
async def prometheus(serving: ServingDep) -> Response:
    """Prometheus metrics: requests, tokens, denoising steps per canvas, latency histograms."""
    return Response(serving.metrics.render(), media_type=CONTENT_TYPE)
