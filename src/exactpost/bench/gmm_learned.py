"""Does the EPS objective learn the right thing? A small MLP on a Gaussian-mixture prior.

For one fixed dense operator A (and sigma_y), train an :class:`~exactpost.nets.mlp.MLPDenoiser`

* with the **EPS objective**: x0 ~ prior, x~ = x0 + sigma e, y = A x0 + sigma_y n,
  mu* = x~ + A^+_rho (y - A x~), loss w(sigma) ||D(mu*, sigma, cond = y) - x0||^2 / d,
  amortised over y (fresh draws every step); used through EPSPosteriorDenoiser;
* as a plain **prior** (denoising score matching, same network size and budget), used
  through the zero-shot pivot (ZeroShotPivotDenoiser);

then sample the posterior for measurements y of fresh prior draws and score both against
the exact posterior with the sliced-Wasserstein protocol of :mod:`.gmm_eval`.
Noise levels follow EDM's recipe scaled to the data: ln sigma ~ N(ln(sigma_data / 0.5) - 1.2,
1.2^2), a share ``uniform_frac`` (default a fifth) of each batch log-uniform on [0.002, sigma_max].

:func:`denoiser_gap` compares a trained EPS network with the exact posterior denoiser
(:class:`~exactpost.priors.gmm.GMMEPSOracle`) at given noise levels, to see where its error is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..priors.gmm import GMMEPSOracle, GMMProblem, GaussianMixture, mcgdiff_measurement
from ..core.interpolants import EDM
from ..nets.mlp import MLPDenoiser
from ..operators import DenseOperator
from ..core.posterior import EPSPosteriorDenoiser, ZeroShotPivotDenoiser, pivot_from_sigma
from ..core.samplers import edm_heun
from ..training.objectives import NoiseLevels
from .gmm_eval import sw_to_posterior


@dataclass
class MLPTraining:
    steps: int = 3000
    batch: int = 512
    lr: float = 2e-3
    width: int = 256
    depth: int = 3
    sigma_max: float = 80.0
    #: share of each batch drawn log-uniformly on [0.002, sigma_max] (the rest log-normal);
    #: 0.2 is NoiseLevels' default, so the defaults reproduce the original recipe exactly
    uniform_frac: float = 0.2


def data_std(prior: GaussianMixture) -> float:
    """Root-mean-square standard deviation of the prior per coordinate."""
    mean = (prior.weights[:, None] * prior.means).sum(0)
    second = (prior.weights[:, None] * (prior.means**2 + torch.diagonal(prior.covs, dim1=1, dim2=2))).sum(0)
    return float((second - mean**2).mean().sqrt())


def train_mlp(prior: GaussianMixture, A: torch.Tensor, sigma_y: float, kind: str, cfg: MLPTraining,
              generator: torch.Generator) -> MLPDenoiser:
    """Train an MLP with the ``eps`` or ``prior`` objective (see the module docstring)."""
    if kind not in ("eps", "prior"):
        raise ValueError(f"kind must be 'eps' or 'prior', got {kind!r}")
    d, m = prior.d, A.shape[0]
    sd = data_std(prior)
    model = MLPDenoiser(d, cond_dim=m if kind == "eps" else 0, width=cfg.width, depth=cfg.depth, sigma_data=sd,
                        generator=generator)
    noise = NoiseLevels(p_mean=math.log(sd / 0.5) - 1.2, sigma_max=cfg.sigma_max, uniform_frac=cfg.uniform_frac)
    op = DenseOperator(A.float())
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / cfg.steps)))
    Af = A.float()
    for _ in range(cfg.steps):
        x0 = prior.sample(cfg.batch, generator).float()
        sigma = noise.sample(cfg.batch, generator)
        x_t = x0 + sigma[:, None] * torch.randn(x0.shape, generator=generator)
        if kind == "eps":
            y = x0 @ Af.T + sigma_y * torch.randn(cfg.batch, m, generator=generator)
            inp, cond = pivot_from_sigma(x_t, sigma, y, op, torch.full((cfg.batch,), sigma_y)), y
        else:
            inp, cond = x_t, None
        D = model(inp, sigma, cond)
        loss = (model.loss_weight(sigma) * ((D - x0) ** 2).mean(1)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


def learned_draw(problem: GMMProblem, model: MLPDenoiser, kind: str, steps: int, sigma_max: float,
                 sigma_min: float, nfe_out: list | None = None):
    """Draw function (n, generator) -> [n, d] posterior samples from the learned network:
    EPS through the posterior denoiser, the prior through the zero-shot pivot; EDM Heun
    from the 1-NFE posterior mean (one extra NFE)."""
    op = DenseOperator(problem.A)

    @torch.no_grad()
    def draw(n: int, g: torch.Generator) -> torch.Tensor:
        y = problem.y.expand(n, -1).to(torch.float64)
        if kind == "eps":
            den = EPSPosteriorDenoiser(lambda mu, cond, sigma: model(mu, sigma, cond.float()), op, y,
                                       problem.sigma_y, EDM(), cond=y)
        else:
            den = ZeroShotPivotDenoiser(lambda x, t: model(x, t), op, y, problem.sigma_y, EDM())
        e = sigma_max * torch.randn(n, problem.prior.d, generator=g, dtype=torch.float64)
        mean = den(e, sigma_max)  # the 1-NFE posterior mean
        out = edm_heun(den, (n, problem.prior.d), steps=steps, sigma_max=sigma_max, sigma_min=sigma_min,
                       generator=g, dtype=torch.float64, init_mean=mean)
        if nfe_out is not None:
            nfe_out.append(out.nfe + 1)
        return out.x0

    return draw


def same_operator_problems(problem: GMMProblem, count: int, generator: torch.Generator) -> list[GMMProblem]:
    """``problem`` plus ``count - 1`` more with the same prior, A and sigma_y and y from fresh
    prior draws (the amortised setting the network was trained for)."""
    out = [problem]
    for _ in range(count - 1):
        x0 = problem.prior.sample(1, generator)[0]
        y = problem.A @ x0 + problem.sigma_y * torch.randn(problem.A.shape[0], generator=generator, dtype=torch.float64)
        out.append(GMMProblem(problem.prior, problem.A, y, problem.sigma_y,
                              problem.prior.posterior(problem.A, y, problem.sigma_y)))
    return out


@torch.no_grad()
def denoiser_gap(problem: GMMProblem, model: MLPDenoiser, sigmas, n: int, generator: torch.Generator) -> list[dict]:
    """Where the learned EPS denoiser is wrong, for this problem's y: x0 ~ p(x0 | y),
    x~ = x0 + sigma e, mu* the pivot; per noise level, ``excess`` = mean over samples and
    coordinates of (D_theta(mu*, sigma, y) - D*(mu*))^2 with D* the exact posterior denoiser,
    and ``mmse`` = that of (D*(mu*) - x0)^2 (the irreducible error, for scale)."""
    op = DenseOperator(problem.A)
    oracle = GMMEPSOracle(problem.prior, op, problem.sigma_y)
    x0 = problem.posterior.sample(n, generator)
    y = problem.y.to(torch.float64).expand(n, -1)
    sy = torch.full((n,), float(problem.sigma_y), dtype=torch.float64)
    out = []
    for s in sigmas:
        sig = torch.full((n,), float(s), dtype=torch.float64)
        mu = pivot_from_sigma(x0 + float(s) * torch.randn(x0.shape, generator=generator, dtype=torch.float64),
                              sig, y, op, sy)
        learned = model(mu, sig, y.float()).double()
        exact = oracle(mu, None, sig)
        out.append({"sigma": float(s), "excess": float(((learned - exact) ** 2).mean()),
                    "mmse": float(((exact - x0) ** 2).mean())})
    return out
