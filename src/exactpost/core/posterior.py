"""The EPS identity: pivot, pivot covariance, and the posterior denoiser.

For x_t = a x0 + s e and y = A x0 + sigma_y n, write sigma = s / a and x~ = x_t / a
(so x~ = x0 + sigma e). Given x0, (x~, y) are two Gaussian looks at x0 whose combined
likelihood is N(x0; mu*, Sigma*) with

    Sigma* = ( I / sigma^2 + A^T A / sigma_y^2 )^{-1} = sigma_y^2 (rho I + A^T A)^{-1},
    mu*    = Sigma* ( x~ / sigma^2 + A^T y / sigma_y^2 ),      rho = sigma_y^2 / sigma^2
           = x~ + A^+_rho (y - A x~),   A^+_rho := (A^T A + rho I)^{-1} A^T.

The second form is the one computed here: it needs only the operator's Tikhonov
pseudo-inverse, stays accurate when rho is tiny (large sigma, small sigma_y), and its limit
rho -> 0 is the noiseless pivot mu* = P_null x~ + A^+ y with Sigma* = sigma^2 P_null, with
no division by zero. Hence (PAPER.md, Theorem 1)

    E[x0 | x_t, y] = D*(mu*),  D*(z) = E[x0 | z], z = x0 + N(0, Sigma*),
    grad_{x_t} log p(x_t | y) = (a D*(mu*) - x_t) / s^2.

Conventions: ``t`` is a float or a tensor [B]; ``sigma_y`` is a float or a tensor [B] (>= 0);
images/vectors are [B, *op.in_shape], measurements [B, *op.out_shape].
"""

from __future__ import annotations

from typing import Any, Callable, Union

import torch

from .batching import batch_vector, check_sigma_y, per_sample  # noqa: F401 (check_sigma_y re-exported)
from .interpolants import Denoiser, Interpolant, noise_levels  # noqa: F401 (noise_levels re-exported)
from ..operators.base import LinearOperator

Scalar = Union[float, torch.Tensor]
#: An EPS network: ``net(pivot, cond, sigma) -> x0_hat`` with pivot [B, *in_shape],
#: ``cond`` whatever the network was trained with (derived from y once per measurement) and
#: ``sigma`` = s(t)/a(t) of shape [B] (the interpolant-free noise level; Sigma* <= sigma^2 I).
EPSNetwork = Callable[[torch.Tensor, Any, torch.Tensor], torch.Tensor]
#: Marker for "compute the default conditioning" (None means: the network takes none).
DEFAULT_COND: Any = object()


def check_measurement(op: LinearOperator, y: torch.Tensor) -> torch.Tensor:
    """Validate y's shape against the operator and that it is finite."""
    op.check_y(y)
    if not bool(torch.isfinite(y).all()):
        raise ValueError("y contains NaN or inf; clean the measurement before sampling")
    return y


def pivot_rho(sigma: torch.Tensor, sigma_y: torch.Tensor) -> torch.Tensor:
    """rho = sigma_y^2 / sigma^2 = sigma_y^2 a^2 / s^2 (per sample)."""
    return (sigma_y / sigma) ** 2


def pivot_from_sigma(x_tilde: torch.Tensor, sigma: torch.Tensor, y: torch.Tensor,
                     op: LinearOperator, sigma_y: torch.Tensor) -> torch.Tensor:
    """mu* = x~ + A^+_rho (y - A x~) for x~ = x0 + sigma e (variance-exploding form).
    sigma, sigma_y: [B]."""
    return x_tilde + op.regularized_pinv(y - op.A(x_tilde), pivot_rho(sigma, sigma_y))


def pivot(x_t: torch.Tensor, t: Scalar, y: torch.Tensor, op: LinearOperator,
          sigma_y: Scalar, interpolant: Interpolant) -> torch.Tensor:
    """The pivot mu*(x_t, t, y) of the EPS identity, [B, *op.in_shape].

    mu* = argmin_x ||A x - y||^2 / sigma_y^2 + ||x - x_t/a||^2 / sigma^2 (sigma = s/a),
    computed as x_t/a + A^+_rho (y - A x_t/a) with rho = sigma_y^2/sigma^2; sigma_y = 0 gives
    the exact noiseless limit P_null(A) x_t/a + A^+ y.
    """
    op.check_x(x_t, "x_t")
    check_measurement(op, y)
    if x_t.shape[0] != y.shape[0]:
        raise ValueError(f"x_t has batch {x_t.shape[0]} but y has batch {y.shape[0]}")
    sy = check_sigma_y(sigma_y, x_t.shape[0], x_t)
    a, _, sigma = noise_levels(interpolant, t, x_t)
    return pivot_from_sigma(x_t / per_sample(a, x_t.dim()), sigma, y, op, sy)


