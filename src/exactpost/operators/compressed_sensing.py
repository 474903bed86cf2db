"""Compressed sensing with an orthonormal-row measurement matrix."""

from __future__ import annotations

from typing import Sequence

import torch

from ..core.batching import per_sample
from ._common import (
    StructuredOperator,
    as_tensor_param,
    check_batch_size,
    check_positive_int,
    check_shape_tuple,
    generator_device,
    prod,
)


def random_orthonormal_matrix(m: int, d: int, batch_size: int | None = None,
                              generator: torch.Generator | None = None,
                              dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """A Haar-random ``[m, d]`` (or ``[B, m, d]``) matrix with orthonormal rows (m <= d):
    the transposed Q factor of a Gaussian ``[d, m]`` matrix, signs fixed by diag(R) > 0."""
    m = check_positive_int(m, "m")
    d = check_positive_int(d, "d")
    if m > d:
        raise ValueError(f"orthonormal rows need m <= d, got m={m} > d={d}")
    b = check_batch_size(batch_size)
    g = torch.randn((b or 1, d, m), generator=generator, dtype=torch.float64,
                    device=generator_device(generator))
    q, r = torch.linalg.qr(g)
    sign = torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))
    sign = torch.where(sign == 0, torch.ones_like(sign), sign)
    mat = (q * sign[:, None, :]).transpose(-2, -1).to(dtype)
    return mat if b is not None else mat[0]


class CompressedSensing(StructuredOperator):
    """A x = M vec(x) with orthonormal rows (M M^T = I): ``[B, *in_shape] -> [B, m]``.

    ``matrix`` is ``[m, d]`` (shared) or ``[B, m, d]`` (per sample), d = prod(in_shape);
    orthonormality is checked at construction (max |M M^T - I| <= 1e3 eps of its dtype).
    With P = A^T A the projector onto the row space, closed forms (Woodbury):

    * ``At y = M^T y``;
    * ``solve(v, rho) = (v - P v) / rho + P v / (rho + 1)``
      (= ``(1/rho)(v - A^T A v / (rho + 1))``);
    * ``pinv(y) = A^T y``;
    * ``null_project(x) = x - A^T A x``;
    * ``regularized_pinv(r, rho) = A^T (A A^T + rho I)^{-1} r = A^T r / (1 + rho)`` (rho >= 0).
    """

    def __init__(self, matrix, in_shape: Sequence[int]) -> None:
        super().__init__()
        self.in_shape = check_shape_tuple(in_shape, "in_shape")
        mat = as_tensor_param(matrix, "compressed-sensing matrix")
        if mat.dim() not in (2, 3):
            raise ValueError(
                f"matrix must be [m, d] (shared) or [B, m, d] (per sample), got shape "
                f"{tuple(mat.shape)}"
            )
        m, d = int(mat.shape[-2]), int(mat.shape[-1])
        if d != prod(self.in_shape):
            raise ValueError(
                f"matrix has d={d} columns but in_shape {self.in_shape} has "
                f"{prod(self.in_shape)} entries; they must match"
            )
        if m > d:
            raise ValueError(f"orthonormal rows need m <= d, got m={m} > d={d}")
        m64 = mat.to(torch.float64)
        err = (m64 @ m64.transpose(-2, -1) - torch.eye(m, dtype=torch.float64)).abs().max()
        tol = 1e3 * torch.finfo(mat.dtype).eps
        if float(err) > tol:
            raise ValueError(
                f"matrix rows are not orthonormal (max |M M^T - I| = {float(err):.2e} > "
                f"{tol:.1e}); orthonormalise them (e.g. random_orthonormal_matrix) or use "
                f"DenseOperator"
            )
        self.matrix = mat
        self.batch_size = int(mat.shape[0]) if mat.dim() == 3 else None
        self.out_shape = (m,)

    @classmethod
    def random_orthonormal(cls, m: int, in_shape: Sequence[int],
                           generator: torch.Generator | None = None,
                           batch_size: int | None = None) -> "CompressedSensing":
        """An operator with a Haar-random orthonormal-row matrix (see
        :func:`random_orthonormal_matrix`), shared or one per sample."""
        d = prod(check_shape_tuple(in_shape, "in_shape"))
        return cls(random_orthonormal_matrix(m, d, batch_size, generator), in_shape)

    def _mat(self, like: torch.Tensor) -> torch.Tensor:
        return self.cached("matrix", like,
                           lambda: self.matrix.to(dtype=like.dtype, device=like.device))

    def _A(self, x: torch.Tensor) -> torch.Tensor:
        mat, flat = self._mat(x), x.reshape(x.shape[0], -1)
        if self.batch_size is None:
            return flat @ mat.T
        return torch.einsum("bmd,bd->bm", mat, flat)

    def _At(self, y: torch.Tensor) -> torch.Tensor:
        mat = self._mat(y)
        out = y @ mat if self.batch_size is None else torch.einsum("bmd,bm->bd", mat, y)
        return out.reshape((y.shape[0],) + self.in_shape)

    def _solve(self, v: torch.Tensor, rho: torch.Tensor) -> torch.Tensor:
        p = self._At(self._A(v))
        return (v - p) / rho + p / (rho + 1)

    def _pinv(self, y: torch.Tensor) -> torch.Tensor:
        return self._At(y)

    def _null_project(self, x: torch.Tensor) -> torch.Tensor:
        return x - self._At(self._A(x))

    def _regularized_pinv(self, r: torch.Tensor, rho: torch.Tensor) -> torch.Tensor:
        return self._At(r / (1 + per_sample(rho, r.dim())))
