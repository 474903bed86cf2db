"""Training precision: bf16 autocast for the network's forward and backward, float32 master
weights, EMA and optimiser state (the parameters never leave float32; autocast only casts
the inputs of matmuls and convolutions to bf16 and their outputs back where needed).

Measured on this project's CPUs (AVX-512 BF16; ``benchmarks/train_throughput.py``): a bf16
step takes about 0.55x the float32 time. Operator solves, pivots and conditioning are
computed outside autocast in float32 (see :mod:`exactpost.training.objectives`).
"""

from __future__ import annotations

import contextlib
from typing import ContextManager

import torch

PRECISIONS = ("auto", "bf16", "fp32")


def bf16_supported(device: torch.device) -> bool:
    """Whether ``device`` runs bf16 matmuls natively (CUDA: compute capability >= 8.0; CPU:
    AVX-512 BF16 or AMX through oneDNN). Elsewhere bf16 is emulated and slower than fp32."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        check = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
        amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
        return bool((check is not None and check()) or (amx is not None and amx()))
    return False


def resolve_precision(spec: str, device: torch.device) -> str:
    """``"bf16"`` or ``"fp32"`` for a ``--precision`` value: ``auto`` picks bf16 where
    :func:`bf16_supported`; an explicit ``bf16`` is honoured everywhere (emulated where
    unsupported: correct, only slower)."""
    spec = (spec or "auto").strip().lower()
    if spec not in PRECISIONS:
        raise ValueError(f"precision {spec!r} is not one of {', '.join(PRECISIONS)}")
    if spec == "auto":
        return "bf16" if bf16_supported(device) else "fp32"
    return spec


def autocast_for(precision: str, device: torch.device) -> ContextManager:
    """The context the network's forward (and so its backward) runs in: bf16 autocast on
    ``device`` for ``"bf16"``, nothing for ``"fp32"``."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
