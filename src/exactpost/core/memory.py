"""Refusing requests whose memory need is clearly beyond the machine, before any work.

A request such as ``exactpost sample --n 100000000`` would otherwise run for a while and
then die in an allocation failure (a RuntimeError traceback, or the kernel's OOM killer).
Callers estimate a *lower bound* of what the request must hold at once (shape x count x
bytes per value x copies) and call :func:`check_fits`, which raises
:class:`MemoryLimitError` (a ``ValueError`` with a one-line message) when that bound exceeds
the memory available now. Being a lower bound, the check never refuses a request that would
have fitted; it only turns the hopeless ones into a clear error.
"""

from __future__ import annotations

import os
from typing import Optional


class MemoryLimitError(ValueError):
    """A request needs more memory than the machine has available (one-line message)."""


def available_bytes() -> Optional[int]:
    """Memory available to new allocations now: ``MemAvailable`` of ``/proc/meminfo`` on
    Linux, else free physical pages from ``os.sysconf``; None when neither can be read."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def human_bytes(n: float) -> str:
    """``1234567`` -> ``'1.2 MB'`` (powers of 1000)."""
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def check_fits(need: int, what: str, fix: str, available: Optional[int] = None) -> None:
    """Raise :class:`MemoryLimitError` when ``need`` bytes (a lower bound for ``what``)
    exceed the ``available`` bytes (default :func:`available_bytes`; unknown: no check).
    ``fix`` says how to ask for less, e.g. ``"ask for fewer samples (--n)"``."""
    have = available_bytes() if available is None else available
    if have is not None and need > have:
        raise MemoryLimitError(f"{what} needs at least {human_bytes(need)} of memory but {human_bytes(have)} is "
                               f"available; {fix}")


__all__ = ["MemoryLimitError", "available_bytes", "check_fits", "human_bytes"]
