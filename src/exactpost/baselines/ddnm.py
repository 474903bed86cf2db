"""DDNM and DDNM+: range-null space decomposition (Wang, Yu, Zhang, ICLR 2023).

DDNM (noiseless, Algorithm 1): keep the network's estimate in the null space of A and replace
its range-space part by the measurement,

    x0_hat = D(x_t),    x0_rn = A^+ y + (I - A^+ A) x0_hat = x0_hat + A^+ (y - A x0_hat),

then step to the next noise level with the network's own noise estimate e = (x~ - x0_hat)/sigma
(official code, ``ddnm_diffusion``):

    x~' = x0_rn + sigma' (eta z + sqrt(1 - eta^2) e)                 (variance-exploding form)

(DDNM's eta is the share of fresh noise in sigma', not DDIM's eta). Works for any operator:
A^+ is ``op.pinv`` (closed forms; conjugate gradients for a :class:`FunctionOperator`).

DDNM+ (noisy, Sec. 3.3 and Eqs. 17/51 of the paper; ``ddnm_plus_diffusion`` in the code), in
the spectral coordinates of A = U diag(s) V^T (:mod:`.spectral`), coordinate i with
singular value s_i > 0 and y_bar_i / s_i the measured value:

    lambda_i = 1                                      if sigma' >= sigma_y / s_i
             = s_i sigma' sqrt(1 - eta^2) / sigma_y    otherwise
    x0_rn_i  = x0_hat_i - lambda_i (x0_hat_i - y_bar_i / s_i)
    x~'_i    = x0_rn_i + sqrt(sigma'^2 - (sigma_y / s_i)^2) z_i          (sigma' > sigma_y / s_i)
             = x0_rn_i + eta sigma' z_i                                  (sigma' <= sigma_y / s_i)

and the noiseless rule on unmeasured coordinates (s_i = 0). The measurement noise carried in
by lambda_i (std lambda_i sigma_y / s_i) plus the fresh noise adds up to sigma'. (The paper
and code write a_{t-1} sigma_y with sigma_t the DDPM std; in x~ = x_t / a the a's cancel.)
DDNM+ needs the SVD, so it runs on the operators of :mod:`.spectral`; with sigma_y > 0 and
another operator, ``variant="auto"`` raises ValueError (``variant="ddnm"`` forces the
noiseless rule, which then copies the noise of y into the sample).

Reference settings (official README/configs): 100 steps of the respaced 1000-step DDPM
schedule (``"vp"`` grid here), eta = 0.85, no time travel (travel_length = 1, repeat 1; not
implemented). Translation: variance-exploding coordinates on noise levels sigma, so every
interpolant runs the same algorithm; start at sigma_max = 80 instead of DDPM's t = 1000.
"""

from __future__ import annotations

import math

import torch

from ._common import ALL_INTERPOLANTS, BaselineResult, begin
from .spectral import SpectralView, has_known_svd, spectral_view

DEFAULTS = dict(eta=0.85, variant="auto", grid="vp", sigma_min=0.002, sigma_max=80.0)
DEFAULT_NFE = 100
INTERPOLANTS = ALL_INTERPOLANTS
VARIANTS = ("auto", "ddnm", "ddnm+")


