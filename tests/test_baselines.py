"""Zero-shot baselines on the Gaussian-mixture oracle (no training).

* every registered method runs on every interpolant it supports, returns finite samples of the
  right shape, reports exactly the NFE and backward passes it used (checked against an
  independent counter around the prior), and -- being written on noise levels sigma -- gives
  the same samples for every interpolant;
* PiGDM on a standard normal prior (where its Gaussian approximation is exact) matches the
  exact posterior: sliced Wasserstein within 1.3x the noise floor (protocol of
  exactpost.bench.gmm_eval), while deliberately wrong variants do not;
* DDNM and DDRM with sigma_y = 0 reproduce y exactly on observed pixels; DPS with step size 0
  is DDPM ancestral sampling, draw for draw;
* on small MCGdiff mixtures every method lands closer to the exact posterior than prior
  samples do (guidance points the right way), averaged over repeats and problems.

Spectral solves (DDRM, DDNM+) and PiGDM's push-through solve are checked against dense float64
SVDs in tests/test_baselines_solves.py; the translations to our coordinates against the
reference implementations' own update rules in tests/test_baselines_reference.py.
"""

from __future__ import annotations

import statistics

import pytest
import torch

from exactpost.core import samplers as S
from exactpost.baselines import METHODS, get_method, run_method
from exactpost.bench.gmm_eval import sw_to_posterior
from exactpost.priors.gmm import GaussianMixture, GMMProblem, mcgdiff_prior, mcgdiff_problem
from exactpost.core.interpolants import EDM, RectifiedFlow, VPCosine, VPLinear, get_interpolant
from exactpost.operators import DenseOperator, FunctionOperator, Inpainting, random_mask

INTERPOLANTS = ["edm", "vp-linear", "vp-cosine", "flow"]
TOL = 1.3


class CountingPrior:
    """Wraps a denoiser; counts forward calls and backward passes through its output
    independently of the baselines' own bookkeeping."""

    def __init__(self, denoiser):
        self.denoiser, self.forward, self.backward = denoiser, 0, 0
        outer = self

        class _Tap(torch.autograd.Function):
            @staticmethod
            def forward(ctx, x):
                return x.view_as(x)

            @staticmethod
            def backward(ctx, g):
                outer.backward += 1
                return g

        self._tap = _Tap

    def __call__(self, x, t):
        self.forward += 1
        out = self.denoiser(x, t)
        return self._tap.apply(out) if out.requires_grad else out


def small_problem(seed: int = 0, dy: int = 2) -> GMMProblem:
    return mcgdiff_problem(8, dy, torch.Generator().manual_seed(seed), spacing=2.0)


# (settings, nfe asked, NFE expected, backward passes expected)
COUNT_CASES = {
    "dps": [({}, 12, 12, 12)],
    "pigdm": [({}, 12, 12, 12), ({"weighting": "paper"}, 7, 7, 7)],
    "ddnm": [({}, 12, 12, 0)],
    "ddrm": [({}, 12, 12, 0)],
    "daps": [({"langevin_steps": 5}, 12, 10, 0), ({"ode_steps": 3, "x0_update": "gaussian", "tau": None}, 12, 12, 0)],
    "mpgd": [({}, 12, 12, 0)],
    "zero-shot-pivot": [({}, 12, 11, 0), ({"sampler": "ddim", "eta": 1.0}, 12, 12, 0)],
}


def test_registry_lists_the_zero_shot_methods_only():
    assert set(COUNT_CASES) == set(METHODS)
    for name, spec in METHODS.items():
        assert set(spec.interpolants) == set(INTERPOLANTS), name
        assert spec.default_nfe >= 1 and spec.fn.__doc__ and spec.description
    for name in ("eps", "palette", "nope"):  # the trained methods need their networks: exactpost.Model.restore
        with pytest.raises(ValueError, match="unknown method"):
            get_method(name)
    pb = small_problem()
    with pytest.raises(ValueError, match="no setting"):
        run_method("dps", pb.prior.denoiser(EDM()), DenseOperator(pb.A), pb.y[None], pb.sigma_y, zta=1.0)


