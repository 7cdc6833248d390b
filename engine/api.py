"""`DiffusionGemmaModel`: the one public entry point over model, tokenizer, sampler and caches.

    from engine import DiffusionGemmaModel, DiffusionConfig
    model = DiffusionGemmaModel.from_pretrained("google/diffusiongemma-26B-A4B-it",
                                               config=DiffusionConfig(device="cuda", dtype="nvfp4"))
    model.generate(prompt="Why is the sky blue?", max_tokens=256, num_diffusion_steps=16)
    model.chat([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
    model.infill("def add(a, b):\n    ", "\n\nprint(add(1, 2))\n", max_tokens=32)

Underneath the text-in, text-out calls there are three: `run(request)` (one row, whole answer),
`stream(request)` (one row, text deltas canvas by canvas) and `run_batch(requests)` (several rows
in one canvas batch). A `GenerationRequest` goes in; a `GenerationResult` (tokens, text, finish
reason, stats) comes out of each call, so the figures of a call travel with it and nothing about
a call is kept on the model.

Calls are serialised by a lock, so one model can serve several threads. The prefix cache keeps
the last prompt's KV and reuses its longest common token prefix in the next call (editors resend
nearly the same prompt at every keystroke).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

import torch

from engine.cache import KVCache, PrefixCache
from engine.config import DiffusionConfig, ModelConfig
from engine.device import resolve_device, resolve_dtype, translate_oom
from engine.errors import ConfigError, PromptTooLongError
from engine.generation import CanvasOutcome, StopCheck, generate_canvases
from engine.loading import load_transformer, plan_load, read_generation_config, resolve_model_path
from engine.model import DiffusionGemmaTransformer
from engine.prompting import chat_infill_messages, fim_prompt, strip_code_fence
from engine.requests import (
    SAMPLER_KNOBS,
    BatchResult,
    GenerationRequest,
    GenerationResult,
    GenerationStats,
    InfillRequest,
    InfillResult,
)
from engine.rows import LENGTH, STOP, RowReader
from engine.sampler import EntropyBoundSampler, GeneratorRandom, RandomSource, ReferenceRandom, SamplerConfig
from engine.tokenizer import Tokenizer

__all__ = ["SAMPLER_KNOBS", "DiffusionGemmaModel", "GenerationStream"]

# Keyword options of the text-in calls that are request fields; any other keyword is a sampler knob.
REQUEST_OPTIONS = ("num_diffusion_steps", "stop", "seed", "deadline", "should_stop", "canvas_length")


def check_knobs(knobs: Mapping[str, Any]) -> None:
    """Every knob a request sets must be one the sampler has (`SAMPLER_KNOBS`)."""
    unknown = set(knobs) - set(SAMPLER_KNOBS)
    if unknown:
        raise ConfigError(
            f"unknown sampler option(s) {sorted(unknown)}", hint=f"known: {', '.join(SAMPLER_KNOBS)}"
        )


class GenerationStream(Iterator[str]):
    """The text deltas of one call, canvas by canvas (the end that could still become a stop string
    is held back). `result` fills in as the deltas come and is complete when they end."""

    def __init__(self, deltas: Iterator[str], result: GenerationResult):
        self._deltas = deltas
        self.result = result

    def __next__(self) -> str:
        return next(self._deltas)

    def close(self) -> None:
        """Stop generating (between two canvases); the prompt stays in the prefix cache."""
        close = getattr(self._deltas, "close", None)
        if close is not None:
            close()


class DiffusionGemmaModel:
    def __init__(
        self,
        transformer: DiffusionGemmaTransformer,
        tokenizer: Tokenizer,
        model_config: ModelConfig,
        config: DiffusionConfig | None = None,
        sampler_defaults: SamplerConfig | None = None,
        eos_ids: Sequence[int] | None = None,
        source: str = "",
    ):
        self.transformer = transformer
        self.tokenizer = tokenizer
        self.model_config = model_config
        self.config = config or DiffusionConfig()
        self.source = source
        self.eos_ids = list(eos_ids if eos_ids is not None else model_config.eos_token_id)
        base = sampler_defaults or SamplerConfig()
        overrides = {k: getattr(self.config, k) for k in SAMPLER_KNOBS}
        overrides["max_denoising_steps"] = self.config.num_diffusion_steps
        self.sampler_defaults = base.with_overrides(**overrides)
        if self.config.sliding_window_retention is not None:
            transformer.sliding_window_retention = self.config.sliding_window_retention
        slicing = self.config.attention_slicing
        transformer.set_attention_slicing(
            None if slicing is False else (128 if slicing is True else int(slicing))
        )
        self._lock = threading.RLock()
        self.prefix_cache = PrefixCache(
            transformer.new_cache, self._encode, enabled=self.config.reuse_prompt_cache
        )

    # ---- construction ---------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls, model: str | Path | None = None, config: DiffusionConfig | None = None
    ) -> DiffusionGemmaModel:
        """Load a checkpoint folder, a hub id, or (no argument) the embedded model."""
        config = config or DiffusionConfig()
        folder = resolve_model_path(model, revision=config.revision, local_files_only=config.local_files_only)
        model_config = ModelConfig.from_file(folder / "config.json")
        sampler_overrides, eos = read_generation_config(folder)
        tokenizer = Tokenizer.from_folder(folder)
        device = resolve_device(config.device)
        dtype, nvfp4 = resolve_dtype(config.dtype, device)
        plan = plan_load(
            folder,
            model_config,
            dtype,
            device,
            nvfp4_experts=nvfp4,
            experts_on_cpu=config.cpu_offload_unused_experts and device.type != "cpu",
        )
        with translate_oom(f"loading {folder}"):
            transformer = load_transformer(plan)
        if config.cpu_offload_unused_experts:
            transformer.offload_experts_to_cpu(device)
        transformer.eval()
        transformer.prepare_for_inference()
        return cls(
            transformer,
            tokenizer,
            model_config,
            config,
            SamplerConfig().with_overrides(**sampler_overrides),
            eos if eos is not None else model_config.eos_token_id,
            source=str(model) if model is not None else "embedded",
        )

    # ---- properties -------------------------------------------------------------------------------

    @property
    def canvas_length(self) -> int:
        return self.model_config.canvas_length

    @property
    def context_length(self) -> int:
        return self.model_config.text.max_position_embeddings

    @property
    def has_fim_tokens(self) -> bool:
        return self.tokenizer.has_fim_tokens

    @property
    def device(self) -> torch.device:
        return self.transformer.device

    @property
    def pad_id(self) -> int:
        return self.model_config.text.pad_token_id

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    # ---- requests --------------------------------------------------------------------------------

    def request(
        self, prompt: str | Sequence[int], max_tokens: int = 256, **options: Any
    ) -> GenerationRequest:
        """A request for `prompt` (text, tokenized with the tokenizer's special tokens, or ids).

        `options`: num_diffusion_steps, stop, seed, deadline, should_stop, canvas_length, and the
        sampler knobs (`SAMPLER_KNOBS`).
        """
        return self._request(self._prompt_ids(prompt, add_special_tokens=True), max_tokens, options)

    def chat_request(
        self, messages: list[dict[str, Any]], max_tokens: int = 256, **options: Any
    ) -> GenerationRequest:
        """A request for `messages` (system, user, assistant/model turns) through the chat template."""
        return self._request(self.chat_prompt_ids(messages), max_tokens, options)

    def chat_prompt_ids(self, messages: list[dict[str, Any]]) -> list[int]:
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        # The rendered template carries <bos> and turn markers already: add nothing.
        return self.tokenizer.encode(text, add_special_tokens=False)

    def fim_prompt_ids(self, request: InfillRequest) -> list[int]:
        """The native FIM prompt of `request` (suffix and context first), as token ids."""
        text = fim_prompt(request.prefix, request.suffix, request.snippets, request.path)
        return self.tokenizer.encode(text, add_special_tokens=True)

    # ---- text in, text out --------------------------------------------------------------------------

    def generate(self, prompt: str | Sequence[int], max_tokens: int = 256, **options: Any) -> str:
        """Continue `prompt` for up to `max_tokens` tokens; the text decoded without special tokens,
        ending before EOS or a stop string (options: see `request`)."""
        return self.run(self.request(prompt, max_tokens, **options)).text

    def generate_stream(
        self, prompt: str | Sequence[int], max_tokens: int = 256, **options: Any
    ) -> GenerationStream:
        """Yield the text canvas by canvas as each one is committed."""
        return self.stream(self.request(prompt, max_tokens, **options))

    def generate_ids(self, prompt: str | Sequence[int], max_tokens: int = 256, **options: Any) -> list[int]:
        """Like `generate`, but the new token ids (before EOS) instead of text."""
        return self.run(self.request(prompt, max_tokens, **options)).tokens

    def chat(self, messages: list[dict[str, Any]], max_tokens: int = 256, **options: Any) -> str:
        return self.run(self.chat_request(messages, max_tokens, **options)).text

    def chat_stream(
        self, messages: list[dict[str, Any]], max_tokens: int = 256, **options: Any
    ) -> GenerationStream:
        return self.stream(self.chat_request(messages, max_tokens, **options))

    def generate_batch(
        self, prompts: Sequence[Sequence[int]], max_tokens: Sequence[int], **options: Any
    ) -> list[list[int]]:
        """Several prompts (token ids) in one canvas batch; each row's new tokens before its end."""
        requests = [
            self._request(self._prompt_ids(p, add_special_tokens=False), n, options)
            for p, n in zip(prompts, max_tokens, strict=True)
        ]
        return [row.tokens for row in self.run_batch(requests).rows]

    def infill(
        self,
        prefix: str,
        suffix: str,
        max_tokens: int = 64,
        num_diffusion_steps: int | None = None,
        seed: int | None = None,
        language: str | None = None,
        path: str | None = None,
    ) -> str:
        """The text that fills the hole between `prefix` and `suffix`."""
        request = InfillRequest(
            prefix,
            suffix,
            language=language,
            path=path,
            max_tokens=max_tokens,
            num_diffusion_steps=num_diffusion_steps,
            seed=seed,
        )
        return self.infill_request(request).text

    def infill_request(self, request: InfillRequest) -> InfillResult:
        """Native FIM prompt (suffix and context first) for models with FIM tokens; otherwise a
        hole-filling chat prompt, with a surrounding code fence removed from the reply.
        `request.strategy` other than "prompt" pins the suffix and/or searches the hole length
        (engine.infill)."""
        if request.max_tokens < 1:
            raise ConfigError("max_tokens must be at least 1")
        if request.strategy:
            from engine.infill import InfillStrategy, infill_with_strategy

            strategy = InfillStrategy.parse(request.strategy, device=self.device.type)
            if not strategy.is_prompt_only:
                return infill_with_strategy(self, request, strategy)
        options = {
            "num_diffusion_steps": request.num_diffusion_steps,
            "seed": request.seed,
            "deadline": request.deadline,
            "should_stop": request.should_stop,
            "stop": request.stop,
        }
        if self.has_fim_tokens:
            canvas = min(request.max_tokens, self.canvas_length)
            options["canvas_length"] = canvas
            result = self.run(self._request(self.fim_prompt_ids(request), canvas, options))
            text = result.text
        else:
            messages = chat_infill_messages(
                request.prefix, request.suffix, request.snippets, request.path, request.language
            )
            result = self.run(self._request(self.chat_prompt_ids(messages), request.max_tokens, options))
            text = strip_code_fence(result.text)
        return InfillResult(text, result.stats, completion_tokens=result.completion_tokens)

    def warmup(self) -> None:
        """One short infill so weights are paged in and kernels chosen before the first user request."""
        self.infill(
            "def main():\n    ", "\n", max_tokens=min(16, self.canvas_length), num_diffusion_steps=2, seed=0
        )

    # ---- the three calls ----------------------------------------------------------------------------

    def run(self, request: GenerationRequest) -> GenerationResult:
        """One row, the whole answer."""
        stream = self.stream(request)
        with closing(stream):
            for _ in stream:
                pass
        return stream.result

    def stream(self, request: GenerationRequest) -> GenerationStream:
        """One row, its text canvas by canvas; the prompt's KV comes from (and stays in) the prefix cache."""
        result = GenerationResult([], "", LENGTH, GenerationStats(prompt_tokens=len(request.prompt_ids)))
        return GenerationStream(self._row_deltas(request, result), result)

    def run_batch(self, requests: Sequence[GenerationRequest]) -> BatchResult:
        """Several rows in one canvas batch: one prompt pass, one decoder pass per step for all.

        Prompts of different lengths are left-padded; their positions count from their own first
        token, so each row gets what it would get alone (up to the random draws). The rows share
        one sampler, so they must agree on canvas length, step budget and knobs; the first row's
        seed seeds it. The batch stops early only when every row should (cancelled or past its
        deadline).
        """
        requests = list(requests)
        if not requests:
            raise ConfigError("a batch needs at least one request")
        if len({r.sampler_key for r in requests}) > 1:
            raise ConfigError(
                "the rows of one batch differ in canvas length, diffusion steps or sampler knobs",
                hint="batch only requests with the same sampler options",
            )
        canvas_length = requests[0].canvas_length or self.canvas_length
        with self._lock, translate_oom("generating"):
            started = time.perf_counter()
            for r in requests:
                self._check_context(len(r.prompt_ids), min(r.max_tokens, canvas_length))
            sampler = self._sampler(requests[0])
            cache = self._encode_batch([r.prompt_ids for r in requests])
            readers = [self._reader(r) for r in requests]
            stats = GenerationStats(prompt_tokens=sum(len(r.prompt_ids) for r in requests))
            with closing(self._canvases(cache, requests, sampler, canvas_length)) as canvases:
                for outcome in canvases:
                    stats.canvases += 1
                    stats.steps_per_canvas.append(max(outcome.steps))
                    for reader, tokens in zip(readers, outcome.tokens.tolist(), strict=True):
                        reader.add_canvas(tokens)
                    if all(reader.finished for reader in readers):
                        break
            for reader in readers:
                reader.finish()
            stats.seconds = time.perf_counter() - started
            rows = []
            for request, reader in zip(requests, readers, strict=True):
                row_stats = GenerationStats(
                    prompt_tokens=len(request.prompt_ids),
                    canvases=stats.canvases,
                    steps_per_canvas=list(stats.steps_per_canvas),
                    seconds=stats.seconds,
                )
                rows.append(self._read_into(GenerationResult([], "", LENGTH, row_stats), reader))
            stats.generated_tokens = sum(len(row.tokens) for row in rows)
            stats.row_finish_reasons = [row.finish_reason for row in rows]
            stats.finish_reason = STOP if all(r == STOP for r in stats.row_finish_reasons) else LENGTH
            return BatchResult(rows, stats)

    # ---- internals --------------------------------------------------------------------------------

    def _request(self, ids: list[int], max_tokens: int, options: dict[str, Any]) -> GenerationRequest:
        fields = {k: v for k, v in options.items() if k in REQUEST_OPTIONS}
        knobs = {k: v for k, v in options.items() if k not in REQUEST_OPTIONS}
        check_knobs(knobs)
        fields["stop"] = tuple(fields.get("stop") or ())
        return GenerationRequest(ids, max_tokens, sampler_knobs=knobs, **fields)

    def _prompt_ids(self, prompt: str | Sequence[int], add_special_tokens: bool) -> list[int]:
        if isinstance(prompt, str):
            return self.tokenizer.encode(prompt, add_special_tokens=add_special_tokens)
        ids = [int(t) for t in prompt]
        vocab = self.transformer.config.vocab_size
        bad = [t for t in ids if not 0 <= t < vocab]
        if bad:
            raise ConfigError(f"prompt ids out of the vocabulary (0..{vocab - 1}): {bad[:5]}")
        return ids

    def _sampler(self, request: GenerationRequest) -> EntropyBoundSampler:
        check_knobs(request.sampler_knobs)  # requests may be built by hand
        config = self.sampler_defaults.with_overrides(
            max_denoising_steps=request.num_diffusion_steps, **request.sampler_knobs
        )
        seed = request.seed if request.seed is not None else self.config.seed
        return EntropyBoundSampler(config, self.transformer.config.vocab_size, self._random(seed))

    def _random(self, seed: int | None) -> RandomSource:
        if self.config.reference_rng:
            if seed is not None:
                torch.manual_seed(seed)
            return ReferenceRandom()
        return GeneratorRandom(seed, device=self.device)

    def _reader(self, request: GenerationRequest) -> RowReader:
        return RowReader(request.max_tokens, self.tokenizer.decode, self.eos_ids, self.pad_id, request.stop)

    def _read_into(self, result: GenerationResult, reader: RowReader) -> GenerationResult:
        """Copy what `reader` has read into `result` (the figures that belong to the row included)."""
        result.tokens, result.text = list(reader.tokens), reader.text
        result.finish_reason = reader.finish_reason or LENGTH
        result.stats.generated_tokens = len(reader.tokens)
        result.stats.finish_reason = result.finish_reason
        if reader.finished:
            # A stop string may end inside a token: count the tokens of the text itself.
            result.completion_tokens = (
                self.count_tokens(reader.text) if reader.cut_by_stop_string else len(reader.tokens)
            )
        return result

    def _check_context(self, prompt_tokens: int, new_tokens: int) -> None:
        if prompt_tokens == 0:
            raise ConfigError("the prompt is empty", hint="give at least one token of prompt")
        if prompt_tokens + new_tokens > self.context_length:
            raise PromptTooLongError(
                f"the prompt has {prompt_tokens} tokens and {new_tokens} more were asked for, "
                f"but the model's context is {self.context_length} tokens",
                hint="shorten the prompt or ask for fewer tokens",
            )

    def _encode(self, ids: list[int], cache: KVCache) -> None:
        """Append `ids` (one row) to `cache`."""
        model = self.transformer
        with torch.inference_mode():
            model.encode(torch.tensor([ids], dtype=torch.long, device=model.device), cache)

    def _encode_batch(self, prompts: list[list[int]]) -> KVCache:
        """A fresh cache holding every prompt, left-padded to the longest."""
        longest = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), longest), self.pad_id, dtype=torch.long)
        valid = torch.zeros((len(prompts), longest), dtype=torch.bool)
        for row, p in enumerate(prompts):
            ids[row, longest - len(p) :] = torch.tensor(list(p), dtype=torch.long)
            valid[row, longest - len(p) :] = True
        cache = self.transformer.new_cache()
        with torch.inference_mode():
            self.transformer.encode(ids.to(self.device), cache, valid=valid.to(self.device))
        return cache

    def _canvases(
        self,
        cache: KVCache,
        requests: list[GenerationRequest],
        sampler: EntropyBoundSampler,
        canvas_length: int,
    ) -> Iterator[CanvasOutcome]:
        """The canvas loop over `requests`' rows, whose prompts `cache` holds."""
        return generate_canvases(
            self.transformer,
            cache,
            sampler,
            [r.max_tokens for r in requests],
            canvas_length=canvas_length,
            eos_ids=self.eos_ids,
            pad_id=self.pad_id,
            stop=StopCheck([(r.should_stop, r.deadline) for r in requests]),
            context_length=self.context_length,
        )

    def _row_deltas(self, request: GenerationRequest, result: GenerationResult) -> Iterator[str]:
        if request.max_tokens < 1:
            raise ConfigError("max_tokens must be at least 1")
        ids = request.prompt_ids
        canvas_length = request.canvas_length or self.canvas_length
        stats = result.stats
        reader = self._reader(request)
        with self._lock, translate_oom("generating"):
            started = time.perf_counter()
            try:
                self._check_context(len(ids), min(request.max_tokens, canvas_length))
                sampler = self._sampler(request)  # bad options fail before any encoding
                with self.prefix_cache.holding(ids) as (cache, reused):
                    stats.cached_prompt_tokens = reused
                    with closing(self._canvases(cache, [request], sampler, canvas_length)) as canvases:
                        for outcome in canvases:
                            stats.canvases += 1
                            stats.steps_per_canvas.append(outcome.steps[0])
                            delta = reader.add_canvas(outcome.tokens[0].tolist())
                            self._read_into(result, reader)
                            stats.seconds = time.perf_counter() - started
                            if delta:
                                yield delta
                            if reader.finished:
                                break
                    delta = reader.finish()
                    self._read_into(result, reader)
                    if delta:
                        yield delta
            finally:
                stats.seconds = time.perf_counter() - started
