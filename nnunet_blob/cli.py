"""``nnunet_blob`` command line: one entry point, one sub-command per feature.

Each feature package exposes ``add_parser(subparsers)`` which registers its sub-command and sets
``func`` (called with the parsed namespace, returns an exit code or None).
"""
from __future__ import annotations

import argparse
import functools
import importlib
import sys
from collections.abc import Callable

# sub-command modules, in the order shown by --help; each defines add_parser(subparsers)
_COMMAND_MODULES = (
    "nnunet_blob.preprocessing.cli",
    "nnunet_blob.evaluation.cli",
    "nnunet_blob.trainers.cli",
    "nnunet_blob.demo.cli",
)


def reports(*errors: type, command: str) -> Callable:
    """Sub-command decorator: ``errors`` (a user's input or environment, not a bug) end the command with
    ``nnunet_blob COMMAND: error: ...`` on stderr and exit code 1 instead of a traceback."""

    def decorate(func: Callable) -> Callable:
        @functools.wraps(func)
        def run(args):
            try:
                return func(args)
            except errors as e:
                print(f"nnunet_blob {command}: error: {e}", file=sys.stderr)
                return 1

        return run

    return decorate


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nnunet_blob",
        description="Instance-imbalance aware training and evaluation for nnU-Net v2.",
    )
    from nnunet_blob import __version__

    parser.add_argument("--version", action="version", version=f"nnunet_blob {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name == module_name:  # feature not built yet
                continue
            raise
        module.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
