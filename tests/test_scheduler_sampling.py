"""Diffusers schedulers driven by exactpost denoisers (exactpost.backbones.scheduler_sample).

* exactness: a Gaussian prior N(m, 0.25 I) in R^8, a random 4 x 8 operator, sigma_y = 0.1;
  the exact EPS network of the prior (closed form, exactpost.priors.gmm.GMMEPSOracle) stands in for
  the network inside the EPS posterior denoiser, and each listed scheduler's samples are
  within 1.3x the noise floor of the exact posterior in sliced Wasserstein (protocol of
  exactpost.bench.gmm_eval, n = 500, 4 repeats); too few steps fail the same check;
* every listed scheduler, built from a tiny random UNet2DModel folder's own scheduler config,
  returns finite samples of the right shape with one network call per step.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers")

from backbone_helpers import save_flat, tiny_unet  # noqa: E402
from exactpost.backbones import DRIVABLE, BackboneError, load_backbone, make_scheduler, scheduler_sample  # noqa: E402
from exactpost.backbones.layout import read_json, resolve_folder  # noqa: E402
from exactpost.bench.gmm_eval import sw_to_posterior  # noqa: E402
from exactpost.priors.gmm import GaussianMixture, GMMEPSOracle, GMMProblem  # noqa: E402
from exactpost.core.interpolants import EDM, VPLinear  # noqa: E402
from exactpost.nets import as_denoiser  # noqa: E402
from exactpost.operators import DenseOperator  # noqa: E402
from exactpost.core.posterior import EPSPosteriorDenoiser  # noqa: E402

TOL = 1.3
BASE = {"_class_name": "DDPMScheduler", "num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02,
        "beta_schedule": "linear", "prediction_type": "epsilon", "clip_sample": False}


def gaussian_problem(m: int = 4, d: int = 8, sigma_y: float = 0.1, seed: int = 0) -> GMMProblem:
    g = torch.Generator().manual_seed(seed)
    mean = 0.5 * torch.randn(1, d, generator=g, dtype=torch.float64)
    prior = GaussianMixture(torch.ones(1), mean, 0.25 * torch.eye(d, dtype=torch.float64)[None])
    A = torch.randn(m, d, generator=g, dtype=torch.float64) / d**0.5
    x0 = prior.sample(1, g)[0]
    y = A @ x0 + sigma_y * torch.randn(m, generator=g, dtype=torch.float64)
    return GMMProblem(prior, A, y, sigma_y, prior.posterior(A, y, sigma_y))


@pytest.fixture(scope="module")
def problem():
    return gaussian_problem()


def ratio(pb: GMMProblem, name: str, steps: int, interp) -> float:
    op = DenseOperator(pb.A)
    net = GMMEPSOracle(pb.prior, op, pb.sigma_y)
    sched = make_scheduler(name, BASE)

    def draw(n, g):
        den = EPSPosteriorDenoiser(net, op, pb.y.expand(n, -1), pb.sigma_y, interp)
        out = scheduler_sample(den, sched, (n, pb.prior.d), steps=steps, interpolant=interp, generator=g,
                               dtype=torch.float64)
        assert out.nfe == steps
        return out.x0

    sw, floor = sw_to_posterior(pb, draw, n=500, repeats=4)
    return sw / floor


@pytest.mark.parametrize("name,steps,interp", [
    ("DDIMScheduler", 50, EDM()), ("DDPMScheduler", 100, VPLinear()), ("EulerDiscreteScheduler", 50, VPLinear()),
    ("EulerAncestralDiscreteScheduler", 100, EDM()), ("DPMSolverMultistepScheduler", 20, EDM()),
    ("UniPCMultistepScheduler", 20, VPLinear()),
])
def test_scheduler_driven_eps_matches_the_exact_posterior(problem, name, steps, interp):
    r = ratio(problem, name, steps, interp)
    assert r <= TOL, f"{name} at {steps} steps: SW / floor = {r:.2f}"


@pytest.mark.parametrize("name,steps", [("DDPMScheduler", 10), ("DDIMScheduler", 3)])
def test_the_exactness_check_can_fail(problem, name, steps):
    """Measured: 3.2x (DDPM, 10 steps) and 8.5x (DDIM, 3 steps) the floor."""
    assert ratio(problem, name, steps, EDM()) > 2 * TOL


@pytest.mark.parametrize("name", DRIVABLE)
def test_each_scheduler_from_a_folder_returns_finite_samples(tmp_path, name):
    folder = save_flat(tmp_path / "m", tiny_unet())
    model, _ = load_backbone(folder)
    config = read_json(resolve_folder(folder).scheduler_config, "scheduler config")
    calls = []

    def den(x, t):
        calls.append(float(t[0]))
        return as_denoiser(model, VPLinear())(x, t)

    with torch.no_grad():
        out = scheduler_sample(den, make_scheduler(name, config), (2, 3, 8, 8), steps=4, interpolant=VPLinear(),
                               generator=torch.Generator().manual_seed(0))
    assert out.x0.shape == (2, 3, 8, 8) and bool(torch.isfinite(out.x0).all())
    assert out.nfe == 4 and calls == sorted(calls, reverse=True)  # noise levels decrease


def test_same_generator_same_samples_and_the_scheduler_is_not_modified(problem):
    sched = make_scheduler("DDPMScheduler", BASE)
    before = dict(sched.config)
    den = lambda x, t: torch.zeros_like(x)  # noqa: E731
    a = scheduler_sample(den, sched, (3, 4), steps=5, generator=torch.Generator().manual_seed(7)).x0
    b = scheduler_sample(den, sched, (3, 4), steps=5, generator=torch.Generator().manual_seed(7)).x0
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert dict(sched.config) == before and sched.num_inference_steps is None


def test_unsupported_scheduler_and_bad_steps_are_refused():
    from diffusers import HeunDiscreteScheduler

    with pytest.raises(BackboneError, match="not one exactpost drives"):
        scheduler_sample(lambda x, t: x, HeunDiscreteScheduler.from_config(BASE), (1, 2), steps=3)
    with pytest.raises(BackboneError, match="not one exactpost drives"):
        make_scheduler("PNDMScheduler", BASE)
    with pytest.raises(ValueError, match="positive integer"):
        scheduler_sample(lambda x, t: x, make_scheduler("DDIMScheduler", BASE), (1, 2), steps=0)


def test_cost_benchmark_runs_and_writes_its_tables(tmp_path):
    """Smoke test of benchmarks/diffusers_cost.py (tiny network; its timings mean nothing)."""
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "diffusers_cost.py"
    spec = importlib.util.spec_from_file_location("bench_diffusers_cost", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    n = torch.get_num_threads()
    try:
        rows = mod.main(["--arch", "tiny", "--tasks", "sr4,inpaint-box", "--steps", "2", "--repeats", "1",
                         "--batch", "2", "--out", str(tmp_path)])
    finally:
        torch.set_num_threads(n)
    assert [r["task"] for r in rows] == ["sr4", "inpaint-box"] and all(r["ratio"] > 0 for r in rows)
    assert json.loads((tmp_path / "diffusers_cost_tiny.json").read_text())["meta"]["arch"] == "tiny"
    assert "| sr4 |" in (tmp_path / "diffusers_cost_tiny.md").read_text()
