"""The Gaussian-mixture protocol: how far a sampler's draws are from the exact posterior.

For one :class:`~exactpost.priors.gmm.GMMProblem`, draw a reference set of n exact posterior
samples, then ``repeats`` independent sets from the sampler and ``repeats`` independent
exact sets, and report

* ``sw``: the mean over repeats of SW_2(sampler set, reference);
* ``floor``: the mean over repeats of SW_2(exact set, reference), the *noise floor*
  (what a perfect sampler scores with n samples);

with the same ``n_projections`` random directions for every distance. Averaging over
repeats matters: with well-separated modes, the number of draws that land in a light mode
fluctuates, and a single SW value scatters by tens of percent around its mean.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Callable

import torch

from ..priors.gmm import GMMEPSOracle, GMMProblem
from ..core.interpolants import EDM, Interpolant
from ..core.metrics import random_directions, sliced_wasserstein
from ..operators import DenseOperator
from ..core.posterior import EPSPosteriorDenoiser
from ..core.sampler_spec import SamplerSpec

#: draw(n, generator) -> [n, d] samples
Draw = Callable[[int, torch.Generator], torch.Tensor]


@dataclass
class SWResult:
    sw: float
    floor: float
    nfe: int

    @property
    def ratio(self) -> float:
        return self.sw / self.floor


def sw_to_posterior(problem: GMMProblem, draw: Draw, n: int = 2000, repeats: int = 6,
                    n_projections: int = 200, generator: torch.Generator | None = None) -> tuple[float, float]:
    """(mean SW of the sampler's sets to the reference, mean SW of exact sets to it)."""
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    ref = problem.posterior.sample(n, g)
    dirs = random_directions(problem.prior.d, n_projections, g)
    floor = [sliced_wasserstein(problem.posterior.sample(n, g), ref, directions=dirs) for _ in range(repeats)]
    sw = [sliced_wasserstein(draw(n, g), ref, directions=dirs) for _ in range(repeats)]
    return statistics.mean(sw), statistics.mean(floor)


def _oracle_draw(problem: GMMProblem, interpolant: Interpolant, sigma_max: float, mean_init: bool,
                 nfe_out: list | None, run: Callable) -> Draw:
    """Draw function: the EPS posterior denoiser with the exact oracle network, the 1-NFE
    posterior mean m at sigma_max (if ``mean_init``), then ``run(den, shape, g, m)``."""
    op = DenseOperator(problem.A)
    net = GMMEPSOracle(problem.prior, op, problem.sigma_y)

    def draw(n: int, g: torch.Generator) -> torch.Tensor:
        y = problem.y.expand(n, -1)
        den = EPSPosteriorDenoiser(net, op, y, problem.sigma_y, interpolant)
        m = den.posterior_mean(sigma_max, g, torch.float64) if mean_init else None
        out = run(den, (n, problem.prior.d), g, m)
        if nfe_out is not None:
            nfe_out.append(out.nfe + int(mean_init))
        return out.x0

    return draw


def eps_oracle_draw(problem: GMMProblem, sampler: Callable, interpolant: Interpolant, steps: int,
                    sigma_max: float, sigma_min: float = 0.002, mean_init: bool = True,
                    nfe_out: list | None = None) -> Draw:
    """A draw function running ``sampler`` on the EPS posterior denoiser with the exact
    oracle network. With ``mean_init`` the sampler starts from the 1-NFE posterior mean
    (one extra NFE, counted). The NFE of the last draw is appended to ``nfe_out``."""

    def run(den, shape, g, m):
        return sampler(den, shape, interpolant=interpolant, steps=steps, sigma_max=sigma_max,
                       sigma_min=sigma_min, generator=g, dtype=torch.float64, init_mean=m)

    return _oracle_draw(problem, interpolant, sigma_max, mean_init, nfe_out, run)


def eps_oracle_spec_draw(problem: GMMProblem, spec: SamplerSpec, nfe: int, sigma_max: float,
                         interpolant: Interpolant | None = None, nfe_out: list | None = None) -> Draw:
    """A draw function for EPS with the exact oracle and the sampler ``spec`` at a total
    budget of ``nfe``: the 1-NFE posterior mean at sigma_max, then ``spec`` with nfe - 1
    evaluations started around that mean."""
    interp = interpolant if interpolant is not None else EDM()

    def run(den, shape, g, m):
        return spec.run(den, shape, nfe - 1, sigma_max, interpolant=interp, generator=g, dtype=torch.float64,
                        init_mean=m)

    return _oracle_draw(problem, interp, sigma_max, True, nfe_out, run)


def eps_oracle_sw(problems: list[GMMProblem], sampler: Callable, interpolant: Interpolant, steps: int,
                  sigma_max: float, sigma_min: float = 0.002, mean_init: bool = True, n: int = 2000,
                  repeats: int = 6, seed: int = 0) -> SWResult:
    """EPS + oracle over several problems: SW and floor each averaged over the problems."""
    sws, floors, nfes = [], [], []
    for i, pb in enumerate(problems):
        draw = eps_oracle_draw(pb, sampler, interpolant, steps, sigma_max, sigma_min, mean_init, nfes)
        sw, floor = sw_to_posterior(pb, draw, n, repeats, generator=torch.Generator().manual_seed(seed + i))
        sws.append(sw)
        floors.append(floor)
    return SWResult(statistics.mean(sws), statistics.mean(floors), nfes[-1])
