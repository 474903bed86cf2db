"""Colorization: observe the mean over channels."""

from __future__ import annotations

from typing import Sequence

import torch

from ..core.batching import per_sample
from ._common import StructuredOperator, check_batch_size, check_shape_tuple


class Colorization(StructuredOperator):
    """A x = mean over channels: ``[B, C, H, W] -> [B, 1, H, W]``.

    The adjoint broadcasts ``y / C`` to every channel, so A A^T = I / C and
    P = C A^T A (replace every channel by the channel mean) is the orthogonal projector onto
    range(A^T). Closed forms (Woodbury):

    * ``solve(v, rho) = (v - P v) / rho + P v / (rho + 1/C)``;
    * ``pinv(y) = C A^T y`` = y repeated over the C channels;
    * ``null_project(x) = x - P x`` (x minus its channel mean);
    * ``regularized_pinv(r, rho) = A^T (A A^T + rho I)^{-1} r = (r repeated) / (1 + C rho)``
      (rho >= 0).

    ``batch_size`` (optional) only fixes the batch size the operator accepts.
    """

    def __init__(self, in_shape: Sequence[int], batch_size: int | None = None) -> None:
        super().__init__()
        c, h, w = check_shape_tuple(in_shape, "in_shape (C, H, W)", ndim=3)
        self.channels = c
        self.in_shape = (c, h, w)
        self.out_shape = (1, h, w)
        self.batch_size = check_batch_size(batch_size)

    def _A(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=1, keepdim=True)

    def _broadcast(self, y: torch.Tensor) -> torch.Tensor:
        return y.expand(-1, self.channels, -1, -1)

    def _At(self, y: torch.Tensor) -> torch.Tensor:
        return self._broadcast(y) / self.channels

    def _solve(self, v: torch.Tensor, rho: torch.Tensor) -> torch.Tensor:
        p = self._broadcast(self._A(v))
        return (v - p) / rho + p / (rho + 1.0 / self.channels)

    def _pinv(self, y: torch.Tensor) -> torch.Tensor:
        return self._broadcast(y).clone()

    def _null_project(self, x: torch.Tensor) -> torch.Tensor:
        return x - self._A(x)

    def _regularized_pinv(self, r: torch.Tensor, rho: torch.Tensor) -> torch.Tensor:
        return self._broadcast(r) / (1 + self.channels * per_sample(rho, r.dim()))
