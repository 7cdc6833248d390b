"""The canvas loop: EOS, batches with rows finishing early, cancellation and deadlines."""

from __future__ import annotations

import time

import pytest
import torch

from engine import DeadlineExceeded, DiffusionConfig, DiffusionGemmaModel, GenerationCancelled
from engine.generation import pad_after_eos


def test_tokens_after_the_first_eos_become_pad():
    tokens = torch.tensor([[5, 1, 7, 1, 9], [3, 4, 5, 6, 7]])
    padded, found = pad_after_eos(tokens, torch.tensor([1, 106]), pad_id=0)
    assert padded.tolist() == [[5, 1, 0, 0, 0], [3, 4, 5, 6, 7]]
    assert found.tolist() == [True, False]


def test_batch_with_one_row_finishing_early_matches_transformers(tmp_path):
    """Row 0 meets EOS in its first canvas, row 1 runs three canvases; token for token as transformers."""
    pytest.importorskip("transformers", minversion="5.11")
    from tests.hf_reference import build_hf_model

    hf = build_hf_model(tmp_path / "m", seed=11)
    ids = torch.randint(0, 512, (2, 10), generator=torch.Generator().manual_seed(5))

    def hf_generate(eos):
        torch.manual_seed(99)
        with torch.no_grad():
            out = hf.generate(ids, max_new_tokens=48, max_denoising_steps=5, eos_token_id=eos, pad_token_id=0)
        return (out.sequences if hasattr(out, "sequences") else out)[:, 10:]

    free_run = hf_generate([511])
    row0, row1 = free_run[0, :16].tolist(), set(free_run[1].tolist())
    eos = next((t for t in row0[4:] if t not in row1 and t not in row0[:4] and t != 0), None)
    if eos is None:
        pytest.skip("no token separates the two rows for this seed")
    expected = hf_generate([eos])
    ours = DiffusionGemmaModel.from_pretrained(
        tmp_path / "m", config=DiffusionConfig(dtype="float32", reference_rng=True, seed=99)
    )
    ours.eos_ids = [eos]
    torch.manual_seed(99)
    got = ours.generate_batch([ids[0].tolist(), ids[1].tolist()], max_tokens=[48, 48], num_diffusion_steps=5)
    cut = row0.index(eos)
    assert got[0] == expected[0, :cut].tolist()
    assert expected[0, cut + 1 :].eq(0).all()  # transformers pads the rest of row 0
    assert got[1] == expected[1].tolist() and len(got[1]) == 48


def test_batch_rows_of_different_lengths_get_what_they_get_alone(tiny_checkpoint):
    model = DiffusionGemmaModel.from_pretrained(tiny_checkpoint, config=DiffusionConfig(dtype="float32"))
    short, long = [2, 40, 41], [2, 50, 51, 52, 53, 54, 55]
    cache = model.transformer.new_cache()
    canvas = torch.randint(0, 512, (1, 16))
    with torch.inference_mode():
        model.transformer.encode(torch.tensor([short]), cache)
        alone = model.transformer.denoise(canvas, cache)
        batch_cache = model.transformer.new_cache()
        ids = torch.tensor([[0] * 4 + short, long])
        valid = torch.tensor([[False] * 4 + [True] * 3, [True] * 7])
        model.transformer.encode(ids, batch_cache, valid=valid)
        batched = model.transformer.denoise(canvas.repeat(2, 1), batch_cache)
    assert torch.allclose(batched[0], alone[0], atol=1e-5)


def test_quota_ends_a_row_early_in_a_batch(tiny_checkpoint):
    model = DiffusionGemmaModel.from_pretrained(
        tiny_checkpoint, config=DiffusionConfig(dtype="float32", seed=1)
    )
    model.eos_ids = [511]
    batch = model.run_batch(
        [
            model.request([2, 10, 11], 5, num_diffusion_steps=2),
            model.request([2, 12], 40, num_diffusion_steps=2),
        ]
    )
    out = [row.tokens for row in batch.rows]
    assert len(out[0]) == 5 and len(out[1]) == 40
    assert batch.stats.canvases == 3
    assert batch.stats.row_finish_reasons == ["length", "length"]
    assert batch.stats.finish_reason == "length"
    model.eos_ids = list(range(512))  # every token ends a row at once
    batch = model.run_batch(
        [model.request([2, 10], 5, num_diffusion_steps=1), model.request([2, 12], 40, num_diffusion_steps=1)]
    )
    assert [row.tokens for row in batch.rows] == [[], []]
    assert batch.stats.row_finish_reasons == ["stop", "stop"]


