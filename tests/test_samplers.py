"""Samplers against closed forms on a Gaussian prior, where the probability-flow ODE and
the ancestral chain are solvable exactly.

For x0 ~ N(mu, c^2 I), x~ = x_t / a satisfies dx~/dsigma = sigma (x~ - mu) / (c^2 + sigma^2),
so the ODE maps a start x~_T = sigma_max e to x0 = mu + (sigma_max e - mu) c / sqrt(c^2 +
sigma_max^2), whatever the interpolant. Stochastic samplers must produce N(mu, c^2 I).
"""

from __future__ import annotations

import math

import pytest
import torch

from exactpost.priors.gmm import GaussianMixture
from exactpost.core.interpolants import EDM, RectifiedFlow, VPCosine, VPLinear
from exactpost.core.samplers import (
    ddim,
    ddpm,
    edm_euler,
    edm_heun,
    edm_sigma_grid,
    flow_euler,
    flow_heun,
    heun_steps_for_nfe,
)

MU, C, D = 1.5, 0.7, 3


def gaussian_prior() -> GaussianMixture:
    return GaussianMixture(torch.ones(1), torch.full((1, D), MU), C**2 * torch.eye(D).unsqueeze(0))


def exact_ode_map(noise: torch.Tensor, sigma_max: float) -> torch.Tensor:
    return MU + (sigma_max * noise - MU) * C / math.sqrt(C**2 + sigma_max**2)


ODE_SAMPLERS = [
    ("edm_heun", edm_heun, EDM()),
    ("edm_heun_vp", edm_heun, VPLinear()),
    ("edm_euler", edm_euler, EDM()),
    ("ddim_vp_linear", ddim, VPLinear()),
    ("ddim_vp_cosine", ddim, VPCosine()),
    ("ddim_flow", ddim, RectifiedFlow()),
    ("flow_euler", flow_euler, RectifiedFlow()),
    ("flow_heun", flow_heun, RectifiedFlow()),
    ("flow_heun_vp", flow_heun, VPLinear()),
]


@pytest.mark.parametrize("name,sampler,interp", ODE_SAMPLERS, ids=[s[0] for s in ODE_SAMPLERS])
def test_ode_samplers_converge_to_the_exact_flow_map(name, sampler, interp):
    prior = gaussian_prior()
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(64, D, generator=g, dtype=torch.float64)
    target = exact_ode_map(noise, 80.0)
    errors = []
    for steps in (8, 32, 256):
        out = sampler(prior.denoiser(interp), (64, D), interpolant=interp, steps=steps, noise=noise,
                      dtype=torch.float64, sigma_max=80.0, sigma_min=1e-3)
        errors.append(float((out.x0 - target).abs().max()))
    assert errors[0] > errors[1] > errors[2], errors
    assert errors[2] < errors[0] / 20 and errors[2] < 0.05, errors


