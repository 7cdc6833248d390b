"""The `dgemma` command line.

Each subcommand lives in the module that owns its work and registers itself through a
`register(subparsers)` function that adds a parser and `set_defaults(func=handler)`; a handler
takes the parsed arguments and returns an exit code. Engine errors are shown as their message and
hint, never as a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from engine.errors import EngineError

# Modules with a `register(subparsers)` function, in the order `dgemma --help` lists them.
SUBCOMMAND_MODULES = [
    "engine.commands",
    "engine.bench",
    "engine.training.commands",
    "engine.evaluation.commands",
    "engine.server.commands",
    "dgemma_lsp.suggest",
    "dgemma_lsp.bench",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dgemma",
        description="DiffusionGemma engine: generate, infill, serve, train and evaluate.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
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
