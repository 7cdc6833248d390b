"""`DiffusionGemmaModel`: the one public entry point over model, tokenizer, sampler and caches.

    from engine import DiffusionGemmaModel, DiffusionConfig
    model = DiffusionGemmaModel.from_pretrained("google/diffusiongemma-26B-A4B-it",
                                               config=DiffusionConfig(device="cuda", dtype="nvfp4"))
    model.generate(prompt="Why is the sky blue?", max_tokens=256, num_diffusion_steps=16)
    model.chat([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
    model.infill("def add(a, b):\n    ", "\n\nprint(add(1, 2))\n", max_tokens=32)

Calls are serialised by a lock, so one model can serve several threads. The KV cache of the last
prompt is kept and its longest common token prefix reused by the next call (editors resend
nearly the same prompt at every keystroke). `last_stats` describes the last call.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from engine.cache import KVCache
from engine.config import DiffusionConfig, ModelConfig
from engine.device import resolve_device, resolve_dtype, translate_oom
from engine.errors import ConfigError, PromptTooLongError
from engine.generation import StopCheck, generate_canvases
from engine.loading import load_transformer, read_generation_config, resolve_model_path
from engine.model import DiffusionGemmaTransformer
from engine.prompting import chat_infill_messages, fim_prompt, strip_code_fence
from engine.requests import GenerationStats, InfillRequest, InfillResult
from engine.sampler import EntropyBoundSampler, GeneratorRandom, RandomSource, ReferenceRandom, SamplerConfig
from engine.tokenizer import Tokenizer

SAMPLER_KNOBS = ("entropy_bound", "t_min", "t_max", "stability_threshold", "confidence_threshold")


@dataclass
class _CallOptions:
    sampler: SamplerConfig
    seed: int | None
    stop: StopCheck


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
        self.last_stats = GenerationStats()
        self._lock = threading.RLock()
        self._prompt_cache: KVCache | None = None

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
        with translate_oom(f"loading {folder}"):
            transformer = load_transformer(
                folder,
                model_config,
                dtype,
                device,
                nvfp4_experts=nvfp4,
                experts_on_cpu=config.cpu_offload_unused_experts and device.type != "cpu",
            )
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

    # ---- text in, text out --------------------------------------------------------------------------

    def generate(
        self,
        prompt: str | Sequence[int],
        max_tokens: int = 256,
        num_diffusion_steps: int | None = None,
        stop: Sequence[str] | None = None,
        seed: int | None = None,
        **sampler_knobs: Any,
    ) -> str:
        """Continue `prompt` (text tokenized with the tokenizer's special tokens, or ids) for up to
        `max_tokens` tokens; the text decoded without special tokens, ending before EOS or a stop string."""
        return "".join(
            self.generate_stream(prompt, max_tokens, num_diffusion_steps, stop, seed, **sampler_knobs)
        )

    def generate_stream(
        self,
        prompt: str | Sequence[int],
        max_tokens: int = 256,
        num_diffusion_steps: int | None = None,
        stop: Sequence[str] | None = None,
        seed: int | None = None,
        should_stop: Any = None,
        deadline: float | None = None,
        **sampler_knobs: Any,
    ) -> Iterator[str]:
        """Yield the text canvas by canvas as each one is committed."""
        ids = self._prompt_ids(prompt, add_special_tokens=True)
        options = self._options(num_diffusion_steps, seed, should_stop, deadline, sampler_knobs)
        yield from self._stream(ids, max_tokens, self.canvas_length, options, stop)

    def chat(
        self,
        messages: list[dict[str, Any]],
        max_tokens: int = 256,
        num_diffusion_steps: int | None = None,
        stop: Sequence[str] | None = None,
        seed: int | None = None,
        **sampler_knobs: Any,
    ) -> str:
        return "".join(
            self.chat_stream(messages, max_tokens, num_diffusion_steps, stop, seed, **sampler_knobs)
        )

    def chat_stream(
        self,
        messages: list[dict[str, Any]],
        max_tokens: int = 256,
        num_diffusion_steps: int | None = None,
        stop: Sequence[str] | None = None,
        seed: int | None = None,
        should_stop: Any = None,
        deadline: float | None = None,
        **sampler_knobs: Any,
    ) -> Iterator[str]:
        """`messages` (system, user, assistant/model turns) through the checkpoint's chat template."""
        ids = self.chat_prompt_ids(messages)
        options = self._options(num_diffusion_steps, seed, should_stop, deadline, sampler_knobs)
        yield from self._stream(ids, max_tokens, self.canvas_length, options, stop)

    def chat_prompt_ids(self, messages: list[dict[str, Any]]) -> list[int]:
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        # The rendered template carries <bos> and turn markers already: add nothing.
        return self.tokenizer.encode(text, add_special_tokens=False)

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

    def fim_prompt_ids(self, request: InfillRequest) -> list[int]:
        """The native FIM prompt of `request` (suffix and context first), as token ids."""
        text = fim_prompt(request.prefix, request.suffix, request.snippets, request.path)
        return self.tokenizer.encode(text, add_special_tokens=True)

    def infill_request(self, request: InfillRequest) -> InfillResult:
        """Native FIM prompt (suffix and context first) for models with FIM tokens; otherwise a
        hole-filling chat prompt, with a surrounding code fence removed from the reply."""
        if request.max_tokens < 1:
            raise ConfigError("max_tokens must be at least 1")
        options = self._options(
            request.num_diffusion_steps, request.seed, request.should_stop, request.deadline, {}
        )
        if self.has_fim_tokens:
            canvas = min(request.max_tokens, self.canvas_length)
            out = "".join(self._stream(self.fim_prompt_ids(request), canvas, canvas, options, None))
        else:
            messages = chat_infill_messages(
                request.prefix, request.suffix, request.snippets, request.path, request.language
            )
            out = "".join(
                self._stream(
                    self.chat_prompt_ids(messages), request.max_tokens, self.canvas_length, options, None
                )
            )
            out = strip_code_fence(out)
        return InfillResult(out, replace(self.last_stats))

    def warmup(self) -> None:
        """One short infill so weights are paged in and kernels chosen before the first user request."""
        self.infill(
            "def main():\n    ", "\n", max_tokens=min(16, self.canvas_length), num_diffusion_steps=2, seed=0
        )

    def generate_batch(
        self,
        prompts: Sequence[Sequence[int]],
        max_tokens: Sequence[int],
        num_diffusion_steps: int | None = None,
        seed: int | None = None,
        should_stop: Any = None,
        deadline: float | None = None,
        **sampler_knobs: Any,
    ) -> list[list[int]]:
        """Several prompts (token ids) in one canvas batch; returns each row's new tokens before EOS.

        Prompts of different lengths are left-padded; their positions count from their own first
        token, so each row gets what it would get alone (up to the random draws).
        """
        options = self._options(num_diffusion_steps, seed, should_stop, deadline, sampler_knobs)
        with self._lock, translate_oom("generating"):
            started = time.perf_counter()
            longest = max(len(p) for p in prompts)
            for p, n in zip(prompts, max_tokens, strict=True):
                self._check_context(len(p), min(n, self.canvas_length))
            ids = torch.full((len(prompts), longest), self.pad_id, dtype=torch.long)
            valid = torch.zeros((len(prompts), longest), dtype=torch.bool)
            for row, p in enumerate(prompts):
                ids[row, longest - len(p) :] = torch.tensor(list(p), dtype=torch.long)
                valid[row, longest - len(p) :] = True
            device = self.device
            cache = self.transformer.new_cache()
            with torch.inference_mode():
                self.transformer.encode(ids.to(device), cache, valid=valid.to(device))
            sampler = EntropyBoundSampler(
                options.sampler, self.transformer.config.vocab_size, self._random(options)
            )
            outputs: list[list[int]] = [[] for _ in prompts]
            reasons: list[str | None] = [None] * len(prompts)  # "stop" at EOS, "length" at the quota
            stats = GenerationStats(prompt_tokens=sum(len(p) for p in prompts))
            for outcome in generate_canvases(
                self.transformer,
                cache,
                sampler,
                list(max_tokens),
                self.canvas_length,
                self.eos_ids,
                self.pad_id,
                options.stop,
                self.context_length,
            ):
                stats.canvases += 1
                stats.steps_per_canvas.append(max(outcome.steps))
                for row, tokens in enumerate(outcome.tokens.tolist()):
                    if reasons[row] is not None:
                        continue
                    for token in tokens:
                        if token in self.eos_ids:
                            reasons[row] = "stop"
                            break
                        if len(outputs[row]) >= max_tokens[row]:
                            break
                        outputs[row].append(token)
                    if reasons[row] is None and len(outputs[row]) >= max_tokens[row]:
                        reasons[row] = "length"
            stats.generated_tokens = sum(len(o) for o in outputs)
            stats.seconds = time.perf_counter() - started
            stats.row_finish_reasons = [reason or "length" for reason in reasons]
            stats.finish_reason = "stop" if all(r == "stop" for r in stats.row_finish_reasons) else "length"
            self.last_stats = stats
            return outputs

    # ---- internals --------------------------------------------------------------------------------

    def _prompt_ids(self, prompt: str | Sequence[int], add_special_tokens: bool) -> list[int]:
        if isinstance(prompt, str):
            return self.tokenizer.encode(prompt, add_special_tokens=add_special_tokens)
        ids = [int(t) for t in prompt]
        vocab = self.transformer.config.vocab_size
        bad = [t for t in ids if not 0 <= t < vocab]
        if bad:
            raise ConfigError(f"prompt ids out of the vocabulary (0..{vocab - 1}): {bad[:5]}")
        return ids

    def _options(
        self,
        steps: int | None,
        seed: int | None,
        should_stop: Any,
        deadline: float | None,
        knobs: dict[str, Any],
    ) -> _CallOptions:
        unknown = set(knobs) - set(SAMPLER_KNOBS)
        if unknown:
            raise ConfigError(
                f"unknown sampler option(s) {sorted(unknown)}", hint=f"known: {', '.join(SAMPLER_KNOBS)}"
            )
        sampler = self.sampler_defaults.with_overrides(max_denoising_steps=steps, **knobs)
        return _CallOptions(
            sampler, seed if seed is not None else self.config.seed, StopCheck(should_stop, deadline)
        )

    def _random(self, options: _CallOptions) -> RandomSource:
        if self.config.reference_rng:
            if options.seed is not None:
                torch.manual_seed(options.seed)
            return ReferenceRandom()
        return GeneratorRandom(options.seed, device=self.device)

    def _check_context(self, prompt_tokens: int, new_tokens: int) -> None:
        if prompt_tokens == 0:
            raise ConfigError("the prompt is empty", hint="give at least one token of prompt")
        if prompt_tokens + new_tokens > self.context_length:
            raise PromptTooLongError(
                f"the prompt has {prompt_tokens} tokens and {new_tokens} more were asked for, "
                f"but the model's context is {self.context_length} tokens",
                hint="shorten the prompt or ask for fewer tokens",
            )

    def _encode_prompt(self, ids: list[int]) -> tuple[KVCache, int]:
        """A cache holding `ids`, reusing the longest common prefix of the previous prompt's cache."""
        model = self.transformer
        cache = self._prompt_cache if self.config.reuse_prompt_cache else None
        reused = 0
        if cache is not None and cache.length and cache.batch_size == 1:
            previous = cache.token_ids[0].tolist()
            common = 0
            for a, b in zip(previous, ids, strict=False):
                if a != b:
                    break
                common += 1
            if common and cache.can_crop(common):
                cache.crop(common)
                reused = common
            else:
                cache.reset()
        else:
            cache = model.new_cache()
        rest = ids[reused:]
        if rest:
            with torch.inference_mode():
                model.encode(torch.tensor([rest], dtype=torch.long, device=model.device), cache)
        self._prompt_cache = cache if self.config.reuse_prompt_cache else None
        return cache, reused

    def _token_stream(
        self, ids: list[int], max_tokens: int, canvas_length: int, options: _CallOptions
    ) -> Iterator[tuple[list[int], bool]]:
        """Yield (this canvas's tokens before EOS, whether EOS was reached) canvas by canvas."""
        if max_tokens < 1:
            raise ConfigError("max_tokens must be at least 1")
        with self._lock, translate_oom("generating"):
            started = time.perf_counter()
            self._check_context(len(ids), min(max_tokens, canvas_length))
            cache, reused = self._encode_prompt(ids)
            prompt_length = cache.length
            stats = GenerationStats(prompt_tokens=len(ids), cached_prompt_tokens=reused)
            self.last_stats = stats
            sampler = EntropyBoundSampler(
                options.sampler, self.transformer.config.vocab_size, self._random(options)
            )
            try:
                for outcome in generate_canvases(
                    self.transformer,
                    cache,
                    sampler,
                    [max_tokens],
                    canvas_length,
                    self.eos_ids,
                    self.pad_id,
                    options.stop,
                    self.context_length,
                ):
                    stats.canvases += 1
                    stats.steps_per_canvas.append(outcome.steps[0])
                    new: list[int] = []
                    eos = False
                    for token in outcome.tokens[0].tolist():
                        if token in self.eos_ids:
                            eos = True
                            break
                        new.append(token)
                    new = new[: max_tokens - stats.generated_tokens]
                    stats.generated_tokens += len(new)
                    stats.seconds = time.perf_counter() - started
                    if eos:
                        stats.finish_reason = "stop"
                    yield new, eos
                    if eos:
                        break
            finally:
                stats.seconds = time.perf_counter() - started
                if cache is self._prompt_cache and cache.length != prompt_length:
                    if cache.can_crop(prompt_length):
                        cache.crop(prompt_length)
                    else:
                        cache.reset()

    def _stream(
        self,
        ids: list[int],
        max_tokens: int,
        canvas_length: int,
        options: _CallOptions,
        stop: Sequence[str] | None,
    ) -> Iterator[str]:
        """Text deltas canvas by canvas, cut at the first stop string."""
        tokens: list[int] = []
        emitted = ""
        canvases = self._token_stream(ids, max_tokens, canvas_length, options)
        try:
            for new, eos in canvases:
                tokens.extend(new)
                text = self.tokenizer.decode(tokens)
                cut = first_stop(text, stop)
                if cut is not None:
                    text = text[:cut]
                    self.last_stats.finish_reason = "stop"
                elif not eos and text.endswith("\ufffd"):
                    text = text.rstrip("\ufffd")  # an incomplete UTF-8 sequence: wait for the next canvas
                if text.startswith(emitted) and len(text) > len(emitted):
                    yield text[len(emitted) :]
                    emitted = text
                if cut is not None:
                    break
        finally:
            canvases.close()

    def generate_ids(
        self,
        prompt: str | Sequence[int],
        max_tokens: int = 256,
        num_diffusion_steps: int | None = None,
        seed: int | None = None,
        canvas_length: int | None = None,
        **sampler_knobs: Any,
    ) -> list[int]:
        """Like `generate`, but the new token ids (before EOS) instead of text."""
        ids = self._prompt_ids(prompt, add_special_tokens=True)
        options = self._options(num_diffusion_steps, seed, None, None, sampler_knobs)
        length = canvas_length or self.canvas_length
        return [t for new, _ in self._token_stream(ids, max_tokens, length, options) for t in new]


def first_stop(text: str, stop: Sequence[str] | None) -> int | None:
    if not stop:
        return None
    hits = [text.find(s) for s in stop if s and s in text]
    return min(hits) if hits else None
