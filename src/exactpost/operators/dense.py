"""A dense-matrix operator: for tests, small problems and the GMM benchmark."""

from __future__ import annotations

from typing import Sequence

import torch

from ._common import StructuredOperator, as_tensor_param, check_shape_tuple, prod


class DenseOperator(StructuredOperator):
    """A x = M vec(x) for any matrix M: ``[B, *in_shape] -> [B, m]`` (in_shape defaults to
    ``(d,)``, i.e. plain vectors ``[B, d]``).

    ``matrix`` is ``[m, d]`` (shared) or ``[B, m, d]`` (per sample). Everything but A/At goes
    through the thin SVD M = U diag(s) V^T (k = min(m, d) singular values), computed once in
    float64 (lazily, on first use; see :meth:`svd`) and cast per dtype/device:

    * ``solve(v, rho) = V diag(1 / (rho + s^2)) V^T v + (v - V V^T v) / rho``
      (exact for any rank; the second term vanishes when k = d);
    * ``pinv(y) = V diag(1/s) U^T y`` over the singular values ``s > rcond * max(s)``;
    * ``null_project(x) = x - V_r V_r^T x`` over the same singular vectors;
    * ``regularized_pinv(r, rho) = V diag(s / (s^2 + rho)) U^T r`` for rho > 0, ``pinv(r)``
      for rho = 0.

    ``rcond`` defaults to ``max(m, d) * eps`` of the matrix's dtype, the default of
    ``torch.linalg.pinv`` / ``numpy.linalg.pinv``.
    """

    def __init__(self, matrix, in_shape: Sequence[int] | None = None,
                 rcond: float | None = None) -> None:
        super().__init__()
        mat = as_tensor_param(matrix, "matrix")
        if mat.dim() not in (2, 3):
            raise ValueError(
                f"matrix must be [m, d] (shared) or [B, m, d] (per sample), got shape "
                f"{tuple(mat.shape)}"
            )
        m, d = int(mat.shape[-2]), int(mat.shape[-1])
        self.in_shape = (d,) if in_shape is None else check_shape_tuple(in_shape, "in_shape")
        if prod(self.in_shape) != d:
            raise ValueError(
                f"matrix has d={d} columns but in_shape {self.in_shape} has "
                f"{prod(self.in_shape)} entries; they must match"
            )
        self.out_shape = (m,)
        self.batch_size = int(mat.shape[0]) if mat.dim() == 3 else None
        self.matrix = mat
        if rcond is None:
            rcond = max(m, d) * torch.finfo(mat.dtype).eps
        rcond = float(rcond)
        if not 0.0 <= rcond < 1.0:
            raise ValueError(f"rcond must be in [0, 1), got {rcond!r}")
        self.rcond = rcond
        self._svd64: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def svd(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The thin SVD ``(U [.., m, k], s [.., k], Vh [.., k, d])`` of the matrix, float64,
        on the matrix's device; computed once."""
        if self._svd64 is None:
            self._svd64 = torch.linalg.svd(self.matrix.to(torch.float64), full_matrices=False)
        return self._svd64

    @property
    def rank(self) -> torch.Tensor:
        """Numerical rank (singular values above ``rcond * max(s)``), 0-d or [B]."""
        s = self.svd()[1]
        return (s > self.rcond * s.amax(dim=-1, keepdim=True)).sum(-1)

    def _factors(self, like: torch.Tensor):
        def make():
            u, s, vh = self.svd()
            keep = s > self.rcond * s.amax(dim=-1, keepdim=True)
            s_inv = torch.where(keep, 1.0 / torch.where(keep, s, torch.ones_like(s)), 0.0)
            cast = lambda t: t.to(dtype=like.dtype, device=like.device)  # noqa: E731
            return cast(u), cast(s), cast(vh), cast(keep), cast(s_inv)

        return self.cached("svd", like, make)

    def _mat(self, like: torch.Tensor) -> torch.Tensor:
        return self.cached("matrix", like,
                           lambda: self.matrix.to(dtype=like.dtype, device=like.device))

    # matrix-vector helpers on flattened batches: W [(B,) p, q] times u [B, q] -> [B, p]
    def _mv(self, w: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return u @ w.T if w.dim() == 2 else torch.einsum("bpq,bq->bp", w, u)

    def _mtv(self, w: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return u @ w if w.dim() == 2 else torch.einsum("bpq,bp->bq", w, u)

    def _unflat(self, u: torch.Tensor) -> torch.Tensor:
        return u.reshape((u.shape[0],) + self.in_shape)

    def _A(self, x: torch.Tensor) -> torch.Tensor:
        return self._mv(self._mat(x), x.reshape(x.shape[0], -1))

    def _At(self, y: torch.Tensor) -> torch.Tensor:
        return self._unflat(self._mtv(self._mat(y), y))

    def _solve(self, v: torch.Tensor, rho: torch.Tensor) -> torch.Tensor:
        _, s, vh, _, _ = self._factors(v)
        flat = v.reshape(v.shape[0], -1)
        r = rho.reshape(-1, 1)
        c = self._mv(vh, flat)  # V^T v, [B, k]
        out = self._mtv(vh, c / (r + s**2))
        if vh.shape[-2] < vh.shape[-1]:  # k < d: add the component outside V's span
            out = out + (flat - self._mtv(vh, c)) / r
        return self._unflat(out)

    def _pinv(self, y: torch.Tensor) -> torch.Tensor:
        u, _, vh, _, s_inv = self._factors(y)
        return self._unflat(self._mtv(vh, self._mtv(u, y) * s_inv))

    def _regularized_pinv(self, r: torch.Tensor, rho: torch.Tensor) -> torch.Tensor:
        u, s, vh, _, s_inv = self._factors(r)
        rho = rho.reshape(-1, 1)
        den = s**2 + rho
        gain = torch.where(rho > 0, s / torch.where(rho > 0, den, torch.ones_like(den)), s_inv)
        return self._unflat(self._mtv(vh, self._mtv(u, r) * gain))

    def _null_project(self, x: torch.Tensor) -> torch.Tensor:
        _, _, vh, keep, _ = self._factors(x)
        flat = x.reshape(x.shape[0], -1)
        return self._unflat(flat - self._mtv(vh, self._mv(vh, flat) * keep))