def sigma_star_matvec(v: torch.Tensor, sigma: Scalar, op: LinearOperator, sigma_y: Scalar) -> torch.Tensor:
    """Sigma* v = sigma^2 (v - A^+_rho A v)  (= sigma_y^2 (rho I + A^T A)^{-1} v for rho > 0,
    = sigma^2 P_null v for sigma_y = 0). v: [B, *in_shape]; sigma = s/a: float or [B]."""
    op.check_x(v, "v")
    sig = batch_vector(sigma, v.shape[0], v, "sigma")
    sy = check_sigma_y(sigma_y, v.shape[0], v)
    return per_sample(sig**2, v.dim()) * (v - op.regularized_pinv(op.A(v), pivot_rho(sig, sy)))


def sample_sigma_star(shape_like: torch.Tensor, sigma: Scalar, op: LinearOperator, sigma_y: Scalar,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """A draw z ~ N(0, Sigma*), [B, *in_shape], without any matrix square root:
    z = sigma (e - A^+_rho (A e - sqrt(rho) n)) with e, n standard normal. This is exactly
    mu* - x0 for x~ = x0 + sigma e, y = A x0 + sigma_y n, hence Gaussian with covariance
    Sigma*; for sigma_y = 0 it is sigma P_null e."""
    B = shape_like.shape[0]
    sig = batch_vector(sigma, B, shape_like, "sigma")
    sy = check_sigma_y(sigma_y, B, shape_like)
    rho = pivot_rho(sig, sy)
    e = torch.randn(shape_like.shape, generator=generator, dtype=shape_like.dtype, device=shape_like.device)
    Ae = op.A(e)
    n = torch.randn(Ae.shape, generator=generator, dtype=Ae.dtype, device=Ae.device)
    inner = Ae - per_sample(rho.sqrt(), Ae.dim()) * n
    return per_sample(sig, e.dim()) * (e - op.regularized_pinv(inner, rho))


def sigma_star_dense(op: LinearOperator, sigma: float, sigma_y: float,
                     dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Sigma* as a dense [d, d] matrix (d = op.in_dim, inputs flattened) for a shared
    operator: d products with the basis vectors, for tests and small problems such as the
    Gaussian-mixture oracle."""
    if op.batch_size is not None:
        raise ValueError("sigma_star_dense needs a shared operator (batch_size None)")
    d = op.in_dim
    eye = torch.eye(d, dtype=dtype).reshape((d,) + tuple(op.in_shape))
    M = sigma_star_matvec(eye, sigma, op, sigma_y).reshape(d, d).T
    return 0.5 * (M + M.T)


def default_conditioning(op: LinearOperator, y: torch.Tensor) -> torch.Tensor:
    """The conditioning passed to an EPS network when none is given: A^T y, image-shaped
    ([B, *in_shape]), computed once per measurement. Networks trained by exactpost get
    theirs from :func:`exactpost.core.conditioning.build_conditioning` (their card's kind)."""
    return op.At(y)


class EPSPosteriorDenoiser:
    """The posterior denoiser of EPS: D~(x_t, t) = net(mu*(x_t, t, y), cond, sigma(t)).

    It is a plain denoiser ``D(x_t, t) -> E[x0 | x_t, y]``, so every sampler of
    :mod:`exactpost.core.samplers` runs it unchanged; its score is (a D~ - x_t) / s^2.

    Args:
        network: ``net(pivot, cond, sigma) -> x0_hat`` (see :data:`EPSNetwork`).
        op: the measurement operator (shared, or per-sample with the batch of y).
        y: the measurement, [B, *op.out_shape], finite.
        sigma_y: measurement noise std, >= 0 (0 = noiseless), float or [B].
        interpolant: the interpolant the sampler steps in.
        cond: conditioning for the network, computed once; by default A^T y; ``None`` for a
            network that takes no conditioning.
    """

    def __init__(self, network: EPSNetwork, op: LinearOperator, y: torch.Tensor, sigma_y: Scalar,
                 interpolant: Interpolant, cond: Any = DEFAULT_COND):
        self.network, self.op, self.interpolant = network, op, interpolant
        self.y = check_measurement(op, y)
        self.sigma_y = check_sigma_y(sigma_y, y.shape[0], y)
        self.cond = default_conditioning(op, y) if cond is DEFAULT_COND else cond

    def _check(self, x_t: torch.Tensor) -> None:
        self.op.check_x(x_t, "x_t")
        if x_t.shape[0] != self.y.shape[0]:
            raise ValueError(
                f"x_t has batch {x_t.shape[0]} but y has batch {self.y.shape[0]}; "
                "repeat y (and a per-sample operator) once per sample you want to draw"
            )

    def pivot(self, x_t: torch.Tensor, t: Scalar) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu*, sigma) at (x_t, t)."""
        self._check(x_t)
        a, _, sigma = noise_levels(self.interpolant, t, x_t)
        sy = self.sigma_y.to(x_t.dtype)
        return pivot_from_sigma(x_t / per_sample(a, x_t.dim()), sigma, self.y.to(x_t.dtype), self.op, sy), sigma

    def __call__(self, x_t: torch.Tensor, t: Scalar) -> torch.Tensor:
        mu, sigma = self.pivot(x_t, t)
        return self.network(mu, self.cond, sigma)

    def posterior_mean(self, sigma_max: float = 80.0, generator: torch.Generator | None = None,
                       dtype: torch.dtype | None = None) -> torch.Tensor:
        """The 1-NFE posterior mean: one call at the noise level sigma_max,
        D~(x_T, T) with x_T = s(T) e, T = t(sigma_max). As sigma_max grows, x_T carries no
        information about x0 and D~(x_T, T) = E[x0 | x_T, y] -> E[x0 | y]. [B, *in_shape]."""
        dtype = dtype or self.y.dtype
        T = float(self.interpolant.t_of_sigma(sigma_max))
        shape = (self.y.shape[0],) + tuple(self.op.in_shape)
        e = torch.randn(shape, generator=generator, dtype=dtype, device=self.y.device)
        return self(float(self.interpolant.s(T)) * e, T)

    def score(self, x_t: torch.Tensor, t: Scalar) -> torch.Tensor:
        """grad_{x_t} log p(x_t | y) = (a D~(x_t, t) - x_t) / s^2."""
        a, s, _ = noise_levels(self.interpolant, t, x_t)
        return (per_sample(a, x_t.dim()) * self(x_t, t) - x_t) / per_sample(s**2, x_t.dim())


class ZeroShotPivotDenoiser:
    """Zero-shot pivoting: an *unconditional* denoiser queried at the pivot.

    D_zs(x_t, t) = D_prior(a(t) mu*(x_t, t, y), t).

    The scalar noise level standing in for Sigma* is sigma = s/a, i.e. the prior denoiser is
    called at the same time t: a mu* = a x0 + a N(0, Sigma*) looks to it like x_t. Why s/a:
    it is *exact* in the unmeasured directions (the null space of A, where the prior has to do
    all the work; for sigma_y = 0, Sigma* = sigma^2 P_null) and an upper bound everywhere
    (Sigma* <= sigma^2 I), so the denoiser never under-smooths; the price is over-smoothing
    the measured directions, which the trained EPS network removes.
    """

    def __init__(self, prior: Denoiser, op: LinearOperator, y: torch.Tensor, sigma_y: Scalar,
                 interpolant: Interpolant):
        self.prior = prior
        self._eps = EPSPosteriorDenoiser(lambda mu, cond, sigma: mu, op, y, sigma_y, interpolant, cond=None)

    def __call__(self, x_t: torch.Tensor, t: Scalar) -> torch.Tensor:
        mu, _ = self._eps.pivot(x_t, t)
        a, _, _ = noise_levels(self._eps.interpolant, t, x_t)
        return self.prior(per_sample(a, x_t.dim()) * mu, t)
