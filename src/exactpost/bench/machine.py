"""Which CPU a benchmark ran on, so that timings are compared only within one machine.

These machines change from session to session (seen: an AVX-512 Intel CPU and an AVX2-only AMD
EPYC: the same 100-image baseline cells took 2.1-2.7x as long on the second), and a resumable benchmark's cells can be measured in
different sessions; a cost ratio is only meaningful against a reference timed on the same CPU.
"""

from __future__ import annotations

import platform
import re
from pathlib import Path

import torch


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what :mod:`platform` says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_label() -> str:
    """The CPU's model name and the vector instructions torch uses on it, e.g.
    ``"AMD EPYC, AVX2"``: two runs with the same label ran at comparable speed per thread."""
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except (AttributeError, RuntimeError):  # older torch
        capability = "unknown"
    return f"{cpu_name()}, {capability}"


def slug(label: str) -> str:
    """``label`` as a short key fragment: lower case, runs of other characters as '-'."""
    return re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")
