"""The `vizier-omnipred` command line.

Each subcommand lives next to the code it drives; a module in `_COMMAND_MODULES` exposes
`add_cli(subparsers)` which registers its parser and sets `func(args) -> int`.
Modules are imported only to build the parser, so `--help` stays usable even when an
optional extra (scikit-learn for benchmarks) is missing: that subcommand then reports it.
"""

from __future__ import annotations

import argparse
import importlib
import sys

_COMMAND_MODULES = (
    "vizier_omnipred.demo",
    "vizier_omnipred.pretraining",
    "vizier_omnipred.corpus.cli",
    "vizier_omnipred.bench.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vizier-omnipred",
        description="OmniPred language-model regressor and designer for Open Source Vizier.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name and e.name.startswith("vizier_omnipred"):
                continue  # subcommand not built yet
            raise
        module.add_cli(subparsers)
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
