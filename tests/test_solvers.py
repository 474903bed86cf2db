"""The sigma-sequence solvers (heun_sigmas, dpmpp_2m), schedules and sampler specs against
closed forms.

A Gaussian prior N(mu, diag(c^2)) has the exact denoiser D(x~, sigma) = mu + c^2 / (c^2 +
sigma^2) (x~ - mu), and the probability-flow ODE dx~/dsigma = (x~ - D) / sigma moves each
coordinate as x~(sigma) - mu = (x~(sigma_0) - mu) sqrt(c^2 + sigma^2) / sqrt(c^2 + sigma_0^2).
The variances span 0.05^2 to 2^2, so the flow has the stiff narrow directions a posterior has
in measured directions. Convergence order: errors of the flow map sigma_max -> sigma_end on
schedules of K, 2K, 4K, 8K levels; the order is log2 of successive error ratios.
"""

from __future__ import annotations

import math

import pytest
import torch

from exactpost.priors.gmm import GaussianMixture
from exactpost.core.interpolants import EDM, VPLinear
from exactpost.core.sampler_spec import DEFAULT, LEGACY, SamplerSpec, parse_spec, parse_specs
from exactpost.core.samplers import dpmpp_2m, edm_heun, heun_sigmas
from exactpost.core.schedules import check_sigmas, karras_sigmas, loglinear_sigmas, with_zero

MU = torch.tensor([1.5, -0.5, 0.3, 2.0], dtype=torch.float64)
C = torch.tensor([0.7, 0.05, 2.0, 0.2], dtype=torch.float64)
SIGMA_MAX, SIGMA_END = 80.0, 0.02


def prior() -> GaussianMixture:
    return GaussianMixture(torch.ones(1), MU.unsqueeze(0), torch.diag(C**2).unsqueeze(0))


def exact_flow(x_start: torch.Tensor, sigma0: float, sigma1: float) -> torch.Tensor:
    return MU + (x_start - MU) * torch.sqrt(C**2 + sigma1**2) / torch.sqrt(C**2 + sigma0**2)


def noise(n: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, len(MU), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


SOLVERS = {
    "heun": (lambda den, shape, sig, **kw: heun_sigmas(den, shape, sig, **kw), 2.0),
    "euler": (lambda den, shape, sig, **kw: heun_sigmas(den, shape, sig, heun=False, **kw), 1.0),
    "dpmpp2m": (lambda den, shape, sig, **kw: dpmpp_2m(den, shape, sig, **kw), 2.0),
    "dpmpp1": (lambda den, shape, sig, **kw: dpmpp_2m(den, shape, sig, second_order=False, **kw), 1.0),
}


def flow_errors(solver, interp, schedule, levels=(8, 16, 32, 64)) -> list[float]:
    e = noise()
    target = exact_flow(SIGMA_MAX * e, SIGMA_MAX, SIGMA_END)
    errs = []
    for k in levels:
        out = solver(prior().denoiser(interp), e.shape, schedule(k), interpolant=interp, noise=e, dtype=torch.float64)
        errs.append(float((out.x0 - target).abs().max()))
    return errs


@pytest.mark.parametrize("name", list(SOLVERS))
@pytest.mark.parametrize("schedule", ["karras", "loglinear"])
def test_convergence_order_on_the_gaussian_flow(name, schedule):
    solver, order = SOLVERS[name]
    sched = ((lambda k: karras_sigmas(k, SIGMA_END, SIGMA_MAX, 7.0)) if schedule == "karras"
             else (lambda k: loglinear_sigmas(k, SIGMA_END, SIGMA_MAX)))
    errs = flow_errors(solver, EDM(), sched)
    orders = [math.log2(a / b) for a, b in zip(errs, errs[1:])]
    assert errs[-1] < errs[0], errs
    # the last halving is in the asymptotic range: the measured order is the solver's
    assert abs(orders[-1] - order) < 0.3, (orders, errs)


@pytest.mark.parametrize("name", list(SOLVERS))
def test_solvers_serve_any_interpolant(name):
    """The VP-linear denoiser through the same solver gives the same flow map (the solvers
    step x~ = x_t / a); the schedule stays inside VP-linear's sigma range."""
    solver, _ = SOLVERS[name]
    sched = [10.0, 3.0, 1.0, 0.3, 0.1, SIGMA_END]
    e = noise(8, 1)
    outs = [solver(prior().denoiser(i), e.shape, sched, interpolant=i, noise=e, dtype=torch.float64).x0
            for i in (EDM(), VPLinear())]
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-9, atol=1e-9)


