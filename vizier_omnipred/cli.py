"""The `vizier-omnipred` command line.

Each subcommand lives next to the code it drives; a module in `_COMMAND_MODULES` exposes
`add_cli(subparsers)` which registers its parser and sets `func(args) -> int`.
Modules are imported only to build the parser, so `--help` stays usable even when an
optional extra (scikit-learn for benchmarks) is missing: that subcommand then reports it.

Bad input (a file that is not a corpus, a damaged checkpoint, a database of another
schema, a setting out of range) ends in one line on stderr and exit status 2, the same as
argparse's own usage errors: users point commands at whatever files they have, and a
Python traceback hides which file is wrong. `--debug` (before or after the subcommand)
shows the traceback instead. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Exit status for bad input, as argparse uses for bad arguments.
EXIT_BAD_INPUT = 2

_COMMAND_MODULES = (
    "vizier_omnipred.demo",
    "vizier_omnipred.pretraining",
    "vizier_omnipred.warm_start",
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
        importlib.import_module(module_name).add_cli(subparsers)
    parser.add_argument("--debug", action="store_true", help="show the Python traceback of an error")
    _accept_debug_after(parser)
    return parser


def _accept_debug_after(parser: argparse.ArgumentParser) -> None:
    """Lets `--debug` also follow a subcommand, at any depth (`bench speed --debug`)."""
    for action in parser._actions:  # argparse has no public way to list subparsers
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
                _accept_debug_after(sub)


def bad_input_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "the input is wrong", each raised with a message naming it.

    Our readers raise `CorpusError`, `CheckpointError`, `TrialTextError` (a ValueError)
    and ValueError for settings; the OS raises OSError for missing or unreadable paths;
    training raises `FitDivergedError` for a learning rate that makes the loss nan.
    """
    from vizier_omnipred.corpus.format import CorpusError

    errors: list[type[BaseException]] = [CorpusError, ValueError, OSError]
    try:  # torch-heavy; only there when the model module imports
        from vizier_omnipred.model import CheckpointError
        from vizier_omnipred.training import FitDivergedError

        errors += [CheckpointError, FitDivergedError]
    except ImportError:
        pass
    return tuple(errors)


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 2000 else text[:2000] + " ..."


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except bad_input_errors() as e:
        if args.debug:
            raise
        print(f"vizier-omnipred {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