@pytest.mark.parametrize("name", sorted(COUNT_CASES))
def test_each_method_on_each_interpolant_finite_counted_and_interpolant_free(name):
    pb = small_problem(1)
    op = DenseOperator(pb.A)
    B = 16
    y = pb.y.expand(B, -1)
    for settings, nfe, want_nfe, want_bw in COUNT_CASES[name]:
        outs = []
        for iname in METHODS[name].interpolants:
            interp = get_interpolant(iname)
            prior = CountingPrior(pb.prior.denoiser(interp))
            res = run_method(name, prior, op, y, pb.sigma_y, (B, 8), interpolant=interp, nfe=nfe,
                             generator=torch.Generator().manual_seed(3), **settings)
            assert res.x0.shape == (B, 8) and res.x0.dtype == torch.float64
            assert bool(torch.isfinite(res.x0).all()), (name, iname)
            assert (res.nfe, res.backward_passes) == (want_nfe, want_bw), (name, iname, settings)
            assert (prior.forward, prior.backward) == (want_nfe, want_bw), (name, iname, settings)
            assert res.settings["interpolant"] == iname
            outs.append(res.x0)
        if settings.get("sampler") == "ddim":  # the one case stepping on the interpolant's own time grid
            continue
        for other in outs[1:]:  # same sigma grid, same draws: the interpolant only rescales
            torch.testing.assert_close(other, outs[0], rtol=1e-6, atol=1e-6)


def test_default_nfe_are_the_papers():
    got = {name: spec.default_nfe for name, spec in METHODS.items()}
    assert got == {"dps": 1000, "pigdm": 100, "ddnm": 100, "ddrm": 20, "daps": 1000, "mpgd": 100,
                   "zero-shot-pivot": 100}
    assert METHODS["dps"].task_defaults["sr4"] == {"zeta": 0.15}


def gaussian_problem(m: int, sigma_y: float, seed: int = 0, d: int = 8) -> GMMProblem:
    g = torch.Generator().manual_seed(seed)
    prior = GaussianMixture(torch.ones(1), torch.zeros(1, d))
    A = torch.randn(m, d, generator=g, dtype=torch.float64) / d**0.5
    x0 = prior.sample(1, g)[0]
    y = A @ x0 + sigma_y * torch.randn(m, generator=g, dtype=torch.float64)
    return GMMProblem(prior, A, y, sigma_y, prior.posterior(A, y, sigma_y))


def pigdm_ratio(pb: GMMProblem, interp, nfe: int = 100, **settings) -> float:
    op = DenseOperator(pb.A)
    den = pb.prior.denoiser(interp)

    def draw(n, g):
        return run_method("pigdm", den, op, pb.y.expand(n, -1), pb.sigma_y, interpolant=interp, nfe=nfe,
                          generator=g, **settings).x0

    sw, floor = sw_to_posterior(pb, draw, n=1000, repeats=4)
    return sw / floor


@pytest.mark.parametrize("m,sigma_y,interp", [(6, 0.3, EDM()), (6, 0.05, VPLinear()), (4, 0.0, RectifiedFlow())],
                         ids=["m6-sy0.3-edm", "m6-sy0.05-vp", "m4-noiseless-flow"])
def test_pigdm_is_exact_on_a_standard_normal_prior(m, sigma_y, interp):
    ratio = pigdm_ratio(gaussian_problem(m, sigma_y), interp)
    assert ratio <= TOL, f"PiGDM SW/floor = {ratio:.2f}"


def test_pigdm_exactness_test_can_fail():
    """The same check rejects a mis-scaled guidance, the paper's heuristic weighting, and too
    few steps: the 1.3x tolerance discriminates."""
    pb = gaussian_problem(6, 0.3)
    for settings, nfe in [({"guidance_scale": 0.7}, 100), ({"weighting": "paper"}, 100), ({}, 10)]:
        ratio = pigdm_ratio(pb, EDM(), nfe=nfe, **settings)
        assert ratio > 1.5, (settings, nfe, ratio)


