"""The Gaussian prior's LMMSE estimate (CG with the operators) against the dense float64 formula."""

from __future__ import annotations

import pytest
import torch

from exactpost.priors.gaussian import GaussianPrior, dense_lmmse
from exactpost.core.tasks import make_operator, simulate, task_names


def correlated_images(n: int, shape, seed: int) -> torch.Tensor:
    """n draws of one fixed correlated Gaussian (the mixing matrix does not depend on seed)."""
    d = int(torch.tensor(shape).prod())
    L = torch.randn(d, d, generator=torch.Generator().manual_seed(1234), dtype=torch.float64) / d**0.5
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, d, generator=g, dtype=torch.float64) @ L.T + 0.3).reshape((n,) + tuple(shape))


@pytest.mark.parametrize("task", task_names())
def test_cg_lmmse_equals_dense_solve(task):
    shape = (3, 8, 8)
    imgs = correlated_images(400, shape, seed=1)
    prior = GaussianPrior.fit(imgs)
    assert torch.allclose(prior.cov, torch.cov(imgs.reshape(400, -1).T, correction=0), atol=1e-12)
    x0 = correlated_images(3, shape, seed=2)
    g = torch.Generator().manual_seed(3)
    op = make_operator(task, 3, shape, generator=g)
    y = simulate(op, x0, 0.05, generator=g)
    est, info = prior.lmmse(op, y, 0.05, tol=1e-12)
    assert info.converged
    A = op.to_dense()
    for b in range(3):
        Ab = A[b] if A.dim() == 3 else A
        ref = dense_lmmse(prior.mean, prior.cov, Ab, y[b].reshape(-1).double(), 0.05)
        assert torch.allclose(est[b].reshape(-1), ref, atol=1e-8, rtol=0), (est[b].reshape(-1) - ref).abs().max()


def test_lmmse_beats_the_prior_mean_and_refuses_noiseless():
    shape = (1, 8, 8)
    prior = GaussianPrior.fit(correlated_images(500, shape, seed=4))
    x0 = correlated_images(50, shape, seed=5)
    g = torch.Generator().manual_seed(6)
    op = make_operator("inpaint-random", 50, shape, generator=g)
    y = simulate(op, x0, 0.05, generator=g)
    est, _ = prior.lmmse(op, y, 0.05)
    mse_est = ((est - x0) ** 2).mean()
    mse_mean = ((prior.mean.reshape(1, *shape) - x0) ** 2).mean()
    assert mse_est < 0.8 * mse_mean
    with pytest.raises(ValueError, match="sigma_y > 0"):
        prior.lmmse(op, y, 0.0)
