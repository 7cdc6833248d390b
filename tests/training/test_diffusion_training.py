"""`dgemma train`: the loss falls on a small corpus, runs are seeded and resumable, exports load."""

from __future__ import annotations

import itertools
import textwrap

import pytest
import torch

from engine.api import DiffusionGemmaModel
from engine.config import DiffusionConfig
from engine.requests import InfillRequest
from engine.training.train import TrainConfig, Trainer, corrupt, learning_rate

FILES = {
    "shapes.py": """
        import math


        class Circle:
            def __init__(self, radius):
                self.radius = radius

            def area(self):
                return math.pi * self.radius ** 2

            def perimeter(self):
                return 2 * math.pi * self.radius


        class Square:
            def __init__(self, side):
                self.side = side

            def area(self):
                return self.side ** 2

            def perimeter(self):
                return 4 * self.side
        """,
    "numbers.py": """
        def total(values):
            result = 0
            for value in values:
                result += value
            return result


        def largest(values):
            best = None
            for value in values:
                if best is None or value > best:
                    best = value
            return best
        """,
}


@pytest.fixture
def corpus(tmp_path):
    root = tmp_path / "src"
    root.mkdir()
    for index in range(4):
        for name, text in FILES.items():
            (root / f"{index}_{name}").write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    return root


def _config(tmp_path, corpus, **overrides):
    values = dict(
        run_dir=str(tmp_path / "run"),
        root=str(corpus),
        preset="tiny",
        vocab_size=320,
        steps=40,
        batch_size=4,
        lr=3e-3,
        warmup=4,
        max_prefix_tokens=48,
        max_suffix_tokens=16,
        long_context_share=0.0,
        canvas_lengths=(16,),
        canvas_weights=(1.0,),
        eval_every=1000,
        save_every=1000,
        eval_examples=8,
        progress=False,
        threads=2,
    )
    values.update(overrides)
    return TrainConfig(**values)


def test_a_few_steps_make_the_held_out_loss_fall(tmp_path, corpus):
    trainer = Trainer(_config(tmp_path, corpus, ar_weight=0.5))
    before = trainer.evaluate()
    losses = [trainer.train_step()["diffusion"] for _ in range(40)]
    after = trainer.evaluate()
    assert after["diffusion"] < 0.6 * before["diffusion"]
    assert sum(losses[-5:]) < sum(losses[:5])
    assert after["token_accuracy"] > before["token_accuracy"]
    assert "ar" in after


def test_runs_are_seeded_and_resume_where_they_stopped(tmp_path, corpus):
    first = Trainer(_config(tmp_path, corpus, run_dir=str(tmp_path / "a")))
    other = Trainer(_config(tmp_path, corpus, run_dir=str(tmp_path / "b")))
    assert first.train_step() == other.train_step()
    first.train_step()
    first.save()
    resumed = Trainer(_config(tmp_path, corpus, run_dir=str(tmp_path / "a")))
    assert resumed.step == 2
    for name, value in first.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name
    assert resumed.train_step() == first.train_step()


def test_the_exported_model_loads_offline_and_infills(tmp_path, corpus):
    trainer = Trainer(_config(tmp_path, corpus, steps=2))
    trainer.run()
    folder = tmp_path / "run" / "model"
    assert {p.name for p in folder.iterdir()} >= {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "generation_config.json",
    }
    model = DiffusionGemmaModel.from_pretrained(
        folder, config=DiffusionConfig(device="cpu", local_files_only=True)
    )
    assert model.has_fim_tokens and model.canvas_length == 16
    result = model.infill_request(
        InfillRequest(
            "def total(values):\n    ", "\n    return result\n", max_tokens=16, num_diffusion_steps=2
        )
    )
    assert isinstance(result.text, str)
    assert result.stats.canvases == 1 and result.stats.steps_per_canvas[0] <= 2


def test_corruption_replaces_tokens_at_rate_t():
    canvas = torch.full((64, 200), 7)
    generator = torch.Generator().manual_seed(0)
    noisy, t = corrupt(canvas, 10_000, generator, full_noise=0.0)
    changed = (noisy != canvas).float().mean(dim=1)
    assert torch.allclose(changed, t, atol=0.15)
    assert float(t.min()) > 0 and float(t.max()) <= 1
    noisy, t = corrupt(canvas, 10_000, generator, full_noise=1.0)
    assert bool((t == 1).all()) and float((noisy != canvas).float().mean()) > 0.99


def test_learning_rate_warms_up_then_decays_to_its_floor():
    config = TrainConfig(run_dir="", steps=100, warmup=10, lr=1e-3, min_lr_ratio=0.1)
    rates = [learning_rate(step, config) for step in range(100)]
    assert rates[0] == pytest.approx(1e-4) and rates[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in itertools.pairwise(rates[10:]))
    assert rates[-1] == pytest.approx(1e-4, rel=0.05)


def test_shipping_stores_bfloat16_weights_that_load_as_float32(tmp_path, corpus):
    from safetensors import safe_open

    from engine.training.ship import ship

    trainer = Trainer(_config(tmp_path, corpus, steps=1))
    source = trainer.run()
    size = ship(source, tmp_path / "shipped")
    assert size < sum(p.stat().st_size for p in source.iterdir()) * 0.75
    with safe_open(str(tmp_path / "shipped" / "model.safetensors"), framework="pt") as handle:
        assert {handle.get_tensor(k).dtype for k in handle.keys()} == {torch.bfloat16}  # noqa: SIM118
    model = DiffusionGemmaModel.from_pretrained(tmp_path / "shipped", config=DiffusionConfig(device="cpu"))
    assert model.transformer.dtype == torch.float32
    assert isinstance(model.infill("x = 1\n", "\n", max_tokens=16, num_diffusion_steps=1), str)


