"""The Gaussian skip of an EPS network: the operator-aware generalisation of EDM's c_skip.

EDM's denoiser D(x, sigma) = c_skip x + c_out F(...) has c_skip = sd^2 / (sd^2 + sigma^2): the
posterior mean E[x0 | x] of the isotropic Gaussian prior x0 ~ N(0, sd^2 I) given x = x0 +
N(0, sigma^2 I). An EPS network's input is the pivot mu* = x0 + N(0, Sigma*)
(:mod:`exactpost.core.posterior`), whose noise is anisotropic: nearly none in the measured
directions. The same construction with Sigma* in place of sigma^2 I gives
:func:`gaussian_skip`, so the network's residual F no longer has to carry the measured content
(used by :class:`exactpost.nets.precond.EDMPrecond` with ``skip="gaussian"``).
"""

from __future__ import annotations

from typing import Union

import torch

from ..operators.base import LinearOperator
from .batching import batch_vector, check_sigma_y, per_sample

__all__ = ["gaussian_skip"]

Scalar = Union[float, torch.Tensor]


def gaussian_skip(mu: torch.Tensor, sigma: Scalar, op: LinearOperator, sigma_y: Scalar,
                  sigma_data: float = 0.5) -> torch.Tensor:
    """S mu = E[x0 | mu*] for the isotropic Gaussian prior x0 ~ N(0, sd^2 I) and
    mu* | x0 ~ N(x0, Sigma*): the anisotropic generalisation of EDM's c_skip.

        S = sd^2 (sd^2 I + Sigma*)^{-1} = c_skip I + (1 - c_skip) A^+_{rho_e} A,
        c_skip = sd^2 / (sd^2 + sigma^2),   rho_e = sigma_y^2 (1 / sigma^2 + 1 / sd^2).

    (Derivation: with M = rho I + A^T A, Sigma* = sigma_y^2 M^{-1} and
    S = (M + rho0 I)^{-1} M = I - rho0 (M + rho0 I)^{-1}, rho0 = sigma_y^2 / sd^2; then
    r (r I + A^T A)^{-1} = I - A^+_r A with r = rho + rho0 = rho_e, and rho0 / rho_e =
    1 - c_skip.) It equals c_skip in the unmeasured directions and tends to 1 in the
    well-measured ones, so a network D = S mu + c_out F no longer has to re-synthesise the
    observed content through F. A = 0 gives EDM's c_skip exactly; sigma_y = 0 gives
    P_row + c_skip P_null (rho_e = 0, A^+ A, no division by zero).

    mu: [B, *op.in_shape]; sigma = s/a: float or [B] (> 0); sigma_y: float or [B] (>= 0);
    returns [B, *op.in_shape] in mu's dtype."""
    op.check_x(mu, "mu")
    sig = batch_vector(sigma, mu.shape[0], mu, "sigma")
    if bool((sig <= 0).any()):
        raise ValueError(f"sigma must be > 0, got {sigma}")
    sy = check_sigma_y(sigma_y, mu.shape[0], mu)
    sd2 = float(sigma_data) ** 2
    c_skip = sd2 / (sd2 + sig**2)
    rho_e = sy**2 * (1.0 / sig**2 + 1.0 / sd2)
    measured = op.regularized_pinv(op.A(mu), rho_e)
    return per_sample(c_skip, mu.dim()) * mu + per_sample(1.0 - c_skip, mu.dim()) * measured