@pytest.mark.parametrize("name", ["ddnm", "ddrm"])
def test_noiseless_range_methods_reproduce_y_on_observed_pixels(name):
    g = torch.Generator().manual_seed(0)
    prior = mcgdiff_prior(16, g, spacing=2.0)
    B = 8
    op = Inpainting(random_mask((4, 4), 0.5, batch_size=B, generator=g), channels=1)  # per-sample masks
    x0 = prior.sample(B, g).reshape(B, 1, 4, 4)
    y = op.A(x0)
    flat = prior.denoiser(VPLinear())
    den = lambda x, t: flat(x.reshape(x.shape[0], -1), t).reshape(x.shape)  # noqa: E731
    res = run_method(name, den, op, y, 0.0, interpolant=VPLinear(), nfe=30, generator=g)
    observed = op.mask_like(y).expand_as(y).bool()
    torch.testing.assert_close(res.x0[observed], y[observed], rtol=0, atol=1e-12)
    assert float((res.x0 - x0)[~observed].abs().max()) > 1e-3  # the rest is sampled, not copied


@pytest.mark.parametrize("interp", [VPLinear(), EDM(), VPCosine()], ids=lambda i: i.name)
def test_dps_with_zero_step_is_ddpm_ancestral_sampling(interp):
    pb = small_problem(0)
    op = DenseOperator(pb.A)
    B, steps = 32, 40
    res = run_method("dps", pb.prior.denoiser(interp), op, pb.y.expand(B, -1), pb.sigma_y, interpolant=interp,
                     nfe=steps, generator=torch.Generator().manual_seed(5), zeta=0.0)
    ref = S.ddpm(pb.prior.denoiser(VPLinear()), (B, 8), interpolant=VPLinear(), steps=steps,
                 generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    torch.testing.assert_close(res.x0, ref.x0, rtol=1e-8, atol=1e-8)
    guided = run_method("dps", pb.prior.denoiser(interp), op, pb.y.expand(B, -1), pb.sigma_y,
                        interpolant=interp, nfe=steps, generator=torch.Generator().manual_seed(5))
    assert float((guided.x0 - ref.x0).abs().max()) > 1e-2  # and zeta > 0 does change it


# settings for the guidance check: the registry defaults at NFE 100, plus the two DAPS variants
GUIDED = [("dps", {}), ("pigdm", {}), ("ddnm", {}), ("ddrm", {}), ("mpgd", {}),
          ("daps", {}), ("daps", {"x0_update": "gaussian", "tau": None}), ("zero-shot-pivot", {})]


def guided_vs_prior(name: str, settings: dict) -> float:
    """mean SW(method, posterior) / mean SW(prior samples, posterior) over 3 MCGdiff problems
    (d = 8, dy = 2, overlapping components), 3 repeats of 500 samples each, NFE 100."""
    sw_m, sw_p = [], []
    for seed in range(3):
        pb = small_problem(seed)
        op = DenseOperator(pb.A)
        den = pb.prior.denoiser(EDM())

        def draw(n, g):
            return run_method(name, den, op, pb.y.expand(n, -1), pb.sigma_y, interpolant=EDM(), nfe=100,
                              generator=g, **settings).x0

        sw, _ = sw_to_posterior(pb, draw, n=500, repeats=3, generator=torch.Generator().manual_seed(seed))
        prior_sw, _ = sw_to_posterior(pb, lambda n, g: pb.prior.sample(n, g), n=500, repeats=3,
                                      generator=torch.Generator().manual_seed(seed))
        assert sw == sw and sw < float("inf")
        sw_m.append(sw)
        sw_p.append(prior_sw)
    return statistics.mean(sw_m) / statistics.mean(sw_p)


@pytest.mark.parametrize("name,settings", GUIDED, ids=[f"{n}-{'-'.join(s)}" if s else n for n, s in GUIDED])
def test_guidance_points_toward_the_posterior(name, settings):
    """Measured when written: 0.19 (PiGDM) to 0.46 (zero-shot pivot); threshold 0.75."""
    assert guided_vs_prior(name, settings) < 0.75


@pytest.mark.parametrize("name,settings", [("dps", {"zeta": 0.0}), ("mpgd", {"scale": 0.0})])
def test_guidance_check_fails_without_guidance(name, settings):
    """Negative control: with the guidance switched off the same check fails (ratio ~0.98)."""
    assert guided_vs_prior(name, settings) > 0.9


def test_methods_needing_an_svd_reject_other_operators_clearly():
    pb = small_problem(0)
    M = pb.A
    op = FunctionOperator(lambda x: x @ M.T, lambda y: y @ M, (8,), (2,))
    den = pb.prior.denoiser(EDM())
    y = pb.y.expand(4, -1)
    with pytest.raises(ValueError, match="no known SVD"):
        run_method("ddrm", den, op, y, pb.sigma_y)
    with pytest.raises(ValueError, match="no known SVD"):
        run_method("ddnm", den, op, y, pb.sigma_y)
    out = run_method("ddnm", den, op, y, 0.0, nfe=5, generator=torch.Generator().manual_seed(0))
    assert out.settings["variant"] == "ddnm" and bool(torch.isfinite(out.x0).all())
    out = run_method("pigdm", den, op, y, pb.sigma_y, nfe=5, generator=torch.Generator().manual_seed(0))
    assert bool(torch.isfinite(out.x0).all())  # PiGDM only needs the solves (CG here)


def test_inputs_are_checked():
    pb = small_problem(0)
    op = DenseOperator(pb.A)
    den = pb.prior.denoiser(EDM())
    y = pb.y.expand(4, -1)
    with pytest.raises(ValueError, match="shape"):
        run_method("ddnm", den, op, y, pb.sigma_y, (5, 8))
    with pytest.raises(ValueError, match="sigma_y"):
        run_method("ddnm", den, op, y, -1.0)
    with pytest.raises(ValueError, match="nfe"):
        run_method("daps", den, op, y, pb.sigma_y, nfe=3)
    with pytest.raises(ValueError, match="weighting"):
        run_method("pigdm", den, op, y, pb.sigma_y, weighting="nope")


@pytest.mark.parametrize("task", ["inpaint-random", "inpaint-box", "sr4", "deblur-gauss", "deblur-motion"])
def test_every_method_runs_on_the_task_registry_operators(task):
    """Image-shaped operators of exactpost.core.tasks (per-sample masks and motion kernels), a mixture
    prior on 1x8x8 images, per-sample sigma_y: finite samples of the right shape."""
    from exactpost.core.tasks import make_operator, simulate

    g = torch.Generator().manual_seed(0)
    B, shape = 4, (1, 8, 8)
    prior = mcgdiff_prior(64, g, spacing=0.25)
    op = make_operator(task, B, shape, generator=g)
    x0 = prior.sample(B, g).reshape((B,) + shape)
    sigma_y = torch.tensor([0.05, 0.0, 0.1, 0.05], dtype=torch.float64)
    y = simulate(op, x0, sigma_y, generator=g)
    flat = prior.denoiser(EDM())
    den = lambda x, t: flat(x.reshape(x.shape[0], -1), t).reshape(x.shape)  # noqa: E731
    fast = {"daps": {"ode_steps": 2, "langevin_steps": 3}}
    for name in METHODS:
        res = run_method(name, den, op, y, sigma_y, interpolant=EDM(), nfe=4, generator=g, task=task,
                         **fast.get(name, {}))
        assert res.x0.shape == (B,) + shape and bool(torch.isfinite(res.x0).all()), (name, task)
