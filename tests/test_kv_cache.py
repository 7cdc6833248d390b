"""The KV cache (one update path, crop, trim, can_crop), training's cache, and the prefix cache."""

from __future__ import annotations

import pytest
import torch

from engine import DiffusionConfig, DiffusionGemmaModel
from engine.cache import KVCache, PrefixCache, TrainingKVCache, common_prefix

HEADS, DIM = 2, 4


def kv(tokens: int, fill: float = 1.0, batch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    key = torch.full((batch, HEADS, tokens, DIM), fill)
    return key, key + 0.5


def commit(cache: KVCache, tokens: int, fill: float = 1.0) -> None:
    """What the encoder does for `tokens` new tokens: every layer's K/V, then the bookkeeping."""
    for layer in range(len(cache.sliding)):
        cache.extend(layer, *kv(tokens, fill), commit=True)
    start = cache.length
    positions = torch.arange(start, start + tokens)[None]
    cache.append_tokens(positions.clone(), positions, None)


def test_committed_entries_stay_and_a_decoder_pass_leaves_only_scratch():
    cache = KVCache(sliding=[False, True])
    commit(cache, 3, fill=1.0)
    keys, values = cache.extend(0, *kv(2, fill=9.0), commit=False)  # a canvas: read, not kept
    assert keys.shape[2] == 5 and keys[0, 0, 3:].eq(9.0).all() and values[0, 0, :3].eq(1.5).all()
    assert cache.lengths == [3, 3] and cache.length == 3
    stored, _ = cache.layer_kv(0)
    assert stored.shape[2] == 3 and stored.eq(1.0).all()
    commit(cache, 2, fill=2.0)
    stored, _ = cache.layer_kv(1)
    assert stored[0, 0, :, 0].tolist() == [1.0, 1.0, 1.0, 2.0, 2.0]
    assert cache.next_positions().tolist() == [5]


def test_crop_keeps_the_first_tokens_and_sets_every_layer():
    cache = KVCache(sliding=[False, True])
    commit(cache, 4, fill=1.0)
    commit(cache, 3, fill=2.0)
    cache.lengths[1] = 99  # as a pass that failed half-way would leave one layer
    assert cache.can_crop(4)
    cache.crop(4)
    assert cache.length == 4 and cache.lengths == [4, 4]
    assert cache.token_ids[0].tolist() == [0, 1, 2, 3]
    stored, _ = cache.layer_kv(1)
    assert stored.eq(1.0).all()
    cache.crop(0)
    assert cache.length == 0 and cache.keys == [None, None]


def test_can_crop_refuses_more_than_is_held_and_padded_batches():
    cache = KVCache(sliding=[False])
    commit(cache, 3)
    assert cache.can_crop(3) and not cache.can_crop(4)
    padded = KVCache(sliding=[False])
    padded.extend(0, *kv(3, batch=2), commit=True)
    positions = torch.tensor([[0, 0, 1], [0, 1, 2]])
    padded.append_tokens(positions, positions, torch.tensor([[False, True, True], [True, True, True]]))
    assert not padded.can_crop(2)  # rows of a padded batch do not line up token for token


def test_trim_drops_what_sliding_layers_no_longer_see_and_then_limits_crops():
    keep = 4
    cache = KVCache(sliding=[False, True], keep_sliding=keep)
    slack = max(keep, 512)
    commit(cache, keep + 2 * slack + 10)  # just over the limit at which trim drops entries
    total = cache.length
    cache.trim()
    dropped = total - keep - slack
    assert cache.offsets == [0, dropped] and cache.lengths == [total, keep + slack]
    assert cache.lengths[1] + cache.offsets[1] == total  # the sliding layer still ends at the last token
    assert cache.layer_positions(1)[0, 0].item() == dropped
    # Cropping back within the slack keeps every layer complete for what follows; further does not.
    assert cache.can_crop(dropped + keep) and not cache.can_crop(dropped + keep - 1)
    no_trim = KVCache(sliding=[True], keep_sliding=None)
    commit(no_trim, 2000)
    no_trim.trim()
    assert no_trim.offsets == [0]


def test_the_training_cache_concatenates_so_gradients_reach_the_encoder():
    cache = TrainingKVCache(sliding=[False])
    first = torch.ones(1, HEADS, 2, DIM, requires_grad=True)
    cache.extend(0, first, first * 2, commit=True)
    second = torch.ones(1, HEADS, 3, DIM, requires_grad=True)
    keys, _ = cache.extend(0, second, second, commit=False)  # the decoder's canvas
    assert keys.shape[2] == 5 and cache.lengths == [2]
    keys.sum().backward()
    assert first.grad is not None and first.grad.eq(1.0).all() and second.grad.eq(1.0).all()


def test_common_prefix():
    assert common_prefix([1, 2, 3], [1, 2, 4, 5]) == 2
    assert common_prefix([], [1]) == 0 and common_prefix([1, 2], [1, 2]) == 2


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    return DiffusionGemmaModel.from_pretrained(
        tiny_checkpoint, config=DiffusionConfig(dtype="float32", seed=0)
    )


def canvas_logits(model: DiffusionGemmaModel, cache: KVCache) -> torch.Tensor:
    canvas = torch.arange(20, 36)[None]
    with torch.inference_mode():
        return model.transformer.denoise(canvas, cache)


def test_the_prefix_cache_reuses_the_common_prefix_and_matches_a_fresh_encode(model):
    prefix = PrefixCache(model.transformer.new_cache, model._encode)
    first = [2, 40, 41, 42, 43, 44, 45]
    second = [*first[:5], 60, 61, 62]
    cache, reused = prefix.prepare(first)
    assert reused == 0 and cache.length == len(first)
    cache, reused = prefix.prepare(second)
    assert reused == 5 and cache.length == len(second) and prefix.cache is cache
    assert cache.token_ids[0].tolist() == second
    fresh, _ = PrefixCache(model.transformer.new_cache, model._encode).prepare(second)
    assert torch.allclose(canvas_logits(model, cache), canvas_logits(model, fresh), atol=1e-5)
    unrelated, reused = prefix.prepare([2, 99, 98])
    assert reused == 1 and unrelated.length == 3  # only <bos> is shared


def test_holding_cuts_the_cache_back_to_the_prompt_after_canvases_were_committed(model):
    prefix = PrefixCache(model.transformer.new_cache, model._encode)
    prompt = [2, 50, 51, 52]
    with prefix.holding(prompt) as (cache, reused):
        assert reused == 0
        model._encode([70, 71, 72], cache)  # a committed canvas
        assert cache.length == 7
    assert prefix.cache.length == 4 and prefix.cache.token_ids[0].tolist() == prompt
    with prefix.holding([*prompt, 53]) as (cache, reused):
        assert reused == 4


def test_a_disabled_prefix_cache_keeps_nothing(model):
    prefix = PrefixCache(model.transformer.new_cache, model._encode, enabled=False)
    prefix.prepare([2, 50, 51])
    cache, reused = prefix.prepare([2, 50, 51, 52])
    assert reused == 0 and cache.length == 4 and prefix.cache is None


def test_a_call_while_the_cache_is_held_gets_its_own(model):
    prefix = PrefixCache(model.transformer.new_cache, model._encode)
    with prefix.holding([2, 50, 51, 52]) as (held, _):
        with prefix.holding([2, 50, 51, 60]) as (other, reused):
            assert other is not held and reused == 0 and other.length == 4
        assert held.token_ids[0].tolist() == [2, 50, 51, 52] and prefix.cache is held


def test_the_bench_times_cold_calls_without_the_prefix_cache_and_warm_calls_with_it(model):
    from engine.bench import time_ours

    prompt = [2, 40, 41, 42]
    time_ours(model, prompt, tokens=4, steps=1, repeats=1, warm=False)
    assert not model.prefix_cache.enabled and model.prefix_cache.cache is None
    time_ours(model, prompt, tokens=4, steps=1, repeats=1, warm=True)
    assert model.prefix_cache.enabled and model.prefix_cache.cache.token_ids[0].tolist() == prompt
