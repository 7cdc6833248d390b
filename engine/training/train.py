"""`dgemma train`: the uniform-state block-diffusion objective with self-conditioning.

One training example is one hole of a training file in the engine's FIM layout (holes.py):

1. The prompt (context snippets, path, suffix window, prefix window) runs through the model in
   **encoder** mode, causally, into a fresh `KVCache`: the code path of inference (3.5).
2. The canvas target is the middle, `<eos>`, then `<pad>`s. It is corrupted the way the sampler's
   canvases look (4.2): each position is replaced, with probability t, by a token drawn uniformly
   from the whole vocabulary; t is drawn per example from U(0, 1], and with probability
   `full_noise` set to 1 (the first denoising step sees a canvas of pure noise).
3. The corrupted canvas is denoised in **decoder** mode, bidirectionally, reading the cache.
   Cross-entropy against the target on every canvas position: middle, `<eos>` and `<pad>` alike,
   since at inference any position may hold noise.
4. Self-conditioning (3.6) on a `self_conditioning` share of the examples: a first decoder pass
   without gradients gives logits, which are divided by the temperature the sampler would use at
   that noise level, t_min + (t_max - t_min) * t (4.2: inference feeds the temperature-divided,
   softcapped logits of the previous step), and fed to the second pass, which takes the gradient.
   The other examples get no self-conditioning signal (u = 0, the first step at inference).

Sample efficiency (the CPU is the budget, and the encoder over the prompt is most of an example's
compute): with `kind_canvas` each batch holds holes of one kind in the canvas the language server gives
that kind (a single line in 24 positions rather than 64, so fewer of them are `<pad>`); `noise_draws`
denoises several independent corruptions of each canvas against one encoder pass; `continue` examples
(a plain prefix window as the prompt, the next tokens of the file as the canvas, no FIM markers) teach
plain left-to-right generation and fill every canvas position with code.

Two optional auxiliary terms: `balance_weight` times the Switch load-balancing loss of every MoE
router (E * sum_e f_e * P_e), so that the small MoE uses all its experts; and `ar_weight` times a
next-token loss on the encoder's output over the prompt (the encoder is a causal LM over the same
weights; this gives a dense signal on every prompt token).

Training is seeded and resumable: the batch of step s depends only on (seed, s), and a checkpoint
(`checkpoint.pt` in the run folder) holds the model, the optimiser and the step. AdamW with
linear warmup and cosine decay, gradient clipping. The result is written as a checkpoint folder in
the real layout (engine.loading.save_checkpoint) with the tokenizer and a generation config.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import random
import signal
import threading
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

from engine.config import FULL, SLIDING, ModelConfig, TextConfig
from engine.model import Attention, DiffusionGemmaTransformer, GatedMLP, RMSNorm
from engine.random_model import tiny_text_config
from engine.sampler import SamplerConfig
from engine.training.corpus import HELDOUT, TRAIN, VALIDATION, collect, corpus_key
from engine.training.holes import (
    CONTINUE,
    DEFAULT_KIND_WEIGHTS,
    ExampleBuilder,
    FileHoles,
    FimExample,
    find_holes,
    sample_cut,
)
from engine.training.tokenizer import EOS_ID, PAD_ID, load_tokenizer, save_tokenizer, train_tokenizer

CHECKPOINT = "checkpoint.pt"
HOLE_CACHE_FILES = 4096


def text_config(preset: str, vocab_size: int) -> TextConfig:
    """Model shapes. `embedded`: the shipped model; `tiny`: tests."""
    if preset == "embedded":
        # 6 layers (two sliding, one full, twice), d 256, a dense MLP of 512 beside 8 experts of
        # 128 (top 2): about 11M parameters, 5M active per token (sized by performance.md 5.6).
        return TextConfig(
            vocab_size=vocab_size,
            hidden_size=256,
            intermediate_size=512,
            moe_intermediate_size=128,
            num_hidden_layers=6,
            layer_types=[SLIDING, SLIDING, FULL] * 2,
            sliding_window=512,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=64,
            global_head_dim=128,
            num_global_key_value_heads=1,
            num_experts=8,
            top_k_experts=2,
            max_position_embeddings=4096,
            eos_token_id=[EOS_ID],
        )
    if preset == "tiny":
        return tiny_text_config(
            vocab_size=vocab_size,
            moe_intermediate_size=32,
            num_hidden_layers=4,
            layer_types=[SLIDING, SLIDING, SLIDING, FULL],
            sliding_window=64,
            num_experts=4,
            eos_token_id=[EOS_ID],
        )
    raise ValueError(f"unknown model preset {preset!r} (embedded, tiny)")


@dataclass
class TrainConfig:
    run_dir: str
    out: str | None = None  # the exported checkpoint folder (default: run_dir/model)
    root: str | None = None  # corpus root (default: the standard library)
    packages: str | None = None  # unpacked PyPI packages (engine/training/packages.py) added to the corpus
    # A model folder whose weights (and tokenizer) start a new run; ignored when the run folder has a
    # checkpoint, so a resumed run never goes back to them.
    init_from: str | None = None
    tokenizer: str | None = None  # an existing tokenizer.json (default: train one on the corpus)
    vocab_size: int = 8192
    preset: str = "embedded"
    canvas_lengths: tuple[int, ...] = (16, 32, 64)
    canvas_weights: tuple[float, ...] = (0.1, 0.45, 0.45)
    # kind -> canvas length: each batch holds holes of one kind in the canvas the language server gives
    # that kind (single line 24, block 64), instead of `canvas_lengths` drawn for any kind.
    kind_canvas: dict[str, int] | None = None
    # Corrupted canvases per encoded prompt: the encoder (most of an example's compute) runs once and
    # the decoder denoises `noise_draws` independent noise draws of the same target.
    noise_draws: int = 1
    # Most a source (a package, or a top-level stdlib folder) may weigh among the files drawn (None: lines alone).
    source_share_cap: float | None = None
    max_prefix_tokens: int = 384
    max_suffix_tokens: int = 128
    long_context_share: float = 0.1  # batches whose prefix window reaches long_prefix_tokens
    long_prefix_tokens: int = 1024
    max_block_lines: int = 12
    steps: int = 1000
    batch_size: int = 16
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup: int = 100
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    init_std: float = 0.02
    self_conditioning: float = 0.5
    full_noise: float = 0.1
    balance_weight: float = 0.01
    ar_weight: float = 0.5
    ar_tokens: int = 128
    compile: bool = False  # torch.compile the attention, MLP and norm modules (CPU: about 3x faster)
    seed: int = 0
    device: str = "auto"
    threads: int | None = None
    eval_every: int = 100
    eval_examples: int = 64
    save_every: int = 100
    max_minutes: float | None = None  # stop (and export) after this much training time
    stop_at_step: int | None = None  # stop (and export) at this step, without touching the schedule
    # The time over which the learning rate decays (default: max_minutes). A run split into phases
    # with different data settings (resumed with new options) keeps one schedule by fixing it.
    schedule_minutes: float | None = None
    max_files: int | None = None  # use only the first N training files (tests)
    progress: bool = True
    kind_weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_KIND_WEIGHTS))
    t_min: float = 0.4
    t_max: float = 0.8


@dataclass
class Batch:
    prompt: torch.Tensor  # [B, P] left-padded
    valid: torch.Tensor  # [B, P] False on padding
    canvas: torch.Tensor  # [B, C] target
    kinds: list[str]

    def to(self, device: torch.device) -> Batch:
        return Batch(self.prompt.to(device), self.valid.to(device), self.canvas.to(device), self.kinds)


def collate(examples: list[FimExample]) -> Batch:
    longest = max(len(e.prompt_ids) for e in examples)
    prompt = torch.full((len(examples), longest), PAD_ID, dtype=torch.long)
    valid = torch.zeros((len(examples), longest), dtype=torch.bool)
    for row, example in enumerate(examples):
        ids = torch.tensor(example.prompt_ids, dtype=torch.long)
        prompt[row, longest - len(ids) :] = ids
        valid[row, longest - len(ids) :] = True
    canvas = torch.tensor([e.canvas_ids for e in examples], dtype=torch.long)
    return Batch(prompt, valid, canvas, [e.kind for e in examples])


def draw_weights(files: list[tuple[str, str]], share_cap: float | None) -> list[float]:
    """A file's chance to be drawn: its lines, so that every line is about equally likely; with
    `share_cap`, a source (a package: the first part of the corpus path) whose lines exceed that
    share of all lines is scaled down to it, so that a few large packages do not make up most of the
    data."""
    weights = [float(text.count("\n") + 1) for _, text in files]
    if not share_cap or not files:
        return weights
    total = sum(weights)
    per_source: dict[str, float] = {}
    for (path, _), weight in zip(files, weights, strict=True):
        source = path.split("/", 1)[0]
        per_source[source] = per_source.get(source, 0.0) + weight
    limit = share_cap * total
    scale = {source: min(1.0, limit / lines) for source, lines in per_source.items()}
    return [w * scale[path.split("/", 1)[0]] for (path, _), w in zip(files, weights, strict=True)]


class HoleData:
    """Files with their holes, and deterministic batches of FIM examples drawn from them."""

    def __init__(
        self, files: list[tuple[str, str]], tokenizer: Tokenizer, config: TrainConfig, progress: bool = False
    ):
        self.config = config
        self.tokenizer = tokenizer
        self.builder = ExampleBuilder(tokenizer, config.max_prefix_tokens, config.max_suffix_tokens)
        self.files = files
        # Files are drawn by `draw_weights`. Their holes are found with tree-sitter when a file is first drawn (a large corpus would take
        # minutes to parse up front) and kept for the files drawn most recently.
        self.cum_weights = list(itertools.accumulate(draw_weights(files, config.source_share_cap)))
        self._holes: OrderedDict[int, FileHoles] = OrderedDict()
        if progress:
            print(f"{len(files)} files, {self.cum_weights[-1] if files else 0} lines", flush=True)

    def holes(self, index: int) -> FileHoles:
        found = self._holes.get(index)
        if found is None:
            found = find_holes(self.files[index][1], max_block_lines=self.config.max_block_lines)
            self._holes[index] = found
            if len(self._holes) > HOLE_CACHE_FILES:
                self._holes.popitem(last=False)
        else:
            self._holes.move_to_end(index)
        return found

    def example(
        self,
        rng: random.Random,
        canvas_length: int,
        prefix_budget: int,
        suffix_budget: int,
        kind_weights: dict[str, float] | None = None,
    ) -> FimExample:
        for _ in range(1000):
            index = rng.choices(range(len(self.files)), cum_weights=self.cum_weights)[0]
            path, holes = self.files[index][0], self.holes(index)
            if kind_weights is not None and CONTINUE in kind_weights:
                starts = holes.line_starts
                continuation = self.builder.build_continuation(
                    holes.text, rng.choice(starts[1:] or starts), canvas_length, prefix_budget
                )
                if continuation is not None:
                    return continuation
                continue
            cut = sample_cut(holes, rng, kind_weights or self.config.kind_weights)
            if cut is None:
                continue
            example = self.builder.build(
                cut.hole(holes.text),
                canvas_length,
                path,
                rng,
                prefix_budget=prefix_budget,
                suffix_budget=suffix_budget,
            )
            if example is not None:
                return example
        raise RuntimeError("no hole fits the canvas: the corpus is empty or the canvas too short")

    def batch(self, rng: random.Random, batch_size: int) -> Batch:
        """One batch: a shared canvas length and shared window budgets, so rows pad little."""
        c = self.config
        kind_weights = None
        if c.kind_canvas:
            kinds = [k for k in c.kind_canvas if c.kind_weights.get(k, 0) > 0]
            kind = rng.choices(kinds, weights=[c.kind_weights[k] for k in kinds])[0]
            canvas_length, kind_weights = c.kind_canvas[kind], {kind: 1.0}
        else:
            canvas_length = rng.choices(c.canvas_lengths, weights=c.canvas_weights)[0]
        if rng.random() < c.long_context_share:
            prefix_budget = rng.randint(c.max_prefix_tokens, max(c.max_prefix_tokens, c.long_prefix_tokens))
        else:
            prefix_budget = self.builder.draw_prefix_budget(rng)
        suffix_budget = self.builder.draw_suffix_budget(rng)
        examples = [
            self.example(rng, canvas_length, prefix_budget, suffix_budget, kind_weights)
            for _ in range(batch_size)
        ]
        return collate(examples)


class RouterStats:
    """Collects each MoE router's output during gradient passes, for the load-balancing loss."""

    def __init__(self, model: DiffusionGemmaTransformer):
        self.outputs: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.handles = [layer.router.register_forward_hook(self._hook) for layer in model.layers]

    def _hook(self, module: torch.nn.Module, inputs: Any, output: tuple[torch.Tensor, ...]) -> None:
        if torch.is_grad_enabled():
            _, index, probs = output
            self.outputs.append((index, probs))

    def balance_loss(self) -> torch.Tensor | None:
        losses = []
        for index, probs in self.outputs:
            experts = probs.shape[-1]
            routed = F.one_hot(index, experts).sum(dim=1).float().mean(dim=0) / index.shape[-1]
            losses.append(experts * (routed * probs.float().mean(dim=0)).sum())
        self.outputs = []
        return torch.stack(losses).mean() if losses else None

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def corrupt(
    canvas: torch.Tensor, vocab_size: int, generator: torch.Generator, full_noise: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(noisy canvas, t per row): each token replaced by a uniform random token with probability t."""
    batch, length = canvas.shape
    device = canvas.device
    t = 1.0 - torch.rand(batch, generator=generator, device=device)  # (0, 1]
    t = torch.where(torch.rand(batch, generator=generator, device=device) < full_noise, torch.ones_like(t), t)
    replace = torch.rand(batch, length, generator=generator, device=device) < t[:, None]
    noise = torch.randint(0, vocab_size, (batch, length), generator=generator, device=device)
    return torch.where(replace, noise, canvas), t


def _denoise_draw(
    model: DiffusionGemmaTransformer,
    batch: Batch,
    cache: Any,
    generator: torch.Generator,
    config: TrainConfig,
) -> torch.Tensor:
    """Decoder logits for one noise draw of the batch's canvases (with self-conditioning on a share
    of the rows)."""
    noisy, t = corrupt(batch.canvas, model.config.vocab_size, generator, config.full_noise)
    conditioning = mask = None
    if config.self_conditioning > 0:
        mask = torch.rand(t.shape, generator=generator, device=t.device) < config.self_conditioning
        if bool(mask.any()):
            with torch.no_grad():
                first = model.denoise(noisy, cache)
            temperature = config.t_min + (config.t_max - config.t_min) * t
            conditioning = (first / temperature[:, None, None]).to(model.dtype)
        else:
            mask = None
    return model.denoise(noisy, cache, conditioning, mask)


def diffusion_loss(
    model: DiffusionGemmaTransformer,
    batch: Batch,
    generator: torch.Generator,
    config: TrainConfig,
    router_stats: RouterStats | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The training loss of one batch (module docstring) and its parts."""
    vocab = model.config.vocab_size
    cache = model.new_training_cache()
    hidden = model.encode(batch.prompt, cache, valid=batch.valid, return_hidden=config.ar_weight > 0)
    diffusion = torch.zeros((), device=batch.canvas.device)
    correct = torch.zeros_like(batch.canvas, dtype=torch.bool)
    for _ in range(max(1, config.noise_draws)):
        logits = _denoise_draw(model, batch, cache, generator, config)
        diffusion = diffusion + F.cross_entropy(logits.reshape(-1, vocab), batch.canvas.reshape(-1))
        correct = logits.detach().argmax(-1) == batch.canvas
    diffusion = diffusion / max(1, config.noise_draws)
    loss = diffusion
    parts = {"diffusion": float(diffusion.detach())}
    with torch.no_grad():  # accuracies of the last draw
        middle = batch.canvas != PAD_ID  # the middle and its <eos>
        parts["token_accuracy"] = float(correct.float().mean())
        parts["middle_accuracy"] = float(correct[middle].float().mean())
        parts["exact_middle"] = float((correct | ~middle).all(dim=-1).float().mean())
    if hidden is not None:
        # Next-token loss on the last `ar_tokens` prompt tokens (prompts are left-padded, so these
        # are the end of the prefix, next to the hole).
        span = min(config.ar_tokens, hidden.shape[1] - 1)
        ar_logits = model.logits(hidden[:, -span - 1 : -1])
        targets = batch.prompt[:, -span:]
        weight = (batch.valid[:, -span - 1 : -1] & batch.valid[:, -span:]).float()
        per_token = F.cross_entropy(ar_logits.reshape(-1, vocab), targets.reshape(-1), reduction="none")
        ar = (per_token * weight.reshape(-1)).sum() / weight.sum().clamp(min=1)
        loss = loss + config.ar_weight * ar
        parts["ar"] = float(ar.detach())
    if router_stats is not None:
        balance = router_stats.balance_loss()
        if balance is not None and config.balance_weight > 0:
            loss = loss + config.balance_weight * balance
            parts["balance"] = float(balance.detach())
    parts["loss"] = float(loss.detach())
    return loss, parts


