"""Super-resolution by f x f average pooling."""

from __future__ import annotations

from typing import Sequence

import torch

from ..core.batching import per_sample
from ._common import StructuredOperator, check_batch_size, check_positive_int, check_shape_tuple


class AveragePoolSR(StructuredOperator):
    """A x = f x f average pooling: ``[B, C, H, W] -> [B, C, H/f, W/f]`` (any integer f >= 1).

    The adjoint is nearest-neighbour upsampling divided by f^2, so A A^T = I / f^2 and
    P = f^2 A^T A (upsample the average) is the orthogonal projector onto range(A^T).
    Closed forms (Woodbury, O(d)):

    * ``solve(v, rho) = (rho I + A^T A)^{-1} v = (v - P v) / rho + P v / (rho + 1/f^2)``
      (equal to ``(1/rho)(v - A^T A v / (rho + 1/f^2))``, written without cancellation);
    * ``pinv(y) = A^T (A A^T)^{-1} y = f^2 A^T y`` (nearest-neighbour upsampling);
    * ``null_project(x) = x - P x``;
    * ``regularized_pinv(r, rho) = A^T (A A^T + rho I)^{-1} r = upsample(r) / (1 + f^2 rho)``
      (rho >= 0; rho = 0 gives pinv).

    ``batch_size`` (optional) only fixes the batch size the operator accepts.
    """

    def __init__(self, factor: int, in_shape: Sequence[int], batch_size: int | None = None) -> None:
        super().__init__()
        self.factor = check_positive_int(factor, "factor")
        c, h, w = check_shape_tuple(in_shape, "in_shape (C, H, W)", ndim=3)
        f = self.factor
        if h % f or w % f:
            raise ValueError(
                f"image size {h}x{w} is not divisible by the super-resolution factor {f}; "
                f"crop or pad the image to a multiple of {f}"
            )
        self.in_shape = (c, h, w)
        self.out_shape = (c, h // f, w // f)
        self.batch_size = check_batch_size(batch_size)

    def _A(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        f = self.factor
        return x.reshape(b, c, h // f, f, w // f, f).mean(dim=(3, 5))

    def upsample(self, y: torch.Tensor) -> torch.Tensor:
        """Nearest-neighbour upsampling by f: ``[B, C, h, w] -> [B, C, h f, w f]`` (= f^2 A^T)."""
        b, c, h, w = y.shape
        f = self.factor
        return y[:, :, :, None, :, None].expand(b, c, h, f, w, f).reshape(b, c, h * f, w * f)

    def _At(self, y: torch.Tensor) -> torch.Tensor:
        return self.upsample(y) / self.factor**2

    def _solve(self, v: torch.Tensor, rho: torch.Tensor) -> torch.Tensor:
        p = self.upsample(self._A(v))
        return (v - p) / rho + p / (rho + 1.0 / self.factor**2)

    def _pinv(self, y: torch.Tensor) -> torch.Tensor:
        return self.upsample(y)

    def _null_project(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.upsample(self._A(x))

    def _regularized_pinv(self, r: torch.Tensor, rho: torch.Tensor) -> torch.Tensor:
        return self.upsample(r) / (1 + self.factor**2 * per_sample(rho, r.dim()))
