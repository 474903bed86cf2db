"""Our translations against the reference implementations' own update rules.

Each reference is re-written here from its public code, in its own DDPM coordinates
x_t = sqrt(abar) x0 + sqrt(1 - abar) e (VPLinear interpolant, abar = 1 / (1 + sigma^2)), with
autograd where the reference uses it and dense pseudo-inverses, and run on the same noise
levels with the same random draws as our variance-exploding implementation:

* DPS2022/diffusion-posterior-sampling (``PosteriorSampling`` + DDPM posterior step):
  x_{t-1} = mean + sqrt(beta~) z - scale grad_{x_t} ||y - A x0_hat||, scale = 2 zeta;
* KellyYutongHe/mpgd_pytorch (``mpgd_wo_proj`` + ``DDIMx0``): x0' = x0 - scale / sqrt(abar_prev)
  grad_{x0} ||y - A x0||, then DDIM(eta) with the network's eps;
* wyhuai/DDNM (``ddnm_diffusion``): x0' = x0 - A^+(A x0 - y), x_next = sqrt(abar') x0' +
  sqrt(1 - abar') (eta z + sqrt(1 - eta^2) eps);
* probabilists/azula (``PGDMSampler``, noiseless PiGDM): DDIM step + alpha_s alpha_t
  grad_{x_t} <A^+ y - A^+ A x0_hat, x0_hat>.
"""

from __future__ import annotations

import math

import torch

from exactpost.baselines import run_method, sigma_grid
from exactpost.priors.gmm import mcgdiff_problem
from exactpost.core.interpolants import VPLinear
from exactpost.operators import DenseOperator

VP = VPLinear()
B, STEPS = 16, 25


def setup(sigma_y: float | None = None):
    pb = mcgdiff_problem(8, 3, torch.Generator().manual_seed(4), spacing=2.0)
    sy = pb.sigma_y if sigma_y is None else sigma_y
    y = pb.y.expand(B, -1)
    if sigma_y == 0.0:
        y = (pb.A @ pb.posterior.sample(1, torch.Generator().manual_seed(9))[0]).expand(B, -1)
    D = pb.prior.denoiser(VP)
    sig = sigma_grid("vp", STEPS, 0.002, 80.0)
    abar = [1.0 / (1.0 + s**2) for s in sig]  # abar = 1 at sigma = 0
    times = [float(VP.t_of_sigma(s)) if s > 0 else 0.0 for s in sig]
    return pb, sy, y, D, abar, times


def call(D, x, t):
    return D(x, torch.full((x.shape[0],), t, dtype=x.dtype))


def test_dps_matches_the_official_update():
    pb, sy, y, D, abar, times = setup()
    zeta = 0.4
    ours = run_method("dps", D, DenseOperator(pb.A), y, sy, interpolant=VP, nfe=STEPS, zeta=zeta,
                      generator=torch.Generator().manual_seed(0)).x0
    g = torch.Generator().manual_seed(0)
    x = math.sqrt(1 - abar[0]) * torch.randn(B, 8, generator=g, dtype=torch.float64)
    for i in range(STEPS):
        a, a_prev = abar[i], abar[i + 1]
        x = x.detach().requires_grad_(True)
        x0 = call(D, x, times[i])
        norm = torch.linalg.vector_norm(y - x0 @ pb.A.T, dim=1).sum()  # per-sample norms
        (grad,) = torch.autograd.grad(norm, x)
        x0, x = x0.detach(), x.detach()
        alpha, beta = a / a_prev, 1 - a / a_prev
        mean = math.sqrt(a_prev) * beta / (1 - a) * x0 + math.sqrt(alpha) * (1 - a_prev) / (1 - a) * x
        if a_prev < 1:
            mean = mean + math.sqrt((1 - a_prev) / (1 - a) * beta) * torch.randn(B, 8, generator=g, dtype=torch.float64)
        x = mean - 2 * zeta * grad
    torch.testing.assert_close(ours, x, rtol=1e-7, atol=1e-7)


