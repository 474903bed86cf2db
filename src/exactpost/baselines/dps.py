"""DPS: diffusion posterior sampling (Chung et al., ICLR 2023, Algorithm 1).

At each step of DDPM ancestral sampling, from x_i at noise level sigma_i to sigma_{i-1}:

    x0_hat   = D(x_i)                                           (1 NFE, with autograd)
    x'_{i-1} = ancestral DDPM step from x_i given x0_hat
    x_{i-1}  = x'_{i-1} - zeta_i grad_{x_i} ||y - A x0_hat(x_i)||^2,
    zeta_i   = zeta / ||y - A x0_hat(x_i)||                      (the paper's normalisation)

so the correction is ``2 zeta grad_{x_i} ||y - A x0_hat||`` (1 backward pass per step). The
official code (DPS2022/diffusion-posterior-sampling, ``PosteriorSampling``) writes
``x_t -= scale * grad ||y - A x0_hat||``, i.e. ``scale = 2 zeta``; its FFHQ configs use
scale 0.5 for inpainting (zeta 0.25) and 0.3 for super-resolution and deblurring
(zeta 0.15), with 1000 DDPM steps and sigma_y = 0.05. The default here, zeta = 0.5, is the
code's default scale 1.0; :data:`TASK_ZETA` holds the per-task reference values.

Translation to our interpolants: the step is written in DDPM coordinates x_i = a_vp(sigma) x~
with a_vp = 1/sqrt(1 + sigma^2), so in the variance-exploding x~ used here it reads
``x~_{i-1} -= 2 zeta grad_{x~_i} ||r|| / (a_vp(sigma_i) a_vp(sigma_{i-1}))``. On a VP
interpolant this is the reference update exactly; on EDM and flow it is the same update at the
same noise levels. The ancestral step is :func:`~exactpost.baselines._common.ddim_ve_step`
with eta = 1 on the ``"vp"`` grid (respaced DDPM), which with zeta = 0 is exactly
:func:`exactpost.core.samplers.ddpm` on :class:`~exactpost.core.interpolants.VPLinear` (tested).

Deviations: (1) the reference takes one norm over the whole batch (it runs batch size 1);
here each sample has its own norm, so samples do not interact; (2) the reference ADM network
learns its variance; our priors do not, so the ancestral noise is DDPM's beta~ ("fixedsmall");
(3) the grid runs from sigma_max = 80 (the project's EDM range) instead of DDPM's t = 1000.
"""

from __future__ import annotations

import torch

from ._common import ALL_INTERPOLANTS, BaselineResult, a_vp, begin, ddim_ve_step, unit_residual_gradient

DEFAULTS = dict(zeta=0.5, eta=1.0, grid="vp", sigma_min=0.002, sigma_max=80.0)
DEFAULT_NFE = 1000
INTERPOLANTS = ALL_INTERPOLANTS
#: reference step sizes of the official FFHQ configs, as zeta = scale / 2
TASK_ZETA = {"inpaint-random": 0.25, "inpaint-box": 0.25, "sr4": 0.15,
             "deblur-gauss": 0.15, "deblur-motion": 0.15}


def dps(prior, op, y, sigma_y, shape=None, *, interpolant=None, nfe: int | None = None,
        generator: torch.Generator | None = None, dtype: torch.dtype | None = None,
        zeta: float = DEFAULTS["zeta"], eta: float = DEFAULTS["eta"], grid: str = DEFAULTS["grid"],
        sigma_min: float = DEFAULTS["sigma_min"], sigma_max: float = DEFAULTS["sigma_max"]) -> BaselineResult:
    """Run DPS; ``nfe`` steps (default 1000), each one NFE and one backward pass.

    Args:
        prior: differentiable denoiser D(x_t, t) -> x0_hat.
        op, y, sigma_y: operator, measurement [B, *out_shape], noise std (DPS ignores sigma_y;
            it enters only through the choice of zeta).
        zeta: step size, zeta_i = zeta / ||y - A x0_hat|| on grad ||.||^2 (module docstring).
        eta: ancestral noise (1 = DDPM, as in the paper).
    Returns: :class:`BaselineResult` with x0 [B, *op.in_shape].
    """
    pb = begin("dps", INTERPOLANTS, prior, op, y, sigma_y, shape, interpolant, generator, dtype)
    if zeta < 0:
        raise ValueError(f"zeta must be >= 0, got {zeta}")
    steps = pb.schedule(nfe, DEFAULT_NFE, grid, sigma_min, sigma_max)
    net = pb.net
    x = pb.sigmas[0] * pb.randn()
    for s, s_next in pb.transitions():
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            x0 = net(xg, s)
            v = unit_residual_gradient(op, pb.y - op.A(x0.detach()))  # d||r||/d x0_hat
            grad = net.vjp(x0, xg, v)  # d||r||/d x~
        x0 = x0.detach()
        z = pb.randn() if (s_next > 0 and eta > 0) else None
        x_next = ddim_ve_step(x, x0, s, s_next, eta, z)
        x = x_next - (2.0 * zeta / (a_vp(s) * a_vp(s_next))) * grad
    settings = dict(DEFAULTS, zeta=zeta, eta=eta, grid=grid, sigma_min=sigma_min,
                    sigma_max=sigma_max, steps=steps)
    return pb.result(x, settings)
