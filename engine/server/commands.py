"""`dgemma serve`: the OpenAI-compatible HTTP server (app.py) on uvicorn, and `dgemma bench-serve`."""

from __future__ import annotations

import argparse
import ipaddress
import os
import socket
import sys

from engine.commands import add_model_options, load_model

API_KEY_ENV = "DGEMMA_API_KEY"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """A listening socket (port 0 = a free one), bound before uvicorn starts so we can print it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY only on sockets that say they are TCP, and
    # without it every JSON answer waits ~40 ms (headers and body are two writes: Nagle + delayed ACK).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def server_config(args: argparse.Namespace, model_source: str):
    from engine.server.app import ServerConfig, served_model_name

    names = args.served_model_name or [served_model_name(model_source)]
    return ServerConfig(
        model_name=names[0],
        model_aliases=tuple(names[1:]),
        api_key=args.api_key or os.environ.get(API_KEY_ENV) or None,
        max_body_bytes=args.max_body_bytes,
        request_timeout_s=args.request_timeout,
        max_tokens_limit=args.max_tokens_limit,
        max_diffusion_steps=args.max_diffusion_steps,
        batching=not args.no_batching,
        batch_window_ms=args.batch_window_ms,
        max_batch_size=args.max_batch_size,
        max_queue=args.max_queue,
    )


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from engine.server.app import create_app

    model = load_model(args)
    config = server_config(args, model.source)
    if not args.no_warmup:
        model.warmup()
    sock = bind(args.host, args.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(
        f"dgemma serve: http://{shown}:{port}/v1 serving "
        f"{', '.join(repr(name) for name in config.served_model_names)} "
        f"(batching {'off' if not config.batching else f'{config.batch_window_ms:g} ms window'}, "
        f"API key {'required' if config.api_key else 'not required'})",
        flush=True,
    )
    if not is_loopback(args.host) and not config.api_key:
        print(
            f"warning: listening on {args.host} without an API key: anyone who can reach this port can "
            f"use the model (set --api-key or {API_KEY_ENV})",
            file=sys.stderr,
            flush=True,
        )
    uvicorn_config = uvicorn.Config(
        create_app(model, config),
        log_level=args.log_level,
        access_log=args.log_level in ("debug", "info"),
        timeout_keep_alive=5,
        timeout_graceful_shutdown=5,
    )
    uvicorn.Server(uvicorn_config).run(sockets=[sock])
    return 0


def add_server_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--served-model-name",
        nargs="+",
        default=None,
        metavar="NAME",
        help="names requests may use; the first is the one responses carry and /v1/models lists first "
        "(default: from --model)",
    )
    p.add_argument(
        "--max-body-bytes", type=int, default=1 << 20, help="larger request bodies get 413 (default 1 MiB)"
    )
    p.add_argument(
        "--request-timeout", type=float, default=300.0, help="seconds one generation may take (default 300)"
    )
    p.add_argument(
        "--max-tokens-limit",
        type=int,
        default=4096,
        help="most tokens one request may ask for (default 4096)",
    )
    p.add_argument(
        "--max-diffusion-steps", type=int, default=256, help="most steps per canvas a request may ask for"
    )
    p.add_argument("--no-batching", action="store_true", help="run every request alone")
    p.add_argument(
        "--batch-window-ms",
        type=float,
        default=10.0,
        help="how long the first request of a batch waits for others (default 10 ms)",
    )
    p.add_argument("--max-batch-size", type=int, default=8, help="requests per canvas batch (default 8)")
    p.add_argument("--max-queue", type=int, default=256, help="waiting requests before 429 (default 256)")


def register(subparsers) -> None:
    p = subparsers.add_parser("serve", help="OpenAI-compatible HTTP server (/v1/completions, /v1/chat/...)")
    add_model_options(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080; 0 = any free port)")
    p.add_argument(
        "--api-key", default=None, help=f"require 'Authorization: Bearer KEY' on /v1 (or set {API_KEY_ENV})"
    )
    add_server_options(p)
    p.add_argument("--no-warmup", action="store_true", help="skip the warm-up request at start")
    p.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=cmd_serve)

    from engine.server.loadtest import register as register_loadtest

    register_loadtest(subparsers)
