"""The entropy-bound renoising sampler (diffusiongemma.md section 4).

Each denoising step: divide the softcapped logits by a temperature that falls linearly from
`t_max` to `t_min`; sample every canvas position; accept the lowest-entropy positions whose
summed entropy (excluding the largest accepted one) fits `entropy_bound`; re-draw every other
position uniformly at random. A canvas is done when its argmax has been stable for
`stability_threshold` steps and the mean entropy is below `confidence_threshold`, or when the
step budget is spent. The committed canvas is the last argmax.

A canvas may carry pinned positions (`CanvasPins`, issue 10 item 1: inpainting): they start as
their tokens, every other token's logit there is -inf, so they have zero entropy, are always
accepted and never renoised. They are left out of the entropy budget and out of the mean entropy
of the early-stop test: counted there, zero-entropy positions would pull the mean down and stop
denoising early. Without pins every step does exactly what it did before (parity with
transformers), random draws included.

Random numbers come from a `RandomSource`, so that the same sampler can reproduce transformers'
draws from the global generator (`ReferenceRandom`) or use a private seeded generator
(`GeneratorRandom`) that never touches global state.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from engine.errors import ConfigError


@dataclass(frozen=True)
class SamplerConfig:
    """The published defaults (generation_config.json of google/diffusiongemma-26B-A4B-it)."""

    max_denoising_steps: int = 48
    entropy_bound: float = 0.1
    t_min: float = 0.4
    t_max: float = 0.8
    stability_threshold: int = 1
    confidence_threshold: float = 0.005

    def __post_init__(self) -> None:
        if self.max_denoising_steps < 1:
            raise ConfigError("max_denoising_steps must be at least 1", hint="the published default is 48")
        if not self.entropy_bound > 0:
            raise ConfigError("entropy_bound must be > 0", hint="the published default is 0.1 nats")
        if not (self.t_min > 0 and self.t_max > 0):
            raise ConfigError("temperatures t_min and t_max must be > 0", hint="the defaults are 0.4 and 0.8")
        if self.stability_threshold < 0:
            raise ConfigError("stability_threshold must be >= 0", hint="the published default is 1")
        if self.confidence_threshold < 0:
            raise ConfigError("confidence_threshold must be >= 0 (0 disables early stopping)")

    def with_overrides(self, **overrides) -> SamplerConfig:
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    def temperature(self, steps_remaining: int) -> float:
        """t = t_min + (t_max - t_min) * k / N, with k the steps remaining (N at the first step)."""
        return self.t_min + (self.t_max - self.t_min) * (steps_remaining / self.max_denoising_steps)


class RandomSource:
    """Where uniform canvases and categorical samples come from."""

    def uniform_tokens(self, shape: tuple[int, ...], vocab_size: int, device: torch.device) -> torch.Tensor:
        raise NotImplementedError

    def categorical(self, probs: torch.Tensor) -> torch.Tensor:
        """One sample per row of `probs` [N, V] -> [N]."""
        raise NotImplementedError


class ReferenceRandom(RandomSource):
    """transformers' order on the global generator: randint, then per step multinomial + randint."""

    reference = True

    def uniform_tokens(self, shape, vocab_size, device):
        return torch.randint(0, vocab_size, shape, device=device)

    def categorical(self, probs):
        return torch.multinomial(probs, num_samples=1).squeeze(-1)


class GeneratorRandom(RandomSource):
    """A private generator: reproducible per request, independent of other requests.

    Categorical draws use the inverse CDF (one uniform number per position), exact like
    `torch.multinomial` but without its V exponential draws per position.
    """

    reference = False

    def __init__(self, seed: int | None, device: torch.device | str = "cpu"):
        self.generator = torch.Generator(device=device)
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(seed)

    def uniform_tokens(self, shape, vocab_size, device):
        return torch.randint(0, vocab_size, shape, device=device, generator=self.generator)

    def categorical(self, probs):
        return inverse_cdf_sample(
            probs, torch.rand(probs.shape[0], 1, device=probs.device, generator=self.generator)
        )


