"""`dgemma bench-serve`: N concurrent completion requests against the HTTP server; prints throughput
and p50/p95 latency with batching on and off. Figures are printed, never asserted.

Without `--url` it starts `dgemma serve` twice on a free loopback port (once with a batch window,
once with `--no-batching`), each in its own process, and measures both the same way. With `--url`
it measures the server that is already running there, as it is configured.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field

import httpx

PROMPTS = [
    "def fibonacci(n):",
    "import os\nimport sys\n\ndef main():",
    "class Stack:\n    def __init__(self):",
    "for index, item in enumerate(items):",
    "def read_lines(path):\n    with open(path) as handle:",
    "function add(a, b) {",
    "fn main() {",
    "SELECT name, count(*) FROM users",
]


@dataclass
class Run:
    label: str
    latencies: list[float] = field(default_factory=list)
    tokens: int = 0
    batch_sizes: list[int] = field(default_factory=list)
    errors: int = 0
    seconds: float = 0.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def load(url: str, args: argparse.Namespace, label: str) -> Run:
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    run = Run(label)
    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=600, limits=limits) as client:

        async def one(index: int) -> None:
            body = {
                "prompt": PROMPTS[index % len(PROMPTS)],
                "max_tokens": args.max_tokens,
                "diffusion_steps": args.steps,
            }
            started = time.perf_counter()
            response = await client.post("/completions", json=body)
            elapsed = time.perf_counter() - started
            if response.status_code != 200:
                run.errors += 1
                return
            data = response.json()
            run.latencies.append(elapsed)
            run.tokens += data["usage"]["completion_tokens"]
            run.batch_sizes.extend(d["batch_size"] for d in data.get("diffusion", []))

        for index in range(args.warmup):
            await one(index)
        run.latencies.clear()
        run.tokens, run.batch_sizes, run.errors = 0, [], 0
        semaphore = asyncio.Semaphore(args.concurrency)

        async def limited(index: int) -> None:
            async with semaphore:
                await one(index)

        started = time.perf_counter()
        await asyncio.gather(*(limited(i) for i in range(args.requests)))
        run.seconds = time.perf_counter() - started
    return run


def start_server(args: argparse.Namespace, batching: bool) -> tuple[subprocess.Popen, str]:
    command = [sys.executable, "-m", "engine.cli", "serve", "--port", "0", "--host", "127.0.0.1"]
    if args.model:
        command += ["--model", args.model]
    command += ["--device", args.device, "--dtype", args.dtype]
    command += ["--max-batch-size", str(args.max_batch_size)]
    command += ["--batch-window-ms", str(args.batch_window_ms)] if batching else ["--no-batching"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    line = process.stdout.readline()
    found = re.search(r"(http://\S+/v1)", line)
    if not found:
        process.kill()
        raise SystemExit(f"dgemma serve did not start: {line!r}")
    return process, found.group(1)


def wait_healthy(url: str, timeout: float = 120.0) -> None:
    root = url.removesuffix("/v1")
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if httpx.get(f"{root}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"the server at {url} did not become healthy in {timeout:g} s")


def conditions() -> str:
    load1, load5, _ = os.getloadavg()
    return f"{os.cpu_count()} CPUs, load average {load1:.2f} (1 min) / {load5:.2f} (5 min) before the run"


def print_table(runs: list[Run], args: argparse.Namespace) -> None:
    print(
        f"{args.requests} requests, {args.concurrency} concurrent, max_tokens {args.max_tokens}, "
        f"diffusion_steps {args.steps}"
    )
    header = (
        f"{'server':<22}{'req/s':>8}{'tok/s':>9}{'p50 ms':>9}{'p95 ms':>9}{'mean batch':>12}{'errors':>8}"
    )
    print(header)
    print("-" * len(header))
    for run in runs:
        ms = [x * 1000 for x in run.latencies]
        batch = statistics.fmean(run.batch_sizes) if run.batch_sizes else float("nan")
        print(
            f"{run.label:<22}{len(run.latencies) / run.seconds:>8.2f}{run.tokens / run.seconds:>9.1f}"
            f"{percentile(ms, 0.5):>9.0f}{percentile(ms, 0.95):>9.0f}{batch:>12.2f}{run.errors:>8}"
        )


def cmd_bench_serve(args: argparse.Namespace) -> int:
    print(conditions())
    runs: list[Run] = []
    if args.url:
        url = args.url.rstrip("/")
        url = url if url.endswith("/v1") else url + "/v1"
        runs.append(asyncio.run(load(url, args, "as configured")))
    else:
        for batching in (True, False):
            process, url = start_server(args, batching)
            try:
                wait_healthy(url)
                label = f"batching {args.batch_window_ms:g} ms" if batching else "no batching"
                runs.append(asyncio.run(load(url, args, label)))
            finally:
                process.terminate()
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
    print_table(runs, args)
    print(conditions().replace("before", "after"))
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "bench-serve", help="load the HTTP server with concurrent completions: throughput, p50/p95 latency"
    )
    p.add_argument("--url", default=None, help="measure a running server (e.g. http://127.0.0.1:8080/v1)")
    p.add_argument(
        "--model", default=None, help="model for the servers this command starts (default: embedded)"
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--api-key", default=os.environ.get("DGEMMA_API_KEY"))
    p.add_argument("--requests", type=int, default=32, help="requests in all (default 32)")
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight at once (default 8)")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--steps", type=int, default=8, help="diffusion_steps of every request (default 8)")
    p.add_argument("--batch-window-ms", type=float, default=10.0)
    p.add_argument("--max-batch-size", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2, help="sequential requests before timing (default 2)")
    p.set_defaults(func=cmd_bench_serve)
