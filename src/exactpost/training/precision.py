"""Training precision: bf16 autocast for the network's forward and backward, float32 master
weights, EMA and optimiser state (the parameters never leave float32; autocast only casts
the inputs of matmuls and convolutions to bf16 and their outputs back where needed).

``auto`` picks bf16 only where it is expected to be faster: CUDA GPUs with native bf16, and
CPUs with AMX tiles. On this project's development CPUs (AVX-512 BF16 without AMX, torch
2.13) bf16 autocast measured *no* faster than float32 (``benchmarks/train_precision.md``:
ratio about 1.0-1.1 at one thread, and bf16 matmuls about 2x slower than float32), so
``auto`` keeps float32 there; ``--precision bf16`` still forces it. Operator solves, pivots
and conditioning are computed outside autocast in float32 (see
:mod:`exactpost.training.objectives`).
"""

from __future__ import annotations

import contextlib
from typing import ContextManager

import torch

PRECISIONS = ("auto", "bf16", "fp32")


def bf16_is_fast(device: torch.device) -> bool:
    """Whether bf16 autocast is expected to beat float32 on ``device``: a CUDA GPU with native
    bf16 (compute capability >= 8.0), or a CPU with AMX tiles (oneDNN's bf16 matmuls).
    AVX-512 BF16 alone was measured no faster than float32 here (module docstring)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
        return bool(amx is not None and amx())
    return False


def resolve_precision(spec: str, device: torch.device) -> str:
    """``"bf16"`` or ``"fp32"`` for a ``--precision`` value: ``auto`` picks bf16 where
    :func:`bf16_is_fast`; an explicit ``bf16`` is honoured everywhere (correct, only slower
    where it is not fast)."""
    spec = (spec or "auto").strip().lower()
    if spec not in PRECISIONS:
        raise ValueError(f"precision {spec!r} is not one of {', '.join(PRECISIONS)}")
    if spec == "auto":
        return "bf16" if bf16_is_fast(device) else "fp32"
    return spec


def autocast_for(precision: str, device: torch.device) -> ContextManager:
    """The context the network's forward (and so its backward) runs in: bf16 autocast on
    ``device`` for ``"bf16"``, nothing for ``"fp32"``."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
