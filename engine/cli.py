"""The `dgemma` command line.

Each subcommand lives in the module that owns its work and registers itself through a
`register(subparsers)` function that adds a parser and `set_defaults(func=handler)`; a handler
takes the parsed arguments and returns an exit code. Engine errors are shown as their message and
hint, never as a traceback.
"""

from __future__ import annotations

import argparse
import sys

from dgemma_lsp import bench as lsp_bench
from dgemma_lsp import suggest
from engine import bench, commands
from engine.errors import EngineError
from engine.evaluation import commands as evaluation_commands
from engine.server import commands as server_commands
from engine.training import commands as training_commands

# Modules with a `register(subparsers)` function, in the order `dgemma --help` lists them.
SUBCOMMAND_MODULES = [
    commands,
    bench,
    training_commands,
    evaluation_commands,
    server_commands,
    suggest,
    lsp_bench,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dgemma",
        description="DiffusionGemma engine: generate, infill, serve, train and evaluate.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in SUBCOMMAND_MODULES:
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except EngineError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