def test_dpmpp_is_exact_for_a_constant_denoiser():
    """D = m (a point-mass prior): the exponential integrator is exact, x~(sigma) = m +
    (sigma / sigma_0)(x~_0 - m), on any schedule, and lands on m at 0."""
    m = torch.tensor([0.5, -2.0, 1.0, 3.0], dtype=torch.float64)
    e = noise(5, 2)
    sched = [50.0, 7.0, 2.5, 0.4, 0.01]
    for second in (True, False):
        out = dpmpp_2m(lambda x, t: m.expand_as(x), e.shape, sched, noise=e, dtype=torch.float64,
                       second_order=second)
        torch.testing.assert_close(out.x0, m + 0.01 / 50.0 * (50.0 * e - m), rtol=0, atol=1e-12)
        assert out.nfe == len(sched) - 1
        end = dpmpp_2m(lambda x, t: m.expand_as(x), e.shape, with_zero(sched), noise=e, dtype=torch.float64)
        torch.testing.assert_close(end.x0, m.expand_as(e), rtol=0, atol=0)


def test_edm_heun_is_heun_sigmas_on_the_edm_grid():
    e = noise(6, 3)
    den = prior().denoiser(EDM())
    a = edm_heun(den, e.shape, steps=7, sigma_max=80.0, sigma_min=0.01, rho=5.0, noise=e, dtype=torch.float64)
    b = heun_sigmas(den, e.shape, with_zero(karras_sigmas(7, 0.01, 80.0, 5.0)), noise=e, dtype=torch.float64)
    torch.testing.assert_close(a.x0, b.x0, rtol=0, atol=0)
    assert a.nfe == b.nfe == 13


def sample_moments(sampler, n: int = 20_000, seed: int = 4):
    x = sampler(prior().denoiser(EDM()), (n, len(MU)), generator=torch.Generator().manual_seed(seed),
                dtype=torch.float64).x0
    return x.mean(0), x.std(0)


STOCHASTIC = {
    "dpmpp2m_sde": lambda den, shape, **kw: dpmpp_2m(den, shape, with_zero(loglinear_sigmas(200, 0.005, 80.0)),
                                                     eta=1.0, **kw),
    # churn's bias falls with the step: 64 levels with gamma = 0.41 over-disperse the narrow
    # coordinates by 2.6-3.1 % (measured), 256 levels with gamma = 0.31 do not
    "heun_churn": lambda den, shape, **kw: heun_sigmas(den, shape, with_zero(karras_sigmas(256, 0.002, 80.0)),
                                                       churn=80.0, **kw),
}


@pytest.mark.parametrize("name", list(STOCHASTIC))
def test_stochastic_solvers_sample_the_gaussian(name):
    mean, std = sample_moments(STOCHASTIC[name])
    # standard errors: mean c / sqrt(n) <= 0.015, std ratio 1 / sqrt(2 n) = 0.005
    assert float(((mean - MU) / C).abs().max()) < 0.03, mean
    assert float((std / C - 1).abs().max()) < 0.03, std