def learning_rate(step: int, config: TrainConfig, seconds: float = 0.0) -> float:
    """Linear warmup, then cosine decay to `min_lr_ratio` * lr. With a time budget (`schedule_minutes`,
    else `max_minutes`) the decay follows whichever is further along, steps or training time, so a
    run cut short by its budget still ends at the floor."""
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    progress = min(1.0, (step - config.warmup) / max(1, config.steps - config.warmup))
    horizon = config.schedule_minutes or config.max_minutes
    if horizon:
        progress = max(progress, min(1.0, seconds / (60 * horizon)))
    cosine = 0.5 * (1 + math.cos(math.pi * progress))
    return config.lr * (config.min_lr_ratio + (1 - config.min_lr_ratio) * cosine)


def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.95), eps=1e-8)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def compile_submodules(model: DiffusionGemmaTransformer) -> None:
    """Compile the pieces with fixed control flow; the routed experts (data-dependent shapes) stay eager.

    `Module.compile` keeps parameter names, so checkpoints are unchanged.
    """
    import torch._dynamo

    # Every RMSNorm instance shares one `forward`: its variants (widths, grad mode) need room.
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    for layer in model.layers:
        for module in layer.children():
            if isinstance(module, (Attention, GatedMLP, RMSNorm)):
                module.compile(dynamic=True)
    model.self_conditioning.compile(dynamic=True)
    model.norm.compile(dynamic=True)


