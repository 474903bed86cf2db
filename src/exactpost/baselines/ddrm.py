"""DDRM: denoising diffusion restoration models (Kawar, Elad, Ermon, Song, NeurIPS 2022).

DDRM runs in the spectral coordinates x_bar = V^T x of A = U diag(s) V^T (:mod:`.spectral`),
with y_bar_i = (U^T y)_i / s_i (noise std sigma_y / s_i). Given x~ at noise level sigma and
the network's x0_hat, the next x~ at sigma' < sigma is, per coordinate (paper Eq. 7-8,
variance-exploding form; z standard normal):

* unmeasured (s_i = 0):
  x'_i = x0_i + sqrt(1 - eta^2) sigma' (x_i - x0_i) / sigma + eta sigma' z_i;
* measured, sigma' < sigma_y / s_i:
  x'_i = x0_i + sqrt(1 - eta^2) sigma' (y_bar_i - x0_i) / (sigma_y / s_i) + eta sigma' z_i;
* measured, sigma' >= sigma_y / s_i:
  x'_i = (1 - eta_b) x0_i + eta_b y_bar_i + sqrt(sigma'^2 - eta_b^2 sigma_y^2 / s_i^2) z_i.

Initialisation (official code, ``efficient_generalized_steps``): x_bar_T = y_bar + sqrt(
sigma_T^2 - sigma_y^2 / s_i^2) z on measured coordinates with s_i sigma_T > sigma_y, and
sigma_T z elsewhere. The last step goes to sigma' = 0 and returns the spectral mix above.
sigma_y = 0 is the noiseless limit (every measured coordinate takes the third case).

Reference settings (paper and official README): 20 steps of the respaced 1000-step DDPM
schedule (``"vp"`` grid here), eta = 0.85, eta_b = 1. Translation: the coordinates x~ = x_t /
a are those the paper writes its Eqs. in (it samples x_t / sqrt(abar)); noise levels sigma,
so every interpolant runs the same algorithm; start at sigma_max = 80 (the project's range)
instead of DDPM's t = 1000.

Needs an operator with a known SVD (:func:`.spectral.spectral_view`): inpainting, denoising,
super-resolution by average pooling, colorization, orthonormal compressed sensing, FFT blur
and dense matrices; anything else raises ValueError.
"""

from __future__ import annotations

import math

import torch

from ._common import ALL_INTERPOLANTS, BaselineResult, begin
from .spectral import SpectralView, spectral_view

DEFAULTS = dict(eta=0.85, eta_b=1.0, grid="vp", sigma_min=0.002, sigma_max=80.0)
DEFAULT_NFE = 20
INTERPOLANTS = ALL_INTERPOLANTS


def ddrm_init(view: SpectralView, ybar: torch.Tensor, sy: torch.Tensor, sigma_T: float,
              z: torch.Tensor) -> torch.Tensor:
    """x_bar_T (spectral): ybar + sqrt(sigma_T^2 - (sigma_y/s)^2) z where s sigma_T > sigma_y,
    sigma_T z elsewhere."""
    noise_std = sy * view.inv_s()
    cond = view.measured & (sigma_T > noise_std)
    rem = torch.sqrt(torch.clamp(sigma_T**2 - noise_std**2, min=0.0))
    return torch.where(cond, ybar + rem * z, sigma_T * z)


def ddrm_update(view: SpectralView, x: torch.Tensor, x0: torch.Tensor, ybar: torch.Tensor,
                sy: torch.Tensor, sigma: float, sigma_next: float, eta: float, eta_b: float,
                z: torch.Tensor) -> torch.Tensor:
    """One DDRM step in spectral coordinates (module docstring). x, x0, ybar = spec(A^+ y)
    and z are spectral tensors; sy is sigma_y broadcastable against them."""
    noise_std = sy * view.inv_s()
    c = math.sqrt(1.0 - eta**2) * sigma_next
    unmeasured = x0 + c * (x - x0) / sigma + eta * sigma_next * z
    safe = torch.where(noise_std > 0, noise_std, torch.ones_like(noise_std))
    noisy = x0 + c * (ybar - x0) / safe + eta * sigma_next * z
    rem = torch.sqrt(torch.clamp(sigma_next**2 - eta_b**2 * noise_std**2, min=0.0))
    clean = (1.0 - eta_b) * x0 + eta_b * ybar + rem * z
    measured = torch.where(sigma_next < noise_std, noisy, clean)
    return torch.where(view.measured, measured, unmeasured)


def ddrm(prior, op, y, sigma_y, shape=None, *, interpolant=None, nfe: int | None = None,
         generator: torch.Generator | None = None, dtype: torch.dtype | None = None,
         eta: float = DEFAULTS["eta"], eta_b: float = DEFAULTS["eta_b"], grid: str = DEFAULTS["grid"],
         sigma_min: float = DEFAULTS["sigma_min"], sigma_max: float = DEFAULTS["sigma_max"]) -> BaselineResult:
    """Run DDRM; ``nfe`` steps (default 20), one NFE each, no backward passes.
    Returns :class:`BaselineResult`, x0 [B, *op.in_shape]."""
    pb = begin("ddrm", INTERPOLANTS, prior, op, y, sigma_y, shape, interpolant, generator, dtype)
    if not (0.0 <= eta <= 1.0 and 0.0 <= eta_b <= 1.0):
        raise ValueError(f"eta and eta_b must be in [0, 1], got {eta}, {eta_b}")
    view = spectral_view(op, pb.y)
    steps = pb.schedule(nfe, DEFAULT_NFE, grid, sigma_min, sigma_max)
    with torch.no_grad():
        ybar = view.spec(op.pinv(pb.y))
        sy = pb.sy(ybar.dim())
        xs = ddrm_init(view, ybar, sy, pb.sigmas[0], view.spec(pb.randn()))
        x = view.unspec(xs)
        for s, s_next in pb.transitions():
            x0 = pb.net(x, s)
            z = pb.randn() if s_next > 0 else torch.zeros_like(x)
            xs = ddrm_update(view, xs, view.spec(x0), ybar, sy, s, s_next, eta, eta_b, view.spec(z))
            x = view.unspec(xs)
    settings = dict(DEFAULTS, eta=eta, eta_b=eta_b, grid=grid, sigma_min=sigma_min,
                    sigma_max=sigma_max, steps=steps)
    return pb.result(x, settings)
