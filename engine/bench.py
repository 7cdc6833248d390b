"""`dgemma bench`: ms per denoising step and tokens/s, ours next to transformers, on the same model.

Both implementations load the same random checkpoint (written by transformers' `save_pretrained`)
and run the same sampler settings. A random model never becomes confident, so every canvas
runs its full step budget in both, and ms per step compares like with like. "ours, warm" is the
editor's case: the same prompt again, served from the prompt KV cache; "ours, cold" re-encodes it.

`--shapes 26b-a4b` builds the real DiffusionGemma 26B-A4B shapes with random weights on the
device (nothing to download; meant for a GPU) and prints ms per step, ms per 256-token canvas,
tokens/s and peak memory next to the memory-bandwidth floor (performance.md 5.5).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from engine.config import FULL, SLIDING, DiffusionConfig, ModelConfig, TextConfig

# Peak HBM bandwidth, TB/s, for the floor printed with --shapes 26b-a4b.
GPU_BANDWIDTH_TBS = {
    "H200": 4.8,
    "H100": 3.35,
    "A100": 2.0,
    "L40S": 0.864,
    "4090": 1.008,
    "5090": 1.79,
    "B200": 8.0,
}


def small_text_config(args: argparse.Namespace) -> TextConfig:
    layer_types = [FULL if (i + 1) % 4 == 0 else SLIDING for i in range(args.layers)]
    layer_types[-1] = FULL
    return TextConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.hidden * 2,
        moe_intermediate_size=args.hidden // 2,
        num_hidden_layers=args.layers,
        layer_types=layer_types,
        sliding_window=512,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=args.hidden // 4,
        global_head_dim=args.hidden // 2,
        num_global_key_value_heads=1,
        num_experts=args.experts,
        top_k_experts=args.top_k,
        max_position_embeddings=8192,
        eos_token_id=[1],
    )


def write_checkpoint_with_transformers(text: TextConfig, canvas: int, folder: Path):
    """The same random model for both sides, saved by transformers; returns the transformers model."""
    from transformers import DiffusionGemmaConfig, DiffusionGemmaForBlockDiffusion

    from engine.random_model import randomize_vectors, train_tokenizer, write_tokenizer

    text_dict = ModelConfig(text=text).to_dict()["text_config"]
    for key in ("model_type", "per_layer_config"):
        text_dict.pop(key)
    vision = dict(
        model_type="gemma4_vision",
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=8,
    )
    config = DiffusionGemmaConfig(
        text_config=text_dict, vision_config=vision, canvas_length=canvas, eos_token_id=[1]
    )
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = DiffusionGemmaForBlockDiffusion(config).float().eval()
    randomize_vectors(model, scale=0.1, generator=torch.Generator().manual_seed(1))
    model.save_pretrained(folder)
    write_tokenizer(folder, train_tokenizer(1000))
    return model


def time_ours(model, prompt: list[int], tokens: int, steps: int, repeats: int, warm: bool) -> list[float]:
    model.prefix_cache.enabled = warm
    model.prefix_cache.clear()
    model.generate_ids(
        prompt, max_tokens=tokens, num_diffusion_steps=steps, confidence_threshold=1e-9
    )  # warm-up
    times = []
    for _ in range(repeats):
        if not warm:
            model.prefix_cache.clear()
        start = time.perf_counter()
        model.generate_ids(prompt, max_tokens=tokens, num_diffusion_steps=steps, confidence_threshold=1e-9)
        times.append(time.perf_counter() - start)
    return times


def time_transformers(hf_model, prompt: list[int], tokens: int, steps: int, repeats: int) -> list[float]:
    ids = torch.tensor([prompt])

    def run():
        with torch.no_grad():
            hf_model.generate(
                ids, max_new_tokens=tokens, max_denoising_steps=steps, confidence_threshold=1e-9
            )

    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return times


def report_line(name: str, times: list[float], steps_total: int, tokens: int) -> tuple[str, float]:
    seconds = statistics.median(times)
    return (
        f"{name:<24} {seconds * 1000 / steps_total:10.2f} {tokens / seconds:12.1f} {seconds * 1000:12.1f}",
        seconds,
    )


def run_small(args: argparse.Namespace) -> int:
    from engine.api import DiffusionGemmaModel

    torch.set_num_threads(args.threads or torch.get_num_threads())
    text = small_text_config(args)
    canvases = args.canvases
    tokens = canvases * args.canvas
    steps_total = canvases * args.steps
    prompt = torch.randint(
        4, min(args.vocab, 1000), (args.prompt_tokens,), generator=torch.Generator().manual_seed(2)
    )
    prompt = [2, *prompt.tolist()]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "bench-model"
        hf_model = None
        if not args.no_transformers:
            try:
                hf_model = write_checkpoint_with_transformers(text, args.canvas, folder)
            except ImportError:
                print(
                    "transformers >= 5.11 is not installed: timing ours only (pip install 'dgemma-lsp[test]')"
                )
        if hf_model is None:
            from engine.random_model import write_random_checkpoint

            write_random_checkpoint(folder, text, canvas_length=args.canvas, std=0.02)
        ours = DiffusionGemmaModel.from_pretrained(
            folder, config=DiffusionConfig(device="cpu", dtype="float32", seed=0)
        )
        params = ModelConfig(text=text).parameter_count()
        print(
            f"model: hidden {args.hidden}, {args.layers} layers, {args.experts} experts top-{args.top_k}, vocab "
            f"{args.vocab}, {params / 1e6:.1f}M params | canvas {args.canvas}, {args.steps} steps, "
            f"{canvases} canvases, prompt {len(prompt)} tokens | torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads, median of {args.repeats}"
        )
        print(f"{'implementation':<24} {'ms/step':>10} {'tokens/s':>12} {'ms/call':>12}")
        warm_line, warm = report_line(
            "ours, warm prompt cache",
            time_ours(ours, prompt, tokens, args.steps, args.repeats, True),
            steps_total,
            tokens,
        )
        cold_line, cold = report_line(
            "ours, cold",
            time_ours(ours, prompt, tokens, args.steps, args.repeats, False),
            steps_total,
            tokens,
        )
        print(warm_line)
        print(cold_line)
        if hf_model is not None:
            torch.manual_seed(0)
            hf_line, hf = report_line(
                "transformers " + __import__("transformers").__version__,
                time_transformers(hf_model, prompt, tokens, args.steps, args.repeats),
                steps_total,
                tokens,
            )
            print(hf_line)
            print(f"speed-up vs transformers: {hf / warm:.2f}x warm, {hf / cold:.2f}x cold")
    return 0


def run_real_shapes(args: argparse.Namespace) -> int:
    """Random bf16 weights of the real 26B-A4B shapes on the device; no tokenizer, no download."""
    from engine.generation import StopCheck, generate_canvases
    from engine.model import DiffusionGemmaTransformer
    from engine.sampler import EntropyBoundSampler, GeneratorRandom, SamplerConfig

    device = torch.device(
        args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    )
    dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32, "auto": torch.bfloat16}.get(
        args.dtype, torch.bfloat16
    )
    text = TextConfig()
    if args.layers_override:
        text.num_hidden_layers = args.layers_override
        text.layer_types = text.layer_types[: args.layers_override]
        text.layer_types[-1] = FULL
    if args.vocab_override:
        text.vocab_size = args.vocab_override
    started = time.perf_counter()
    with torch.device("meta"):
        model = DiffusionGemmaTransformer(text).to(dtype)
    model = model.to_empty(device=device)
    model.reset_buffers()
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim >= 2:
                param.normal_(0.0, 0.02)
            else:
                param.fill_(1.0)
    model.eval().requires_grad_(False)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    print(
        f"built {weight_bytes / 1e9:.1f} GB of random {dtype} weights on {device} in {time.perf_counter() - started:.0f} s"
    )
    prompt = torch.randint(0, text.vocab_size, (1, args.prompt_tokens), device=device)
    canvas, steps = 256, args.steps

    def one_canvas() -> tuple[float, float]:
        cache = model.new_cache()
        with torch.inference_mode():
            model.encode(prompt, cache)
        sampler = EntropyBoundSampler(
            SamplerConfig(max_denoising_steps=steps, confidence_threshold=1e-9),
            text.vocab_size,
            GeneratorRandom(0, device),
        )
        sync()
        start = time.perf_counter()
        for _ in generate_canvases(
            model, cache, sampler, [canvas], canvas_length=canvas, eos_ids=[1], pad_id=0, stop=StopCheck()
        ):
            pass
        sync()
        denoise = time.perf_counter() - start
        start = time.perf_counter()
        with torch.inference_mode():
            model.encode(torch.zeros(1, canvas, dtype=torch.long, device=device), cache)
        sync()
        return denoise, time.perf_counter() - start

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    one_canvas()
    runs = [one_canvas() for _ in range(args.repeats)]
    denoise = statistics.median(r[0] for r in runs)
    commit = statistics.median(r[1] for r in runs)
    per_step = denoise / steps
    print(f"ms per denoising step       {per_step * 1000:.2f}")
    print(
        f"ms per 256-token canvas     {(denoise + commit) * 1000:.1f} ({steps} steps + commit {commit * 1000:.1f} ms)"
    )
    print(f"tokens/s                    {canvas / (denoise + commit):.0f}")
    if device.type == "cuda":
        print(f"peak memory                 {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
        name = torch.cuda.get_device_name(device)
        bandwidth = next((v for k, v in GPU_BANDWIDTH_TBS.items() if k in name), None)
        if bandwidth:
            floor = weight_bytes / (bandwidth * 1e12)
            print(
                f"bandwidth floor per step    {floor * 1000:.2f} ms ({weight_bytes / 1e9:.1f} GB at {bandwidth} TB/s); "
                f"measured/floor {per_step / floor:.2f}x"
            )
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    if args.shapes == "26b-a4b":
        return run_real_shapes(args)
    return run_small(args)


def register(subparsers) -> None:
    p = subparsers.add_parser("bench", help="ms per denoising step and tokens/s, ours next to transformers")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--experts", type=int, default=16)
    p.add_argument("--top-k", type=int, default=2)
    p.add_argument("--vocab", type=int, default=16384)
    p.add_argument("--canvas", type=int, default=64)
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--canvases", type=int, default=2)
    p.add_argument("--prompt-tokens", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-transformers", action="store_true", help="time ours only")
    p.add_argument("--shapes", choices=["small", "26b-a4b"], default="small")
    p.add_argument("--layers-override", type=int, default=None, help="with --shapes 26b-a4b: fewer layers")
    p.add_argument(
        "--vocab-override", type=int, default=None, help="with --shapes 26b-a4b: smaller vocabulary"
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float32"])
    p.set_defaults(func=cmd_bench)
