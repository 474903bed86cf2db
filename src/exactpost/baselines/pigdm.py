"""PiGDM: pseudoinverse-guided diffusion models (Song, Vahdat, Mardani, Kautz, ICLR 2023).

PiGDM approximates p(x0 | x_t) by N(x0_hat(x_t), r_t^2 I), which makes p(y | x_t) Gaussian,
N(A x0_hat, r_t^2 A A^T + sigma_y^2 I), and adds its score to the prior score (paper, Eqs. 7-8):

    g = d/dx_t log p(y | x_t) = (dx0_hat/dx_t)^T A^T (r_t^2 A A^T + sigma_y^2 I)^{-1} (y - A x0_hat),

a vector-Jacobian product through the network (1 backward pass per step). r_t^2 is the
paper's sigma_t^2 / (1 + sigma_t^2) (the posterior variance under a standard normal prior).

The inverse is applied with the operators' exact solves through the push-through identity
A^T (A A^T + c I)^{-1} = (A^T A + c I)^{-1} A^T:

    A^T (r^2 A A^T + sigma_y^2 I)^{-1} v = op.regularized_pinv(v, sigma_y^2 / r^2) / r^2,

which for sigma_y = 0 is A^+ v / r^2 (the noiseless pseudo-inverse guidance of the paper's
title). See :func:`pigdm_vector`, checked against a dense float64 solve in the tests.

How g enters the sampler (``weighting``):

* ``"score"`` (default): as the paper's Eq. 7 says, g is added to the score, i.e. the
  DDIM(eta) step is taken with the posterior denoiser x0_hat + sigma^2 g (variance-exploding
  coordinates; the score of x~ = x_t / a is (x0_hat - x~)/sigma^2). With a standard normal
  prior the Gaussian approximation is exact, so this samples the exact posterior up to
  discretisation (tested: SW within 1.3x the noise floor).
* ``"paper"``: Algorithm 1 as implemented publicly (azula's ``PGDMSampler``; the official code
  is not public): after the DDIM step add alpha_s alpha_t J^T A^+(y - A x0_hat) in DDPM
  coordinates, which in x~ coordinates is ``x~' += r_t^2 g``. It over-weights the guidance
  by about r_t^2 / (sigma^2 - sigma'^2) relative to "score" (a heuristic step size).

Reference settings: DDIM with eta = 1.0 and 100 steps (paper's ImageNet experiments); the grid
is the respaced DDPM one (``"vp"``). Translation: everything in variance-exploding coordinates
on noise levels sigma, so every interpolant gets the same algorithm.
"""

from __future__ import annotations

import torch

from ..operators.base import LinearOperator
from ._common import ALL_INTERPOLANTS, BaselineResult, begin, ddim_ve_step

DEFAULTS = dict(eta=1.0, weighting="score", guidance_scale=1.0, grid="vp", sigma_min=0.002,
                sigma_max=80.0)
DEFAULT_NFE = 100
INTERPOLANTS = ALL_INTERPOLANTS
WEIGHTINGS = ("score", "paper")


def pigdm_vector(op: LinearOperator, residual: torch.Tensor, r2: float | torch.Tensor,
                 sigma_y: torch.Tensor) -> torch.Tensor:
    """A^T (r^2 A A^T + sigma_y^2 I)^{-1} residual, [B, *in_shape], by the push-through
    identity: regularized_pinv(residual, sigma_y^2 / r^2) / r^2 (sigma_y = 0: A^+ r / r^2).
    ``sigma_y``: [B] (>= 0); ``r2`` > 0."""
    r2 = torch.as_tensor(r2, dtype=residual.dtype, device=residual.device)
    if bool((r2 <= 0).any()):
        raise ValueError("r_t^2 must be > 0")
    rho = sigma_y.to(residual.dtype) ** 2 / r2
    return op.regularized_pinv(residual, rho) / r2


def pigdm(prior, op, y, sigma_y, shape=None, *, interpolant=None, nfe: int | None = None,
          generator: torch.Generator | None = None, dtype: torch.dtype | None = None,
          eta: float = DEFAULTS["eta"], weighting: str = DEFAULTS["weighting"],
          guidance_scale: float = DEFAULTS["guidance_scale"], grid: str = DEFAULTS["grid"],
          sigma_min: float = DEFAULTS["sigma_min"], sigma_max: float = DEFAULTS["sigma_max"]) -> BaselineResult:
    """Run PiGDM; ``nfe`` DDIM steps (default 100), each one NFE and one backward pass.

    ``guidance_scale`` multiplies g (1 = the paper's estimate); ``weighting`` chooses how g
    enters the step (module docstring). Returns :class:`BaselineResult`, x0 [B, *in_shape].
    """
    pb = begin("pigdm", INTERPOLANTS, prior, op, y, sigma_y, shape, interpolant, generator, dtype)
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must be in [0, 1], got {eta}")
    steps = pb.schedule(nfe, DEFAULT_NFE, grid, sigma_min, sigma_max)
    net = pb.net
    x = pb.sigmas[0] * pb.randn()
    for s, s_next in pb.transitions():
        r2 = s**2 / (1.0 + s**2)
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            x0 = net(xg, s)
            v = pigdm_vector(op, pb.y - op.A(x0.detach()), r2, pb.sigma_y)
            g = guidance_scale * net.vjp(x0, xg, v)
        x0 = x0.detach()
        z = pb.randn() if (s_next > 0 and eta > 0) else None
        if weighting == "score":
            x = ddim_ve_step(x, x0 + s**2 * g, s, s_next, eta, z)  # posterior denoiser
        else:
            x = ddim_ve_step(x, x0, s, s_next, eta, z) + r2 * g
    settings = dict(DEFAULTS, eta=eta, weighting=weighting, guidance_scale=guidance_scale,
                    grid=grid, sigma_min=sigma_min, sigma_max=sigma_max, steps=steps)
    return pb.result(x, settings)

