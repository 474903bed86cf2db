"""The Gaussian-mixture oracle against independent computations."""

from __future__ import annotations

import pytest
import torch

from exactpost.gmm import GaussianMixture, mcgdiff_prior, mcgdiff_problem
from exactpost.interpolants import VPLinear


def random_mixture(d: int, K: int, g: torch.Generator) -> GaussianMixture:
    B = torch.randn(K, d, d, generator=g, dtype=torch.float64)
    covs = B @ B.transpose(-1, -2) / d + 0.3 * torch.eye(d, dtype=torch.float64)
    return GaussianMixture(torch.rand(K, generator=g, dtype=torch.float64) + 0.1,
                           3 * torch.randn(K, d, generator=g, dtype=torch.float64), covs)


def test_log_prob_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    gm = random_mixture(5, 4, g)
    x = torch.randn(7, 5, generator=g, dtype=torch.float64)
    ref = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(probs=gm.weights),
        torch.distributions.MultivariateNormal(gm.means, covariance_matrix=gm.covs),
    ).log_prob(x)
    torch.testing.assert_close(gm.log_prob(x), ref, rtol=1e-10, atol=1e-10)


def test_sampling_moments():
    g = torch.Generator().manual_seed(1)
    gm = random_mixture(3, 3, g)
    x = gm.sample(200_000, g)
    mean = (gm.weights[:, None] * gm.means).sum(0)
    second = (gm.weights[:, None, None] * (gm.covs + gm.means[:, :, None] * gm.means[:, None, :])).sum(0)
    cov = second - mean[:, None] * mean[None, :]
    # Monte-Carlo tolerance: a few standard errors for 2e5 draws of O(3)-scale variables
    torch.testing.assert_close(x.mean(0), mean, atol=0.05, rtol=0)
    torch.testing.assert_close(torch.cov(x.T), cov, atol=0.15, rtol=0.02)


@pytest.mark.parametrize("shared", [True, False])
def test_anisotropic_denoiser_is_the_score_identity(shared):
    """E[x0 | z] = z + Sigma grad log p_Sigma(z) (Tweedie), with p_Sigma = p0 * N(0, Sigma)
    evaluated by the mixture's own log_prob on convolved covariances (autograd)."""
    g = torch.Generator().manual_seed(2)
    d = 6
    gm = random_mixture(d, 5, g) if not shared else mcgdiff_prior(d, g, spacing=2.0)
    Bm = torch.randn(d, d, generator=g, dtype=torch.float64)
    Sigma = Bm @ Bm.T / d
    z = (gm.sample(9, g) + torch.randn(9, d, generator=g, dtype=torch.float64) * 2).requires_grad_(True)
    conv = GaussianMixture(gm.weights, gm.means, gm.covs + Sigma)
    (grad,) = torch.autograd.grad(conv.log_prob(z).sum(), z)
    tweedie = z.detach() + grad @ Sigma
    torch.testing.assert_close(gm.denoise_anisotropic(z.detach(), Sigma), tweedie, rtol=1e-9, atol=1e-9)


def test_shared_covariance_fast_path_matches_general_path():
    g = torch.Generator().manual_seed(3)
    gm = mcgdiff_prior(8, g, spacing=3.0)
    assert gm.shared_cov
    general = GaussianMixture(gm.weights, gm.means, gm.covs)
    general.shared_cov = False
    z = 10 * torch.randn(11, 8, generator=g, dtype=torch.float64)
    Sigma = 0.7 * torch.eye(8, dtype=torch.float64) + 0.1
    torch.testing.assert_close(gm.denoise_anisotropic(z, Sigma), general.denoise_anisotropic(z, Sigma),
                               rtol=1e-10, atol=1e-10)


def test_isotropic_denoiser_matches_anisotropic_with_interpolant_scaling():
    g = torch.Generator().manual_seed(4)
    gm = random_mixture(4, 3, g)
    vp = VPLinear()
    t = 0.4
    a, sigma = vp.a(t), vp.sigma(t)
    x_t = torch.randn(5, 4, generator=g, dtype=torch.float64)
    expected = gm.denoise_anisotropic(x_t / a, sigma**2 * torch.eye(4, dtype=torch.float64))
    torch.testing.assert_close(gm.denoiser(vp)(x_t, t), expected)


@pytest.mark.parametrize("sigma_y", [0.3, 0.0])
def test_posterior_is_bayes_rule(sigma_y):
    """log p(x0 | y) = log p(x0) + log N(y; A x0, sigma_y^2 I) - log p(y): the difference of
    posterior and prior log densities is a quadratic in x0 plus a constant. Checked by
    comparing log-density differences between points (the constant cancels)."""
    g = torch.Generator().manual_seed(5)
    d, m = 5, 2
    gm = random_mixture(d, 3, g)
    A = torch.randn(m, d, generator=g, dtype=torch.float64)
    y = torch.randn(m, generator=g, dtype=torch.float64)
    post = gm.posterior(A, y, sigma_y)
    x = torch.randn(6, d, generator=g, dtype=torch.float64)
    if sigma_y == 0:
        # degenerate along the measured directions: samples satisfy A x = y (up to the
        # square root of a singular covariance, ~1e-8), and the limit sigma_y -> 0 agrees
        s = post.sample(50, g)
        torch.testing.assert_close(s @ A.T, y.expand(50, m), rtol=0, atol=1e-6)
        post_small = gm.posterior(A, y, 1e-7)
        torch.testing.assert_close(post.means, post_small.means, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(post.weights, post_small.weights, rtol=1e-6, atol=1e-8)
        return
    lik = -0.5 * ((x @ A.T - y) ** 2).sum(1) / sigma_y**2
    diff = post.log_prob(x) - gm.log_prob(x) - lik
    torch.testing.assert_close(diff - diff[0], torch.zeros_like(diff), rtol=0, atol=1e-9)


def test_mcgdiff_problem_construction():
    g = torch.Generator().manual_seed(6)
    pb = mcgdiff_problem(8, 2, g)
    assert pb.prior.K == 25 and pb.prior.shared_cov
    assert set(pb.prior.means[:, 0].tolist()) == {-16.0, -8.0, 0.0, 8.0, 16.0}
    torch.testing.assert_close(pb.prior.means[:, 2:4], pb.prior.means[:, 0:2])
    sv = torch.linalg.svdvals(pb.A)
    assert bool((sv < 1).all()) and bool((sv[:-1] >= sv[1:]).all())
    assert 0 <= pb.sigma_y <= float(sv[0])
    with pytest.raises(ValueError, match="even"):
        mcgdiff_prior(7)
