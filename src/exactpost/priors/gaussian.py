"""A Gaussian image prior N(m, S) fitted to training images, and its exact linear MMSE
estimate: the reference any learned posterior mean has to beat.

For y = A x0 + sigma_y n with x0 ~ N(m, S), the posterior mean (= the best linear
estimate for any prior with that mean and covariance) is

    x_hat = m + S A^T z,   (A S A^T + sigma_y^2 I) z = y - A m,

solved here in float64 by conjugate gradients in measurement space with the operator's
own A / A^T (per-sample masks and kernels included) and dense S products; the system
matrix is >= sigma_y^2 I, so CG converges for sigma_y > 0. ``tests/test_gaussian_prior.py``
checks the result against the dense float64 formula.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ..operators.base import CGInfo, LinearOperator, conjugate_gradient


@dataclass
class GaussianPrior:
    """N(mean, cov) over images of shape ``shape`` = (C, H, W): mean [d], cov [d, d] (float64)."""

    mean: torch.Tensor
    cov: torch.Tensor
    shape: tuple[int, ...]

    @classmethod
    def fit(cls, images: torch.Tensor, chunk: int = 4096) -> "GaussianPrior":
        """Sample mean and (biased, 1/N) covariance of images [N, C, H, W] (any float range)."""
        if images.dim() != 4 or images.shape[0] < 2:
            raise ValueError(f"need images [N >= 2, C, H, W], got {tuple(images.shape)}")
        x = images.reshape(images.shape[0], -1).to(torch.float64)
        mean = x.mean(0)
        cov = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64)
        for i in range(0, x.shape[0], chunk):
            xc = x[i:i + chunk] - mean
            cov += xc.T @ xc
        return cls(mean, cov / x.shape[0], tuple(images.shape[1:]))

    def lmmse(self, op: LinearOperator, y: torch.Tensor, sigma_y: float, tol: float = 1e-9,
              max_iter: int = 20000) -> tuple[torch.Tensor, CGInfo]:
        """x_hat [B, C, H, W] (float64) for measurements y [B, *op.out_shape], and the CG report."""
        if sigma_y <= 0:
            raise ValueError("the CG solve needs sigma_y > 0 (the system is singular otherwise)")
        B = y.shape[0]
        y = y.to(torch.float64)
        m_img = self.mean.reshape((1,) + self.shape).expand((B,) + self.shape)

        def S(v: torch.Tensor) -> torch.Tensor:  # [B, C, H, W] -> S v
            return (v.reshape(B, -1) @ self.cov).reshape(v.shape)

        def K(z: torch.Tensor) -> torch.Tensor:  # (A S A^T + sigma_y^2 I) z
            return op.A(S(op.At(z))) + sigma_y**2 * z

        r = y - op.A(m_img)
        z, info = conjugate_gradient(K, r, tol=tol, max_iter=max_iter)
        return m_img + S(op.At(z)), info


def dense_lmmse(mean: torch.Tensor, cov: torch.Tensor, A: torch.Tensor, y: torch.Tensor, sigma_y: float
                ) -> torch.Tensor:
    """The same estimate by the dense formula, for one measurement: A [m, d], y [m] -> [d]
    (float64; for tests)."""
    K = A @ cov @ A.T + sigma_y**2 * torch.eye(A.shape[0], dtype=A.dtype)
    return mean + cov @ A.T @ torch.linalg.solve(K, y - A @ mean)


__all__: Sequence[str] = ["GaussianPrior", "dense_lmmse"]
