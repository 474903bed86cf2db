"""The EPS objective learns the right thing: an MLP trained with it on a d = 8 mixture and a
fixed dense A samples the posterior far closer to exact than the same MLP trained as a prior
and used through the zero-shot pivot (same size, same budget, 40 NFE).

What this asserts is what held on every seed measured (benchmarks/gmm_learned_eps.py, seeds
0-2: EPS-MLP 1.6x, 5.3x, 2.5x the SW noise floor; zero-shot 12-14x): EPS at least 3x closer.
The issue's stronger target, EPS-MLP within 2x of the floor, is met on seed 0 only, so it is
tracked in that benchmark, not asserted here."""

from __future__ import annotations

import statistics

import pytest
import torch

from exactpost.bench.gmm_eval import sw_to_posterior
from exactpost.bench.gmm_learned import MLPTraining, learned_draw, same_operator_problems, train_mlp
from exactpost.gmm import mcgdiff_measurement, mcgdiff_prior


def test_eps_mlp_beats_zero_shot_prior_mlp():
    g = torch.Generator().manual_seed(0)
    prior = mcgdiff_prior(8, g, spacing=2.0)
    problems = same_operator_problems(mcgdiff_measurement(prior, 2, g), 3, g)
    A, sy = problems[0].A, problems[0].sigma_y
    ratios = {}
    for kind in ("eps", "prior"):
        net = train_mlp(prior, A, sy, kind, MLPTraining(), torch.Generator().manual_seed(1))
        res = [sw_to_posterior(p, learned_draw(p, net, kind, 20, 80.0, 0.002), 2000, 4,
                               generator=torch.Generator().manual_seed(100 + i)) for i, p in enumerate(problems)]
        ratios[kind] = statistics.mean(r[0] for r in res) / statistics.mean(r[1] for r in res)
    assert ratios["prior"] > 3 * ratios["eps"], ratios
