"""Prometheus metrics of the HTTP server (`GET /metrics`).

Each app has its own registry, so several servers in one process (the tests) keep separate counts.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
# Published traces converge in 9-15 of 48 steps (diffusiongemma.md 4.6).
STEP_BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 256, 1024)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 32, 64)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "dgemma_requests", "HTTP requests by endpoint and status code", ["endpoint", "status"], registry=r
        )
        self.prompt_tokens = Counter("dgemma_prompt_tokens", "Prompt tokens of finished requests", registry=r)
        self.cached_prompt_tokens = Counter(
            "dgemma_cached_prompt_tokens", "Prompt tokens served from the prompt-prefix KV cache", registry=r
        )
        self.generation_tokens = Counter("dgemma_generation_tokens", "Tokens returned to clients", registry=r)
        self.canvases = Counter("dgemma_canvases", "Canvases denoised (a batch counts once)", registry=r)
        self.steps_per_canvas = Histogram(
            "dgemma_denoising_steps_per_canvas",
            "Decoder passes each canvas took before it converged or spent its budget",
            buckets=STEP_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "dgemma_batch_size", "Requests per engine call (1 = ran alone)", buckets=BATCH_BUCKETS, registry=r
        )
        self.latency = Histogram(
            "dgemma_request_latency_seconds",
            "Time from arrival to the last byte of the answer",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.first_chunk = Histogram(
            "dgemma_time_to_first_canvas_seconds",
            "Streaming requests: time from arrival to the first committed canvas",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "dgemma_queue_wait_seconds",
            "Time a request waited for the engine",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.cancelled = Counter(
            "dgemma_requests_cancelled",
            "Generations stopped early: client disconnected or deadline passed",
            ["reason"],
            registry=r,
        )
        self.queue_depth = Gauge("dgemma_queue_depth", "Requests waiting for the engine", registry=r)
        self.running = Gauge("dgemma_requests_running", "Requests the engine is working on", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
