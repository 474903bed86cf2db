"""Shared helpers of the closed-form operator families (private module).

:class:`StructuredOperator` is the base of every family with exact solves: it adds to
:class:`~exactpost.operators.base.LinearOperator` a check that inputs are floating point
(float32 or float64) and a small per-(dtype, device) cache for derived parameters (casted
masks, transfer functions, SVD factors), so stored parameters follow the input's dtype and
device on the fly. Stored parameters must not be mutated in place after construction.
"""

from __future__ import annotations

import math
from typing import Callable, Hashable, Sequence

import torch

from .base import LinearOperator


class StructuredOperator(LinearOperator):
    """A :class:`LinearOperator` whose parameters are cast to the input's dtype/device."""

    def __init__(self) -> None:
        super().__init__()
        self._cache: dict[Hashable, object] = {}

    def check_x(self, x: torch.Tensor, name: str = "x") -> torch.Tensor:
        x = super().check_x(x, name)
        check_floating(x, name)
        return x

    def check_y(self, y: torch.Tensor, name: str = "y") -> torch.Tensor:
        y = super().check_y(y, name)
        check_floating(y, name)
        return y

    def cached(self, key: str, like: torch.Tensor, make: Callable[[], object]) -> object:
        """``make()`` computed once per (key, dtype, device) of ``like``."""
        k = (key, like.dtype, like.device)
        if k not in self._cache:
            self._cache[k] = make()
        return self._cache[k]




def check_floating(t: torch.Tensor, name: str) -> None:
    """ValueError unless ``t`` is a real floating-point tensor."""
    if not t.is_floating_point():
        raise ValueError(
            f"{name} has dtype {t.dtype} but operators work on real floating-point tensors; "
            f"convert it with .float() or .double()"
        )


def as_tensor_param(value, name: str) -> torch.Tensor:
    """A stored parameter: a tensor (ints/bools become float64), finite, non-empty."""
    t = torch.as_tensor(value)
    if t.is_complex():
        raise ValueError(f"{name} must be real, got dtype {t.dtype}")
    if not t.is_floating_point():
        t = t.to(torch.float64)
    if t.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(t.shape)}); give at least one entry")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or Inf; all entries must be finite")
    return t


def check_shape_tuple(shape: Sequence[int], name: str, ndim: int | None = None) -> tuple[int, ...]:
    """A tuple of positive ints (of length ``ndim`` if given)."""
    try:
        out = tuple(int(s) for s in shape)
        ok = all(int(s) == s for s in shape)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a sequence of positive ints, got {shape!r}") from None
    if not ok or not out or any(s < 1 for s in out):
        raise ValueError(f"{name} must be a non-empty sequence of positive ints, got {shape!r}")
    if ndim is not None and len(out) != ndim:
        raise ValueError(f"{name} must have {ndim} entries, got {shape!r} ({len(out)} entries)")
    return out


def check_positive_int(value, name: str, minimum: int = 1) -> int:
    """An int >= ``minimum`` (bools and non-integral floats are rejected)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if int(value) < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_batch_size(batch_size: int | None) -> int | None:
    """None (shared operator) or a positive int."""
    if batch_size is None:
        return None
    return check_positive_int(batch_size, "batch_size")


def generator_device(generator: torch.Generator | None) -> torch.device:
    """The device random numbers are drawn on (the generator's, else the CPU)."""
    return generator.device if generator is not None else torch.device("cpu")


def prod(shape: Sequence[int]) -> int:
    return math.prod(int(s) for s in shape)
