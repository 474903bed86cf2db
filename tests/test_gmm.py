"""The Gaussian-mixture oracle against independent computations."""

from __future__ import annotations

import pytest
import torch

from exactpost.priors.gmm import GaussianMixture, GMMEPSOracle, mcgdiff_prior, mcgdiff_problem
from exactpost.operators import DenseOperator, Inpainting, random_mask
from exactpost.core.interpolants import VPLinear


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


@pytest.mark.parametrize("per_row_sigma", [False, True])
def test_isotropic_covariance_fast_path_matches_the_dense_per_component_solve(per_row_sigma):
    """C_k = c I (the MCGdiff prior has c = 1; here c = 2.5): the O(B K d) closed form equals the
    general path (one Cholesky solve per component, float64), values and input gradients
    (DPS differentiates through the denoiser)."""
    g = torch.Generator().manual_seed(5)
    d, K, B = 7, 6, 9
    means = 4 * torch.randn(K, d, generator=g, dtype=torch.float64)
    gm = GaussianMixture(torch.rand(K, generator=g, dtype=torch.float64) + 0.1, means,
                         2.5 * torch.eye(d, dtype=torch.float64).expand(K, d, d))
    assert gm.iso_var == pytest.approx(2.5) and mcgdiff_prior(4, g).iso_var == 1.0
    assert random_mixture(3, 2, g).iso_var is None
    dense = GaussianMixture(gm.weights, gm.means, gm.covs)
    dense.shared_cov, dense.iso_var = False, None
    sigma = torch.rand(B, generator=g, dtype=torch.float64) * 5 + 0.1 if per_row_sigma else 1.7
    z = (gm.sample(B, g) + 3 * torch.randn(B, d, generator=g, dtype=torch.float64)).requires_grad_(True)
    fast, ref = gm.denoise_sigma(z, sigma), dense.denoise_sigma(z, sigma)
    torch.testing.assert_close(fast, ref, rtol=1e-10, atol=1e-10)
    w = torch.randn(B, d, generator=g, dtype=torch.float64)
    (g_fast,) = torch.autograd.grad((fast * w).sum(), z)
    (g_ref,) = torch.autograd.grad((ref * w).sum(), z)
    torch.testing.assert_close(g_fast, g_ref, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("sigma_y", [0.4, 0.0])
@pytest.mark.parametrize("kind", ["dense", "inpainting"])
def test_eps_oracle_low_rank_path_matches_the_dense_sigma_star_solve(sigma_y, kind):
    """The oracle's SVD path (C = c I) equals E[x0 | z] with Sigma* built densely from the
    operator and a Cholesky solve (float64), per-row noise levels from 1e-3 to 1e3 included; the
    dense A has a zero singular value (a repeated row), the inpainting A a large null space."""
    g = torch.Generator().manual_seed(6)
    prior = mcgdiff_prior(16, g, spacing=3.0)
    prior = GaussianMixture(prior.weights, prior.means, 1.7 * prior.covs)  # c = 1.7
    if kind == "dense":
        A = torch.randn(4, 16, generator=g, dtype=torch.float64)
        A[3] = A[2]
        op = DenseOperator(A)
        shape = (16,)
    else:
        op = Inpainting(random_mask((4, 4), 0.5, generator=g), channels=1)
        shape = (1, 4, 4)
    fast = GMMEPSOracle(prior, op, sigma_y)
    dense = GMMEPSOracle(prior, op, sigma_y)
    dense._svd = None
    assert fast._svd is not None
    sigma = torch.tensor([1e-3, 0.05, 0.7, 3.0, 40.0, 1e3], dtype=torch.float64)
    mu = 5 * torch.randn((6,) + shape, generator=g, dtype=torch.float64)
    torch.testing.assert_close(fast(mu, None, sigma), dense(mu, None, sigma), rtol=1e-8, atol=1e-8)


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