def test_heun_is_second_order():
    prior = gaussian_prior()
    noise = torch.randn(64, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    target = exact_ode_map(noise, 80.0)
    err = lambda steps, fn: float((fn(prior.denoiser(EDM()), (64, D), steps=steps, noise=noise,  # noqa: E731
                                      dtype=torch.float64).x0 - target).abs().max())
    heun_ratio = err(16, edm_heun) / err(64, edm_heun)
    euler_ratio = err(16, edm_euler) / err(64, edm_euler)
    assert heun_ratio > 3 * euler_ratio, (heun_ratio, euler_ratio)


STOCHASTIC = [
    ("ddpm_vp", lambda den, shape, **kw: ddpm(den, shape, interpolant=VPLinear(), steps=500, **kw), VPLinear()),
    ("ddim_eta_half_flow", lambda den, shape, **kw: ddim(den, shape, interpolant=RectifiedFlow(), steps=200, eta=0.5, **kw), RectifiedFlow()),
    ("edm_churn", lambda den, shape, **kw: edm_heun(den, shape, steps=64, churn=40, **kw), EDM()),
]


@pytest.mark.parametrize("name,sampler,interp", STOCHASTIC, ids=[s[0] for s in STOCHASTIC])
def test_stochastic_samplers_sample_the_prior(name, sampler, interp):
    n = 20_000
    out = sampler(gaussian_prior().denoiser(interp), (n, D), generator=torch.Generator().manual_seed(2),
                  dtype=torch.float64)
    x = out.x0
    # standard errors: mean C/sqrt(n) = 0.005, std C/sqrt(2n) = 0.0035
    assert float((x.mean(0) - MU).abs().max()) < 0.03
    assert float((x.std(0) / C - 1).abs().max()) < 0.03


def test_nfe_counts_and_trajectory():
    den = gaussian_prior().denoiser(EDM())
    shape = (4, D)
    assert edm_heun(den, shape, steps=10).nfe == 19
    assert edm_euler(den, shape, steps=10).nfe == 10
    assert flow_heun(gaussian_prior().denoiser(RectifiedFlow()), shape, steps=10).nfe == 19
    assert flow_euler(gaussian_prior().denoiser(RectifiedFlow()), shape, steps=10).nfe == 10
    assert ddim(gaussian_prior().denoiser(VPLinear()), shape, steps=7).nfe == 7
    out = edm_heun(den, shape, steps=5, return_trajectory=True)
    assert len(out.trajectory) == out.nfe == 9 and len(out.times) == 9
    assert out.times[0] == pytest.approx(80.0) and out.times[-1] == pytest.approx(0.002)
    assert edm_heun(den, shape, steps=5).trajectory is None
    assert heun_steps_for_nfe(100) == 50 and 2 * heun_steps_for_nfe(20) - 1 == 19


def test_sigma_grid():
    grid = edm_sigma_grid(5, 0.002, 80.0)
    assert len(grid) == 6 and grid[0] == pytest.approx(80.0) and grid[-2] == pytest.approx(0.002)
    assert grid[-1] == 0.0 and all(a > b for a, b in zip(grid, grid[1:]))


def test_denoiser_receives_batched_times_and_generator_is_explicit():
    seen = []

    def den(x, t):
        seen.append(t)
        return torch.zeros_like(x)

    state = torch.random.get_rng_state()
    a = edm_heun(den, (3, D), steps=3, churn=5, generator=torch.Generator().manual_seed(5)).x0
    b = edm_heun(den, (3, D), steps=3, churn=5, generator=torch.Generator().manual_seed(5)).x0
    assert torch.equal(a, b)
    assert torch.equal(state, torch.random.get_rng_state()), "a sampler touched the global RNG"
    assert all(isinstance(t, torch.Tensor) and t.shape == (3,) for t in seen)


def test_init_mean_shifts_the_start():
    den = gaussian_prior().denoiser(EDM())
    noise = torch.randn(4, D, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    m = torch.full((4, D), 3.0, dtype=torch.float64)
    out = edm_euler(lambda x, t: x, (4, D), steps=1, noise=noise, init_mean=m, dtype=torch.float64,
                    return_trajectory=True)
    # identity denoiser: the first evaluation sees exactly the start point
    torch.testing.assert_close(out.trajectory[0], 80.0 * noise + m)
    with pytest.raises(ValueError, match="init_mean"):
        edm_heun(den, (4, D), init_mean=torch.zeros(2, D))


def test_bad_arguments():
    den = gaussian_prior().denoiser(EDM())
    with pytest.raises(ValueError, match="steps"):
        edm_heun(den, (2, D), steps=0)
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        edm_heun(den, (2, D), sigma_min=5.0, sigma_max=1.0)
    with pytest.raises(ValueError, match="eta"):
        ddim(den, (2, D), eta=1.5)
    with pytest.raises(ValueError, match="noise has shape"):
        edm_heun(den, (2, D), noise=torch.zeros(3, D))
    with pytest.raises(ValueError, match="returned shape"):
        edm_heun(lambda x, t: x[:1], (2, D))
