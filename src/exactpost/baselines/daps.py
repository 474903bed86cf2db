"""DAPS: decoupled annealing posterior sampling (Zhang et al., CVPR 2025).

DAPS anneals a noise level sigma_0 > sigma_1 > ... > sigma_{N-1} > sigma_N = 0 and at each
level *decouples* consecutive samples through x0:

1. x0_hat = the probability-flow ODE solution from x~ at sigma_k down to ``ode_sigma_min``
   (EDM Euler on a rho = 7 grid, ``ode_steps`` NFE) -- an estimate of a draw of p(x0 | x~);
2. x0_y ~ approx. p(x0 | x~, y) proportional to N(x0; x0_hat, r_k^2 I) N(y; A x0, tau^2 I),
   r_k = sigma_k, either by ``langevin_steps`` steps of Langevin dynamics

       x0 <- x0 + lr_k [ -A^T (A x0 - y) / tau^2 + (x0_hat - x0) / r_k^2 ] + sqrt(2 lr_k) z,
       lr_k = lr (1 + (k / (N + 1)) (lr_min_ratio - 1)),

   started at x0_hat (the reference), or -- for linear Gaussian problems -- by the exact draw
   of that Gaussian (``x0_update="gaussian"``): mean x0_hat + A^+_rho (y - A x0_hat),
   covariance tau^2 (A^T A + rho I)^{-1}, rho = tau^2 / r_k^2, drawn without square roots by
   :func:`exactpost.core.posterior.sample_sigma_star` (the operators' exact solves);
3. x~ = x0_y + sigma_{k+1} z.

NFE = N x ode_steps; the Langevin steps use only A and A^T (no network, no backward pass).

Reference settings (official code, zhangbingliang2019/DAPS, ``configs/sampler/edm_daps.yaml``
and the pixel-space task configs, "DAPS-1K"): N = 200 annealing levels on EDM's rho = 7 grid
from sigma_max = 100 to sigma_min = 0.1, ode_steps = 5 down to 0.01, 100 Langevin steps with
lr = 1e-4, lr_min_ratio = 0.01, tau = 0.01 (for measurements with sigma_y = 0.05), prior
r_k = sigma_k ("gaussian" prior solver). Here ``nfe`` sets N = nfe // ode_steps (default
nfe = 1000 gives the reference N = 200). ``tau=None`` uses the true sigma_y instead of 0.01.
Translation: DAPS is written for EDM's x~ already; other interpolants only change how the
network is queried. Deviation: the official ``operator.gradient`` scaling of the data term is
taken as the Gaussian score A^T (y - A x)/tau^2; the Langevin noise is drawn from the explicit
generator.
"""

from __future__ import annotations

import math

import torch

from ..core.batching import per_sample
from ..core.posterior import sample_sigma_star
from ._common import ALL_INTERPOLANTS, BaselineResult, begin, sigma_grid

DEFAULTS = dict(ode_steps=5, ode_sigma_min=0.01, sigma_max=100.0, sigma_min=0.1, rho=7.0,
                x0_update="langevin", langevin_steps=100, lr=1e-4, lr_min_ratio=0.01, tau=0.01)
DEFAULT_NFE = 1000
INTERPOLANTS = ALL_INTERPOLANTS
X0_UPDATES = ("langevin", "gaussian")


def daps(prior, op, y, sigma_y, shape=None, *, interpolant=None, nfe: int | None = None,
         generator: torch.Generator | None = None, dtype: torch.dtype | None = None,
         ode_steps: int = DEFAULTS["ode_steps"], ode_sigma_min: float = DEFAULTS["ode_sigma_min"],
         sigma_max: float = DEFAULTS["sigma_max"], sigma_min: float = DEFAULTS["sigma_min"],
         rho: float = DEFAULTS["rho"], x0_update: str = DEFAULTS["x0_update"],
         langevin_steps: int = DEFAULTS["langevin_steps"], lr: float = DEFAULTS["lr"],
         lr_min_ratio: float = DEFAULTS["lr_min_ratio"], tau: float | None = DEFAULTS["tau"]) -> BaselineResult:
    """Run DAPS; N = nfe // ode_steps annealing levels (default nfe 1000), ode_steps NFE
    each, no backward passes. Returns :class:`BaselineResult`, x0 [B, *op.in_shape]."""
    pb = begin("daps", INTERPOLANTS, prior, op, y, sigma_y, shape, interpolant, generator, dtype)
    if x0_update not in X0_UPDATES:
        raise ValueError(f"x0_update must be one of {X0_UPDATES}, got {x0_update!r}")
    ode_steps = int(ode_steps)
    if ode_steps < 1 or not 0 < ode_sigma_min < sigma_min:
        raise ValueError(f"need ode_steps >= 1 and 0 < ode_sigma_min < sigma_min, got "
                         f"{ode_steps}, {ode_sigma_min}, {sigma_min}")
    tau_v = pb.sigma_y if tau is None else torch.full_like(pb.sigma_y, float(tau))
    if x0_update == "langevin" and bool((tau_v <= 0).any()):
        raise ValueError("Langevin needs tau > 0 (tau=None with sigma_y = 0 is noiseless); "
                         "use x0_update='gaussian' for the exact noiseless update")
    n_anneal = pb.schedule(nfe, DEFAULT_NFE, "karras", sigma_min, sigma_max, per_step=ode_steps, rho=rho)
    sig, net = pb.sigmas, pb.net
    x = sig[0] * pb.randn()
    with torch.no_grad():
        for k in range(n_anneal):
            s = sig[k]
            # 1. x0_hat: Euler on the probability-flow ODE from s to ode_sigma_min
            ode = sigma_grid("karras", ode_steps + 1, ode_sigma_min, s, rho=rho)[:-1]
            x0 = x
            for a, b in zip(ode[:-1], ode[1:]):
                x0 = x0 + (b - a) * (x0 - net(x0, a)) / a
            # 2. x0 | x~, y
            if x0_update == "gaussian":
                mean = x0 + op.regularized_pinv(pb.y - op.A(x0), (tau_v / s) ** 2)
                x0y = mean + sample_sigma_star(x0, s, op, tau_v, generator=pb.generator)
            else:
                lr_k = lr * (1.0 + (k / (n_anneal + 1)) * (lr_min_ratio - 1.0))
                inv_tau2 = per_sample(1.0 / tau_v**2, x0.dim())
                x0y = x0
                for _ in range(int(langevin_steps)):
                    score = op.At(pb.y - op.A(x0y)) * inv_tau2 + (x0 - x0y) / s**2
                    x0y = x0y + lr_k * score + math.sqrt(2.0 * lr_k) * pb.randn()
            # 3. renoise to the next level
            s_next = sig[k + 1]
            x = x0y + s_next * pb.randn() if s_next > 0 else x0y
    settings = dict(DEFAULTS, ode_steps=ode_steps, ode_sigma_min=ode_sigma_min, sigma_max=sigma_max,
                    sigma_min=sigma_min, rho=rho, x0_update=x0_update, langevin_steps=langevin_steps,
                    lr=lr, lr_min_ratio=lr_min_ratio, tau=tau, annealing_steps=n_anneal)
    return pb.result(x, settings)
