"""The in-process engine: the DiffusionGemma model (default: the embedded one) in this process."""

from __future__ import annotations

from dgemma_lsp.backends.base import Backend, ProgressCallback
from engine.requests import GenerationRequest, InfillRequest, InfillResult


class EngineBackend(Backend):
    name = "engine"

    def __init__(self, settings):
        super().__init__(settings)
        self.model = None
        self.prefill_ms: dict[int, float] | None = None  # cold-prefill time by prompt length

    def load(self, progress: ProgressCallback) -> None:
        progress("importing the engine", 5)
        from engine import DiffusionConfig, DiffusionGemmaModel

        config = DiffusionConfig(
            device=self.settings.device,
            dtype=self.settings.dtype,
            num_diffusion_steps=self.settings.steps,
        )
        progress(f"loading {self.settings.model or 'the embedded model'}", 20)
        self.model = DiffusionGemmaModel.from_pretrained(self.settings.model, config=config)

    def warmup(self) -> None:
        if self.model is None:
            return
        self.model.warmup()
        if self.settings.prefill_budget_ms > 0:
            # What a cold prefill costs on this device, at the lengths requests will use (and a
            # warm-up at them): the completer caps its context budget with it.
            from dgemma_lsp.completion import measure_prefill

            self.prefill_ms = measure_prefill(
                self, self.settings.context_budget, self.settings.prefill_budget_ms
            )

    def infill(self, request: InfillRequest) -> InfillResult:
        if self.model is None:
            raise RuntimeError("the engine backend has no model loaded")
        return self.model.infill_request(request)

    def infill_many(self, requests: list[InfillRequest]) -> list[str]:
        """All holes in one batch of canvases (one denoising loop), for models with FIM tokens."""
        model = self.model
        if model is None or len(requests) < 2 or not model.has_fim_tokens:
            return super().infill_many(requests)
        # One canvas batch has one sampler: the first hole's steps and seed apply to all of them.
        first = requests[0]
        rows = [
            GenerationRequest(
                model.fim_prompt_ids(r),
                min(r.max_tokens, model.canvas_length),
                num_diffusion_steps=first.num_diffusion_steps,
                seed=first.seed,
                deadline=r.deadline,
                should_stop=r.should_stop,
            )
            for r in requests
        ]
        return [row.text for row in model.run_batch(rows).rows]

    def count_tokens(self, text: str) -> int:
        if self.model is None:
            return super().count_tokens(text)
        return self.model.count_tokens(text)

    @property
    def canvas_length(self) -> int:
        return self.model.canvas_length if self.model is not None else super().canvas_length

    @property
    def context_length(self) -> int:
        return self.model.context_length if self.model is not None else super().context_length

    @property
    def description(self) -> str:
        if self.model is None:
            return f"engine ({self.settings.model or 'embedded model'}, not loaded)"
        return f"engine ({self.model.source}, {self.model.device}, canvas {self.model.canvas_length})"

    def close(self) -> None:
        self.model = None
        super().close()
