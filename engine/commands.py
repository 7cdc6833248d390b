"""`dgemma generate | infill | download | doctor` (the engine's own subcommands)."""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys

from engine.config import DTYPES, DiffusionConfig
from engine.memory_plan import add_doctor_options, doctor_plan
from engine.requests import GenerationStats, InfillRequest


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """--model/--device/--dtype/--steps, shared by every command that loads a model."""
    parser.add_argument(
        "--model", default=None, help="checkpoint folder or hub id (default: the embedded model)"
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    parser.add_argument("--dtype", default="auto", choices=DTYPES, help="weights dtype (default: auto)")
    parser.add_argument(
        "--steps", type=int, default=None, help="denoising steps per canvas (default: the model's)"
    )
    parser.add_argument("--seed", type=int, default=None, help="seed for reproducible output")
    parser.add_argument("--attention-slicing", action="store_true", help="bound attention memory")
    parser.add_argument("--cpu-offload-experts", action="store_true", help="keep experts on the CPU")


def diffusion_config(args: argparse.Namespace) -> DiffusionConfig:
    return DiffusionConfig(
        num_diffusion_steps=args.steps,
        device=args.device,
        dtype=args.dtype,
        seed=args.seed,
        attention_slicing=args.attention_slicing,
        cpu_offload_unused_experts=args.cpu_offload_experts,
    )


def load_model(args: argparse.Namespace):
    from engine.api import DiffusionGemmaModel

    return DiffusionGemmaModel.from_pretrained(args.model, config=diffusion_config(args))


def print_stats(s: GenerationStats, stream=sys.stderr) -> None:
    print(
        f"[{s.generated_tokens} tokens, {s.canvases} canvas(es), steps per canvas {s.steps_per_canvas}, "
        f"{s.seconds * 1000:.0f} ms, {s.tokens_per_second:.1f} tok/s, prompt {s.prompt_tokens} tokens "
        f"({s.cached_prompt_tokens} from cache)]",
        file=stream,
    )


def cmd_generate(args: argparse.Namespace) -> int:
    model = load_model(args)
    if args.chat or args.system:
        messages = ([{"role": "system", "content": args.system}] if args.system else []) + [
            {"role": "user", "content": args.prompt}
        ]
        chunks = model.chat_stream(messages, max_tokens=args.max_tokens, stop=args.stop or None)
    else:
        chunks = model.generate_stream(args.prompt, max_tokens=args.max_tokens, stop=args.stop or None)
    for chunk in chunks:
        sys.stdout.write(chunk)
        sys.stdout.flush()
    sys.stdout.write("\n")
    if not args.quiet:
        print_stats(chunks.result.stats)
    return 0


def _unescape(text: str) -> str:
    return text.replace("\\n", "\n").replace("\\t", "\t")


def cmd_infill(args: argparse.Namespace) -> int:
    model = load_model(args)
    request = InfillRequest(_unescape(args.prefix), _unescape(args.suffix), max_tokens=args.max_tokens)
    result = model.infill_request(request)
    print(result.text)
    if not args.quiet:
        print_stats(result.stats)
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    from engine.loading import download

    folder = download(args.model, revision=args.revision)
    print(folder)
    return 0


def _nvidia_smi(query: str) -> str | None:
    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (subprocess.SubprocessError, OSError):
        return None
    return out.stdout.strip().splitlines()[0] if out.stdout.strip() else None


def doctor_report() -> dict:
    """What `dgemma doctor` checks, as data (the command prints it; tests read it)."""
    import torch

    from engine.device import NVFP4_FLOOR_BYTES, available_memory
    from engine.loading import EMBEDDED_MODEL_DIR

    report: dict = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "cuda_version": torch.version.cuda,
        "driver_version": _nvidia_smi("driver_version"),
        "gpus": [],
        "cpu_memory_free_gib": round((available_memory(torch.device("cpu")) or 0) / 2**30, 1),
        "embedded_model": (EMBEDDED_MODEL_DIR / "config.json").is_file(),
        "advice": [],
    }
    best_free = 0
    for index in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
        free, total = torch.cuda.mem_get_info(index)
        best_free = max(best_free, free)
        report["gpus"].append(
            {
                "index": index,
                "name": torch.cuda.get_device_name(index),
                "free_gib": round(free / 2**30, 1),
                "total_gib": round(total / 2**30, 1),
                "bf16": torch.cuda.is_bf16_supported(),
                "capability": ".".join(map(str, torch.cuda.get_device_capability(index))),
            }
        )
    report["nvfp4_floor_gib"] = round(NVFP4_FLOOR_BYTES / 2**30, 1)
    report["nvfp4_floor_met"] = best_free >= NVFP4_FLOOR_BYTES
    advice = report["advice"]
    if not report["gpus"]:
        advice.append(
            "No CUDA GPU: the embedded model runs on the CPU; for DiffusionGemma 26B-A4B point the "
            'language server at a vLLM or SGLang endpoint (backend = "openai").'
        )
    elif not report["nvfp4_floor_met"]:
        advice.append(
            f"The largest free GPU memory is {best_free / 2**30:.1f} GiB, below the "
            f"{report['nvfp4_floor_gib']} GiB the NVFP4 model needs: try cpu_offload_unused_experts=True "
            "(slower), free GPU memory, or use a remote endpoint."
        )
    else:
        advice.append(
            "This GPU can run nvidia/diffusiongemma-26B-A4B-it-NVFP4 with dtype='nvfp4'; "
            "the BF16 checkpoint needs about 52 GB."
        )
    if not report["embedded_model"]:
        advice.append("The embedded model is missing: reinstall dgemma-lsp.")
    return report