def load_initial_weights(model: DiffusionGemmaTransformer, folder: str | Path) -> None:
    """Fill `model` with the weights of a model folder of the same shapes (`--init-from`): a warm
    start, so a run on a new machine never starts from zero. Any missing, extra or misshapen tensor
    is an error that names it."""
    from safetensors.torch import load_file

    from engine.errors import CheckpointError
    from engine.model import local_name

    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"--init-from {folder}: no .safetensors weights there")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        for key, tensor in load_file(file).items():
            name = local_name(key)
            if name is not None:
                state[name] = tensor
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    misshapen = sorted(n for n in set(own) & set(state) if own[n].shape != state[n].shape)
    if missing or extra or misshapen:
        raise CheckpointError(
            f"--init-from {folder} does not match the {len(own)}-tensor model of this preset: "
            f"missing {missing[:3]}, unexpected {extra[:3]}, other shapes {misshapen[:3]}",
            hint="warm-start from a model of the same preset and vocabulary, or leave --init-from out",
        )
    with torch.no_grad():
        for name, tensor in own.items():
            tensor.copy_(state[name].to(tensor.dtype))


def step_generator(seed: int, step: int, device: torch.device) -> torch.Generator:
    generator = torch.Generator(device=device)
    generator.manual_seed(seed * 1_000_003 + step)
    return generator


