"""The ``prodimg`` command.

Each subcommand lives in its own module, which exposes ``add_parser(subparsers)``; the parser it
adds sets ``func`` (called with the parsed arguments, returns an exit code). Modules are listed in
``SUBCOMMAND_MODULES`` and imported lazily so that ``prodimg --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMAND_MODULES = [
    "prodimg.commands.generate",
    "prodimg.commands.serve",
    "prodimg.commands.keys",
    "prodimg.commands.build_dataset",
    "prodimg.commands.export",
    "prodimg.commands.eval",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prodimg", description="Generate e-commerce product images from text descriptions."
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for module_name in SUBCOMMAND_MODULES:
        importlib.import_module(module_name).add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, OSError, TypeError) as err:  # OSError: unusable paths, an unreachable Hub
        print(f"prodimg {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
