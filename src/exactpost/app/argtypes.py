"""argparse value types that check ranges at the boundary (used by every ``exactpost``
subcommand, the benchmarks and the encoder trainer).

Each factory returns a callable ``str -> value`` that raises ``argparse.ArgumentTypeError``
with a message written to follow the option name, e.g. ``--samples`` + ``"must be >= 2
(the std needs two samples), got '1'"``. Non-finite floats (nan, inf) are refused unless
``allow_inf`` says otherwise; integers must be written as integers (``'1.5'`` and ``'1e3'``
are refused).
"""

from __future__ import annotations

import argparse
import math
from typing import Callable, Optional, Sequence

#: largest seed accepted anywhere (torch generators take 64-bit seeds; derived seeds such as
#: ``seed * 1000 + task`` must stay below 2**64)
MAX_SEED = 2**32 - 1


def _why(why: str) -> str:
    return f" ({why})" if why else ""


def int_range(lo: Optional[int] = None, hi: Optional[int] = None, why: str = "") -> Callable[[str], int]:
    """An integer ``lo <= v <= hi`` (either bound may be None)."""

    def parse(text: str) -> int:
        try:
            value = int(str(text).strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer{_why(why)}, got {text!r}") from None
        if lo is not None and hi is not None and not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"must be in {lo}..{hi}{_why(why)}, got {text!r}")
        if lo is not None and value < lo:
            raise argparse.ArgumentTypeError(f"must be >= {lo}{_why(why)}, got {text!r}")
        if hi is not None and value > hi:
            raise argparse.ArgumentTypeError(f"must be <= {hi}{_why(why)}, got {text!r}")
        return value

    parse.__name__ = "integer"  # argparse names the type in its own messages
    return parse


def float_range(lo: Optional[float] = None, hi: Optional[float] = None, *, lo_open: bool = False,
                allow_inf: bool = False, why: str = "") -> Callable[[str], float]:
    """A finite float ``lo <= v <= hi`` (``lo < v`` with ``lo_open``); ``allow_inf`` also
    accepts +inf (e.g. 'no limit')."""

    bounds = " and ".join(b for b in (None if lo is None else f"{'>' if lo_open else '>='} {lo:g}",
                                      None if hi is None else f"<= {hi:g}") if b)
    wanted = f"a {'' if allow_inf else 'finite '}number{' ' + bounds if bounds else ''}{_why(why)}"

    def parse(text: str) -> float:
        try:
            value = float(str(text).strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {text!r}") from None
        bad_inf = math.isinf(value) and not (allow_inf and value > 0)
        if math.isnan(value) or bad_inf or (lo is not None and (value <= lo if lo_open else value < lo)) \
                or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {text!r}")
        return value

    parse.__name__ = "number"
    return parse


def seed() -> Callable[[str], int]:
    """A random seed: an integer in 0..MAX_SEED."""
    return int_range(0, MAX_SEED, why="a random seed")


def int_list(lo: Optional[int] = None, why: str = "") -> Callable[[str], list[int]]:
    """Comma-separated integers, each >= ``lo``, at least one: ``'8,80'`` -> ``[8, 80]``."""
    one = int_range(lo, None, why)

    def parse(text: str) -> list[int]:
        parts = [p for p in str(text).split(",") if p.strip()]
        if not parts:
            raise argparse.ArgumentTypeError(f"must be one or more comma-separated integers, got {text!r}")
        return [one(p) for p in parts]

    parse.__name__ = "integer list"
    return parse


def choice(options: Sequence[str]) -> Callable[[str], str]:
    """One of ``options`` (case-insensitive; returned as listed)."""
    lookup = {o.lower(): o for o in options}

    def parse(text: str) -> str:
        value = lookup.get(str(text).strip().lower())
        if value is None:
            raise argparse.ArgumentTypeError(f"must be one of {', '.join(options)}, got {text!r}")
        return value

    parse.__name__ = "choice"
    return parse


__all__ = ["MAX_SEED", "choice", "float_range", "int_list", "int_range", "seed"]
