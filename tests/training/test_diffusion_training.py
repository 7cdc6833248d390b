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
