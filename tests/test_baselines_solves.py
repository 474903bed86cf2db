"""The linear algebra of the baselines against dense float64 SVDs (tiny problems).

* DDRM's initialisation and update, and DDNM+'s update, computed in the operators' known
  spectral coordinates (exactpost.baselines.spectral) equal the same rules applied in the
  coordinates of torch.linalg.svd of the dense matrix, for every family with a known SVD
  (per-sample masks and kernels included, an even-size blur kernel with exact zeros in its
  transfer function, a rank-deficient dense matrix) and for noisy, noiseless and final steps;
* PiGDM's A^T (r^2 A A^T + sigma_y^2 I)^{-1} v via the push-through identity equals the dense
  solve (and r^-2 A^+ v for sigma_y = 0).
"""

from __future__ import annotations

import math

import pytest
import torch

from exactpost.baselines import ddnm_plus_update, ddrm_init, ddrm_update, pigdm_vector, spectral_view
from exactpost.operators import (
    AveragePoolSR,
    Colorization,
    CompressedSensing,
    DenseOperator,
    Denoising,
    FFTBlur,
    Inpainting,
    random_mask,
    random_orthonormal_matrix,
)

B = 3


def make_ops():
    g = torch.Generator().manual_seed(0)
    low_rank = torch.randn(6, 4, generator=g, dtype=torch.float64) @ torch.randn(4, 8, generator=g, dtype=torch.float64)
    return {
        "inpaint-per-sample": Inpainting(random_mask((4, 4), 0.5, batch_size=B, generator=g), channels=2),
        "inpaint-per-channel": Inpainting(torch.rand(2, 3, 3, generator=g) > 0.4, channels=2, per_channel=True),
        "sr2": AveragePoolSR(2, (2, 4, 4)),
        "colorization": Colorization((3, 2, 3)),
        "blur-3x3-per-sample": FFTBlur(torch.rand(B, 3, 3, generator=g, dtype=torch.float64), (1, 4, 4)),
        "blur-2x2-box": FFTBlur(torch.full((2, 2), 0.25, dtype=torch.float64), (2, 4, 4)),
        "cs": CompressedSensing(random_orthonormal_matrix(5, 12, generator=g), (12,)),
        "dense-rank4": DenseOperator(low_rank),
        "denoising": Denoising((2, 3)),
    }


OPS = make_ops()


def dense_svd(op, b: int):
    """(M, s padded to d, Vh [d, d], U [m, m]) of sample b's dense matrix, with the singular
    values the operator treats as zero set to 0 (FFT: |H| <= 1e-3 max|H|; dense: rcond)."""
    M = op.to_dense()
    M = M[b] if M.dim() == 3 else M
    U, s, Vh = torch.linalg.svd(M, full_matrices=True)
    thr = op.rcond if isinstance(op, (FFTBlur, DenseOperator)) else 1e-9
    s = torch.where(s > thr * s.max(), s, torch.zeros_like(s))
    d = M.shape[1]
    s_full = torch.zeros(d, dtype=torch.float64)
    s_full[: s.shape[0]] = s
    return M, s_full, Vh, U


def dense_rules(M, s, Vh, U, y, x, x0, z, sy, sig, sig_next, eta, eta_b, rule):
    """DDRM / DDNM+ applied coordinate by coordinate in the dense SVD's V coordinates."""
    d, m = M.shape[1], M.shape[0]
    uty = torch.zeros(d, dtype=torch.float64)
    uty[: min(m, d)] = (U.T @ y)[: min(m, d)]
    meas = s > 0
    ybar = torch.where(meas, uty / torch.where(meas, s, torch.ones_like(s)), torch.zeros_like(s))
    xb, x0b, zb = Vh @ x, Vh @ x0, Vh @ z
    out = torch.empty(d, dtype=torch.float64)
    for i in range(d):
        nstd = sy / float(s[i]) if meas[i] else math.inf
        if rule == "init":
            out[i] = ybar[i] + math.sqrt(sig**2 - nstd**2) * zb[i] if (meas[i] and sig > nstd) else sig * zb[i]
            continue
        e = (xb[i] - x0b[i]) / sig
        if not meas[i]:
            out[i] = x0b[i] + math.sqrt(1 - eta**2) * sig_next * e + eta * sig_next * zb[i]
        elif rule == "ddrm":
            if sig_next < nstd:
                out[i] = x0b[i] + math.sqrt(1 - eta**2) * sig_next * (ybar[i] - x0b[i]) / nstd + eta * sig_next * zb[i]
            else:
                out[i] = (1 - eta_b) * x0b[i] + eta_b * ybar[i] + math.sqrt(sig_next**2 - eta_b**2 * nstd**2) * zb[i]
        else:  # ddnm+
            if sy == 0:
                out[i] = ybar[i] + sig_next * (eta * zb[i] + math.sqrt(1 - eta**2) * e)
            elif sig_next >= nstd:
                out[i] = ybar[i] + math.sqrt(sig_next**2 - nstd**2) * zb[i]
            else:
                lam = float(s[i]) * sig_next * math.sqrt(1 - eta**2) / sy
                out[i] = x0b[i] - lam * (x0b[i] - ybar[i]) + eta * sig_next * zb[i]
    return Vh.T @ out


