"""The EPS objective learns the right thing: an MLP trained with it on a d = 8 mixture and a
fixed dense A samples the posterior far closer to exact than the same MLP trained as a prior
and used through the zero-shot pivot (same size, same budget, 40 NFE).

This test trains with MLPTraining's short default (3000 steps), to stay quick. What it asserts
held on every seed measured with that recipe (EPS-MLP 1.6x, 5.3x, 2.5x the SW noise floor on
seeds 0-2; zero-shot 12-14x): EPS at least 3x closer. The issue's stronger target, EPS-MLP
within 2x of the floor, is tracked in benchmarks/gmm_learned_eps.py, which trains 4x longer
(12000 steps; met on 4 of seeds 0-4, see benchmarks/results/gmm_learned_eps.md)."""

from __future__ import annotations

import statistics

import pytest
import torch

from exactpost.bench.gmm_eval import sw_to_posterior
from exactpost.bench.gmm_learned import MLPTraining, learned_draw, same_operator_problems, train_mlp
from exactpost.priors.gmm import mcgdiff_measurement, mcgdiff_prior


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


def test_training_defaults_unchanged_and_denoiser_gap():
    """MLPTraining's defaults are the original recipe (gmm_bench relies on them): passing the
    default uniform_frac explicitly trains the identical network; denoiser_gap reports a finite
    gap and an MMSE that grows with sigma."""
    from exactpost.bench.gmm_learned import denoiser_gap

    g = torch.Generator().manual_seed(0)
    prior = mcgdiff_prior(8, g, spacing=2.0)
    pb = mcgdiff_measurement(prior, 2, g)
    assert MLPTraining().uniform_frac == 0.2 and MLPTraining().steps == 3000
    a = train_mlp(prior, pb.A, pb.sigma_y, "eps", MLPTraining(steps=5, batch=64), torch.Generator().manual_seed(1))
    b = train_mlp(prior, pb.A, pb.sigma_y, "eps", MLPTraining(steps=5, batch=64, uniform_frac=0.2),
                  torch.Generator().manual_seed(1))
    for pa, pb_ in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb_)
    gap = denoiser_gap(pb, a, (0.1, 1.0, 10.0), 200, torch.Generator().manual_seed(2))
    assert [r["sigma"] for r in gap] == [0.1, 1.0, 10.0]
    assert all(r["excess"] >= 0 and r["excess"] == r["excess"] for r in gap)
    assert gap[0]["mmse"] < gap[1]["mmse"] < gap[2]["mmse"]
