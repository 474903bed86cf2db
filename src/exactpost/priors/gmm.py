"""Gaussian-mixture priors: the oracle whose posterior is known exactly.

A mixture p(x0) = sum_k w_k N(x0; m_k, C_k) in R^d is closed under everything EPS does:

* noising with any interpolant: x_t = a x0 + s e  ~  sum_k w_k N(a m_k, a^2 C_k + s^2 I);
* anisotropic Gaussian noise z = x0 + N(0, Sigma): components N(m_k, C_k + Sigma) and
  E[x0 | z] = sum_k r_k(z) [m_k + C_k (C_k + Sigma)^{-1} (z - m_k)],
  r_k(z) proportional to w_k N(z; m_k, C_k + Sigma);
* linear Gaussian measurement y = A x0 + sigma_y n: the posterior is again a mixture with
  S_k = A C_k A^T + sigma_y^2 I,  K_k = C_k A^T S_k^{-1},
  m'_k = m_k + K_k (y - A m_k),  C'_k = C_k - K_k A C_k,
  w'_k proportional to w_k N(y; A m_k, S_k)  (valid for sigma_y = 0 when A C_k A^T > 0).

Everything is float64. Batched inputs are [B, d]. :func:`mcgdiff_problem` builds the
benchmark problems of the MCGdiff paper (Cardoso et al. 2024) used in the tests and benches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..core.interpolants import Interpolant

_LOG_2PI = math.log(2 * math.pi)


class GaussianMixture:
    """Mixture of K Gaussians in R^d.

    Args:
        weights: [K] nonnegative, normalised on construction.
        means: [K, d].
        covs: [K, d, d] symmetric positive definite, or None for identity covariances.
    """

    def __init__(self, weights: torch.Tensor, means: torch.Tensor, covs: torch.Tensor | None = None):
        means = torch.as_tensor(means, dtype=torch.float64)
        weights = torch.as_tensor(weights, dtype=torch.float64)
        if means.dim() != 2:
            raise ValueError(f"means must have shape [K, d], got {tuple(means.shape)}")
        K, d = means.shape
        if weights.shape != (K,) or bool((weights < 0).any()) or float(weights.sum()) <= 0:
            raise ValueError(f"weights must be {K} nonnegative numbers with a positive sum")
        if covs is None:
            covs = torch.eye(d, dtype=torch.float64).expand(K, d, d).clone()
        covs = torch.as_tensor(covs, dtype=torch.float64)
        if covs.shape != (K, d, d):
            raise ValueError(f"covs must have shape [{K}, {d}, {d}], got {tuple(covs.shape)}")
        self.weights = weights / weights.sum()
        self.means = means
        self.covs = 0.5 * (covs + covs.transpose(-1, -2))
        #: all components share one covariance (enables one factorisation instead of K)
        self.shared_cov = bool(torch.allclose(self.covs, self.covs[:1].expand_as(self.covs)))
        #: c > 0 when every covariance is c I (isotropic denoising in O(B K d), no d x d algebra), else None
        self.iso_var: float | None = None
        if self.shared_cov:
            c = float(self.covs[0].diagonal().mean())
            if c > 0 and torch.allclose(self.covs, c * torch.eye(d, dtype=torch.float64).expand(K, d, d),
                                        rtol=0, atol=1e-12 * c):
                self.iso_var = c
        self._factor: torch.Tensor | None = None

    @property
    def K(self) -> int:
        return self.means.shape[0]

    @property
    def d(self) -> int:
        return self.means.shape[1]

    # --- sampling and density ---------------------------------------------------------
    def _sqrt_covs(self) -> torch.Tensor:
        """L_k with L_k L_k^T = C_k, from an eigendecomposition (works for singular C_k)."""
        if self._factor is None:
            evals, evecs = torch.linalg.eigh(self.covs)
            self._factor = evecs * evals.clamp(min=0).sqrt().unsqueeze(-2)
        return self._factor

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n exact draws, [n, d] (float64): k ~ Categorical(w), x = m_k + L_k e, e ~ N(0, I),
        applied component by component (O(n d) memory; gathering an [n, d, d] stack of
        factors would take 10 GB at d = 800, n = 2000)."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        e = torch.randn(n, self.d, dtype=torch.float64, generator=generator)
        factors = self._sqrt_covs()
        out = self.means[k].clone()
        for c in torch.unique(k).tolist():
            rows = k == c
            out[rows] += e[rows] @ factors[c].T
        return out

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x) for x [B, d] -> [B]."""
        return _mixture_log_prob(x.to(torch.float64), self.weights.log(), self.means, self.covs)

    # --- exact denoisers --------------------------------------------------------------
    def denoise_anisotropic(self, z: torch.Tensor, Sigma: torch.Tensor) -> torch.Tensor:
        """E[x0 | z] for z = x0 + N(0, Sigma). z: [B, d]; Sigma: [d, d] shared by the batch
        (symmetric PSD; may be singular, e.g. the noiseless pivot covariance)."""
        z64 = z.to(torch.float64)
        Sigma = torch.as_tensor(Sigma, dtype=torch.float64)
        if Sigma.shape != (self.d, self.d):
            raise ValueError(f"Sigma must have shape [{self.d}, {self.d}], got {tuple(Sigma.shape)}")
        if self.shared_cov:
            return self._denoise_shared(z64, Sigma).to(z.dtype)
        S = self.covs + Sigma  # [K, d, d]
        L = torch.linalg.cholesky(S)
        diff = z64.unsqueeze(1) - self.means  # [B, K, d]
        sol = torch.cholesky_solve(diff.permute(1, 2, 0), L).permute(2, 0, 1)  # S_k^-1 diff
        logdet = 2 * torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)
        logits = self.weights.log() - 0.5 * (diff * sol).sum(-1) - 0.5 * logdet  # [B, K]
        resp = torch.softmax(logits, dim=1)
        cond_means = self.means + torch.einsum("kij,bkj->bki", self.covs, sol)  # [B, K, d]
        return (resp.unsqueeze(-1) * cond_means).sum(1).to(z.dtype)

    def _denoise_shared(self, z: torch.Tensor, Sigma: torch.Tensor) -> torch.Tensor:
        """All C_k = C: with S = C + Sigma, the logits are m_k^T S^-1 z - m_k^T S^-1 m_k / 2
        (+ log w_k; terms common to all k dropped) and E[x0 | z] =
        sum_k r_k (m_k - C S^-1 m_k) + C S^-1 z: O(d^3 + B d^2 + B K d) instead of
        O(B K d^2); with C = c I the products with C are scalings."""
        C = self.covs[0]
        L = torch.linalg.cholesky(C + Sigma)
        Sz = torch.cholesky_solve(z.T, L).T  # [B, d]
        Sm = torch.cholesky_solve(self.means.T, L).T  # [K, d]
        return self._combine(z, Sz, Sm)

    def _combine(self, z: torch.Tensor, Sz: torch.Tensor, Sm: torch.Tensor) -> torch.Tensor:
        """The shared-covariance posterior mean from Sz = S^-1 z [B, d] and Sm = S^-1 m_k
        [K, d] (rows; S symmetric): sum_k r_k (m_k - C Sm_k) + C Sz, with
        r = softmax(log w + z Sm^T - (m * Sm).sum / 2)."""
        logits = self.weights.log() + z @ Sm.T - 0.5 * (self.means * Sm).sum(-1)
        resp = torch.softmax(logits, dim=1)  # [B, K]
        if self.iso_var is not None:
            return resp @ (self.means - self.iso_var * Sm) + self.iso_var * Sz
        C = self.covs[0]
        return resp @ (self.means - Sm @ C) + Sz @ C

    def _denoise_isotropic(self, z: torch.Tensor, s2: torch.Tensor) -> torch.Tensor:
        """All C_k = c I and Sigma = s^2 I: with v = c + s^2, p(z | k) = N(m_k, v I), so
        r_k = softmax_k(log w_k + (m_k^T z - |m_k|^2 / 2) / v) and
        E[x0 | z] = sum_k r_k (s^2 / v) m_k + (c / v) z. z [B, d] (float64); s2 [] or [B, 1]."""
        c = self.iso_var
        v = c + s2
        logits = self.weights.log() + (z @ self.means.T - 0.5 * (self.means**2).sum(-1)) / v
        resp = torch.softmax(logits, dim=1)
        return (resp @ self.means) * (s2 / v) + z * (c / v)

    def denoise_sigma(self, z: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        """E[x0 | z] for z = x0 + sigma e (variance-exploding form). ``sigma``: float or [B]."""
        sig = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1)
        if sig.numel() not in (1, z.shape[0]):
            raise ValueError(f"sigma has {sig.numel()} entries for a batch of {z.shape[0]}")
        if self.iso_var is not None:
            s2 = sig[0] ** 2 if sig.numel() == 1 else (sig**2).reshape(-1, 1)
            return self._denoise_isotropic(z.to(torch.float64), s2).to(z.dtype)
        if sig.numel() == 1:
            eye = torch.eye(self.d, dtype=torch.float64)
            return self.denoise_anisotropic(z, float(sig[0]) ** 2 * eye)
        out = torch.empty_like(z)
        for value in torch.unique(sig):
            rows = sig == value
            out[rows] = self.denoise_sigma(z[rows], float(value))
        return out

    def denoiser(self, interpolant: Interpolant):
        """The exact isotropic denoiser D(x_t, t) = E[x0 | x_t] of this prior under
        ``interpolant``, as a callable for the samplers. t: float or [B]."""

        def D(x_t: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
            tt = torch.as_tensor(t, dtype=torch.float64).reshape(-1)
            a = interpolant.a(tt)
            sigma = interpolant.sigma(tt)
            a_x = a.reshape(-1, 1).to(x_t.dtype) if a.numel() > 1 else float(a[0])
            return self.denoise_sigma(x_t / a_x, sigma)

        return D

    # --- exact posterior --------------------------------------------------------------
    def posterior(self, A: torch.Tensor, y: torch.Tensor, sigma_y: float) -> "GaussianMixture":
        """p(x0 | y) for y = A x0 + sigma_y n, n ~ N(0, I). A: [m, d]; y: [m]; sigma_y >= 0."""
        A = torch.as_tensor(A, dtype=torch.float64)
        y = torch.as_tensor(y, dtype=torch.float64).reshape(-1)
        if A.dim() != 2 or A.shape[1] != self.d or y.shape[0] != A.shape[0]:
            raise ValueError(f"need A [m, {self.d}] and y [m], got {tuple(A.shape)}, {tuple(y.shape)}")
        if sigma_y < 0:
            raise ValueError(f"sigma_y must be >= 0, got {sigma_y}")
        m = A.shape[0]
        CAt = self.covs @ A.T  # [K, d, m]
        S = A @ CAt + sigma_y**2 * torch.eye(m, dtype=torch.float64)  # [K, m, m]
        S = 0.5 * (S + S.transpose(-1, -2))
        gain = torch.linalg.solve(S, CAt.transpose(-1, -2)).transpose(-1, -2)  # K_k [K, d, m]
        resid = y - self.means @ A.T  # [K, m]
        means = self.means + torch.einsum("kdm,km->kd", gain, resid)
        covs = self.covs - gain @ CAt.transpose(-1, -2)
        log_w = self.weights.log() + _gauss_log_prob(resid, S)
        return GaussianMixture(torch.softmax(log_w, 0), means, covs)


def _gauss_log_prob(diff: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
    """log N(diff; 0, cov) for diff [..., K, n] and cov [K, n, n] (one Cholesky factor per
    component, shared by all leading batch dimensions), or diff [n] / [K, n] with cov of the
    same leading shape."""
    n = diff.shape[-1]
    if cov.dim() == 2:
        cov = cov.unsqueeze(0)
    K = cov.shape[0]
    lead = diff.shape[:-1]
    L = torch.linalg.cholesky(cov)
    flat = diff.reshape(-1, K, n).permute(1, 2, 0)  # [K, n, M]
    sol = torch.linalg.solve_triangular(L, flat, upper=False)
    maha = (sol**2).sum(1).T.reshape(lead)  # [..., K]
    logdet = 2 * torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)  # [K]
    if diff.dim() == 1:
        logdet = logdet[0]
    return -0.5 * maha - 0.5 * logdet - 0.5 * n * _LOG_2PI


def _mixture_log_prob(x, log_w, means, covs):
    comp = _gauss_log_prob(x.unsqueeze(1) - means, covs)  # [B, K]
    return torch.logsumexp(log_w + comp, dim=1)


# --- benchmark problems ---------------------------------------------------------------
@dataclass
class GMMProblem:
    """One posterior-sampling problem: prior, measurement and the exact posterior."""

    prior: GaussianMixture
    A: torch.Tensor  # [m, d]
    y: torch.Tensor  # [m]
    sigma_y: float
    posterior: GaussianMixture


def mcgdiff_prior(d: int, generator: torch.Generator | None = None, spacing: float = 8.0) -> GaussianMixture:
    """The MCGdiff mixture: 25 components with identity covariance, means on the grid
    {-2,-1,0,1,2}^2 * spacing (spacing 8 gives {-16,-8,0,8,16}^2) repeated over the d
    dimensions (mean = (i, j, i, j, ...)), weights |N(0,1)|^2 normalised."""
    if d < 2 or d % 2:
        raise ValueError(f"d must be even and >= 2 for the MCGdiff mixture, got {d}")
    grid = torch.arange(-2, 3, dtype=torch.float64) * spacing
    ii, jj = torch.meshgrid(grid, grid, indexing="ij")
    pairs = torch.stack([ii.reshape(-1), jj.reshape(-1)], dim=1)  # [25, 2]
    means = pairs.repeat(1, d // 2)
    weights = torch.randn(25, dtype=torch.float64, generator=generator) ** 2
    return GaussianMixture(weights, means)


def mcgdiff_measurement(
    prior: GaussianMixture, dy: int, generator: torch.Generator | None = None
) -> GMMProblem:
    """A random Gaussian A [dy, d] whose singular values are replaced by sorted U(0,1)
    draws (descending), sigma_y = U(0,1) * largest singular value, y = A x0 + sigma_y n
    with x0 a prior draw; returns the problem with its exact posterior."""
    d = prior.d
    G = torch.randn(dy, d, dtype=torch.float64, generator=generator)
    U, _, Vh = torch.linalg.svd(G, full_matrices=False)
    sv = torch.sort(torch.rand(dy, dtype=torch.float64, generator=generator), descending=True).values
    A = U @ torch.diag(sv) @ Vh
    sigma_y = float(torch.rand((), dtype=torch.float64, generator=generator)) * float(sv[0])
    x0 = prior.sample(1, generator)[0]
    y = A @ x0 + sigma_y * torch.randn(dy, dtype=torch.float64, generator=generator)
    return GMMProblem(prior, A, y, sigma_y, prior.posterior(A, y, sigma_y))


def mcgdiff_problem(d: int, dy: int, generator: torch.Generator | None = None,
                    spacing: float = 8.0) -> GMMProblem:
    """Prior from :func:`mcgdiff_prior` and measurement from :func:`mcgdiff_measurement`."""
    return mcgdiff_measurement(mcgdiff_prior(d, generator, spacing), dy, generator)


class GMMEPSOracle:
    """The exact EPS network for a mixture prior: net(mu, cond, sigma) = E[x0 | z = mu] with
    z = x0 + N(0, Sigma*(sigma)), Sigma* built densely from the operator (or, for a prior with
    covariances c I and a shared operator, applied through A's SVD in O(B d r)). Plug it into
    :class:`exactpost.core.posterior.EPSPosteriorDenoiser` in place of a trained network.

    Args:
        prior: the mixture.
        op: a shared operator whose input has prior.d numbers (a DenseOperator on vectors,
            or an image operator on [C, H, W] with C H W = d; images are flattened).
        sigma_y: the measurement noise std (>= 0), the same for the whole batch.
    """

    def __init__(self, prior: GaussianMixture, op, sigma_y: float):
        if op.in_dim != prior.d:
            raise ValueError(f"operator acts on {tuple(op.in_shape)} ({op.in_dim} numbers) but the "
                             f"prior lives in R^{prior.d}")
        self.prior, self.op, self.sigma_y = prior, op, float(sigma_y)
        #: isotropic prior and a shared operator: A's right singular vectors Vr [r, d] and
        #: squared singular values lam [r] (Sigma* is sigma^2 I off their span)
        self._svd: tuple[torch.Tensor, torch.Tensor] | None = None
        if prior.iso_var is not None and op.batch_size is None:
            A = op.to_dense(torch.float64)
            _, sv, Vr = torch.linalg.svd(A, full_matrices=False)
            # numerically zero singular values (pinv's cut, max(m, d) eps sv_max) are exact zeros:
            # with sigma_y = 0 a direction with lam ~ 1e-32 would otherwise count as measured
            sv = torch.where(sv > max(A.shape) * torch.finfo(torch.float64).eps * sv.max(), sv, torch.zeros_like(sv))
            self._svd = (Vr, sv**2)

    def _denoise_lowrank(self, z: torch.Tensor, sigma: float) -> torch.Tensor:
        """E[x0 | z], z = x0 + N(0, Sigma*(sigma)), for C_k = c I, in O(B d r): with
        A^T A = V diag(lam) V^T, Sigma* = (A^T A / sigma_y^2 + I / sigma^2)^-1 has eigenvalues
        s_i = sigma^2 sigma_y^2 / (sigma^2 lam_i + sigma_y^2) on the rows of Vr and sigma^2 off
        their span, so S = c I + Sigma* gives S^-1 u = u / (c + sigma^2) + Vr^T ((1 / (c + s_i)
        - 1 / (c + sigma^2)) * (Vr u)). z [B, d] float64."""
        Vr, lam = self._svd
        c, s2, sy2 = self.prior.iso_var, sigma**2, self.sigma_y**2
        num, den = s2 * sy2, s2 * lam + sy2
        s_i = torch.where(den > 0, num / den.clamp(min=torch.finfo(torch.float64).tiny), torch.full_like(lam, s2))
        gain = 1.0 / (c + s_i) - 1.0 / (c + s2)

        def solve(u: torch.Tensor) -> torch.Tensor:
            return u / (c + s2) + ((u @ Vr.T) * gain) @ Vr

        return self.prior._combine(z, solve(z), solve(self.prior.means))

    def __call__(self, mu: torch.Tensor, cond, sigma: torch.Tensor) -> torch.Tensor:
        from ..core.posterior import sigma_star_dense

        sig = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1)
        if sig.numel() == 1:
            sig = sig.expand(mu.shape[0])
        flat = mu.reshape(mu.shape[0], -1)
        out = torch.empty_like(flat)
        for value in torch.unique(sig):
            rows = sig == value
            if self._svd is not None:
                out[rows] = self._denoise_lowrank(flat[rows].to(torch.float64), float(value)).to(out.dtype)
                continue
            Sigma = sigma_star_dense(self.op, float(value), self.sigma_y).reshape(self.prior.d, self.prior.d)
            out[rows] = self.prior.denoise_anisotropic(flat[rows], Sigma)
        return out.reshape(mu.shape)
