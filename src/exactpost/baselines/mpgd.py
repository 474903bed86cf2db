"""MPGD: manifold preserving guided diffusion (He et al., ICLR 2024), pixel space, without
the manifold projection (``mpgd_wo_proj`` of the official code, KellyYutongHe/mpgd_pytorch).

At each DDIM step the network's x0_hat is moved by a gradient step on the measurement loss
*with respect to x0_hat itself* (no backpropagation through the network):

    x0'  = x0_hat - c_t grad_{x0} ||y - A x0||  at x0 = x0_hat,
           grad_{x0} ||y - A x0|| = -A^T (y - A x0) / ||y - A x0||     (closed form, per sample)
    c_t  = scale / sqrt(abar_{t-1})        (abar of the step's *target* time, official code)
    x~'  = x0' + sqrt(sigma'^2 - c^2) e + c z,  e = (x~ - x0_hat) / sigma,
           c = eta sigma' sqrt(1 - sigma'^2 / sigma^2)        (DDIM, the network's own e)

Reference settings (official scripts, FFHQ 4x super-resolution, sigma_y = 0.05): DDIM with
eta = 0.5 and 100 steps at scale 4 (50 steps: 7.5; 20 steps: 17.5). Translation: 1 /
sqrt(abar_{t-1}) = sqrt(1 + sigma'^2) (VP-equivalent), the DDIM step in variance-exploding
coordinates on the respaced DDPM grid (``"vp"``), so every interpolant runs the same
algorithm. Deviation: the reference takes one norm over the whole batch (batch size 1 in its
runs); here each sample has its own norm.
"""

from __future__ import annotations

import math

import torch

from ._common import ALL_INTERPOLANTS, BaselineResult, begin, ddim_ve_step, unit_residual_gradient

DEFAULTS = dict(scale=4.0, eta=0.5, grid="vp", sigma_min=0.002, sigma_max=80.0)
DEFAULT_NFE = 100
INTERPOLANTS = ALL_INTERPOLANTS


def mpgd(prior, op, y, sigma_y, shape=None, *, interpolant=None, nfe: int | None = None,
         generator: torch.Generator | None = None, dtype: torch.dtype | None = None,
         scale: float = DEFAULTS["scale"], eta: float = DEFAULTS["eta"], grid: str = DEFAULTS["grid"],
         sigma_min: float = DEFAULTS["sigma_min"], sigma_max: float = DEFAULTS["sigma_max"]) -> BaselineResult:
    """Run MPGD; ``nfe`` DDIM steps (default 100), one NFE each, no backward passes.
    Returns :class:`BaselineResult`, x0 [B, *op.in_shape]."""
    pb = begin("mpgd", INTERPOLANTS, prior, op, y, sigma_y, shape, interpolant, generator, dtype)
    if scale < 0 or not 0.0 <= eta <= 1.0:
        raise ValueError(f"need scale >= 0 and eta in [0, 1], got {scale}, {eta}")
    steps = pb.schedule(nfe, DEFAULT_NFE, grid, sigma_min, sigma_max)
    x = pb.sigmas[0] * pb.randn()
    with torch.no_grad():
        for s, s_next in pb.transitions():
            x0 = pb.net(x, s)
            grad = unit_residual_gradient(op, pb.y - op.A(x0))
            x0_guided = x0 - scale * math.sqrt(1.0 + s_next**2) * grad
            z = pb.randn() if (s_next > 0 and eta > 0) else None
            x = ddim_ve_step(x, x0_guided, s, s_next, eta, z, eps=(x - x0) / s)
    settings = dict(DEFAULTS, scale=scale, eta=eta, grid=grid, sigma_min=sigma_min,
                    sigma_max=sigma_max, steps=steps)
    return pb.result(x, settings)