def inverse_cdf_sample(probs: torch.Tensor, uniform: torch.Tensor, block: int = 128) -> torch.Tensor:
    """Exact categorical sampling with one uniform number per row [N, 1], in two levels.

    A plain cumulative sum over the vocabulary is a sequential scan; summing blocks of `block`
    probabilities first (vectorised), then scanning the block totals and one block, costs a
    fraction of it and of `torch.multinomial`'s V exponential draws.
    """
    rows, vocab = probs.shape
    if vocab % block:
        probs = torch.nn.functional.pad(probs, (0, block - vocab % block))
    blocks = probs.view(rows, -1, block)
    block_mass = blocks.sum(dim=-1)  # [N, nb]
    block_cdf = block_mass.cumsum(dim=-1)
    target = uniform * block_cdf[:, -1:]
    chosen = torch.searchsorted(block_cdf, target, right=True).clamp_(max=block_cdf.shape[-1] - 1)  # [N, 1]
    before = block_cdf.gather(-1, chosen) - block_mass.gather(-1, chosen)
    inner = blocks.gather(1, chosen[..., None].expand(-1, -1, block)).squeeze(1)  # [N, block]
    inner_cdf = inner.cumsum(dim=-1)
    offset = (target - before).clamp_(min=0.0)
    index = torch.searchsorted(inner_cdf, offset, right=True).clamp_(max=block - 1)
    # Rounding can land on a zero-probability slot at the end of a block: step back to the last non-zero one.
    index = torch.where(inner.gather(-1, index) > 0, index, (inner > 0).cumsum(-1).argmax(-1, keepdim=True))
    return (chosen * block + index).squeeze(-1).clamp_(max=vocab - 1)


@dataclass(frozen=True)
class CanvasPins:
    """Known tokens at fixed canvas positions: `mask` [B, C] marks them, `tokens` [B, C] holds them
    (entries where `mask` is False are ignored)."""

    mask: torch.Tensor
    tokens: torch.Tensor

    @classmethod
    def from_rows(
        cls, rows: list[dict[int, int]], length: int, device: torch.device | str = "cpu"
    ) -> CanvasPins:
        """One {position: token} map per row of a canvas of `length` positions."""
        mask = torch.zeros(len(rows), length, dtype=torch.bool)
        tokens = torch.zeros(len(rows), length, dtype=torch.long)
        for row, pinned in enumerate(rows):
            for position, token in pinned.items():
                if not 0 <= position < length:
                    raise ConfigError(f"pinned position {position} is outside a canvas of {length}")
                mask[row, position], tokens[row, position] = True, token
        return cls(mask.to(device), tokens.to(device))

    @property
    def free(self) -> torch.Tensor:
        return ~self.mask

    def apply(self, canvas: torch.Tensor) -> torch.Tensor:
        """`canvas` with the pinned tokens written in."""
        return torch.where(self.mask, self.tokens, canvas)

    def restrict_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """`logits` [B, C, V] with every token but the pinned one at -inf on pinned positions."""
        index = self.tokens[..., None]
        pinned_logit = logits.gather(-1, index)
        restricted = logits.masked_fill(self.mask[..., None], float("-inf"))
        return restricted.scatter(
            -1, index, torch.where(self.mask[..., None], pinned_logit, restricted.gather(-1, index))
        )


@dataclass
class StepResult:
    canvas: torch.Tensor  # [B, C] the next canvas (accepted samples + fresh noise)
    argmax: torch.Tensor  # [B, C] argmax of the processed logits
    processed_logits: torch.Tensor  # [B, C, V] temperature-divided logits (feed self-conditioning)
    probs: torch.Tensor  # [B, C, V] fp32 softmax of the processed logits
    entropy: torch.Tensor  # [B, C] per-position entropy of the processed distribution, nats
    accepted: torch.Tensor  # [B, C] bool


def entropy_bound_acceptance(
    entropy: torch.Tensor, entropy_bound: float, pinned: torch.Tensor | None = None
) -> torch.Tensor:
    """Accept the lowest-entropy prefix whose summed entropy, minus its largest member, fits the bound.

    Equivalently position j is accepted iff the sum of the entropies ranked strictly below it is
    <= `entropy_bound`; the lowest-entropy position is always accepted (arXiv 2505.24857).
    `pinned` [B, C] positions are always accepted and spend nothing of the bound: the rule runs
    over the free positions alone (so the lowest-entropy free position is still always accepted).
    """
    if pinned is not None:
        # Sorted last, where they neither add to the sums of free positions nor take a free one's place.
        entropy = entropy.masked_fill(pinned, float("inf"))
    sorted_entropy, order = torch.sort(entropy, dim=-1)
    excluded_sum = torch.cumsum(sorted_entropy, dim=-1) - sorted_entropy
    accepted_sorted = excluded_sum <= entropy_bound
    accepted = torch.zeros_like(accepted_sorted).scatter(-1, order, accepted_sorted)
    return accepted if pinned is None else accepted | pinned


