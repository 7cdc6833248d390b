"""Parity with transformers' DiffusionGemmaForBlockDiffusion (diffusiongemma.md 8.1), float32, CPU.

The reference model is built and saved by transformers (`save_pretrained`), then loaded by the
engine through `from_pretrained(path)`, so the loader's key mapping is covered too.
"""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers", minversion="5.11")

from engine import DiffusionConfig, DiffusionGemmaModel  # noqa: E402
from tests.hf_reference import build_hf_model  # noqa: E402

TOL = 1e-4


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf") / "tiny"
    hf = build_hf_model(folder)
    ours = DiffusionGemmaModel.from_pretrained(folder, config=DiffusionConfig(device="cpu", dtype="float32"))
    return hf, ours


def softcap(logits: torch.Tensor) -> torch.Tensor:
    return torch.tanh(logits.float() / 30.0) * 30.0


def hf_prompt_cache(hf, ids):
    from transformers import DynamicCache

    cache = DynamicCache(config=hf.config.get_text_config(decoder=True))
    out = hf.model.encoder(input_ids=ids, cache=cache)
    return out, cache


def test_encoder_logits_match_over_a_prompt_longer_than_the_window(pair):
    hf, ours = pair
    ids = torch.randint(0, 512, (1, 20), generator=torch.Generator().manual_seed(1))  # window is 8
    with torch.no_grad():
        hf_out, _ = hf_prompt_cache(hf, ids)
        expected = softcap(hf.lm_head(hf_out.last_hidden_state))
        cache = ours.transformer.new_cache()
        hidden = ours.transformer.encode(ids, cache, return_hidden=True)
        got = ours.transformer.logits(hidden)
    assert (got - expected).abs().max().item() < TOL


def test_decoder_steps_commit_and_second_canvas_match(pair):
    hf, ours = pair
    gen = torch.Generator().manual_seed(2)
    ids = torch.randint(0, 512, (1, 20), generator=gen)
    canvas = torch.randint(0, 512, (1, 16), generator=gen)
    with torch.no_grad():
        _, hf_cache = hf_prompt_cache(hf, ids)
        cache = ours.transformer.new_cache()
        ours.transformer.encode(ids, cache)

        # A decoder step without self-conditioning.
        expected = hf(decoder_input_ids=canvas, cache=hf_cache).logits
        got = ours.transformer.denoise(canvas, cache)
        assert (got - expected).abs().max().item() < TOL

        # With self-conditioning on the previous step's processed logits.
        previous = (expected / 0.7).to(torch.float32)
        expected_sc = hf(decoder_input_ids=canvas, cache=hf_cache, self_conditioning_logits=previous).logits
        got_sc = ours.transformer.denoise(canvas, cache, self_conditioning_logits=previous)
        assert (got_sc - expected_sc).abs().max().item() < TOL
        assert (expected_sc - expected).abs().max().item() > 1e-3  # the signal matters

        # The commit: the canvas encoded on top of the prompt cache.
        committed = expected.argmax(-1)
        hf_commit = hf.model.encoder(input_ids=committed, cache=hf_cache)
        expected_commit = softcap(hf.lm_head(hf_commit.last_hidden_state))
        got_commit = ours.transformer.logits(ours.transformer.encode(committed, cache, return_hidden=True))
        assert (got_commit - expected_commit).abs().max().item() < TOL

        # The second canvas reads prompt + first canvas (36 tokens, sliding retention active).
        second = torch.randint(0, 512, (1, 16), generator=gen)
        expected_second = hf(decoder_input_ids=second, cache=hf_cache).logits
        got_second = ours.transformer.denoise(second, cache)
        assert (got_second - expected_second).abs().max().item() < TOL


def test_sliding_retention_other_than_window_minus_one_is_detectably_different(pair):
    hf, ours = pair
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 512, (1, 20), generator=gen)
    canvas = torch.randint(0, 512, (1, 16), generator=gen)
    with torch.no_grad():
        _, hf_cache = hf_prompt_cache(hf, ids)
        expected = hf(decoder_input_ids=canvas, cache=hf_cache).logits
        cache = ours.transformer.new_cache()
        ours.transformer.encode(ids, cache)
        ours.transformer.sliding_window_retention = 8
        try:
            wrong = ours.transformer.denoise(canvas, cache)
        finally:
            ours.transformer.sliding_window_retention = 7
    assert (wrong - expected).abs().max().item() > 1e-3


@pytest.mark.parametrize("stability", [1, 0, 2])
def test_seeded_multi_canvas_generation_is_token_identical(tmp_path, stability):
    folder = tmp_path / "tiny"
    hf = build_hf_model(folder, seed=5)
    ours = DiffusionGemmaModel.from_pretrained(
        folder, config=DiffusionConfig(device="cpu", dtype="float32", seed=1234, reference_rng=True)
    )
    ids = torch.randint(0, 512, (1, 12), generator=torch.Generator().manual_seed(4))
    torch.manual_seed(1234)
    with torch.no_grad():
        out = hf.generate(ids, max_new_tokens=48, max_denoising_steps=6, stability_threshold=stability)
    sequences = out.sequences if hasattr(out, "sequences") else out
    expected = sequences[0, 12:].tolist()
    got = ours.generate_ids(
        ids[0].tolist(), max_tokens=48, num_diffusion_steps=6, stability_threshold=stability
    )
    eos = [i for i, t in enumerate(expected) if t in (1, 106)]
    expected = expected[: eos[0]] if eos else expected
    assert got == expected
    assert len(got) > 16  # more than one canvas was compared
