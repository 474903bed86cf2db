"""The Gaussian skip S = sd^2 (sd^2 I + Sigma*)^{-1} against a dense float64 solve, and its
limits (nothing measured: EDM's c_skip; noiseless inpainting: the observed pixels copied)."""

from __future__ import annotations

import pytest
import torch

from exactpost.core.skip import gaussian_skip
from exactpost.nets.precond import edm_coefficients
from exactpost.operators import (AveragePoolSR, DenseOperator, FFTBlur, Inpainting, gaussian_kernel,
                                 motion_kernels, random_mask)


def dense_sigma_star(A: torch.Tensor, sigma: float, sigma_y: float) -> torch.Tensor:
    """Sigma* = (I/sigma^2 + A^T A/sigma_y^2)^{-1} from the eigendecomposition of A^T A
    (float64), or sigma^2 P_null for sigma_y = 0."""
    lam, V = torch.linalg.eigh(A.T @ A)
    if sigma_y == 0:
        null = (lam <= 1e-10 * lam.max()).to(torch.float64)
        return sigma**2 * (V * null) @ V.T
    return (V / (1 / sigma**2 + lam.clamp(min=0) / sigma_y**2)) @ V.T


def _skip_operators():
    g = torch.Generator().manual_seed(21)
    shape = (3, 8, 8)
    d = 3 * 8 * 8
    low_rank = torch.randn(50, 30, generator=g, dtype=torch.float64) @ torch.randn(
        30, d, generator=g, dtype=torch.float64) / d**0.5
    return {
        "inpaint-batched": Inpainting(random_mask(8, 0.6, 2, g), 3),
        "sr4": AveragePoolSR(4, shape),
        "blur-gauss": FFTBlur(gaussian_kernel(5, 1.0), shape),
        "blur-motion-batched": FFTBlur(motion_kernels(2, 5, 0.5, g), shape),
        "dense-rank-deficient": DenseOperator(low_rank, in_shape=shape),
    }


@pytest.mark.parametrize("name", ["inpaint-batched", "sr4", "blur-gauss", "blur-motion-batched", "dense-rank-deficient"])
@pytest.mark.parametrize("sigma", [0.05, 1.0, 80.0])
@pytest.mark.parametrize("sigma_y", [0.05, 0.0, (0.0, 0.2)])
def test_gaussian_skip_matches_dense_float64(name, sigma, sigma_y):
    """S mu = sd^2 (sd^2 I + Sigma*)^{-1} mu, Sigma* from the eigendecomposition of each
    sample's dense A^T A, solved densely in float64."""

    op = _skip_operators()[name]
    B, sd = 2, 0.5
    mats = op.to_dense(torch.float64)
    mats = mats if mats.dim() == 3 else mats.expand(B, -1, -1)
    sy = torch.tensor(sigma_y if isinstance(sigma_y, tuple) else (sigma_y, sigma_y), dtype=torch.float64)
    mu = torch.randn((B,) + tuple(op.in_shape), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    got = gaussian_skip(mu, sigma, op, sy, sd)
    d = op.in_dim
    for b in range(B):
        if float(sy[b]) == 0 and hasattr(op, "rcond"):
            # the noiseless limit uses the operator's own pseudo-inverse, which for a blur
            # truncates the frequencies below rcond (documented in FFTBlur)
            P_row = torch.linalg.pinv(mats[b], rtol=op.rcond) @ mats[b]
            sig_star = sigma**2 * (torch.eye(d, dtype=torch.float64) - P_row)
        else:
            sig_star = dense_sigma_star(mats[b], sigma, float(sy[b]))
        ref = torch.linalg.solve(sd**2 * torch.eye(d, dtype=torch.float64) + sig_star, sd**2 * mu[b].reshape(d))
        err = float((got[b].reshape(d) - ref).norm() / ref.norm())
        assert err < 1e-8, (b, err)


def test_gaussian_skip_limits_are_edm_c_skip_and_the_copied_measurement():
    """Nothing measured: S = c_skip I (EDM). Noiseless inpainting: S copies the observed
    pixels (S = 1 there) and shrinks the others by c_skip."""

    g = torch.Generator().manual_seed(4)
    mu = torch.randn(2, 3, 8, 8, generator=g, dtype=torch.float64)
    c_skip = float(edm_coefficients(3.0)[0])
    none = Inpainting(torch.zeros(2, 8, 8, dtype=torch.bool), 3)
    assert torch.allclose(gaussian_skip(mu, 3.0, none, 0.1), c_skip * mu, rtol=0, atol=1e-12)
    mask = random_mask(8, 0.5, 2, g)
    m = mask[:, None].expand(-1, 3, -1, -1)
    got = gaussian_skip(mu, 3.0, Inpainting(mask, 3), 0.0)
    assert torch.allclose(got[m], mu[m], rtol=0, atol=1e-12)
    assert torch.allclose(got[~m], c_skip * mu[~m], rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="sigma must be > 0"):
        gaussian_skip(mu, 0.0, none, 0.1)
