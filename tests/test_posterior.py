"""The EPS identity: pivot, Sigma*, the posterior score, and input checks.

The central test (the theorem): for random mixtures in d = 6..12, random dense A and every
interpolant, (a D*(mu*) - x_t) / s^2 computed from the pivot with the exact anisotropic
denoiser equals the autograd gradient of the exact log p(x_t | y), to 1e-6 relative, also
for sigma_y = 0. The reference log-density is built independently: (x_t, y) is jointly a
mixture of Gaussians whose covariance is written out block by block.
"""

from __future__ import annotations

import pytest
import torch

from exactpost.priors.gmm import GaussianMixture, GMMEPSOracle
from exactpost.core.interpolants import EDM, RectifiedFlow, VPCosine, VPLinear
from exactpost.operators import DenseOperator, Inpainting, random_mask
from exactpost.core.posterior import (
    EPSPosteriorDenoiser,
    ZeroShotPivotDenoiser,
    pivot,
    sample_sigma_star,
    sigma_star_dense,
    sigma_star_matvec,
)

INTERPOLANTS = [EDM(), VPLinear(), VPCosine(), RectifiedFlow()]
SIGMAS = [0.3, 1.0, 4.0]  # noise levels s/a at which the identity is checked


def random_mixture(d: int, K: int, g: torch.Generator) -> GaussianMixture:
    B = torch.randn(K, d, d, generator=g, dtype=torch.float64)
    covs = B @ B.transpose(-1, -2) / d + 0.2 * torch.eye(d, dtype=torch.float64)
    w = torch.rand(K, generator=g, dtype=torch.float64) + 0.1
    return GaussianMixture(w, 2 * torch.randn(K, d, generator=g, dtype=torch.float64), covs)


