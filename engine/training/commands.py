"""`dgemma corpus`, `train-tokenizer`, `train` and `ship-model` (heavy imports stay in the handlers)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    corpus = subparsers.add_parser(
        "corpus",
        help="list the training corpus and its train/held-out split (writes a manifest)",
        description="Collect permissively licensed Python (default: this interpreter's standard library) "
        "and split it by file (see engine/training/corpus.py).",
    )
    corpus.add_argument("--root", default=None, help="source folder (default: the standard library)")
    corpus.add_argument("--out", default=None, help="write the manifest JSON here (every file)")
    corpus.add_argument(
        "--summary-out",
        default=None,
        help="write the package-level manifest here (engine/training/data/corpus-manifest.json is committed)",
    )
    corpus.add_argument(
        "--pins",
        default=None,
        help="name==version list of PyPI packages (default: engine/training/data/packages.txt); 'none': stdlib only",
    )
    corpus.add_argument("--wheels", default="runs/pypi/wheels", help="where downloaded wheels are kept")
    corpus.add_argument(
        "--packages-out", default="runs/pypi/packages", help="where permissive packages are unpacked"
    )
    corpus.add_argument(
        "--tokenizer", default=None, help="count tokens with this tokenizer (default: embedded)"
    )
    corpus.add_argument("--heldout-fraction", type=float, default=None)
    corpus.set_defaults(func=run_corpus)

    tokenizer = subparsers.add_parser(
        "train-tokenizer",
        help="train the byte-level BPE tokenizer on the corpus's training split",
        description="Byte-level BPE with <pad> <eos> <bos> <unk> and the FIM tokens as ids 0-7; "
        "writes tokenizer.json and tokenizer_config.json into OUT.",
    )
    tokenizer.add_argument("--root", default=None, help="source folder (default: the standard library)")
    tokenizer.add_argument("--vocab-size", type=int, default=8192)
    tokenizer.add_argument("--out", required=True, help="output folder")
    tokenizer.set_defaults(func=run_train_tokenizer)

    train = subparsers.add_parser(
        "train",
        help="train a DiffusionGemma-architecture code model on the corpus (uniform-state block diffusion)",
        description="Seeded and resumable; see engine/training/train.py for the objective.",
    )
    from engine.training.train import add_arguments

    add_arguments(train)
    train.set_defaults(func=run_train)

    ship = subparsers.add_parser(
        "ship-model",
        help="copy a trained checkpoint into engine/embedded (bfloat16 weights)",
        description="Writes config.json, generation_config.json, tokenizer files and bfloat16 weights.",
    )
    ship.add_argument("--model", required=True, help="the trained checkpoint folder (e.g. RUN_DIR/model)")
    ship.add_argument("--out", default=None, help="destination (default: the package's engine/embedded)")
    ship.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ship.set_defaults(func=run_ship)


def run_corpus(args: argparse.Namespace) -> int:
    import json

    from engine.loading import EMBEDDED_MODEL_DIR
    from engine.training.corpus import (
        DEFAULT_HELDOUT_FRACTION,
        SPLITS,
        collect,
        manifest,
        package_table,
        write_manifest,
    )
    from engine.training.packages import DEFAULT_PINS, prepare, read_pins
    from engine.training.tokenizer import load_tokenizer

    kept: list[dict] = []
    excluded: list[dict] = []
    packages_dir = None
    if args.pins != "none":
        pins = read_pins(args.pins or DEFAULT_PINS)
        print(
            f"{len(pins)} pinned packages: downloading to {args.wheels} (cached wheels are reused)",
            flush=True,
        )
        kept, excluded = prepare(pins, args.wheels, args.packages_out)
        packages_dir = args.packages_out
        print(f"{len(kept)} permissive packages unpacked into {packages_dir}; {len(excluded)} left out")
    corpus = collect(
        args.root,
        packages_dir=packages_dir,
        heldout_fraction=args.heldout_fraction or DEFAULT_HELDOUT_FRACTION,
    )
    data = manifest(corpus)
    for name in SPLITS:
        t = data["totals"][name]
        print(f"{name:10s} {t['files']:6d} files {t['lines']:9d} lines {t['bytes'] / 1e6:8.2f} MB")
    print(f"root {corpus.root} (licence {corpus.licence}); skipped: {corpus.skipped}")
    if args.out:
        write_manifest(corpus, args.out)
        print(f"manifest written to {args.out}")
    if args.summary_out:
        tokenizer = load_tokenizer(args.tokenizer or EMBEDDED_MODEL_DIR)
        rows = package_table(corpus, lambda text: len(tokenizer.encode(text, add_special_tokens=False).ids))
        summary = {
            "rules": data["rules"],
            "totals": data["totals"],
            "skipped": data["skipped"],
            "tokens": sum(r["tokens"] for r in rows),
            "packages": rows,
            "excluded": excluded,
        }
        Path(args.summary_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.summary_out).write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
        print(f"package manifest written to {args.summary_out} ({summary['tokens'] / 1e6:.1f}M tokens)")
    return 0


def run_train_tokenizer(args: argparse.Namespace) -> int:
    from engine.training.corpus import TRAIN, collect
    from engine.training.tokenizer import save_tokenizer, train_tokenizer

    corpus = collect(args.root)
    texts = [text for _, text in corpus.texts(TRAIN)]
    tokenizer = train_tokenizer(texts, vocab_size=args.vocab_size, show_progress=sys.stderr.isatty())
    path = save_tokenizer(tokenizer, Path(args.out))
    print(f"{path}: vocabulary {tokenizer.get_vocab_size()} from {len(texts)} files")
    return 0


def run_train(args: argparse.Namespace) -> int:
    from engine.training.train import Trainer, config_from_args

    config = config_from_args(args)
    trainer = Trainer(config)
    params = sum(p.numel() for p in trainer.model.parameters())
    print(
        f"model: {config.preset}, {params / 1e6:.1f}M parameters, vocabulary {trainer.text_config.vocab_size}; "
        f"{trainer.corpus_summary['train_files']} training files; device {trainer.device}; "
        f"starting at step {trainer.step} of {config.steps}",
        flush=True,
    )
    folder = trainer.export() if args.export_only else trainer.run()
    print(f"model written to {folder} (step {trainer.step})")
    return 0


def run_ship(args: argparse.Namespace) -> int:
    from engine.loading import EMBEDDED_MODEL_DIR
    from engine.training.ship import ship

    out = args.out or str(EMBEDDED_MODEL_DIR)
    size = ship(args.model, out, args.dtype)
    print(f"{out}: {size / 1e6:.1f} MB")
    return 0