def test_stochastic_solvers_use_only_the_generator():
    state = torch.random.get_rng_state()
    den = prior().denoiser(EDM())
    for fn in STOCHASTIC.values():
        a = fn(den, (3, len(MU)), generator=torch.Generator().manual_seed(7), dtype=torch.float64).x0
        b = fn(den, (3, len(MU)), generator=torch.Generator().manual_seed(7), dtype=torch.float64).x0
        assert torch.equal(a, b)
    assert torch.equal(state, torch.random.get_rng_state())


def test_schedules():
    k = karras_sigmas(10, 0.002, 80.0, 7.0)
    assert len(k) == 10 and k[0] == 80.0 and k[-1] == 0.002
    assert all(a > b for a, b in zip(k, k[1:]))
    ll = loglinear_sigmas(5, 0.01, 100.0)
    torch.testing.assert_close(torch.tensor(ll), torch.tensor([100.0, 10.0, 1.0, 0.1, 0.01]), rtol=1e-12, atol=0)
    # rho -> inf approaches the log-linear schedule
    torch.testing.assert_close(torch.tensor(karras_sigmas(5, 0.01, 100.0, 1e6)), torch.tensor(ll), rtol=1e-4, atol=0)
    assert karras_sigmas(1, 0.002, 80.0) == [80.0] and with_zero([3.0, 1.0]) == [3.0, 1.0, 0.0]
    assert check_sigmas([2, 1, 0]) == [2.0, 1.0, 0.0]
    for bad in ([1.0], [1.0, 2.0], [1.0, 0.0, 0.0], [1.0, -1.0], [math.inf, 1.0], [2.0, 0.0, -1.0]):
        with pytest.raises(ValueError):
            check_sigmas(bad)
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        karras_sigmas(4, 1.0, 0.5)
    with pytest.raises(ValueError, match="positive integer"):
        loglinear_sigmas(0)


def test_spec_budget_and_text_form():
    heun, dpm = parse_spec("heun"), parse_spec("dpmpp2m:loglinear:smin=0.01:start=40")
    assert heun == LEGACY and heun.name == "heun:karras:rho=7:smin=0.002"
    assert dpm == SamplerSpec("dpmpp2m", "loglinear", sigma_min=0.01, start=40.0)
    for spec in (heun, dpm, DEFAULT, parse_spec("heun:churn=5:rho=3"), parse_spec("dpmpp2m:eta=0.5")):
        assert parse_spec(spec.name) == spec
    assert heun.levels_for_nfe(19) == 10 and heun.nfe_of_levels(10) == 19 and heun.levels_for_nfe(1) == 1
    assert dpm.levels_for_nfe(19) == 19 and dpm.nfe_of_levels(19) == 19
    sig = dpm.sigmas(9, sigma_max=1000.0)
    assert sig[0] == 40.0 and sig[-2] == 0.01 and sig[-1] == 0.0 and len(sig) == 10
    assert heun.sigmas(5, 80.0)[0] == 80.0
    den = prior().denoiser(EDM())
    for spec in (heun, dpm, parse_spec("euler:loglinear"), parse_spec("dpmpp1")):
        for nfe in (1, 4, 9):
            out = spec.run(den, (2, len(MU)), nfe, 80.0, generator=torch.Generator().manual_seed(0))
            assert out.nfe <= nfe and out.nfe == spec.nfe_of_levels(spec.levels_for_nfe(nfe))
    assert parse_specs("heun, dpmpp2m ,heun") == [LEGACY, SamplerSpec("dpmpp2m")]


@pytest.mark.parametrize("text,match", [
    ("", "empty"), ("rk4", "unknown solver"), ("heun:cosine", "neither a schedule"), ("heun:foo=1", "unknown key"),
    ("heun:rho=x", "must be a number"), ("heun:rho=-1", "rho must be"), ("dpmpp2m:churn=1", "heun solver only"),
    ("heun:eta=1", "dpmpp2m solver only"), ("heun:smin=1:start=0.5", "start must be"),
])
def test_bad_specs(text, match):
    with pytest.raises(ValueError, match=match):
        parse_spec(text)