def test_a_new_run_warm_starts_from_a_model_folder_and_a_resumed_run_does_not(tmp_path, corpus):
    first = Trainer(_config(tmp_path, corpus, run_dir=str(tmp_path / "a"), steps=3))
    source = first.run()
    warm = Trainer(_config(tmp_path, corpus, run_dir=str(tmp_path / "b"), init_from=str(source), seed=5))
    assert warm.step == 0
    for name, value in first.model.state_dict().items():
        assert torch.equal(value, warm.model.state_dict()[name]), name
    assert warm.tokenizer.get_vocab() == first.tokenizer.get_vocab()
    cold = Trainer(_config(tmp_path, corpus, run_dir=str(tmp_path / "c"), seed=5))
    assert not torch.equal(cold.model.embed_tokens.weight, warm.model.embed_tokens.weight)
    warm.train_step()
    warm.save()
    # The run folder now has a checkpoint: --init-from is ignored and the run goes on from step 1.
    resumed = Trainer(_config(tmp_path, corpus, run_dir=str(tmp_path / "b"), init_from=str(source), seed=5))
    assert resumed.step == 1
    for name, value in warm.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name


def test_warm_start_from_a_model_of_other_shapes_names_the_mismatch(tmp_path, corpus):
    from engine.errors import CheckpointError

    source = Trainer(_config(tmp_path, corpus, run_dir=str(tmp_path / "a"), steps=1)).run()
    with pytest.raises(CheckpointError, match="does not match"):
        Trainer(
            _config(tmp_path, corpus, run_dir=str(tmp_path / "b"), preset="embedded", init_from=str(source))
        )


def test_kind_canvas_batches_one_kind_in_its_canvas_and_noise_draws_train(tmp_path, corpus):
    trainer = Trainer(
        _config(
            tmp_path,
            corpus,
            kind_canvas={"line": 16, "block": 32},
            kind_weights={"line": 0.5, "block": 0.5},
            noise_draws=2,
        )
    )
    import random

    for seed in range(6):
        batch = trainer.data.batch(random.Random(seed), 4)
        (kind,) = set(batch.kinds)
        assert batch.canvas.shape[1] == {"line": 16, "block": 32}[kind]
    assert trainer.model_config.canvas_length == 32
    parts = trainer.train_step()
    assert parts["diffusion"] > 0 and parts["canvas"] in (16, 32)


def test_continue_examples_are_a_plain_prompt_and_the_code_that_follows(tmp_path, corpus):
    import random

    trainer = Trainer(_config(tmp_path, corpus, kind_canvas={"continue": 16}, kind_weights={"continue": 1.0}))
    tokenizer = trainer.tokenizer
    for seed in range(4):
        example = trainer.data.example(random.Random(seed), 16, 48, 0, {"continue": 1.0})
        prompt = tokenizer.decode(example.prompt_ids, skip_special_tokens=False)
        assert "<|fim" not in prompt and example.prompt_ids[0] == tokenizer.token_to_id("<bos>")
        assert len(example.canvas_ids) == 16
        following = tokenizer.decode([t for t in example.canvas_ids if t > 1])
        prefix = tokenizer.decode(example.prompt_ids[1:])
        assert any(prefix + following in text for _, text in trainer.data.files)


def test_init_from_auto_warm_starts_only_the_embedded_preset_without_its_own_tokenizer():
    import argparse

    from engine.loading import EMBEDDED_MODEL_DIR
    from engine.training.train import add_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)

    def init(*argv):
        return config_from_args(parser.parse_args(["--run-dir", "r", *argv])).init_from

    assert init() == str(EMBEDDED_MODEL_DIR)
    assert init("--tokenizer", "tok") is None
    assert init("--preset", "tiny") is None
    assert init("--init-from", "none") is None
    assert init("--init-from", "some/folder") == "some/folder"


def test_a_source_share_cap_scales_down_only_the_sources_above_it():
    from engine.training.train import draw_weights

    files = [("big/a.py", "x\n" * 899), ("big/b.py", "x\n" * 99), ("small/c.py", "x\n" * 99), ("s/d.py", "")]
    assert draw_weights(files, None) == [900, 100, 100, 1]
    capped = draw_weights(files, 0.5)
    assert capped[2:] == [100, 1]
    assert sum(capped[:2]) == pytest.approx(0.5 * 1101) and capped[0] / capped[1] == pytest.approx(9)


def test_a_signal_during_training_saves_and_exports_after_the_step_in_progress(tmp_path, corpus):
    import os
    import signal

    trainer = Trainer(_config(tmp_path, corpus, steps=50))
    original = trainer.train_step

    def step_then_signal():
        parts = original()
        if trainer.step == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return parts

    trainer.train_step = step_then_signal
    folder = trainer.run()
    assert trainer.step == 2 and (folder / "model.safetensors").is_file()
    assert Trainer(_config(tmp_path, corpus, steps=50)).step == 2
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