def ddnm_plus_update(view: SpectralView, x: torch.Tensor, x0: torch.Tensor, ybar: torch.Tensor,
                     sy: torch.Tensor, sigma: float, sigma_next: float, eta: float,
                     z: torch.Tensor) -> torch.Tensor:
    """One DDNM+ step in spectral coordinates (module docstring). x, x0, ybar, z are spectral
    ([B, ...]; ybar = spec(A^+ y)); sy is sigma_y broadcastable against them ([B, 1, ...]).
    Returns the next x~ in spectral coordinates."""
    s = view.s
    meas = view.measured
    noise_std = sy * view.inv_s()  # sigma_y / s_i on measured coordinates
    e = (x - x0) / sigma
    null_next = x0 + sigma_next * (eta * z + math.sqrt(1.0 - eta**2) * e)
    if sigma_next == 0.0:  # lambda = 1 only if sigma_y = 0; fresh noise 0
        lam = torch.where(sy > 0, torch.zeros_like(noise_std), torch.ones_like(noise_std))
        return torch.where(meas, x0 - lam * (x0 - ybar), x0)
    big = sigma_next >= noise_std  # also every coordinate when sigma_y = 0
    lam_small = s * sigma_next * math.sqrt(1.0 - eta**2) / torch.where(sy > 0, sy, torch.ones_like(sy))
    lam = torch.where(big, torch.ones_like(lam_small), lam_small)
    x0_rn = x0 - lam * (x0 - ybar)
    if not bool((sy > 0).any()):  # noiseless: plain DDNM in every coordinate
        return torch.where(meas, x0_rn + sigma_next * (eta * z + math.sqrt(1.0 - eta**2) * e), null_next)
    fresh_big = torch.sqrt(torch.clamp(sigma_next**2 - noise_std**2, min=0.0))
    meas_next = x0_rn + torch.where(big, fresh_big, eta * sigma_next * torch.ones_like(fresh_big)) * z
    # sigma_y = 0 samples of a mixed batch keep the noiseless rule
    meas_next = torch.where(sy > 0, meas_next,
                            x0_rn + sigma_next * (eta * z + math.sqrt(1.0 - eta**2) * e))
    return torch.where(meas, meas_next, null_next)


def ddnm(prior, op, y, sigma_y, shape=None, *, interpolant=None, nfe: int | None = None,
         generator: torch.Generator | None = None, dtype: torch.dtype | None = None,
         eta: float = DEFAULTS["eta"], variant: str = DEFAULTS["variant"], grid: str = DEFAULTS["grid"],
         sigma_min: float = DEFAULTS["sigma_min"], sigma_max: float = DEFAULTS["sigma_max"]) -> BaselineResult:
    """Run DDNM (sigma_y = 0) or DDNM+ (sigma_y > 0); ``nfe`` steps (default 100), one NFE
    each, no backward passes. ``variant``: "auto" (DDNM+ iff some sigma_y > 0), "ddnm",
    "ddnm+". Returns :class:`BaselineResult`, x0 [B, *op.in_shape]."""
    pb = begin("ddnm", INTERPOLANTS, prior, op, y, sigma_y, shape, interpolant, generator, dtype)
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must be in [0, 1], got {eta}")
    noisy = bool((pb.sigma_y > 0).any())
    use_plus = variant == "ddnm+" or (variant == "auto" and noisy)
    if use_plus and not has_known_svd(op):
        spectral_view(op, pb.y)  # raises the ValueError naming the supported operators
    steps = pb.schedule(nfe, DEFAULT_NFE, grid, sigma_min, sigma_max)
    x = pb.sigmas[0] * pb.randn()
    with torch.no_grad():
        if use_plus:
            view = spectral_view(op, x)
            ybar = view.spec(op.pinv(pb.y))
            sy = pb.sy(ybar.dim())
            xs = view.spec(x)
        for s, s_next in pb.transitions():
            x0 = pb.net(x, s)
            z = pb.randn() if s_next > 0 else torch.zeros_like(x)
            if use_plus:
                xs = ddnm_plus_update(view, xs, view.spec(x0), ybar, sy, s, s_next, eta, view.spec(z))
                x = view.unspec(xs)
            else:
                x0_rn = x0 + op.pinv(pb.y - op.A(x0))
                e = (x - x0) / s
                x = x0_rn + s_next * (eta * z + math.sqrt(1.0 - eta**2) * e)
    settings = dict(DEFAULTS, eta=eta, variant="ddnm+" if use_plus else "ddnm", grid=grid,
                    sigma_min=sigma_min, sigma_max=sigma_max, steps=steps)
    return pb.result(x, settings)