def test_mpgd_matches_the_official_update():
    pb, sy, y, D, abar, times = setup()
    scale, eta = 2.0, 0.5
    ours = run_method("mpgd", D, DenseOperator(pb.A), y, sy, interpolant=VP, nfe=STEPS, scale=scale, eta=eta,
                      generator=torch.Generator().manual_seed(0)).x0
    g = torch.Generator().manual_seed(0)
    x = math.sqrt(1 - abar[0]) * torch.randn(B, 8, generator=g, dtype=torch.float64)
    for i in range(STEPS):
        a, a_prev = abar[i], abar[i + 1]
        x0 = call(D, x, times[i])
        eps = (x - math.sqrt(a) * x0) / math.sqrt(1 - a)
        x0 = x0.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(torch.linalg.vector_norm(y - x0 @ pb.A.T, dim=1).sum(), x0)
        x0 = x0.detach() - scale / math.sqrt(a_prev) * grad
        c = eta * math.sqrt((1 - a_prev) / (1 - a)) * math.sqrt(1 - a / a_prev)
        x = math.sqrt(a_prev) * x0 + math.sqrt(max(0.0, 1 - a_prev - c**2)) * eps
        if a_prev < 1:
            x = x + c * torch.randn(B, 8, generator=g, dtype=torch.float64)
    torch.testing.assert_close(ours, x, rtol=1e-7, atol=1e-7)


def test_ddnm_matches_the_official_update():
    pb, _, y, D, abar, times = setup(sigma_y=0.0)
    eta = 0.85
    ours = run_method("ddnm", D, DenseOperator(pb.A), y, 0.0, interpolant=VP, nfe=STEPS, eta=eta,
                      generator=torch.Generator().manual_seed(0)).x0
    pinv = torch.linalg.pinv(pb.A)
    g = torch.Generator().manual_seed(0)
    x = math.sqrt(1 - abar[0]) * torch.randn(B, 8, generator=g, dtype=torch.float64)
    for i in range(STEPS):
        a, a_next = abar[i], abar[i + 1]
        x0 = call(D, x, times[i])
        et = (x - math.sqrt(a) * x0) / math.sqrt(1 - a)
        x0 = x0 - (x0 @ pb.A.T - y) @ pinv.T
        z = torch.randn(B, 8, generator=g, dtype=torch.float64) if a_next < 1 else torch.zeros_like(x)
        x = math.sqrt(a_next) * x0 + math.sqrt(1 - a_next) * (eta * z + math.sqrt(1 - eta**2) * et)
    torch.testing.assert_close(ours, x, rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(x @ pb.A.T, y, rtol=0, atol=1e-9)


def test_pigdm_paper_weighting_matches_azula():
    pb, _, y, D, abar, times = setup(sigma_y=0.0)
    ours = run_method("pigdm", D, DenseOperator(pb.A), y, 0.0, interpolant=VP, nfe=STEPS, eta=1.0,
                      weighting="paper", generator=torch.Generator().manual_seed(0)).x0
    pinv = torch.linalg.pinv(pb.A)
    g = torch.Generator().manual_seed(0)
    x = math.sqrt(1 - abar[0]) * torch.randn(B, 8, generator=g, dtype=torch.float64)
    for i in range(STEPS):
        al_t, sg_t = math.sqrt(abar[i]), math.sqrt(1 - abar[i])
        al_s, sg_s = math.sqrt(abar[i + 1]), math.sqrt(1 - abar[i + 1])
        tau = 1 - (al_t / al_s * sg_s / sg_t) ** 2
        x = x.detach().requires_grad_(True)
        x_hat = call(D, x, times[i])
        v = (y @ pinv.T - (x_hat.detach() @ pb.A.T) @ pinv.T)
        (grad,) = torch.autograd.grad(x_hat, x, v)
        x_hat, x = x_hat.detach(), x.detach()
        x_s = al_s * x_hat + sg_s * math.sqrt(1 - tau) / sg_t * (x - al_t * x_hat)
        if sg_s > 0:
            x_s = x_s + sg_s * math.sqrt(tau) * torch.randn(B, 8, generator=g, dtype=torch.float64)
        x = x_s + al_s * al_t * grad
    torch.testing.assert_close(ours, x, rtol=1e-7, atol=1e-7)
