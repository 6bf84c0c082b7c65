"""Argument types with their accepted range, so an out-of-range number is an argument
error (one line, status 2) before any work starts."""

from __future__ import annotations

import argparse

__all__ = ["int_in", "bits_in", "SEED", "SEED_MAX", "MAX_LAYER_WEIGHTS"]

#: Seeds: what every generator seeded from one (torch, numpy, random) accepts.
SEED_MAX = 2 ** 63 - 1
#: Weights of a built-in layer (``--n`` x ``--k``): 2**27 (512 MiB as float32).
MAX_LAYER_WEIGHTS = 2 ** 27


def int_in(lo: int, hi: int):
    """An ``argparse`` type: a decimal integer in ``lo .. hi``."""

    def parse(text: str) -> int:
        try:
            v = int(text, 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer "
                                             f"(accepted: {lo} .. {hi})") from None
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"{v} is outside {lo} .. {hi}")
        return v

    parse.__name__ = "integer"
    return parse


def bits_in(lo: float, hi: float):
    """An ``argparse`` type: a finite decimal number in ``lo .. hi``."""

    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number "
                                             f"(accepted: {lo:g} .. {hi:g})") from None
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"{text} is outside {lo:g} .. {hi:g}")
        return v

    parse.__name__ = "number"
    return parse


#: The type of every ``--seed``.
SEED = int_in(0, SEED_MAX)