def joint_log_density(prior: GaussianMixture, A: torch.Tensor, sigma_y: float, a: float, s: float,
                      x_t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """log p(x_t, y) for x_t = a x0 + s e, y = A x0 + sigma_y n, x0 ~ prior; [B]."""
    d, m = prior.d, A.shape[0]
    C = prior.covs
    top = torch.cat([a**2 * C + s**2 * torch.eye(d, dtype=torch.float64), a * C @ A.T], dim=2)
    bottom = torch.cat([a * A @ C, A @ C @ A.T + sigma_y**2 * torch.eye(m, dtype=torch.float64)], dim=2)
    joint = GaussianMixture(prior.weights, torch.cat([a * prior.means, prior.means @ A.T], 1),
                            torch.cat([top, bottom], dim=1))
    return joint.log_prob(torch.cat([x_t, y.expand(x_t.shape[0], m)], dim=1))


@pytest.mark.parametrize("interp", INTERPOLANTS, ids=lambda i: i.name)
@pytest.mark.parametrize("d", [6, 9, 12])
@pytest.mark.parametrize("sigma_y", [0.4, 0.05, 0.0])
def test_pivot_score_equals_exact_posterior_score(interp, d, sigma_y):
    g = torch.Generator().manual_seed(1000 * d + int(100 * sigma_y))
    prior = random_mixture(d, 4, g)
    m = d // 2
    A = torch.randn(m, d, generator=g, dtype=torch.float64) / d**0.5
    op = DenseOperator(A)
    x0 = prior.sample(1, g)[0]
    y = A @ x0 + sigma_y * torch.randn(m, generator=g, dtype=torch.float64)
    B = 5
    den = EPSPosteriorDenoiser(GMMEPSOracle(prior, op, sigma_y), op, y.expand(B, m), sigma_y, interp)
    for sigma in SIGMAS:
        t = float(interp.t_of_sigma(sigma))
        a, s = float(interp.a(t)), float(interp.s(t))
        x_t = (a * prior.sample(B, g) + s * torch.randn(B, d, generator=g, dtype=torch.float64)).requires_grad_(True)
        (ref,) = torch.autograd.grad(joint_log_density(prior, A, sigma_y, a, s, x_t, y).sum(), x_t)
        got = den.score(x_t.detach(), t)
        rel = float((got - ref).norm() / ref.norm())
        assert rel < 1e-6, f"{interp.name} d={d} sigma_y={sigma_y} sigma={sigma}: relative error {rel:.2e}"


def dense_sigma_star(A: torch.Tensor, sigma: float, sigma_y: float) -> torch.Tensor:
    """Sigma* from the eigendecomposition A^T A = V diag(lam) V^T (float64):
    V diag(1 / (1/sigma^2 + lam/sigma_y^2)) V^T, or sigma^2 P_null for sigma_y = 0. (Forming
    the inverse of I/sigma^2 + A^T A/sigma_y^2 directly would lose 1e-4 of accuracy to its
    condition number at sigma = 1e3, sigma_y = 1e-3.)"""
    lam, V = torch.linalg.eigh(A.T @ A)
    if sigma_y == 0:
        null = (lam <= 1e-10 * lam.max()).to(torch.float64)
        return sigma**2 * (V * null) @ V.T
    return (V / (1 / sigma**2 + lam.clamp(min=0) / sigma_y**2)) @ V.T


def mp_pivot_and_sigma_star(A, x_tilde, y, sigma, sigma_y):
    """Reference in 40-digit arithmetic (mpmath, a dependency of torch): Sigma* =
    (I/sigma^2 + A^T A/sigma_y^2)^-1 and mu* = Sigma* (x~/sigma^2 + A^T y/sigma_y^2); for
    sigma_y = 0, P = I - A^T (A A^T)^-1 A, Sigma* = sigma^2 P, mu* = P x~ + A^T (A A^T)^-1 y."""
    import mpmath

    mpmath.mp.dps = 40
    M = mpmath.matrix(A.tolist())
    d = A.shape[1]
    eye = mpmath.eye(d)
    if sigma_y == 0:
        pinv = M.T * mpmath.inverse(M * M.T)
        P = eye - pinv * M
        S = sigma**2 * P
        mus = [P * mpmath.matrix(x.tolist()) + pinv * mpmath.matrix(v.tolist()) for x, v in zip(x_tilde, y)]
    else:
        S = mpmath.inverse(eye / sigma**2 + M.T * M / sigma_y**2)
        mus = [S * (mpmath.matrix(x.tolist()) / sigma**2 + M.T * mpmath.matrix(v.tolist()) / sigma_y**2)
               for x, v in zip(x_tilde, y)]
    to = lambda mat: torch.tensor([[float(mat[i, j]) for j in range(mat.cols)] for i in range(mat.rows)],
                                  dtype=torch.float64)  # noqa: E731
    return torch.cat([to(mu).T for mu in mus]), to(S)


@pytest.mark.parametrize("sigma_y", [0.3, 1e-3, 0.0])
def test_pivot_and_sigma_star_against_dense_formulas(sigma_y):
    """Pivot and Sigma* against the textbook formulas evaluated in 40-digit arithmetic, at
    noise levels from 1e-2 to 1e3 (rho down to 1e-12): relative error < 1e-8 in float64."""
    g = torch.Generator().manual_seed(7)
    d, m, B = 10, 4, 3
    A = torch.randn(m, d, generator=g, dtype=torch.float64)
    op = DenseOperator(A)
    x_t = torch.randn(B, d, generator=g, dtype=torch.float64)
    y = torch.randn(B, m, generator=g, dtype=torch.float64)
    vp = VPLinear()
    for sigma in [1e-2, 1.0, 1e3]:
        t = float(vp.t_of_sigma(sigma))
        a, sig = float(vp.a(t)), float(vp.sigma(t))
        mu_ref, Sig = mp_pivot_and_sigma_star(A, x_t / a, y, sig, sigma_y)
        mu = pivot(x_t, t, y, op, sigma_y, vp)
        assert float((mu - mu_ref).norm() / mu_ref.norm()) < 1e-8, sigma
        S = sigma_star_dense(op, sig, sigma_y)
        assert float((S - Sig).norm() / Sig.norm()) < 1e-8, sigma
        v = torch.randn(B, d, generator=g, dtype=torch.float64)
        Sv = sigma_star_matvec(v, sig, op, sigma_y)
        assert float((Sv - v @ Sig).norm() / (v @ Sig).norm()) < 1e-8, sigma


@pytest.mark.parametrize("sigma_y", [0.5, 0.0])
def test_sigma_star_sampling_covariance(sigma_y):
    g = torch.Generator().manual_seed(8)
    d, m, n = 6, 3, 200_000
    A = torch.randn(m, d, generator=g, dtype=torch.float64)
    op = DenseOperator(A)
    z = sample_sigma_star(torch.empty(n, d, dtype=torch.float64), 2.0, op, sigma_y, g)
    emp = z.T @ z / n
    ref = dense_sigma_star(A, 2.0, sigma_y)
    # Monte-Carlo error of a covariance estimate from n draws: ~ ||Sigma|| * sqrt(2/n) ~ 1.3e-2
    assert float((emp - ref).norm() / ref.norm()) < 0.02


def test_pivot_is_exact_under_the_generative_model():
    """mu* - x0 ~ N(0, Sigma*) when x_t and y are simulated from x0 (the training identity)."""
    g = torch.Generator().manual_seed(9)
    d, m, n, sigma, sigma_y = 5, 2, 200_000, 1.5, 0.4
    A = torch.randn(m, d, generator=g, dtype=torch.float64)
    op = DenseOperator(A)
    x0 = torch.randn(n, d, generator=g, dtype=torch.float64)
    x_t = x0 + sigma * torch.randn(n, d, generator=g, dtype=torch.float64)
    y = x0 @ A.T + sigma_y * torch.randn(n, m, generator=g, dtype=torch.float64)
    err = pivot(x_t, sigma, y, op, sigma_y, EDM()) - x0
    assert float(err.mean(0).abs().max()) < 0.02
    ref = dense_sigma_star(A, sigma, sigma_y)
    assert float((err.T @ err / n - ref).norm() / ref.norm()) < 0.02


def test_tiny_rho_keeps_precision_in_float32():
    """At sigma = 1000 and sigma_y = 0.05, rho = 2.5e-9: the pivot must still reproduce the
    measured pixels of an inpainting problem to float32 precision (a Woodbury solve of
    rho x/a + A^T y would lose them to cancellation)."""
    g = torch.Generator().manual_seed(10)
    mask = random_mask((8, 8), 0.7, generator=g)
    op = Inpainting(mask, channels=3)
    x0 = torch.rand(2, 3, 8, 8, generator=g)
    y = op.A(x0)
    x_t = x0 + 1000 * torch.randn(2, 3, 8, 8, generator=g)
    mu = pivot(x_t, 1000.0, y, op, 0.05, EDM())
    observed = op.A(torch.ones_like(x0)).bool()
    torch.testing.assert_close(mu[observed], y[observed], rtol=0, atol=1e-4)


def test_noiseless_inpainting_pivot_reproduces_y():
    g = torch.Generator().manual_seed(11)
    mask = random_mask((8, 8), 0.5, generator=g)
    op = Inpainting(mask, channels=1)
    x0 = torch.randn(3, 1, 8, 8, generator=g, dtype=torch.float64)
    y = op.A(x0)
    mu = pivot(torch.randn(3, 1, 8, 8, generator=g, dtype=torch.float64), 0.7, y, op, 0.0, VPCosine())
    observed = op.A(torch.ones_like(x0)).bool()
    torch.testing.assert_close(mu[observed], y[observed], rtol=0, atol=1e-14)


def test_zero_shot_pivot_is_exact_for_a_gaussian_prior_in_the_noiseless_null_space():
    """For sigma_y = 0 and a prior N(0, I), Sigma* = sigma^2 P_null is isotropic on the null
    space, so the prior denoiser queried at a mu* with scalar s/a is the exact posterior
    denoiser in the null space (and returns a shrunk y on the range)."""
    g = torch.Generator().manual_seed(12)
    d, m = 6, 2
    prior = GaussianMixture(torch.ones(1), torch.zeros(1, d))
    A = torch.linalg.qr(torch.randn(d, m, generator=g, dtype=torch.float64))[0].T  # orthonormal rows
    op = DenseOperator(A)
    y = torch.randn(4, m, generator=g, dtype=torch.float64)
    interp = VPLinear()
    zs = ZeroShotPivotDenoiser(prior.denoiser(interp), op, y, 0.0, interp)
    exact = EPSPosteriorDenoiser(GMMEPSOracle(prior, op, 0.0), op, y, 0.0, interp)
    x_t = torch.randn(4, d, generator=g, dtype=torch.float64)
    t = 0.5
    torch.testing.assert_close(op.null_project(zs(x_t, t)), op.null_project(exact(x_t, t)))


class TestBadInput:
    def setup_method(self):
        g = torch.Generator().manual_seed(13)
        self.op = Inpainting(random_mask((8, 8), 0.5, generator=g), channels=3)
        self.x = torch.randn(2, 3, 8, 8, generator=g)
        self.y = self.op.A(self.x)

    def test_channel_mismatch(self):
        with pytest.raises(ValueError, match="expects"):
            pivot(self.x[:, :1], 1.0, self.y, self.op, 0.1, EDM())

    def test_y_shape_mismatch(self):
        with pytest.raises(ValueError, match="y has shape"):
            pivot(self.x, 1.0, self.y[..., :4], self.op, 0.1, EDM())

    def test_batch_mismatch_is_not_broadcast(self):
        with pytest.raises(ValueError, match="batch"):
            pivot(self.x, 1.0, self.y[:1], self.op, 0.1, EDM())
        den = EPSPosteriorDenoiser(lambda mu, c, s: mu, self.op, self.y[:1], 0.1, EDM())
        with pytest.raises(ValueError, match="batch"):
            den(self.x, 1.0)

    def test_nonfinite_y(self):
        bad = self.y.clone()
        bad[0, 0, 0, 0] = float("nan")
        with pytest.raises(ValueError, match="NaN or inf"):
            pivot(self.x, 1.0, bad, self.op, 0.1, EDM())
        bad[0, 0, 0, 0] = float("inf")
        with pytest.raises(ValueError, match="NaN or inf"):
            EPSPosteriorDenoiser(lambda mu, c, s: mu, self.op, bad, 0.1, EDM())

    def test_negative_sigma_y(self):
        with pytest.raises(ValueError, match="sigma_y must be >= 0"):
            pivot(self.x, 1.0, self.y, self.op, -0.1, EDM())
        with pytest.raises(ValueError, match="sigma_y must be >= 0"):
            EPSPosteriorDenoiser(lambda mu, c, s: mu, self.op, self.y, torch.tensor([0.1, -1.0]), EDM())

    def test_time_outside_interpolant(self):
        with pytest.raises(ValueError, match="a\\(t\\) > 0"):
            pivot(self.x, 1.0, self.y, self.op, 0.1, RectifiedFlow())
