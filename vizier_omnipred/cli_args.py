"""Argument types shared by the command lines (`vizier-omnipred ...`, `bench ...`).

A bad value is refused by argparse with one line naming the option, before any work
starts: `--threads -1` used to reach `torch.set_num_threads` and `--device banana` the
first tensor, each as a traceback. torch is imported only to check a device other than
the CPU, so building a parser stays cheap.
"""

from __future__ import annotations

import argparse


def _int_at_least(text: str, low: int) -> int:
    value = int(text)
    if value < low:
        raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
    return value


# Named functions, not partials: argparse names the type in its "invalid ... value" message.
def positive_int(text: str) -> int:
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    return _int_at_least(text, 0)


def torch_threads(text: str) -> int:
    """torch's intra-op threads: >= 1, or 0 for torch's default."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 1, or 0 for torch's default; got {value}")
    return value


def torch_device(text: str) -> str:
    """A device this machine has (`model.resolve_device`), kept as the string given."""
    if text == "cpu":
        return text
    from vizier_omnipred.model import resolve_device

    try:
        resolve_device(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text
