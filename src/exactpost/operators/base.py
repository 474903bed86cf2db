"""The linear-operator interface every measurement model implements.

A :class:`LinearOperator` maps a batch ``x`` of shape ``[B, *in_shape]`` to measurements of
shape ``[B, *out_shape]``. Besides the forward map ``A`` and its adjoint ``At`` it offers

* ``solve(v, rho)``   = (rho I + A^T A)^{-1} v, for a scalar rho > 0 or one rho per sample;
* ``pinv(y)``         = A^+ y, the minimum-norm least-squares solution of A x = y;
* ``null_project(x)`` = (I - A^+ A) x, the projection onto the null space of A;
* ``regularized_pinv(r, rho)`` = (A^T A + rho I)^{-1} A^T r = A^T (A A^T + rho I)^{-1} r for
  rho >= 0, the Tikhonov-regularised pseudo-inverse (rho = 0 gives A^+ r exactly).

The last one is all the EPS pivot needs (see :mod:`exactpost.core.posterior`). Structured
families override them with closed forms; this base class implements them for any operator
by conjugate gradients, so an operator given only ``A`` and ``At`` works too (see
:class:`FunctionOperator`).

Batching: an operator either is *shared* (``batch_size is None``; one operator applied to
every sample of any batch) or carries per-sample parameters (``batch_size == B``; then every
input must have exactly B samples). Nothing else is broadcast: inputs whose shape does not
match raise ``ValueError``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence, Union

import torch

from ..core.batching import per_sample

Rho = Union[float, torch.Tensor]


@dataclass
class CGInfo:
    """What the last conjugate-gradient solve did: iterations taken (max over the batch)
    and the final relative residual ||b - M x|| / ||b|| (max over the batch)."""

    iterations: int
    relative_residual: float
    converged: bool


def conjugate_gradient(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    b: torch.Tensor,
    tol: float = 1e-10,
    max_iter: int = 1000,
) -> tuple[torch.Tensor, CGInfo]:
    """Solve M x = b for a symmetric positive (semi-)definite M, per sample of the batch.

    ``b`` has shape ``[B, ...]``; each sample has its own step sizes and stops once its
    residual falls below ``tol * ||b||``. Starting from x = 0 keeps x in the range of M,
    so for a singular consistent system the result is the minimum-norm solution.
    """
    B = b.shape[0]

    def dot(u: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return (u * w).reshape(B, -1).sum(1)

    def bc(c: torch.Tensor) -> torch.Tensor:
        return per_sample(c, b.dim())

    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rs = dot(r, r)
    b_norm = torch.sqrt(dot(b, b))
    thresh = (tol * b_norm) ** 2
    it = 0
    active = rs > thresh
    while bool(active.any()) and it < max_iter:
        Mp = matvec(p)
        pMp = dot(p, Mp)
        alpha = torch.where(active, rs / torch.where(pMp > 0, pMp, torch.ones_like(pMp)), 0.0)
        x = x + bc(alpha) * p
        r = r - bc(alpha) * Mp
        rs_new = dot(r, r)
        beta = torch.where(active, rs_new / torch.where(rs > 0, rs, torch.ones_like(rs)), 0.0)
        p = torch.where(bc(active), r + bc(beta) * p, p)
        rs = torch.where(active, rs_new, rs)
        active = rs > thresh
        it += 1
    safe_norm = torch.where(b_norm > 0, b_norm, torch.ones_like(b_norm))
    rel = float((torch.sqrt(rs) / safe_norm).max()) if B else 0.0
    return x, CGInfo(iterations=it, relative_residual=rel, converged=not bool(active.any()))


class LinearOperator:
    """Base class of all measurement operators (see the module docstring).

    Subclasses set ``in_shape``, ``out_shape`` (per-sample shapes), ``batch_size`` and
    implement ``_A`` and ``_At`` on validated tensors; they may override ``_solve``,
    ``_pinv`` and ``_null_project`` with exact closed forms.
    """

    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    batch_size: int | None = None
    #: tolerance and iteration cap of the conjugate-gradient fallback
    cg_tol: float = 1e-10
    cg_max_iter: int = 2000

    def __init__(self) -> None:
        self.last_cg_info: CGInfo | None = None

    # --- the maps ---------------------------------------------------------------------
    def A(self, x: torch.Tensor) -> torch.Tensor:
        """Forward map: ``[B, *in_shape] -> [B, *out_shape]``."""
        return self._A(self.check_x(x))

    def At(self, y: torch.Tensor) -> torch.Tensor:
        """Adjoint map: ``[B, *out_shape] -> [B, *in_shape]``."""
        return self._At(self.check_y(y))

    def solve(self, v: torch.Tensor, rho: Rho) -> torch.Tensor:
        """(rho I + A^T A)^{-1} v, with ``rho`` > 0 a float or a tensor of shape [B]."""
        v = self.check_x(v, "v")
        return self._solve(v, self.check_rho(rho, v))

    def pinv(self, y: torch.Tensor) -> torch.Tensor:
        """Moore-Penrose pseudo-inverse A^+ y: ``[B, *out_shape] -> [B, *in_shape]``."""
        return self._pinv(self.check_y(y))

    def null_project(self, x: torch.Tensor) -> torch.Tensor:
        """Projection onto the null space of A: (I - A^+ A) x."""
        return self._null_project(self.check_x(x))

    def regularized_pinv(self, r: torch.Tensor, rho: Rho) -> torch.Tensor:
        """Tikhonov pseudo-inverse (A^T A + rho I)^{-1} A^T r = A^T (A A^T + rho I)^{-1} r.

        ``r``: [B, *out_shape]; ``rho`` >= 0, a float or one value per sample ([B]).
        rho = 0 gives A^+ r (the noiseless limit, no division by zero). Closed forms work on
        the right-hand (dual) side so that a tiny rho (high noise, small sigma_y) loses no
        precision, unlike ``solve(A^T r, rho)`` whose Woodbury form cancels.
        """
        r = self.check_y(r, "r")
        return self._regularized_pinv(r, self.check_rho(rho, r, allow_zero=True))

    # --- defaults: conjugate gradients ------------------------------------------------
    def _A(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _At(self, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _solve(self, v: torch.Tensor, rho: torch.Tensor) -> torch.Tensor:
        x, self.last_cg_info = conjugate_gradient(
            lambda u: rho * u + self._At(self._A(u)), v, self.cg_tol, self.cg_max_iter
        )
        return x

    def _pinv(self, y: torch.Tensor) -> torch.Tensor:
        # CG on the normal equations A^T A x = A^T y from x = 0 gives the min-norm solution.
        x, self.last_cg_info = conjugate_gradient(
            lambda u: self._At(self._A(u)), self._At(y), self.cg_tol, self.cg_max_iter
        )
        return x

    def _null_project(self, x: torch.Tensor) -> torch.Tensor:
        return x - self._pinv(self._A(x))

    def _regularized_pinv(self, r: torch.Tensor, rho: torch.Tensor) -> torch.Tensor:
        rho_x = per_sample(rho, 1 + len(self.in_shape))
        zero = (rho_x == 0).reshape(-1)
        out = self._pinv(r) if bool(zero.any()) else None
        if bool(zero.all()):
            return out
        safe = torch.where(rho_x > 0, rho_x, torch.ones_like(rho_x))
        x = self._solve(self._At(r), safe)
        return x if out is None else torch.where(rho_x > 0, x, out)

    # --- helpers ----------------------------------------------------------------------
    @property
    def in_dim(self) -> int:
        """Number of unknowns d per sample."""
        return _prod(self.in_shape)

    def _check_shape(self, t: torch.Tensor, shape: Sequence[int], name: str, what: str) -> None:
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != len(shape) + 1 or tuple(t.shape[1:]) != tuple(shape):
            raise ValueError(
                f"{name} has shape {tuple(t.shape)} but {type(self).__name__} expects "
                f"[batch, {', '.join(map(str, shape))}] ({what})"
            )
        if self.batch_size is not None and t.shape[0] != self.batch_size:
            raise ValueError(
                f"{name} has batch size {t.shape[0]} but {type(self).__name__} carries "
                f"per-sample parameters for {self.batch_size} samples; build the operator "
                f"for this batch size"
            )

    def check_x(self, x: torch.Tensor, name: str = "x") -> torch.Tensor:
        """Validate a signal-space tensor ``[B, *in_shape]`` and return it."""
        self._check_shape(x, self.in_shape, name, "signal space")
        return x

    def check_y(self, y: torch.Tensor, name: str = "y") -> torch.Tensor:
        """Validate a measurement-space tensor ``[B, *out_shape]`` and return it."""
        self._check_shape(y, self.out_shape, name, "measurement space")
        return y

    def check_rho(self, rho: Rho, like: torch.Tensor, allow_zero: bool = False) -> torch.Tensor:
        """Turn rho (float, 0-d or [B] tensor, all > 0, or >= 0 with ``allow_zero``) into a
        tensor that broadcasts against ``like`` ([B, 1, ..., 1])."""
        r = torch.as_tensor(rho, dtype=like.dtype, device=like.device)
        if r.dim() == 0:
            r = r.expand(like.shape[0])
        if r.dim() != 1 or r.shape[0] != like.shape[0]:
            raise ValueError(
                f"rho must be a scalar or have shape [{like.shape[0]}] (one per sample), "
                f"got shape {tuple(r.shape)}"
            )
        if allow_zero:
            if not bool(torch.isfinite(r).all()) or bool((r < 0).any()):
                raise ValueError(f"rho must be finite and >= 0, got {rho}")
        elif not bool(torch.isfinite(r).all()) or bool((r <= 0).any()):
            raise ValueError(
                "rho must be finite and > 0; for the noiseless limit use pinv/null_project"
            )
        return per_sample(r, like.dim())

    def to_dense(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """The operator as a dense matrix ``[m, d]`` (shared operators) or ``[B, m, d]``
        (per-sample operators), built by applying A to the basis vectors. For tests and
        small problems only: it costs d forward maps."""
        d = self.in_dim
        eye = torch.eye(d, dtype=dtype).reshape((d,) + tuple(self.in_shape))
        if self.batch_size is None:
            return self._A(eye).reshape(d, -1).T.contiguous()
        cols = [self._A(eye[j : j + 1].expand((self.batch_size,) + tuple(self.in_shape)))
                for j in range(d)]
        return torch.stack([c.reshape(self.batch_size, -1) for c in cols], dim=2)


class FunctionOperator(LinearOperator):
    """An operator given only by two callables ``A`` and ``At`` (which must be adjoint);
    ``solve``, ``pinv`` and ``null_project`` use conjugate gradients.

    After each solve, ``last_cg_info`` reports the iterations taken and the residual.
    """

    def __init__(
        self,
        A: Callable[[torch.Tensor], torch.Tensor],
        At: Callable[[torch.Tensor], torch.Tensor],
        in_shape: Sequence[int],
        out_shape: Sequence[int],
        batch_size: int | None = None,
        cg_tol: float = 1e-10,
        cg_max_iter: int = 2000,
    ) -> None:
        super().__init__()
        self._fA, self._fAt = A, At
        self.in_shape, self.out_shape = tuple(in_shape), tuple(out_shape)
        self.batch_size = batch_size
        self.cg_tol, self.cg_max_iter = cg_tol, cg_max_iter

    def _A(self, x):
        return self._fA(x)

    def _At(self, y):
        return self._fAt(y)


def _prod(shape: Sequence[int]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


