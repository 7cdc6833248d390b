"""The device checks of issue 11 in one run: `python -m kernels.gpu_check [--dry-run] [--out DIR]`.

On CUDA, at the real DiffusionGemma 26B-A4B shapes (random weights):

1. **no host syncs**: device-side routing, the fused MoE kernels (NVFP4 and BF16) and the
   denoiser-statistics kernel run under `torch.cuda.set_sync_debug_mode("error")`;
2. **CUDA graph**: the same, captured once and replayed, equal to the eager result;
3. **compiling**: with `--compile-only`, every kernel variant is compiled to a cubin for
   sm_80, sm_89 and sm_90 by Triton's compiler and ptxas, which needs no GPU (CI runs it);
4. **timings** (CUDA events, median of repeats) of one routed-experts layer for a 256-token and
   a 64-token canvas, Triton against the engine's current path (`moe_grouped`), each beside its
   bandwidth floor; the sampler statistics, the vocabulary projection, the self-conditioning
   product and attention; and a step projected from those parts (30 layers), which is a sum of
   parts, not a measured engine step.

`--dry-run` runs every piece on the CPU at tiny shapes under Triton's interpreter (what CI runs):
it proves the script works, and its times measure nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch


@dataclass(frozen=True)
class Shapes:
    hidden: int
    inter: int
    experts: int
    top_k: int
    vocab: int
    heads: int
    sliding_kv_heads: int
    sliding_head_dim: int
    full_kv_heads: int
    full_head_dim: int
    sliding_layers: int
    full_layers: int
    prompt: int
    canvases: tuple[int, ...]

    @property
    def layers(self) -> int:
        return self.sliding_layers + self.full_layers


REAL = Shapes(2816, 704, 128, 8, 262_144, 16, 8, 256, 2, 512, 25, 5, 1024, (256, 64))
TINY = Shapes(64, 32, 8, 2, 1000, 4, 2, 16, 1, 32, 2, 1, 40, (16, 8))


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median milliseconds of `fn` after two warm-up calls (CUDA events on a GPU)."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            began = time.perf_counter()
            fn()
            times.append((time.perf_counter() - began) * 1000)
    return statistics.median(times)


class Report:
    def __init__(self, out: Path | None):
        self.lines: list[str] = []
        self.data: dict = {}
        self.failures: list[str] = []
        self.out = out

    def line(self, text: str) -> None:
        print(text, flush=True)
        self.lines.append(text)

    def check(self, name: str, ok: bool, detail: str = "") -> None:
        self.data.setdefault("checks", {})[name] = ok
        self.line(f"{'PASS' if ok else 'FAIL'}  {name}{'  ' + detail if detail else ''}")
        if not ok:
            self.failures.append(name)

    def save(self) -> None:
        if self.out is not None:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "gpu_check.txt").write_text("\n".join(self.lines) + "\n", encoding="utf-8")
            (self.out / "gpu_check.json").write_text(json.dumps(self.data, indent=2) + "\n", encoding="utf-8")


def build_experts(shapes: Shapes, device: torch.device, dtype: torch.dtype, seed: int = 0):
    """Random experts of the given shapes: a dense stack, its NVFP4 quantisation (done in torch,
    per matrix, as `kernels.nvfp4.quantize_nvfp4` would for a BF16 checkpoint) and the triples."""
    from kernels.moe import DenseExperts, NVFP4Experts
    from kernels.nvfp4 import quantize_nvfp4

    gen = torch.Generator(device=device).manual_seed(seed)
    e, d, i = shapes.experts, shapes.hidden, shapes.inter
    gate_up = (torch.randn(e, 2 * i, d, generator=gen, device=device) * 0.02).to(dtype)
    down = (torch.randn(e, d, i, generator=gen, device=device) * 0.02).to(dtype)
    triples = [
        (quantize_nvfp4(gate_up[x, :i]), quantize_nvfp4(gate_up[x, i:]), quantize_nvfp4(down[x]))
        for x in range(e)
    ]
    return DenseExperts(gate_up, down), NVFP4Experts.from_triples(triples), triples


def route(tokens: int, shapes: Shapes, device: torch.device, seed: int):
    gen = torch.Generator(device=device).manual_seed(seed)
    probs = torch.softmax(torch.randn(tokens, shapes.experts, generator=gen, device=device), dim=-1)
    weights, index = torch.topk(probs, shapes.top_k)
    return weights / weights.sum(-1, keepdim=True), index


def check_device_path(
    report: Report, shapes: Shapes, device: torch.device, dtype: torch.dtype, stacks
) -> None:
    """No host syncs, then a CUDA graph of routing + experts + sampler statistics."""
    from kernels.denoiser_statistics import denoiser_statistics
    from kernels.moe import fused_moe

    dense, nvfp4 = stacks
    tokens = shapes.canvases[0]
    gen = torch.Generator(device=device).manual_seed(1)
    x = torch.randn(tokens, shapes.hidden, generator=gen, device=device).to(dtype)
    router_logits = torch.randn(tokens, shapes.experts, generator=gen, device=device)
    logits = (torch.randn(tokens, shapes.vocab, generator=gen, device=device) * 5).to(dtype)
    uniform = torch.rand(tokens, generator=gen, device=device)

    def step() -> tuple[torch.Tensor, ...]:
        probs = torch.softmax(router_logits, dim=-1)
        weights, index = torch.topk(probs, shapes.top_k)
        weights = weights / weights.sum(-1, keepdim=True)
        y = fused_moe(x, index, weights, nvfp4, backend="triton")
        y = y + fused_moe(x, index, weights, dense, backend="triton")
        stats = denoiser_statistics(logits, uniform, 0.6, probs_dtype=dtype, backend="triton")
        return y, stats.probs, stats.entropy, stats.sample

    eager = step()
    if device.type != "cuda":
        report.line("skip  no host syncs / CUDA graph: CUDA only (the routing code ran above on the CPU)")
        return
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
        ok, detail = True, ""
    except RuntimeError as error:
        ok, detail = False, str(error).splitlines()[0]
    finally:
        torch.cuda.set_sync_debug_mode(0)
    report.check("no host syncs in routing + fused MoE + sampler statistics", ok, detail)
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured = step()
        graph.replay()
        torch.cuda.synchronize()
        same = all(torch.equal(a, b) for a, b in zip(captured, eager, strict=True))
        report.check("CUDA graph replay equals the eager step", same)
        report.data["graph_replay_ms"] = timed(graph.replay, device, 10)
        report.line(f"      graph replay of that step: {report.data['graph_replay_ms']:.3f} ms")
    except RuntimeError as error:
        report.check("CUDA graph capture", False, str(error).splitlines()[0])


def moe_timings(
    report: Report,
    shapes: Shapes,
    device: torch.device,
    dtype: torch.dtype,
    stacks,
    triples,
    bandwidth,
    repeats,
):
    from kernels.moe import fused_moe, moe_grouped, moe_reference

    dense, nvfp4 = stacks

    def nvfp4_expert(e: int):  # what Experts.expert_weights does today for NVFP4 experts
        gate, up, down = triples[e]
        return torch.cat([gate.dequantize(dtype), up.dequantize(dtype)]), down.dequantize(dtype)

    def dense_expert(e: int):
        return dense.gate_up[e], dense.down[e]

    results = {}
    for tokens in shapes.canvases:
        weights, index = route(tokens, shapes, device, seed=tokens)
        x = (torch.randn(tokens, shapes.hidden, device=device) * 1.0).to(dtype)
        for name, stack, engine_now in (
            ("nvfp4", nvfp4, partial(moe_grouped, x, index, weights, nvfp4_expert)),
            (
                "bf16",
                dense,
                partial(moe_grouped, x, index, weights, dense_expert, stacked=(dense.gate_up, dense.down)),
            ),
        ):
            got = fused_moe(x, index, weights, stack, backend="triton").float()
            exact = moe_reference(
                x.float(),
                index,
                weights,
                lambda e, s=stack: tuple(
                    t[0].float() for t in s.dense(torch.tensor([e], device=device), torch.float32)
                ),
            )
            error = ((got - exact).norm() / exact.norm().clamp(min=1e-12)).item()
            kernel_ms = timed(partial(fused_moe, x, index, weights, stack, backend="triton"), device, repeats)
            engine_ms = timed(engine_now, device, max(1, repeats // 3))
            weight_bytes = (
                stack.nbytes()
                if name == "nvfp4"
                else (dense.gate_up.numel() + dense.down.numel()) * dense.gate_up.element_size()
            )
            # The floor reads each routed expert once: all 128 for a 256-token canvas (performance.md 5.2).
            touched = int(index.unique().numel()) / shapes.experts
            floor_ms = touched * weight_bytes / (bandwidth * 1e12) * 1000 if bandwidth else None
            results[f"{name}_{tokens}"] = dict(
                kernel_ms=kernel_ms, engine_ms=engine_ms, floor_ms=floor_ms, rel_error=error
            )
            read_mb = touched * weight_bytes / 1e6
            floor = f", floor {floor_ms:.3f} ms ({read_mb:.0f} MB at {bandwidth} TB/s)" if floor_ms else ""
            report.line(
                f"      MoE layer {name:<5} {tokens:>4} tokens: Triton {kernel_ms:8.3f} ms, engine now {engine_ms:8.3f} ms"
                f"{floor}; rel. error vs fp32 reference {error:.2e} ({touched:.0%} of experts routed)"
            )
            report.check(f"fused MoE {name} {tokens} tokens within 2% of the fp32 reference", error < 0.02)
    report.data["moe"] = results
    return results


def vocabulary_and_attention(
    report: Report, shapes: Shapes, device: torch.device, dtype: torch.dtype, bandwidth, repeats
):
    from kernels.attention import attention
    from kernels.denoiser_statistics import denoiser_statistics, denoiser_statistics_reference

    parts: dict[str, dict[int, float]] = {}
    embedding = (torch.randn(shapes.vocab, shapes.hidden, device=device) * 0.02).to(dtype)
    for tokens in shapes.canvases:
        hidden = torch.randn(tokens, shapes.hidden, device=device).to(dtype)
        logits = hidden @ embedding.T
        uniform = torch.rand(tokens, device=device)
        fused = partial(denoiser_statistics, logits, uniform, 0.6, probs_dtype=dtype, backend="triton")
        stats_ms = timed(fused, device, repeats)
        torch_ms = timed(partial(denoiser_statistics_reference, logits, uniform, 0.6), device, repeats)
        got = fused()
        ref = denoiser_statistics_reference(logits, uniform, 0.6)
        report.check(
            f"sampler statistics {tokens} rows agree with the reference",
            bool(torch.allclose(got.entropy, ref.entropy, atol=1e-3))
            and bool(torch.equal(got.argmax, ref.argmax)),
        )
        projection_ms = timed(lambda h=hidden: h @ embedding.T, device, repeats)
        probs = got.probs
        soft_ms = timed(lambda p=probs: p @ embedding, device, repeats)
        elements = tokens * shapes.vocab * logits.element_size()
        floor = f" (floor {3 * elements / (bandwidth * 1e12) * 1000:.3f} ms)" if bandwidth else ""
        report.line(
            f"      {tokens:>4} rows x {shapes.vocab} vocab: statistics kernel {stats_ms:.3f} ms{floor}, torch {torch_ms:.3f} ms; "
            f"vocabulary projection {projection_ms:.3f} ms, self-conditioning product {soft_ms:.3f} ms"
        )
        keys = shapes.prompt + tokens

        def layer_attention(kv_heads: int, head_dim: int, t=tokens, k=keys) -> Callable[[], object]:
            q = torch.randn(1, shapes.heads, t, head_dim, device=device).to(dtype)
            kv = torch.randn(1, kv_heads, k, head_dim, device=device).to(dtype)
            return lambda: attention(q, kv, kv, None)

        sliding_ms = timed(
            layer_attention(shapes.sliding_kv_heads, shapes.sliding_head_dim, k=min(keys, 1023 + tokens)),
            device,
            repeats,
        )
        full_ms = timed(layer_attention(shapes.full_kv_heads, shapes.full_head_dim), device, repeats)
        report.line(
            f"      attention per layer, prompt {shapes.prompt}: sliding {sliding_ms:.3f} ms, full {full_ms:.3f} ms"
        )
        parts[tokens] = dict(
            sampler=stats_ms,
            vocabulary=projection_ms + soft_ms,
            attention=shapes.sliding_layers * sliding_ms + shapes.full_layers * full_ms,
        )
    report.data["parts"] = parts
    return parts


# GPU generations the kernels must compile for: Ampere, Ada (RTX 4090), Hopper (H100/H200).
COMPILE_TARGETS = (80, 89, 90)


def compile_kernels(report: Report, capabilities: tuple[int, ...] = COMPILE_TARGETS) -> None:
    """Compile every kernel variant to a cubin with Triton's own compiler and ptxas (no GPU needed),
    which catches what the interpreter lets through (globals, types, shapes of tl.dot)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from kernels import denoiser_statistics_triton, moe_triton

    def signature(fn, pointers: dict[str, str], constants: dict, floats: tuple[str, ...] = ()) -> dict:
        return {
            name: "constexpr"
            if name in constants
            else pointers.get(name, "fp32" if name in floats else "i32")
            for name in fn.arg_names
        }

    variants = []
    for nvfp4 in (True, False):
        weight = "*u8" if nvfp4 else "*bf16"
        common = dict(
            slot_ids_ptr="*i32",
            block_expert_ptr="*i32",
            used_ptr="*i32",
            w_ptr=weight,
            s_ptr="*u8" if nvfp4 else "*bf16",
            g_ptr="*fp32",
        )
        tiles = dict(NVFP4=nvfp4, BLOCK_M=16, BLOCK_N=64, BLOCK_K=64)
        variants.append(
            (moe_triton._gate_up_kernel, dict(common, x_ptr="*bf16", h_ptr="*bf16"), dict(tiles, TOP_K=8), ())
        )
        variants.append(
            (
                moe_triton._down_kernel,
                dict(common, h_ptr="*bf16", router_ptr="*fp32", out_ptr="*fp32"),
                tiles,
                (),
            )
        )
    stats_pointers = dict(
        logits_ptr="*bf16",
        uniform_ptr="*fp32",
        probs_ptr="*bf16",
        entropy_ptr="*fp32",
        argmax_ptr="*i64",
        sample_ptr="*i64",
    )
    variants.append(
        (
            denoiser_statistics_triton._denoiser_statistics_kernel,
            stats_pointers,
            dict(HAS_SOFTCAP=True, BLOCK_V=1024),
            ("softcap", "inv_temperature"),
        )
    )
    for capability in capabilities:
        for fn, pointers, constants, floats in variants:
            name = f"{fn.__name__} sm_{capability} {constants}"
            if type(fn).__name__ != "JITFunction":
                report.check(f"compile {name}", False, "TRITON_INTERPRET is set: kernels are interpreted")
                continue
            try:
                source = ASTSource(
                    fn=fn, signature=signature(fn, pointers, constants, floats), constexprs=constants
                )
                compiled = triton.compile(source, target=GPUTarget("cuda", capability, 32))
                ok, detail = "cubin" in compiled.asm, ""
            except Exception as error:  # a compile error of any kind is the finding
                ok, detail = False, str(error).splitlines()[-1][:200]
            report.check(f"compile {name}", ok, detail)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dry-run", action="store_true", help="tiny shapes on the CPU under Triton's interpreter"
    )
    parser.add_argument("--out", type=Path, default=None, help="folder for gpu_check.txt and gpu_check.json")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument(
        "--compile-only", action="store_true", help="compile the kernels for sm_80/89/90 (no GPU needed)"
    )
    args = parser.parse_args(argv)
    if args.compile_only:
        report = Report(args.out)
        compile_kernels(report)
        report.line(
            f"{len(report.failures)} kernel(s) failed to compile"
            if report.failures
            else "all kernels compile"
        )
        return 1 if report.failures else 0
    if args.dry_run:
        os.environ.setdefault("TRITON_INTERPRET", "1")
    elif not torch.cuda.is_available():
        print("no CUDA device: run with --dry-run for the CPU check", file=sys.stderr)
        return 2
    import triton

    device = torch.device("cpu" if args.dry_run else "cuda")
    # bf16 tl.dot is wrong under the interpreter (triton #11584): fp16 there, bf16 on a GPU.
    dtype = torch.float16 if args.dry_run else torch.bfloat16
    shapes = TINY if args.dry_run else REAL
    repeats = 1 if args.dry_run else args.repeats
    report = Report(args.out)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (Triton interpreter)"
    from engine.bench import GPU_BANDWIDTH_TBS

    bandwidth = next((v for k, v in GPU_BANDWIDTH_TBS.items() if k in name), None)
    report.data.update(
        device=name,
        torch=torch.__version__,
        triton=triton.__version__,
        shapes=shapes.__dict__,
        dtype=str(dtype),
    )
    report.line(
        f"device {name}, torch {torch.__version__}, triton {triton.__version__}, {dtype}, shapes {shapes}"
    )
    if args.dry_run:
        report.line("dry run: every piece at tiny shapes; the times below measure nothing")
    torch.manual_seed(0)
    dense, nvfp4, triples = build_experts(shapes, device, dtype)
    check_device_path(report, shapes, device, dtype, (dense, nvfp4))
    moe = moe_timings(report, shapes, device, dtype, (dense, nvfp4), triples, bandwidth, repeats)
    parts = vocabulary_and_attention(report, shapes, device, dtype, bandwidth, repeats)
    for tokens in shapes.canvases:
        for kind in ("nvfp4", "bf16"):
            experts_ms = shapes.layers * moe[f"{kind}_{tokens}"]["kernel_ms"]
            split = {"experts": experts_ms, **parts[tokens]}
            total = sum(split.values())
            report.data.setdefault("projected_step_ms", {})[f"{kind}_{tokens}"] = split
            report.line(
                f"      projected step, {kind} experts, {tokens}-token canvas (sum of parts, no dense MLP/norms): "
                + ", ".join(f"{k} {v:.2f}" for k, v in split.items())
                + f" = {total:.2f} ms"
            )
    report.data["failures"] = report.failures
    report.save()
    report.line(f"{len(report.failures)} check(s) failed" if report.failures else "all checks passed")
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