def embedded_sampler_defaults() -> SamplerConfig:
    """generation_config.json of the shipped model: few steps, so a suggestion is fast on a CPU."""
    return SamplerConfig(max_denoising_steps=8)


class Trainer:
    def __init__(self, config: TrainConfig):
        self.config = config
        self.run_dir = Path(config.run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.device = _device(config.device)
        if config.threads:
            torch.set_num_threads(config.threads)
        torch.manual_seed(config.seed)
        corpus = collect(config.root, packages_dir=config.packages)
        train_files = [(corpus_key(f), corpus.read(f)) for f in corpus.split(TRAIN)]
        # Recipes are judged on validation files; held-out files are for the shipped model's report
        # (a corpus without a validation split, e.g. a test folder, falls back to held-out files).
        eval_split = VALIDATION if corpus.split(VALIDATION) else HELDOUT
        heldout_files = [(corpus_key(f), corpus.read(f)) for f in corpus.split(eval_split)]
        if config.max_files is not None:
            train_files, heldout_files = train_files[: config.max_files], heldout_files[: config.max_files]
        self.corpus_summary = {
            "root": str(corpus.root),
            "licence": corpus.licence,
            "train_files": len(train_files),
            "train_bytes": sum(len(t.encode()) for _, t in train_files),
            "eval_split": eval_split,
            "eval_files": len(heldout_files),
            "packages": len(corpus.packages),
        }
        tokenizer_dir = self.run_dir / "tokenizer"
        if config.tokenizer:
            self.tokenizer = load_tokenizer(config.tokenizer)
        elif config.init_from and not (tokenizer_dir / "tokenizer.json").is_file():
            self.tokenizer = load_tokenizer(config.init_from)
        elif (tokenizer_dir / "tokenizer.json").is_file():
            self.tokenizer = load_tokenizer(tokenizer_dir)
        else:
            self.tokenizer = train_tokenizer([t for _, t in train_files], vocab_size=config.vocab_size)
        save_tokenizer(self.tokenizer, tokenizer_dir)
        self.tokenizer_dir = tokenizer_dir
        vocab = self.tokenizer.get_vocab_size()
        self.text_config = text_config(config.preset, vocab)
        self.model_config = ModelConfig(
            text=self.text_config,
            canvas_length=max([*config.canvas_lengths, *(config.kind_canvas or {}).values()]),
            eos_token_id=[EOS_ID],
        )
        self.data = HoleData(train_files, self.tokenizer, config, progress=config.progress)
        self.heldout = HoleData(heldout_files, self.tokenizer, config) if heldout_files else self.data
        self.model = DiffusionGemmaTransformer(self.text_config)
        self.model.init_weights(std=config.init_std, generator=torch.Generator().manual_seed(config.seed))
        if config.init_from and not (self.run_dir / CHECKPOINT).is_file():
            load_initial_weights(self.model, config.init_from)
        self.model.to(self.device)
        if config.compile:
            compile_submodules(self.model)
        self.optimizer = make_optimizer(self.model, config)
        self.router_stats = RouterStats(self.model)
        self.step = 0
        self.train_seconds = 0.0
        self.log_path = self.run_dir / "metrics.jsonl"
        self._load()
        self.eval_batches = self._eval_batches()

    # ---- state ------------------------------------------------------------------------------

    def _load(self) -> None:
        path = self.run_dir / CHECKPOINT
        if not path.is_file():
            return
        state = torch.load(path, map_location=self.device, weights_only=False)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        self.train_seconds = float(state.get("train_seconds", 0.0))

    def save(self) -> None:
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "train_seconds": self.train_seconds,
            "config": asdict(self.config),
        }
        tmp = self.run_dir / (CHECKPOINT + ".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.run_dir / CHECKPOINT)

    def _eval_batches(self) -> list[Batch]:
        rng = random.Random(f"eval:{self.config.seed}")
        size = max(1, min(self.config.batch_size, self.config.eval_examples))
        count = max(1, self.config.eval_examples // size)
        return [self.heldout.batch(rng, size) for _ in range(count)]

    # ---- loop ---------------------------------------------------------------------------------

    def train_step(self) -> dict[str, float]:
        config = self.config
        rng = random.Random(f"{config.seed}:{self.step}")
        batch = self.data.batch(rng, config.batch_size).to(self.device)
        lr = learning_rate(self.step, config, self.train_seconds)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.model.train()
        loss, parts = diffusion_loss(
            self.model, batch, step_generator(config.seed, self.step, self.device), config, self.router_stats
        )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), config.grad_clip)
        self.optimizer.step()
        self.step += 1
        parts.update(
            lr=lr, grad_norm=float(norm), prompt_tokens=int(batch.valid.sum()), canvas=batch.canvas.shape[1]
        )
        return parts

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Held-out loss and accuracies at the training noise levels, and (prefixed `t1_`) on
        canvases of pure noise, the first denoising step at inference."""
        self.model.eval()
        totals: dict[str, float] = {}
        pure_noise = replace(self.config, full_noise=1.0, self_conditioning=0.0, ar_weight=0.0)
        for prefix, config in (("", self.config), ("t1_", pure_noise)):
            for index, batch in enumerate(self.eval_batches):
                generator = step_generator(self.config.seed + 7919, index, self.device)
                _, parts = diffusion_loss(self.model, batch.to(self.device), generator, config, None)
                if prefix:
                    parts = {
                        k: v
                        for k, v in parts.items()
                        if k in ("diffusion", "middle_accuracy", "exact_middle")
                    }
                for key, value in parts.items():
                    totals[prefix + key] = totals.get(prefix + key, 0.0) + value / len(self.eval_batches)
        return totals

    def log(self, record: dict[str, Any]) -> None:
        with open(self.log_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    def run(self) -> Path:
        config = self.config
        bar = None
        if config.progress:
            from tqdm import tqdm

            bar = tqdm(
                total=config.steps, initial=self.step, desc="training", unit="step", dynamic_ncols=True
            )
        started = time.perf_counter()
        start_seconds = self.train_seconds
        stop = _StopRequest()
        try:
            while (
                not stop.requested
                and self.step < config.steps
                and (config.stop_at_step is None or self.step < config.stop_at_step)
            ):
                parts = self.train_step()
                self.train_seconds = start_seconds + time.perf_counter() - started
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(
                        loss=f"{parts['loss']:.3f}",
                        middle_acc=f"{parts['middle_accuracy']:.3f}",
                        lr=f"{parts['lr']:.2e}",
                    )
                record = {"step": self.step, "seconds": round(self.train_seconds, 1), **parts}
                if self.step % config.eval_every == 0 or self.step == config.steps:
                    record["eval"] = self.evaluate()
                    if bar is not None:
                        bar.write(
                            f"step {self.step}: held-out loss {record['eval']['diffusion']:.4f} "
                            f"middle token accuracy {record['eval']['middle_accuracy']:.3f}"
                        )
                self.log(record)
                if self.step % config.save_every == 0:
                    self.save()
                if config.stop_at_step is not None and self.step >= config.stop_at_step:
                    break
                if config.max_minutes is not None and self.train_seconds > 60 * config.max_minutes:
                    if bar is not None:
                        bar.write(f"time budget of {config.max_minutes} min reached at step {self.step}")
                    break
        finally:
            stop.restore()
            if bar is not None:
                bar.close()
        if stop.requested:
            print(f"stopped by signal at step {self.step}: saving and exporting", flush=True)
        self.save()
        return self.export()

    def export(self, folder: str | Path | None = None) -> Path:
        from engine.loading import save_checkpoint

        folder = Path(folder or self.config.out or self.run_dir / "model")
        self.model.eval()
        save_checkpoint(
            self.model.cpu() if self.device.type != "cpu" else self.model,
            self.model_config,
            folder,
            sampler=embedded_sampler_defaults(),
            tokenizer_folder=self.tokenizer_dir,
        )
        if self.device.type != "cpu":
            self.model.to(self.device)
        summary = {
            "steps": self.step,
            "train_seconds": round(self.train_seconds, 1),
            "examples_seen": self.step * self.config.batch_size,
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "corpus": self.corpus_summary,
            "config": asdict(self.config),
            "device": str(self.device),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        }
        (self.run_dir / "training_summary.json").write_text(
            json.dumps(summary, indent=1) + "\n", encoding="utf-8"
        )
        return folder


class _StopRequest:
    """SIGINT / SIGTERM during `Trainer.run` finish the step in progress, then save and export, so
    stopping a run (Ctrl-C, `kill`) loses nothing already computed."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}


