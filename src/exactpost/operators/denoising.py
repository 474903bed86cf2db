"""Denoising: the identity operator A = I."""

from __future__ import annotations

from typing import Sequence

import torch

from ..core.batching import per_sample
from ._common import StructuredOperator, check_batch_size, check_shape_tuple


class Denoising(StructuredOperator):
    """A = I on signals of shape ``in_shape`` (images: ``(C, H, W)``); out_shape = in_shape.

    * ``A x = At x = pinv x = x`` (copies),
    * ``solve(v, rho) = v / (rho + 1)``,
    * ``null_project(x) = 0`` (A has no null space);
    * ``regularized_pinv(r, rho) = r / (1 + rho)`` (rho >= 0).

    ``batch_size`` (optional) only fixes the batch size the operator accepts.
    """

    def __init__(self, in_shape: Sequence[int], batch_size: int | None = None) -> None:
        super().__init__()
        self.in_shape = check_shape_tuple(in_shape, "in_shape")
        self.out_shape = self.in_shape
        self.batch_size = check_batch_size(batch_size)

    def _A(self, x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    def _At(self, y: torch.Tensor) -> torch.Tensor:
        return y.clone()

    def _solve(self, v: torch.Tensor, rho: torch.Tensor) -> torch.Tensor:
        return v / (rho + 1)

    def _pinv(self, y: torch.Tensor) -> torch.Tensor:
        return y.clone()

    def _null_project(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)

    def _regularized_pinv(self, r: torch.Tensor, rho: torch.Tensor) -> torch.Tensor:
        return r / (1 + per_sample(rho, r.dim()))
