"""The prompt KV cache written by the encoder and read (never written) by the canvas decoder.

One `KVCache` holds, per layer, keys and values [B, Hkv, S, D] for every committed token of the
batch, plus per-row token positions and validity (rows may be left-padded to a common length).
Sliding-window layers only need the last `keep` entries (max of window - 1 for the encoder and
the decoder's retention), so they are trimmed once they hold far more than that (keeping some
slack so prompts that change near their end can still crop back); `offset` counts the entries
dropped from their front.

Appending uses `torch.cat`, which keeps the cache differentiable for training and costs one copy
per commit, not per denoising step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class KVCache:
    sliding: list[bool]
    keep_sliding: int | None = None  # None: never trim (training, or tests that crop anywhere)
    keys: list[torch.Tensor | None] = field(default_factory=list)
    values: list[torch.Tensor | None] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    positions: torch.Tensor | None = None  # [B, S] absolute position of each cached token
    valid: torch.Tensor | None = None  # [B, S] False for left padding; None when nothing is padded
    token_ids: torch.Tensor | None = None  # [B, S] the cached tokens (prefix reuse compares them)

    def __post_init__(self) -> None:
        layers = len(self.sliding)
        if not self.keys:
            self.keys = [None] * layers
            self.values = [None] * layers
            self.offsets = [0] * layers

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

    def layer_kv(self, layer: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        return self.keys[layer], self.values[layer]

    def layer_positions(self, layer: int) -> torch.Tensor | None:
        if self.positions is None:
            return None
        return self.positions[:, self.offsets[layer] :]

    def layer_valid(self, layer: int) -> torch.Tensor | None:
        if self.valid is None:
            return None
        return self.valid[:, self.offsets[layer] :]

    def append_tokens(
        self, token_ids: torch.Tensor, positions: torch.Tensor, valid: torch.Tensor | None
    ) -> None:
        """Record the bookkeeping for tokens whose K/V the layers are about to append."""
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

    def append_layer(self, layer: int, key: torch.Tensor, value: torch.Tensor) -> None:
        if self.keys[layer] is None:
            self.keys[layer], self.values[layer] = key, value
        else:
            self.keys[layer] = torch.cat([self.keys[layer], key], dim=2)
            self.values[layer] = torch.cat([self.values[layer], value], dim=2)

    def trim(self) -> None:
        """Drop sliding-layer entries no query can see any more (inference only)."""
        if self.keep_sliding is None:
            return
        # Keep `slack` more than needed, so a later prompt that differs only near its end (the
        # editor's case) can still crop back and reuse the cache.
        slack = max(self.keep_sliding, 512)
        for layer, sliding in enumerate(self.sliding):
            key = self.keys[layer]
            if not sliding or key is None or key.shape[2] <= self.keep_sliding + 2 * slack:
                continue
            drop = key.shape[2] - self.keep_sliding - slack
            self.keys[layer] = key[:, :, drop:].clone()
            self.values[layer] = self.values[layer][:, :, drop:].clone()
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

        Layers are sliced even when the bookkeeping already says `length`: a pass that failed
        half-way (out of memory, say) may have appended to some layers only.
        """
        for layer in range(len(self.sliding)):
            if self.keys[layer] is None:
                continue
            end = length - self.offsets[layer]
            self.keys[layer] = self.keys[layer][:, :, :end]
            self.values[layer] = self.values[layer][:, :, :end]
        self.positions = self.positions[:, :length]
        self.token_ids = self.token_ids[:, :length]
        if length == 0:
            self.reset()

    def reset(self) -> None:
        layers = len(self.sliding)
        self.keys, self.values, self.offsets = [None] * layers, [None] * layers, [0] * layers
        self.positions = self.valid = self.token_ids = None

    def nbytes(self) -> int:
        return sum(k.numel() * k.element_size() * 2 for k in self.keys if k is not None)