def cmd_doctor(args: argparse.Namespace) -> int:
    report = doctor_report()
    plan_lines = doctor_plan(args, report)  # with --model: adds report["memory_plan"]
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"Python        {report['python']} ({report['platform']})")
    print(f"torch         {report['torch']}")
    print(
        f"CUDA          {'available, ' + str(report['cuda_version']) if report['cuda_available'] else 'not available'}"
    )
    print(f"driver        {report['driver_version'] or 'n/a'}")
    for gpu in report["gpus"]:
        print(
            f"GPU {gpu['index']}         {gpu['name']} (sm {gpu['capability']}), "
            f"{gpu['free_gib']} of {gpu['total_gib']} GiB free, bf16 {'yes' if gpu['bf16'] else 'no'}"
        )
    print(f"CPU memory    {report['cpu_memory_free_gib']} GiB free")
    print(
        f"NVFP4 floor   {report['nvfp4_floor_gib']} GiB: {'met' if report['nvfp4_floor_met'] else 'not met'}"
    )
    print(f"embedded model {'installed' if report['embedded_model'] else 'MISSING'}")
    for line in report["advice"]:
        print(f"advice: {line}")
    for line in plan_lines:
        print(line)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("generate", help="generate text from a prompt")
    p.add_argument("prompt")
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--chat", action="store_true", help="wrap the prompt as a user turn of the chat template")
    p.add_argument("--system", default=None, help="system prompt (implies --chat)")
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no statistics on stderr")
    add_model_options(p)
    p.set_defaults(func=cmd_generate)

    p = subparsers.add_parser(
        "infill", help="fill the hole between a prefix and a suffix (\\n escapes allowed)"
    )
    p.add_argument("prefix")
    p.add_argument("suffix", nargs="?", default="")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--quiet", action="store_true")
    add_model_options(p)
    p.set_defaults(func=cmd_infill)

    p = subparsers.add_parser("download", help="fetch a checkpoint into the Hugging Face cache")
    p.add_argument("model", help="hub id, e.g. google/diffusiongemma-26B-A4B-it")
    p.add_argument("--revision", default=None)
    p.set_defaults(func=cmd_download)

    p = subparsers.add_parser("doctor", help="check Python, torch, CUDA, GPU memory and the NVFP4 floor")
    p.add_argument("--json", action="store_true")
    add_doctor_options(p)
    p.set_defaults(func=cmd_doctor)
