"""Zero-shot pivoting: the unconditional prior queried at the EPS pivot.

:class:`exactpost.core.posterior.ZeroShotPivotDenoiser` is a posterior denoiser
D_zs(x_t, t) = D_prior(a(t) mu*(x_t, t, y), t) built from the prior alone (no training); this
module runs it through one of the project's samplers behind the common baseline interface.
Defaults: EDM Heun (the sampler the EPS paper uses) with ``heun_steps_for_nfe(nfe)`` steps
(2 N - 1 NFE), sigma from 80 to 0.002; ``sampler="ddim"`` (eta) or ``"edm_euler"`` take
``nfe`` steps. No backward passes.
"""

from __future__ import annotations

import torch

from ..core import samplers as S
from ..core.posterior import ZeroShotPivotDenoiser
from ._common import ALL_INTERPOLANTS, BaselineResult, begin, resolve_steps

DEFAULTS = dict(sampler="edm_heun", eta=0.0, sigma_min=0.002, sigma_max=80.0)
DEFAULT_NFE = 100
INTERPOLANTS = ALL_INTERPOLANTS
SAMPLERS = ("edm_heun", "edm_euler", "ddim")


def zero_shot_pivot(prior, op, y, sigma_y, shape=None, *, interpolant=None, nfe: int | None = None,
                    generator: torch.Generator | None = None, dtype: torch.dtype | None = None,
                    sampler: str = DEFAULTS["sampler"], eta: float = DEFAULTS["eta"],
                    sigma_min: float = DEFAULTS["sigma_min"],
                    sigma_max: float = DEFAULTS["sigma_max"]) -> BaselineResult:
    """Sample with the zero-shot pivot denoiser; at most ``nfe`` NFE (default 100).
    Returns :class:`BaselineResult`, x0 [B, *op.in_shape]."""
    pb = begin("zero-shot-pivot", INTERPOLANTS, prior, op, y, sigma_y, shape, interpolant, generator, dtype)
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    budget = resolve_steps(nfe, DEFAULT_NFE)
    den = ZeroShotPivotDenoiser(pb.prior, op, pb.y, pb.sigma_y, pb.interpolant)
    common = dict(interpolant=pb.interpolant, sigma_min=sigma_min, sigma_max=sigma_max,
                  generator=pb.generator, dtype=pb.dtype, device=pb.device)
    with torch.no_grad():
        if sampler == "edm_heun":
            steps = S.heun_steps_for_nfe(budget)
            out = S.edm_heun(den, pb.shape, steps=steps, **common)
        elif sampler == "edm_euler":
            steps = budget
            out = S.edm_euler(den, pb.shape, steps=steps, **common)
        else:
            steps = budget
            out = S.ddim(den, pb.shape, steps=steps, eta=eta, **common)
    settings = dict(DEFAULTS, sampler=sampler, eta=eta, sigma_min=sigma_min, sigma_max=sigma_max,
                    steps=steps)
    return pb.result(out.x0, settings, nfe=out.nfe)
