"""``nnunet_blob`` command line: one entry point, one sub-command per feature.

Each feature package exposes ``add_parser(subparsers)`` which registers its sub-command and sets ``func`` (called
with the parsed namespace, returns an exit code or None); :func:`nnunet_blob.cli_errors.reports` turns a
sub-command's expected errors into one line on stderr.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# sub-command modules, in the order shown by --help; each defines add_parser(subparsers)
_COMMAND_MODULES = (
    "nnunet_blob.preprocessing.cli",
    "nnunet_blob.evaluation.cli",
    "nnunet_blob.postprocessing.cli",
    "nnunet_blob.trainers.cli",
    "nnunet_blob.border_core.cli",
    "nnunet_blob.benchmark.cli",
    "nnunet_blob.demo.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nnunet_blob",
        description="Instance-imbalance aware training and evaluation for nnU-Net v2.",
    )
    from nnunet_blob import __version__

    parser.add_argument("--version", action="version", version=f"nnunet_blob {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in _COMMAND_MODULES:
        importlib.import_module(module_name).add_parser(subparsers)
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