def test_batch_respects_a_deadline(tiny_checkpoint):
    model = DiffusionGemmaModel.from_pretrained(tiny_checkpoint, config=DiffusionConfig(dtype="float32"))
    with pytest.raises(DeadlineExceeded):
        model.generate_batch([[2, 10], [2, 12]], max_tokens=[16, 16], deadline=time.monotonic() - 1)


def test_eos_in_the_first_position_gives_empty_text_and_stop(tiny_checkpoint):
    model = DiffusionGemmaModel.from_pretrained(
        tiny_checkpoint, config=DiffusionConfig(dtype="float32", seed=3)
    )
    model.eos_ids = list(range(512))  # whatever the canvas holds, its first token ends generation
    result = model.run(model.request("x = 1", max_tokens=64, num_diffusion_steps=2))
    assert result.text == ""
    assert result.stats.finish_reason == "stop" and result.stats.canvases == 1


def test_should_stop_cancels_between_denoising_steps(tiny_checkpoint):
    model = DiffusionGemmaModel.from_pretrained(tiny_checkpoint, config=DiffusionConfig(dtype="float32"))
    calls = []

    def should_stop():
        calls.append(1)
        return len(calls) > 3

    with pytest.raises(GenerationCancelled):
        list(
            model.generate_stream("def f():", max_tokens=64, num_diffusion_steps=48, should_stop=should_stop)
        )
    assert len(calls) == 4  # three decoder passes ran, the fourth check stopped it
    # The model keeps serving after a cancellation, with its prompt cache consistent.
    assert isinstance(model.generate("def f():", max_tokens=8, num_diffusion_steps=2), str)


def test_a_past_deadline_raises_deadline_exceeded(tiny_checkpoint):
    model = DiffusionGemmaModel.from_pretrained(tiny_checkpoint, config=DiffusionConfig(dtype="float32"))
    with pytest.raises(DeadlineExceeded):
        list(model.generate_stream("def f():", max_tokens=16, deadline=time.monotonic() - 1))


def test_a_failed_pass_leaves_no_half_written_cache(tiny_checkpoint, monkeypatch):
    model = DiffusionGemmaModel.from_pretrained(
        tiny_checkpoint, config=DiffusionConfig(dtype="float32", seed=6)
    )
    expected = model.generate("def g(y):", max_tokens=16, num_diffusion_steps=2)
    layer = model.transformer.layers[3]
    original = layer.forward

    def fail_once(*args, **kwargs):
        monkeypatch.setattr(layer, "forward", original)
        raise torch.OutOfMemoryError("out of memory")

    monkeypatch.setattr(layer, "forward", fail_once)
    with pytest.raises(Exception, match="out of memory"):
        model.generate(
            "def g(y): return", max_tokens=16, num_diffusion_steps=2
        )  # dies in layer 3 of the prompt pass
    assert model.generate("def g(y):", max_tokens=16, num_diffusion_steps=2) == expected


def test_a_canvas_that_ends_in_pads_ends_the_row_at_the_first_of_them(tiny_checkpoint):
    """The embedded model's habit: pads to the end of the canvas and no EOS. The row ends there
    ("stop", the text before the pads) and no further canvas runs; pads followed by other tokens
    stay part of the row. The committed tokens are the model's own either way."""
    model = DiffusionGemmaModel.from_pretrained(
        tiny_checkpoint, config=DiffusionConfig(dtype="float32", seed=8)
    )
    model.eos_ids = [511]
    free = model.run(model.request("x = ", max_tokens=48, num_diffusion_steps=2))
    assert len(free.tokens) == 48 and free.finish_reason == "length" and free.stats.canvases == 3
    first = free.tokens[:16]
    start = 16
    while start > 0 and first[start - 1] == first[-1]:
        start -= 1
    middle = next(t for t in first[:start] if t not in first[start:] and first.index(t) < start - 1)
    # The same random model, told that the token ending its first canvas is <pad>.
    model.model_config.text.pad_token_id = first[-1]
    padded = model.run(model.request("x = ", max_tokens=48, num_diffusion_steps=2))
    assert padded.tokens == first[:start] and padded.finish_reason == "stop"
    assert padded.text == model.tokenizer.decode(first[:start]) and padded.stats.canvases == 1
    # A <pad> with other tokens after it in the canvas is text like any other.
    model.model_config.text.pad_token_id = middle
    assert model.run(model.request("x = ", max_tokens=48, num_diffusion_steps=2)).tokens == free.tokens