STEPS = [(1.0, 0.5, 0.3), (1.0, 0.5, 0.0), (0.4, 0.0, 0.3), (0.3, 0.2, 0.05), (2.0, 1.5, 0.7)]


@pytest.mark.parametrize("name", sorted(OPS))
@pytest.mark.parametrize("rule", ["init", "ddrm", "ddnm+"])
def test_spectral_rules_match_dense_svd(name, rule):
    op = OPS[name]
    g = torch.Generator().manual_seed(1)
    shape = (B,) + tuple(op.in_shape)
    for sig, sig_next, sy in STEPS:
        x, x0, z, xt = (torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(4))
        y = op.A(xt)
        view = spectral_view(op, x)
        ybar = view.spec(op.pinv(y))
        syb = torch.full((B,), sy, dtype=torch.float64).reshape((-1,) + (1,) * (ybar.dim() - 1))
        if rule == "init":
            got = view.unspec(ddrm_init(view, ybar, syb, sig, view.spec(z)))
        elif rule == "ddrm":
            got = view.unspec(ddrm_update(view, view.spec(x), view.spec(x0), ybar, syb, sig, sig_next, 0.85, 0.7,
                                          view.spec(z)))
        else:
            got = view.unspec(ddnm_plus_update(view, view.spec(x), view.spec(x0), ybar, syb, sig, sig_next, 0.85,
                                               view.spec(z)))
        assert got.shape == shape and not got.is_complex()
        for b in range(B):
            M, s, Vh, U = dense_svd(op, b)
            want = dense_rules(M, s, Vh, U, y[b].reshape(-1), x[b].reshape(-1), x0[b].reshape(-1),
                               z[b].reshape(-1), sy, sig, sig_next, 0.85, 0.7, rule)
            torch.testing.assert_close(got[b].reshape(-1), want, rtol=1e-9, atol=1e-9,
                                       msg=lambda m: f"{name} {rule} step {sig}->{sig_next} sy={sy}: {m}")


def test_spectral_view_is_orthogonal_and_diagonalises_AtA():
    g = torch.Generator().manual_seed(2)
    for name, op in OPS.items():
        x = torch.randn((B,) + tuple(op.in_shape), generator=g, dtype=torch.float64)
        view = spectral_view(op, x)
        torch.testing.assert_close(view.unspec(view.spec(x)), x, rtol=1e-12, atol=1e-12)
        AtA = op.At(op.A(x))
        torch.testing.assert_close(view.unspec(view.s**2 * view.spec(x)), AtA, rtol=1e-10, atol=1e-10,
                                   msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("name", sorted(OPS))
@pytest.mark.parametrize("sigma_y", [0.3, 0.01, 0.0])
def test_pigdm_push_through_solve_matches_dense(name, sigma_y):
    op = OPS[name]
    g = torch.Generator().manual_seed(3)
    r = op.A(torch.randn((B,) + tuple(op.in_shape), generator=g, dtype=torch.float64))
    r = r + 0.1 * torch.randn(r.shape, generator=g, dtype=torch.float64)  # also off the range of A
    for r2 in (0.9, 0.05):
        got = pigdm_vector(op, r, r2, torch.full((B,), sigma_y, dtype=torch.float64))
        for b in range(B):
            M = op.to_dense()
            M = M[b] if M.dim() == 3 else M
            rb = r[b].reshape(-1)
            if sigma_y > 0:
                K = r2 * M @ M.T + sigma_y**2 * torch.eye(M.shape[0], dtype=torch.float64)
                want = M.T @ torch.linalg.solve(K, rb)
            else:
                rtol = op.rcond if isinstance(op, (FFTBlur, DenseOperator)) else 1e-9
                want = torch.linalg.pinv(M, rtol=rtol) @ rb / r2
            torch.testing.assert_close(got[b].reshape(-1), want, rtol=1e-8, atol=1e-9,
                                       msg=lambda m: f"{name} sigma_y={sigma_y} r2={r2}: {m}")
