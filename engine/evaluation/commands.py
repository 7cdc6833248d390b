"""`dgemma eval-infill` and `dgemma make-infill-set` (heavy imports stay inside the handlers)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    evaluate = subparsers.add_parser(
        "eval-infill",
        help="score infilling on a HumanEval-Infilling style JSONL file",
        description="Exact match, parse rate, pass@1 (sandboxed, where tasks have tests) and latency "
        "per infill, for the model and/or baselines (see engine/evaluation/eval_infill.py).",
    )
    evaluate.add_argument("--data", required=True, help="tasks: FILE.jsonl or FILE.jsonl.gz")
    evaluate.add_argument(
        "--model", default=None, help="checkpoint folder or hub id (default: the embedded model)"
    )
    evaluate.add_argument(
        "--predictor",
        action="append",
        choices=["model", "empty", "previous-line", "oracle"],
        help="what fills the holes; repeat for several (default: model)",
    )
    evaluate.add_argument(
        "--baselines", action="store_true", help="also run the empty and previous-line baselines"
    )
    evaluate.add_argument(
        "--strategy",
        action="append",
        default=None,
        metavar="NAME",
        help="how the model fills each hole (engine/infill.py): prompt (today's), pinned[:K] (first K "
        "suffix tokens pinned after the hole), length[:B] (B candidate hole lengths in one batch), "
        "pinned[:K]+length[:B]; repeat to compare several side by side, on one loaded model and "
        "the same step budget (default: prompt)",
    )
    evaluate.add_argument("--limit", type=int, default=None, help="only the first N tasks")
    evaluate.add_argument("--kind", default=None, help="only tasks of this kind (single-line, multi-line...)")
    evaluate.add_argument("--steps", type=int, default=None, help="denoising steps per canvas")
    evaluate.add_argument("--max-tokens", type=int, default=None, help="canvas length (default: the model's)")
    evaluate.add_argument("--prefix-tokens", type=int, default=384, help="prefix window, in tokens")
    evaluate.add_argument("--suffix-tokens", type=int, default=128, help="suffix window, in tokens")
    for knob in ("entropy-bound", "t-min", "t-max", "confidence-threshold"):
        evaluate.add_argument(
            f"--{knob}", type=float, default=None, help="sampler override (default: the model's)"
        )
    evaluate.add_argument("--stability-threshold", type=int, default=None, help="sampler override")
    evaluate.add_argument("--device", default="cpu")
    evaluate.add_argument("--dtype", default="auto")
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    evaluate.add_argument("--timeout", type=float, default=10.0, help="seconds per test run")
    evaluate.add_argument("--no-tests", action="store_true", help="skip running tests (no pass@1)")
    evaluate.add_argument("--out", default=None, help="write the full report (every prediction) as JSON")
    evaluate.add_argument("--progress", action="store_true", help="show a progress bar")
    evaluate.set_defaults(func=run_eval_infill)

    make = subparsers.add_parser(
        "make-infill-set",
        help="build single-line and multi-line infilling tasks from held-out source files",
        description="Holes at statement boundaries, in the HumanEval-Infilling schema "
        "(see engine/evaluation/make_infill_set.py).",
    )
    make.add_argument("src_dir", help="folder of Python sources (e.g. the standard library)")
    make.add_argument("--out", required=True, help="FILE.jsonl or FILE.jsonl.gz")
    make.add_argument(
        "--split",
        default="heldout",
        choices=["heldout", "validation", "train", "all"],
        help="which side of the corpus split to take files from (default: heldout)",
    )
    make.add_argument(
        "--packages", default=None, help="also take files of the unpacked PyPI packages in this folder"
    )
    make.add_argument(
        "--packages-only", action="store_true", help="with --packages: only package files, not SRC_DIR's"
    )
    make.add_argument("--single", type=int, default=500, help="single-line tasks")
    make.add_argument("--multi", type=int, default=300, help="multi-line tasks")
    make.add_argument("--max-lines", type=int, default=8, help="longest multi-line hole")
    make.add_argument("--lines-before", type=int, default=60)
    make.add_argument("--lines-after", type=int, default=30)
    make.add_argument("--seed", type=int, default=0)
    make.set_defaults(func=run_make_infill_set)


def run_make_infill_set(args: argparse.Namespace) -> int:
    from engine.evaluation.make_infill_set import main_make_infill_set

    return main_make_infill_set(args)


def run_eval_infill(args: argparse.Namespace) -> int:
    from engine.evaluation import eval_infill as ev

    tasks = ev.load_tasks(args.data)
    if args.kind:
        tasks = [t for t in tasks if t.kind == args.kind]
    if args.limit is not None:
        tasks = tasks[: args.limit]
    names = list(args.predictor or ["model"])
    if args.baselines:
        names += [n for n in ("empty", "previous-line") if n not in names]
    predictors: dict[str, ev.Predictor] = {}
    for name in names:
        if name == "model":
            predictors.update(_model_predictors(args))
        elif name == "oracle":
            answers = {(t.prompt, t.suffix): t.canonical_solution for t in tasks}
            predictors[name] = lambda prefix, suffix, answers=answers: answers[(prefix, suffix)]
        else:
            predictors[name] = ev.BASELINES[name]
    with_tests = sum(1 for t in tasks if t.test.strip() and t.entry_point)
    if with_tests and not args.no_tests:
        print(f"sandbox: {ev.sandbox_description()}", file=sys.stderr)
    limits = ev.Limits(timeout=args.timeout)
    reports = [
        ev.evaluate(
            tasks, predictor, name=name, run_tests=not args.no_tests, limits=limits, progress=args.progress
        )
        for name, predictor in predictors.items()
    ]
    print(f"data: {args.data} ({len(tasks)} tasks, {with_tests} with tests)")
    print(ev.format_table(reports))
    if args.out:
        out = {
            "data": str(args.data),
            "data_sha256": ev.file_digest(args.data),
            "settings": {k: v for k, v in vars(args).items() if k != "func" and not callable(v)},
            "reports": [r.as_dict() for r in reports],
        }
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    return 0


def _model_predictors(args: argparse.Namespace) -> dict:
    """One predictor per `--strategy`, all on one loaded model; named `model` for today's prompt
    alone, `model[STRATEGY]` otherwise."""
    from engine.evaluation.eval_infill import ModelPredictor
    from engine.infill import InfillStrategy

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from engine.api import SAMPLER_KNOBS, DiffusionGemmaModel
    from engine.config import DiffusionConfig

    config = DiffusionConfig(
        num_diffusion_steps=args.steps,
        device=args.device,
        dtype=args.dtype,
        seed=args.seed,
        local_files_only=True,
        **{knob: getattr(args, knob) for knob in SAMPLER_KNOBS},
    )
    model = DiffusionGemmaModel.from_pretrained(args.model, config=config)
    # Names fail before any task runs; B defaults per device.
    strategies = [InfillStrategy.parse(s, device=model.device.type).name for s in args.strategy or ["prompt"]]
    model.warmup()  # the first task's latency should not carry loading and kernel choice
    steps = args.steps or model.sampler_defaults.max_denoising_steps
    print(f"strategies: {', '.join(strategies)}; {steps} denoising steps each", file=sys.stderr)
    return {
        ("model" if strategies == ["prompt"] else f"model[{strategy}]"): ModelPredictor(
            model,
            max_tokens=args.max_tokens,
            num_diffusion_steps=args.steps,
            max_prefix_tokens=args.prefix_tokens,
            max_suffix_tokens=args.suffix_tokens,
            strategy=strategy,
        )
        for strategy in dict.fromkeys(strategies)
    }
