"""The prompt KV cache written by the encoder and read (never written) by the canvas decoder.

One `KVCache` holds, per layer, keys and values [B, Hkv, S, D] for every committed token of the
batch, plus per-row token positions and validity (rows may be left-padded to a common length).
Sliding-window layers only need the last `keep` entries (max of window - 1 for the encoder and
the decoder's retention), so they are trimmed once they hold far more than that (keeping some
slack so prompts that change near their end can still crop back); `offset` counts the entries
dropped from their front.

Each layer owns a buffer with spare room. The encoder writes new keys in place after the valid
ones; the decoder writes the canvas keys into the same spare room as scratch without advancing
the length, so a denoising step copies nothing but the canvas. Cropping back to a shorter prompt
only moves the length. `extend` is the one update path for both.

`TrainingKVCache` (engine/training) keeps exactly the valid keys and appends by `torch.cat`, so
gradients flow through the cache into the encoder; nothing is overwritten in place.

`PrefixCache` owns reuse across calls: it keeps the last prompt's cache and hands out a cache
holding the next prompt, encoding only what follows their longest common token prefix (editors
resend nearly the same prompt at every keystroke).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch


@dataclass
class KVCache:
    sliding: list[bool]
    keep_sliding: int | None = None  # None: never trim (training, or tests that crop anywhere)
    # Per layer: storage [B, Hkv, capacity, D] (inference) or exactly the valid keys (training).
    keys: list[torch.Tensor | None] = field(default_factory=list)
    values: list[torch.Tensor | None] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)  # valid entries per layer
    offsets: list[int] = field(default_factory=list)  # entries dropped from the front (sliding trim)
    positions: torch.Tensor | None = None  # [B, S] absolute position of each cached token
    valid: torch.Tensor | None = None  # [B, S] False for left padding; None when nothing is padded
    token_ids: torch.Tensor | None = None  # [B, S] the cached tokens (prefix reuse compares them)

    def __post_init__(self) -> None:
        layers = len(self.sliding)
        if not self.keys:
            self.keys, self.values = [None] * layers, [None] * layers
            self.lengths, self.offsets = [0] * layers, [0] * layers

    @property
    def length(self) -> int:
        """Cached tokens per row, padding included."""
        return 0 if self.positions is None else self.positions.shape[1]

    @property
    def batch_size(self) -> int:
        return 0 if self.positions is None else self.positions.shape[0]

    def next_positions(self) -> torch.Tensor:
        """[B] position the next token of each row takes (its count of real cached tokens)."""
        if self.positions is None:
            raise ValueError("empty cache")
        return self.positions[:, -1] + 1

    def layer_positions(self, layer: int) -> torch.Tensor | None:
        if self.positions is None:
            return None
        return self.positions[:, self.offsets[layer] :]

    def layer_valid(self, layer: int) -> torch.Tensor | None:
        if self.valid is None:
            return None
        return self.valid[:, self.offsets[layer] :]

    # ---- keys and values -------------------------------------------------------------------------

    def extend(
        self, layer: int, key: torch.Tensor, value: torch.Tensor, commit: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """This layer's cached keys/values followed by `key`/`value` [B, Hkv, T, D].

        `commit=True` (encoder) makes the new entries part of the cache; `commit=False` (decoder)
        uses them for this pass only.
        """
        stored_key, stored_value, length = self.keys[layer], self.values[layer], self.lengths[layer]
        needed = length + key.shape[2]
        if stored_key is None or stored_key.shape[2] < needed:
            stored_key, stored_value = self._grow(layer, key, value, needed)
        stored_key[:, :, length:needed] = key
        stored_value[:, :, length:needed] = value
        if commit:
            self.lengths[layer] = needed
        return stored_key[:, :, :needed], stored_value[:, :, :needed]

    def _grow(
        self, layer: int, key: torch.Tensor, value: torch.Tensor, needed: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A bigger buffer (room for what is needed plus as much again, at least 256) with the valid keys."""
        batch, heads, _, dim = key.shape
        capacity = needed + max(needed, 256)
        new_key = key.new_empty(batch, heads, capacity, dim)
        new_value = value.new_empty(batch, heads, capacity, value.shape[-1])
        length, stored_key = self.lengths[layer], self.keys[layer]
        if stored_key is not None and length:
            new_key[:, :, :length] = stored_key[:, :, :length]
            new_value[:, :, :length] = self.values[layer][:, :, :length]
        self.keys[layer], self.values[layer] = new_key, new_value
        return new_key, new_value

    def layer_kv(self, layer: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The valid keys and values of a layer (views)."""
        key, length = self.keys[layer], self.lengths[layer]
        if key is None:
            return None, None
        return key[:, :, :length], self.values[layer][:, :, :length]

    def append_tokens(
        self, token_ids: torch.Tensor, positions: torch.Tensor, valid: torch.Tensor | None
    ) -> None:
        """Record the bookkeeping for tokens whose K/V the layers have just committed."""
        if self.positions is None:
            self.positions, self.token_ids = positions, token_ids
            self.valid = valid
            return
        if valid is not None or self.valid is not None:
            old = self.valid if self.valid is not None else torch.ones_like(self.positions, dtype=torch.bool)
            new = valid if valid is not None else torch.ones_like(positions, dtype=torch.bool)
            self.valid = torch.cat([old, new], dim=1)
        self.positions = torch.cat([self.positions, positions], dim=1)
        self.token_ids = torch.cat([self.token_ids, token_ids], dim=1)

    def trim(self) -> None:
        """Drop sliding-layer entries no query can see any more (inference only)."""
        if self.keep_sliding is None:
            return
        # Keep `slack` more than needed, so a later prompt that differs only near its end (the
        # editor's case) can still crop back and reuse the cache.
        slack = max(self.keep_sliding, 512)
        for layer, sliding in enumerate(self.sliding):
            length = self.lengths[layer]
            if not sliding or self.keys[layer] is None or length <= self.keep_sliding + 2 * slack:
                continue
            drop = length - self.keep_sliding - slack
            kept = length - drop
            self.keys[layer][:, :, :kept] = self.keys[layer][:, :, drop:length].clone()
            self.values[layer][:, :, :kept] = self.values[layer][:, :, drop:length].clone()
            self.lengths[layer] = kept
            self.offsets[layer] += drop

    def can_crop(self, length: int) -> bool:
        """Whether the first `length` tokens can be kept with every layer still complete for what follows."""
        if length > self.length or self.valid is not None:
            return False
        need = self.keep_sliding or 0
        return all(
            not s or off <= max(0, length - need) for s, off in zip(self.sliding, self.offsets, strict=True)
        )

    def crop(self, length: int) -> None:
        """Keep the first `length` cached tokens (prefix reuse across requests).

        Every layer's length is set even when the bookkeeping already says `length`: a pass that
        failed half-way (out of memory, say) may have committed to some layers only.
        """
        for layer in range(len(self.sliding)):
            if self.keys[layer] is not None:
                self.lengths[layer] = max(0, length - self.offsets[layer])
        self.positions = None if self.positions is None else self.positions[:, :length]
        self.token_ids = None if self.token_ids is None else self.token_ids[:, :length]
        if length == 0:
            self.reset()

    def reset(self) -> None:
        layers = len(self.sliding)
        self.keys, self.values = [None] * layers, [None] * layers
        self.lengths, self.offsets = [0] * layers, [0] * layers
        self.positions = self.valid = self.token_ids = None

    def nbytes(self) -> int:
        return sum(k.numel() * k.element_size() * 2 for k in self.keys if k is not None)


@dataclass
class TrainingKVCache(KVCache):
    """The cache training writes with autograd on: every append is a concatenation, never in place."""

    def extend(
        self, layer: int, key: torch.Tensor, value: torch.Tensor, commit: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        stored_key, stored_value = self.keys[layer], self.values[layer]
        if stored_key is None or stored_value is None:
            keys, values = key, value
        else:
            keys = torch.cat([stored_key, key], dim=2)
            values = torch.cat([stored_value, value], dim=2)
        if commit:
            self.keys[layer], self.values[layer] = keys, values
            self.lengths[layer] = keys.shape[2]
        return keys, values


def common_prefix(a: list[int], b: list[int]) -> int:
    """Length of the longest common prefix of two token lists."""
    common = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        common += 1
    return common


class PrefixCache:
    """The previous prompt's KV, reused for the longest common token prefix of the next prompt.

    `new_cache` makes an empty cache; `encode(ids, cache)` appends tokens to one. With `enabled`
    False every call gets a fresh cache and nothing is kept.
    """

    def __init__(
        self,
        new_cache: Callable[[], KVCache],
        encode: Callable[[list[int], KVCache], None],
        enabled: bool = True,
    ):
        self.new_cache = new_cache
        self.encode = encode
        self.enabled = enabled
        self.cache: KVCache | None = None
        self._held = False  # a generation is using `cache` (a stream suspended between canvases)

    def clear(self) -> None:
        """Forget the kept prompt: the next call encodes its whole prompt."""
        self.cache = None

    def prepare(self, ids: list[int]) -> tuple[KVCache, int]:
        """A cache holding exactly `ids`, and how many of them came from the previous prompt."""
        cache, reused = self.cache if self.enabled else None, 0
        if cache is not None and cache.length and cache.batch_size == 1 and cache.token_ids is not None:
            common = common_prefix(cache.token_ids[0].tolist(), ids)
            if common and cache.can_crop(common):
                cache.crop(common)
                reused = common
            else:
                cache.reset()
        else:
            cache = self.new_cache()
        if len(ids) > reused:
            self.encode(ids[reused:], cache)
        self.cache = cache if self.enabled else None
        return cache, reused

    @contextmanager
    def holding(self, ids: list[int]) -> Iterator[tuple[KVCache, int]]:
        """`prepare(ids)`; afterwards the cache is cut back to the prompt (generation commits canvases
        into it, and the next prompt must not see them)."""
        if self._held:
            # Another call holds the kept cache (a suspended stream on this thread): this one gets
            # its own, so neither sees the other's canvases.
            cache = self.new_cache()
            self.encode(ids, cache)
            yield cache, 0
            return
        cache, reused = self.prepare(ids)
        prompt_length = cache.length
        self._held = True
        try:
            yield cache, reused
        finally:
            self._held = False
            if cache is self.cache and cache.length != prompt_length:
                if cache.can_crop(prompt_length):
                    cache.crop(prompt_length)
                else:
                    cache.reset()
