"""`dgemma-lsp`: start the language server (stdio by default, or `--tcp HOST:PORT`)."""

from __future__ import annotations

import argparse
import logging
import sys

from dgemma_lsp import __version__


def parse_address(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host, int(port)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dgemma-lsp",
        description="Language server with inline completions and refactor code actions from a diffusion "
        "language model. Settings come from the client (initializationOptions / workspace configuration "
        "section 'dgemma').",
    )
    transport = parser.add_mutually_exclusive_group()
    transport.add_argument("--stdio", action="store_true", help="talk LSP over stdin/stdout (the default)")
    transport.add_argument(
        "--tcp", type=parse_address, metavar="HOST:PORT", help="listen on a TCP address instead"
    )
    parser.add_argument("--log-file", help="write the server's log here (default: stderr)")
    parser.add_argument(
        "--log-level",
        default="WARNING",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="default WARNING",
    )
    parser.add_argument("--version", action="version", version=f"dgemma-lsp {__version__}")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: logging.Handler = (
        logging.FileHandler(args.log_file, encoding="utf-8")
        if args.log_file
        else logging.StreamHandler(sys.stderr)
    )
    logging.basicConfig(
        level=args.log_level, handlers=[handler], format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    # pygls logs every message body at INFO: keep it quiet unless asked for DEBUG.
    logging.getLogger("pygls").setLevel(logging.DEBUG if args.log_level == "DEBUG" else logging.WARNING)

    from dgemma_lsp.server import server

    try:
        if args.tcp:
            host, port = args.tcp
            server.start_tcp(host, port)
        else:
            server.start_io()
    finally:
        server.shutdown_work()
    return 0


if __name__ == "__main__":
    sys.exit(main())