def train(config: TrainConfig) -> Path:
    """Train (or resume) and export; returns the exported checkpoint folder."""
    return Trainer(config).run()


# ---- command line ------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = TrainConfig(run_dir="")
    parser.add_argument(
        "--run-dir", required=True, help="checkpoints, logs and the tokenizer go here (resumes)"
    )
    parser.add_argument("--out", default=None, help="exported model folder (default: RUN_DIR/model)")
    parser.add_argument("--root", default=None, help="corpus root (default: the standard library)")
    parser.add_argument("--tokenizer", default=None, help="use this tokenizer.json instead of training one")
    parser.add_argument(
        "--packages",
        default=None,
        help="folder of unpacked PyPI packages to add (dgemma corpus --packages-out)",
    )
    parser.add_argument(
        "--init-from",
        default="auto",
        help="start a new run from this model folder's weights and tokenizer; ignored when RUN_DIR holds a "
        "checkpoint. auto (default): the shipped embedded model for --preset embedded without --tokenizer; "
        "none: random weights",
    )
    simple = {f.name for f in fields(TrainConfig)} - {
        "run_dir",
        "out",
        "root",
        "packages",
        "init_from",
        "kind_canvas",
        "source_share_cap",
        "tokenizer",
        "canvas_lengths",
        "canvas_weights",
        "kind_weights",
        "progress",
        "threads",
        "max_minutes",
        "schedule_minutes",
        "stop_at_step",
        "max_files",
        "device",
        "compile",
    }
    for name in sorted(simple):
        value = getattr(defaults, name)
        parser.add_argument("--" + name.replace("_", "-"), type=type(value), default=value)
    parser.add_argument("--canvas-lengths", default="16,32,64", help="canvas lengths, comma-separated")
    parser.add_argument("--canvas-weights", default="0.1,0.45,0.45", help="their shares, comma-separated")
    parser.add_argument(
        "--kind-canvas",
        default=None,
        help="canvas length per hole kind, e.g. line=24,line_rest=24,block=64,span=64 (one kind a batch)",
    )
    parser.add_argument(
        "--kind-weights",
        default=None,
        help="shares of hole kinds, e.g. line=0.35,line_rest=0.2,block=0.3,span=0.15",
    )
    parser.add_argument(
        "--source-share-cap",
        type=float,
        default=None,
        help="most share of drawn lines one package may have (e.g. 0.02); default: lines alone",
    )
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--max-minutes", type=float, default=None, help="stop after this much training time")
    parser.add_argument(
        "--stop-at-step", type=int, default=None, help="stop at this step (schedule unchanged)"
    )
    parser.add_argument(
        "--schedule-minutes", type=float, default=None, help="decay the learning rate over this much time"
    )
    parser.add_argument(
        "--max-files", type=int, default=None, help="use only the first N files (smoke tests)"
    )
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument(
        "--export-only",
        action="store_true",
        help="write RUN_DIR's latest checkpoint as a model folder and stop",
    )
    parser.add_argument(
        "--compile", action="store_true", help="torch.compile the dense modules (slow start, faster steps)"
    )


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    values = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if hasattr(args, f.name)}
    values["canvas_lengths"] = tuple(int(x) for x in str(args.canvas_lengths).split(","))
    values["canvas_weights"] = tuple(float(x) for x in str(args.canvas_weights).split(","))
    values["progress"] = not args.no_progress
    values["init_from"] = _init_from(args.init_from, args.preset, args.tokenizer)
    if args.kind_canvas:
        values["kind_canvas"] = {k: int(v) for k, v in _pairs(args.kind_canvas).items()}
    if args.kind_weights:
        values["kind_weights"] = {k: float(v) for k, v in _pairs(args.kind_weights).items()}
    else:
        values.pop("kind_weights", None)
    return TrainConfig(**values)


def _init_from(choice: str | None, preset: str, tokenizer: str | None) -> str | None:
    """`--init-from`: auto warm-starts the embedded preset from the shipped weights (same shapes and
    vocabulary), so a run on a new machine continues the shipped model instead of starting from zero."""
    if choice in (None, "none"):
        return None
    if choice == "auto":
        from engine.loading import EMBEDDED_MODEL_DIR

        usable = preset == "embedded" and tokenizer is None and (EMBEDDED_MODEL_DIR / "config.json").is_file()
        return str(EMBEDDED_MODEL_DIR) if usable else None
    return choice


def _pairs(text: str) -> dict[str, str]:
    """`a=1,b=2` -> {"a": "1", "b": "2"}."""
    pairs = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"{item!r} is not KEY=VALUE")
        pairs[key.strip()] = value.strip()
    return pairs