def mean_free_entropy(entropy: torch.Tensor, pinned: torch.Tensor | None) -> torch.Tensor:
    """[B] mean entropy over the free positions of each row (a row with none free: 0)."""
    if pinned is None:
        return entropy.mean(dim=-1)  # the reference arithmetic
    free = ~pinned
    total = entropy.masked_fill(pinned, 0.0).sum(dim=-1)
    return total / free.sum(dim=-1).clamp(min=1)


class EntropyBoundSampler:
    """One object per generation call; holds the stability history of the current canvas."""

    def __init__(self, config: SamplerConfig, vocab_size: int, random: RandomSource):
        self.config = config
        self.vocab_size = vocab_size
        self.random = random
        self._history: torch.Tensor | None = None

    def initial_canvas(
        self, batch: int, length: int, device: torch.device, pins: CanvasPins | None = None
    ) -> torch.Tensor:
        self._history = None
        # Noise is drawn for every position, pinned or not, so pins never shift the random stream.
        canvas = self.random.uniform_tokens((batch, length), self.vocab_size, device)
        return canvas if pins is None else pins.apply(canvas)

    def step(
        self,
        canvas: torch.Tensor,
        logits: torch.Tensor,
        steps_remaining: int,
        pins: CanvasPins | None = None,
    ) -> StepResult:
        """`logits` [B, C, V] are the decoder's softcapped fp32 logits for `canvas`."""
        batch, length, vocab = logits.shape
        if pins is not None:
            logits = pins.restrict_logits(logits)
        processed = logits / self.config.temperature(steps_remaining)
        probs = torch.softmax(processed, dim=-1)
        if getattr(self.random, "reference", False):
            # transformers' exact arithmetic: Categorical(logits).entropy() and a separate argmax.
            normalized = processed - processed.logsumexp(dim=-1, keepdim=True)
            entropy = -(
                normalized.clamp(min=torch.finfo(normalized.dtype).min) * torch.softmax(normalized, -1)
            ).sum(-1)
            argmax = processed.argmax(dim=-1)
        else:
            # One pass fewer: with m = max(x), Z = 1 / p_max, so H = m - log p_max - sum p x.
            p_max, argmax = probs.max(dim=-1)
            top = processed.gather(-1, argmax[..., None]).squeeze(-1)
            expected = torch.matmul(probs[..., None, :], processed[..., :, None]).reshape(batch, length)
            entropy = (top - torch.log(p_max) - expected).clamp_(min=0.0)
        if pins is not None:
            # 0 * -inf is NaN in the sums above; a one-token distribution has exactly zero entropy.
            entropy = entropy.masked_fill(pins.mask, 0.0)
        draw = self.random.categorical(probs.view(-1, vocab)).view(batch, length)
        accepted = entropy_bound_acceptance(
            entropy, self.config.entropy_bound, None if pins is None else pins.mask
        )
        noise = self.random.uniform_tokens((batch, length), self.vocab_size, canvas.device)
        next_canvas = torch.where(accepted, draw, noise)
        if pins is not None:
            next_canvas = pins.apply(next_canvas)  # never renoised, whatever was drawn
        return StepResult(next_canvas, argmax, processed, probs, entropy, accepted)

    def converged(
        self, argmax: torch.Tensor, entropy: torch.Tensor, pins: CanvasPins | None = None
    ) -> torch.Tensor:
        """Per row: argmax equal to the previous `stability_threshold` argmaxes and mean entropy low
        (over the free positions: pinned ones have zero entropy and would stop denoising early)."""
        threshold = self.config.stability_threshold
        if threshold == 0:
            stable = torch.ones(argmax.shape[0], dtype=torch.bool, device=argmax.device)
        else:
            if self._history is None:
                self._history = torch.full(
                    (threshold, *argmax.shape), -1, dtype=argmax.dtype, device=argmax.device
                )
            stable = (self._history == argmax[None]).all(dim=-1).all(dim=0)
            self._history = torch.cat([self._history[1:], argmax[None]], dim=0)
        confident = (
            mean_free_entropy(entropy, None if pins is None else pins.mask) < self.config.confidence_threshold
        )
        return stable & confident
