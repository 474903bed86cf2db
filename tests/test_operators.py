"""Operators: every family against dense float64 linear algebra built from basis vectors.

For each operator (shared and per-sample variants, plus the CG fallback) we check the
adjoint identity, ``solve`` against ``torch.linalg.solve(rho I + M^T M, v)`` at 8x8 and 16x16
with 3 channels for five rho, ``pinv`` / ``null_project`` against ``torch.linalg.pinv``, and
float32 against float64. Family-specific tests check conventions and error messages.
"""

from __future__ import annotations

import math

import pytest
import torch

from exactpost.operators import (
    AveragePoolSR,
    Colorization,
    CompressedSensing,
    DenseOperator,
    Denoising,
    FFTBlur,
    FunctionOperator,
    Inpainting,
    LinearOperator,
    box_mask,
    gaussian_kernel,
    motion_kernel,
    motion_kernels,
    random_mask,
    random_orthonormal_matrix,
)

C = 3
RHOS = [1e-4, 1e-2, 1.0, 1e2, 1e4]
SIZES = [8, 16]
CG_ITERATIONS: dict[str, list[int]] = {}


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _cg(op: LinearOperator) -> FunctionOperator:
    """The CG fallback wrapping a closed-form operator's A and At (nothing else)."""
    return FunctionOperator(op.A, op.At, op.in_shape, op.out_shape, batch_size=op.batch_size)


def build(name: str, n: int) -> LinearOperator:
    """Operator ``name`` on [*, 3, n, n] images (n mapped to 9 / 12 for the factor-3 SR)."""
    g = gen(sum(map(ord, name)) + n)
    shape = (C, n, n)
    d = C * n * n
    if name == "denoising":
        return Denoising(shape)
    if name == "inpaint-shared":
        return Inpainting(random_mask(n, 0.6, None, g), C)
    if name == "inpaint-batched":
        return Inpainting(random_mask(n, 0.6, 2, g), C)
    if name == "inpaint-per-channel-batched":
        return Inpainting(torch.rand(2, C, n, n, generator=g) > 0.5, C, per_channel=True)
    if name == "box-batched":
        return Inpainting(box_mask(n, n // 2, 2, g), C)
    if name == "sr2":
        return AveragePoolSR(2, shape)
    if name == "sr4":
        return AveragePoolSR(4, shape)
    if name == "sr3":
        m = {8: 9, 16: 12}[n]
        return AveragePoolSR(3, (C, m, m))
    if name == "blur-gauss-odd":
        return FFTBlur(gaussian_kernel(5, 1.0), shape)
    if name == "blur-gauss-even":
        return FFTBlur(gaussian_kernel(4, 0.8), shape)
    if name == "blur-rand-nonsquare-batched":  # 3x4: odd x even, nonnegative random
        return FFTBlur(torch.rand(2, 3, 4, generator=g, dtype=torch.float64), shape)
    if name == "blur-motion-odd-batched":
        return FFTBlur(motion_kernels(2, 5, 0.5, g), shape)
    if name == "blur-motion-even":
        return FFTBlur(motion_kernel(6, 0.5, g), shape)
    if name == "colorization":
        return Colorization(shape)
    if name == "colorization-4ch":
        return Colorization((4, n, n))
    if name == "cs-shared":
        return CompressedSensing.random_orthonormal(d // 3, shape, g)
    if name == "cs-batched":
        return CompressedSensing.random_orthonormal(d // 4, shape, g, batch_size=2)
    if name == "dense-shared":  # rank-deficient: rank 40 < m = 60
        mat = torch.randn(60, 40, generator=g, dtype=torch.float64) @ torch.randn(
            40, d, generator=g, dtype=torch.float64) / math.sqrt(d)
        return DenseOperator(mat, in_shape=shape)
    if name == "dense-batched":
        return DenseOperator(torch.randn(2, 50, d, generator=g, dtype=torch.float64)
                             / math.sqrt(d), in_shape=shape)
    if name == "cg-blur":
        return _cg(FFTBlur(gaussian_kernel(5, 0.5), shape))
    if name == "cg-blur-motion-batched":
        return _cg(FFTBlur(motion_kernels(2, 5, 0.5, g), shape))
    if name == "cg-inpaint-batched":
        return _cg(Inpainting(random_mask(n, 0.7, 2, g), C))
    if name == "cg-sr2":
        return _cg(AveragePoolSR(2, shape))
    raise KeyError(name)


EXACT = ["denoising", "inpaint-shared", "inpaint-batched", "inpaint-per-channel-batched",
         "box-batched", "sr2", "sr4", "sr3", "blur-gauss-odd", "blur-gauss-even",
         "blur-rand-nonsquare-batched", "blur-motion-odd-batched", "blur-motion-even",
         "colorization", "colorization-4ch", "cs-shared", "cs-batched", "dense-shared", "dense-batched"]
CG = ["cg-blur", "cg-blur-motion-batched", "cg-inpaint-batched", "cg-sr2"]
ALL = EXACT + CG


def batch_of(op: LinearOperator) -> int:
    return op.batch_size if op.batch_size is not None else 2


def dense_batched(op: LinearOperator) -> torch.Tensor:
    """Dense float64 matrices [B, m, d] (a shared matrix repeated over the batch)."""
    mat = op.to_dense(torch.float64)
    return mat if mat.dim() == 3 else mat.expand(batch_of(op), -1, -1)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Max over the batch of ||a - b|| / ||b||."""
    a, b = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
    return float(((a - b).norm(dim=1) / b.norm(dim=1).clamp_min(1e-300)).max())


def randx(op: LinearOperator, dtype=torch.float64, seed=1) -> torch.Tensor:
    return torch.randn((batch_of(op),) + op.in_shape, generator=gen(seed), dtype=dtype)


def randy(op: LinearOperator, dtype=torch.float64, seed=2) -> torch.Tensor:
    return torch.randn((batch_of(op),) + op.out_shape, generator=gen(seed), dtype=dtype)


# --- generic checks, every family -----------------------------------------------------
@pytest.mark.parametrize("name", ALL)
def test_adjoint_identity(name):
    op = build(name, 8)
    x, y = randx(op), randy(op)
    ax, aty = op.A(x), op.At(y)
    assert ax.shape == y.shape and aty.shape == x.shape
    lhs = (ax * y).reshape(len(x), -1).sum(1)
    rhs = (x * aty).reshape(len(x), -1).sum(1)
    scale = ax.reshape(len(x), -1).norm(dim=1) * y.reshape(len(x), -1).norm(dim=1)
    assert float(((lhs - rhs).abs() / scale).max()) < 1e-10


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("name", ALL)
def test_solve_matches_dense(name, n):
    op = build(name, n)
    mat = dense_batched(op)
    b, d = mat.shape[0], mat.shape[2]
    v = randx(op)
    gram = mat.transpose(1, 2) @ mat
    eye = torch.eye(d, dtype=torch.float64)
    tol = 1e-6 if name.startswith("cg") else 1e-8
    for rho in RHOS:
        want = torch.linalg.solve(rho * eye + gram, v.reshape(b, d, 1)).reshape(v.shape)
        got = op.solve(v, rho)
        assert got.shape == v.shape and got.dtype == torch.float64
        assert rel(got, want) < tol, f"{name} n={n} rho={rho}: rel err {rel(got, want):.2e}"
        if name.startswith("cg"):
            info = op.last_cg_info
            assert info is not None and info.converged, f"{name} rho={rho}: {info}"
            assert 1 <= info.iterations < d
            CG_ITERATIONS.setdefault(f"{name} n={n}", []).append(info.iterations)
    # one rho per sample
    rhos = torch.tensor([1e-3, 10.0] + [1.0] * (b - 2), dtype=torch.float64)[:b]
    want = torch.linalg.solve(rhos[:, None, None] * eye + gram, v.reshape(b, d, 1))
    assert rel(op.solve(v, rhos), want.reshape(v.shape)) < tol
    if name.startswith("cg"):
        print(f"CG iterations {name} n={n} rho={RHOS}: {CG_ITERATIONS[f'{name} n={n}']}")


def _pinv_rtol(op: LinearOperator, mat: torch.Tensor) -> float:
    """The rank threshold to compare with: the operator's own (blur, dense), else 1e-8;
    asserts that no singular value lies near it, so the comparison is well posed."""
    rtol = getattr(op, "rcond", None) or 1e-8
    s = torch.linalg.svdvals(mat)
    ratio = s / s[:, :1]
    near = (ratio > rtol / 1.1) & (ratio < rtol * 1.1)
    assert not bool(near.any()), "singular value too close to the pinv threshold"
    return rtol


@pytest.mark.parametrize("name", ALL)
def test_pinv_and_null_project_match_dense(name):
    op = build(name, 8)
    mat = dense_batched(op)
    rtol = _pinv_rtol(op, mat)
    pinv = torch.linalg.pinv(mat, rtol=rtol)
    x, y = randx(op), randy(op)
    b = len(x)
    tol = 1e-6 if name.startswith("cg") else 1e-9
    want = (pinv @ y.reshape(b, -1, 1)).reshape(x.shape)
    assert rel(op.pinv(y), want) < tol
    xf = x.reshape(b, -1, 1)
    want_null = (xf - pinv @ (mat @ xf)).reshape(x.shape)
    null = op.null_project(x)
    if float(want_null.norm()) > 1e-8 * float(x.norm()):
        assert rel(null, want_null) < tol
        assert rel(op.null_project(null), null) < tol  # idempotent
    else:  # A injective: the null space is {0}
        assert float(null.norm()) < 1e-8 * float(x.norm())
    # A kills the null projection, up to the singular values truncated below rtol * s_max
    s_max = float(torch.linalg.matrix_norm(mat, ord=2).max())
    bound = 1.1 * rtol * s_max * float(null.norm()) + tol * float(op.A(x).norm())
    assert float(op.A(null).norm()) <= bound
    # x = null + pinv(A x)
    assert rel(null + op.pinv(op.A(x)), x) < tol


@pytest.mark.parametrize("name", EXACT)
def test_regularized_pinv_matches_dense_svd(name):
    """Closed-form (A^T A + rho I)^{-1} A^T r (rho = 0: A^+ r) against V diag(s/(s^2 + rho)) U^T r
    from a float64 SVD of the dense matrix; rho is passed as the base class's check_rho
    shapes it ([B, 1, ..., 1] against r)."""
    op = build(name, 8)
    mat = dense_batched(op)
    rtol = _pinv_rtol(op, mat)
    u, s, vh = torch.linalg.svd(mat, full_matrices=False)
    r = randy(op)
    b = len(r)
    coef = u.transpose(1, 2) @ r.reshape(b, -1, 1)
    as_rho = lambda t: t.reshape((b,) + (1,) * len(op.out_shape))  # noqa: E731
    for rho in [0.0, 1e-6, 1e-2, 1.0, 1e3]:
        gain = s / (s**2 + rho) if rho > 0 else torch.where(
            s > rtol * s[:, :1], 1 / s, torch.zeros_like(s))
        want = (vh.transpose(1, 2) @ (gain[..., None] * coef)).reshape((b,) + op.in_shape)
        got = op._regularized_pinv(r, as_rho(torch.full((b,), rho, dtype=torch.float64)))
        assert got.shape == want.shape
        assert rel(got, want) < 1e-9, f"{name} rho={rho}: {rel(got, want):.2e}"
        assert rel(op.regularized_pinv(r, rho), want) < 1e-9  # the public entry point
    # one rho per sample, zero (noiseless) and positive mixed
    rhos = torch.tensor([0.0, 0.5, 1e-3][:b] + [2.0] * max(0, b - 3), dtype=torch.float64)
    got = op._regularized_pinv(r, as_rho(rhos))
    for i in range(b):
        one = op._regularized_pinv(r, as_rho(torch.full((b,), float(rhos[i]),
                                                        dtype=torch.float64)))
        assert rel(got[i : i + 1], one[i : i + 1]) < 1e-12
    assert rel(got[:1], op.pinv(r)[:1]) < 1e-12


@pytest.mark.parametrize("name", EXACT)
def test_float32_matches_float64(name):
    op = build(name, 8)
    x64, y64 = randx(op), randy(op)
    x32, y32 = x64.float(), y64.float()
    pairs = [(op.A(x32), op.A(x64)), (op.At(y32), op.At(y64)),
             (op.solve(x32, 0.1), op.solve(x64, 0.1)), (op.solve(x32, 1e3), op.solve(x64, 1e3)),
             (op.pinv(y32), op.pinv(y64)),
             (op._regularized_pinv(y32, torch.full((len(y32),), 0.01)),
              op._regularized_pinv(y64, torch.full((len(y64),), 0.01, dtype=torch.float64)))]
    null32, null64 = op.null_project(x32), op.null_project(x64)
    if float(null64.norm()) > 1e-6 * float(x64.norm()):
        pairs.append((null32, null64))
    for got, want in pairs:
        assert got.dtype == torch.float32
        assert rel(got.double(), want) < 1e-4


# --- per-sample operators equal the shared operator of each sample's parameters --------
def test_per_sample_equals_shared_per_family():
    g = gen(5)
    n, b = 8, 3
    shape = (C, n, n)
    x = torch.randn((b,) + shape, generator=g, dtype=torch.float64)
    masks = random_mask(n, 0.5, b, g)
    kernels = motion_kernels(b, 5, 0.5, g)
    mats = random_orthonormal_matrix(40, C * n * n, b, g)
    dense = torch.randn(b, 30, C * n * n, generator=g, dtype=torch.float64)
    pairs = [
        (Inpainting(masks, C), [Inpainting(masks[i], C) for i in range(b)]),
        (FFTBlur(kernels, shape), [FFTBlur(kernels[i], shape) for i in range(b)]),
        (CompressedSensing(mats, shape), [CompressedSensing(mats[i], shape) for i in range(b)]),
        (DenseOperator(dense, shape), [DenseOperator(dense[i], shape) for i in range(b)]),
    ]
    rho = torch.tensor([1e-2, 1.0, 10.0], dtype=torch.float64)
    for batched, shared in pairs:
        assert batched.batch_size == b and all(s.batch_size is None for s in shared)
        for i, s in enumerate(shared):
            xi = x[i : i + 1]
            yi = s.A(xi)
            assert torch.allclose(batched.A(x)[i : i + 1], yi, rtol=1e-12, atol=1e-12)
            assert torch.allclose(batched.solve(x, rho)[i : i + 1], s.solve(xi, float(rho[i])),
                                  rtol=1e-10, atol=1e-12)
            assert torch.allclose(batched.pinv(batched.A(x))[i : i + 1], s.pinv(yi),
                                  rtol=1e-10, atol=1e-12)
        # the samples really differ: sample 0's operator differs from sample 1's
        assert not torch.allclose(shared[0].A(x[:1]), shared[1].A(x[:1]))


# --- family-specific conventions ----------------------------------------------------------
def _direct_circular_conv(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """(A x)[i, j] = sum_{p,q} k[p, q] x[(i - p + kh//2) mod H, (j - q + kw//2) mod W]."""
    kh, kw = k.shape
    out = torch.zeros_like(x)
    for p in range(kh):
        for q in range(kw):
            out += k[p, q] * torch.roll(x, shifts=(p - kh // 2, q - kw // 2), dims=(-2, -1))
    return out


@pytest.mark.parametrize("ksize", [(5, 5), (4, 4), (3, 4), (6, 3), (1, 1), (8, 8)])
def test_blur_centre_convention_matches_direct_convolution(ksize):
    g = gen(7)
    x = torch.randn(2, C, 8, 8, generator=g, dtype=torch.float64)
    k = torch.randn(ksize, generator=g, dtype=torch.float64)
    op = FFTBlur(k, (C, 8, 8))
    assert rel(op.A(x), _direct_circular_conv(x, k)) < 1e-12
    # a delta at the centre entry (kh // 2, kw // 2) is the identity: no shift
    delta = torch.zeros(ksize, dtype=torch.float64)
    delta[ksize[0] // 2, ksize[1] // 2] = 1.0
    assert rel(FFTBlur(delta, (C, 8, 8)).A(x), x) < 1e-12


def test_blur_nonsquare_image_and_odd_size():
    g = gen(8)
    x = torch.randn(2, C, 7, 10, generator=g, dtype=torch.float64)
    k = torch.rand(4, 3, generator=g, dtype=torch.float64)
    op = FFTBlur(k, (C, 7, 10))
    assert rel(op.A(x), _direct_circular_conv(x, k)) < 1e-12
    mat = op.to_dense()
    v = torch.randn(1, C, 7, 10, generator=g, dtype=torch.float64)
    want = torch.linalg.solve(0.01 * torch.eye(mat.shape[1], dtype=torch.float64) + mat.T @ mat,
                              v.reshape(-1))
    assert rel(op.solve(v, 0.01), want.reshape(v.shape)) < 1e-8


def test_blur_pinv_truncates_tiny_frequencies():
    # a 2x2 box kernel has an exact zero of its transfer function at the Nyquist frequency
    op = FFTBlur(torch.full((2, 2), 0.25, dtype=torch.float64), (1, 8, 8))
    mat = op.to_dense()
    x = torch.randn(2, 1, 8, 8, generator=gen(9), dtype=torch.float64)
    want = (torch.linalg.pinv(mat, rtol=op.rcond) @ x.reshape(2, -1).T).T.reshape(x.shape)
    got = op.pinv(x)
    assert torch.isfinite(got).all() and rel(got, want) < 1e-10
    checker = torch.tensor([[(-1.0) ** (i + j) for j in range(8)] for i in range(8)],
                           dtype=torch.float64).reshape(1, 1, 8, 8)
    assert rel(op.null_project(checker), checker) < 1e-12  # Nyquist is in the null space


def test_gaussian_kernel_values():
    k = gaussian_kernel(9, 1.0)
    r = torch.arange(9, dtype=torch.float64) - 4
    want = torch.exp(-(r[:, None] ** 2 + r[None] ** 2) / 2)
    assert torch.allclose(k, want / want.sum(), rtol=1e-14, atol=0)
    assert abs(float(k.sum()) - 1) < 1e-12 and bool((k >= 0).all())
    assert torch.equal(k, k.flip(0)) and torch.equal(k, k.T)
    ke = gaussian_kernel(4, 0.8)
    assert ke.argmax() == 2 * 4 + 2  # even size: the peak sits on the blur origin (2, 2)


@pytest.mark.parametrize("size", [5, 6, 9, 13])
@pytest.mark.parametrize("intensity", [0.0, 0.5, 1.0])
def test_motion_kernel_properties(size, intensity):
    k = motion_kernel(size, intensity, gen(size))
    assert k.shape == (size, size) and k.dtype == torch.float64
    assert bool((k >= 0).all()) and abs(float(k.sum()) - 1) < 1e-12
    idx = torch.arange(size, dtype=torch.float64)
    cy, cx = float((k.sum(1) * idx).sum()), float((k.sum(0) * idx).sum())
    # centroid on the blur origin (exactly for odd sizes; even sizes may need a clamp)
    tol = 1e-9 if size % 2 else 0.5
    assert abs(cy - size // 2) < tol and abs(cx - size // 2) < tol
    rows, cols = torch.nonzero(k > 0, as_tuple=True)
    extent = max(int(rows.max() - rows.min()), int(cols.max() - cols.min()))
    assert extent >= (size - 1) / 4  # a motion trail, not a point
    assert torch.equal(k, motion_kernel(size, intensity, gen(size)))  # reproducible


def test_motion_kernels_batch_differ_and_reproduce():
    ks = motion_kernels(4, 9, 0.5, gen(3))
    assert ks.shape == (4, 9, 9)
    for i in range(4):
        for j in range(i):
            assert not torch.allclose(ks[i], ks[j])
    assert torch.equal(ks, motion_kernels(4, 9, 0.5, gen(3)))
    assert not torch.equal(ks, motion_kernels(4, 9, 0.5, gen(4)))


def test_motion_kernels_batch_equals_successive_single_draws_and_the_kernels_of_before():
    """The batched kernels are computed all at once but draw kernel by kernel: B of them equal
    B successive single draws bit for bit, leave the generator in the same state, and equal
    what the per-kernel code of before (a Python loop per kernel, up to commit fe02ecd) drew:
    the bundled benchmarks' blur operators are unchanged."""
    import hashlib

    for size, intensity in ((9, 0.5), (6, 1.0), (2, 0.3), (1, 0.5)):
        g1, g2 = gen(7), gen(7)
        batch = motion_kernels(5, size, intensity, g1)
        singles = torch.stack([motion_kernel(size, intensity, g2) for _ in range(5)])
        assert torch.equal(batch, singles) and torch.equal(g1.get_state(), g2.get_state())
    h = hashlib.sha256()
    for size, intensity, seed in ((9, 0.5, 0), (13, 1.0, 1), (5, 0.0, 2), (2, 0.3, 3)):
        h.update(motion_kernels(8, size, intensity, torch.Generator().manual_seed(seed)).numpy().tobytes())
    assert h.hexdigest() == "4db43b83a0b45e71cd028de9b07280502d7f2ac590273d859d7e9d7432287fa8"


def test_masks_and_box():
    m = random_mask((8, 10), 0.7, 5, gen(0))
    assert m.shape == (5, 8, 10) and m.dtype == torch.bool
    assert bool(((~m).sum((1, 2)) == 56).all())  # round(0.7 * 80) missing in every sample
    b = box_mask(12, 5, 6, gen(1))
    for i in range(6):
        rows, cols = torch.nonzero(~b[i], as_tuple=True)
        assert len(rows) == 25
        assert int(rows.max() - rows.min()) == 4 and int(cols.max() - cols.min()) == 4
    op = Inpainting(b, C)
    assert op.batch_size == 6 and op.in_shape == (C, 12, 12)
    assert torch.allclose(op.observed_fraction, torch.full((6,), 1 - 25 / 144, dtype=torch.float64))


def test_dense_vectors_svd_rank_and_pinv_default():
    g = gen(11)
    mat = torch.randn(6, 3, generator=g, dtype=torch.float64) @ torch.randn(3, 10, generator=g,
                                                                            dtype=torch.float64)
    op = DenseOperator(mat)
    assert op.in_shape == (10,) and op.out_shape == (6,) and int(op.rank) == 3
    assert op.svd() is op.svd()  # computed once
    y = torch.randn(4, 6, generator=g, dtype=torch.float64)
    assert rel(op.pinv(y), (torch.linalg.pinv(mat) @ y.T).T) < 1e-10
    x = torch.randn(4, 10, generator=g, dtype=torch.float64)
    want = torch.linalg.solve(1e-3 * torch.eye(10, dtype=torch.float64) + mat.T @ mat, x.T).T
    assert rel(op.solve(x, 1e-3), want) < 1e-8
    # tall, full column rank: the solve has no null-space term
    tall = torch.randn(12, 5, generator=g, dtype=torch.float64)
    x5 = torch.randn(3, 5, generator=g, dtype=torch.float64)
    want = torch.linalg.solve(0.5 * torch.eye(5, dtype=torch.float64) + tall.T @ tall, x5.T).T
    assert rel(DenseOperator(tall).solve(x5, 0.5), want) < 1e-10
    assert float(DenseOperator(tall).null_project(x5).norm()) < 1e-12


def test_cs_random_orthonormal():
    op = CompressedSensing.random_orthonormal(20, (2, 4, 4), gen(0), batch_size=3)
    mat = op.matrix
    assert mat.shape == (3, 20, 32)
    assert torch.allclose(mat @ mat.transpose(1, 2), torch.eye(20, dtype=torch.float64).expand(3, -1, -1),
                          atol=1e-12)
    assert torch.equal(mat, CompressedSensing.random_orthonormal(20, (2, 4, 4), gen(0), 3).matrix)
    assert not torch.allclose(mat[0], mat[1])


# --- errors ---------------------------------------------------------------------------
def test_bad_inputs_raise_value_error():
    op = FFTBlur(motion_kernels(2, 5, 0.5, gen(0)), (C, 8, 8))
    x = torch.randn(2, C, 8, 8, dtype=torch.float64)
    cases = [
        (lambda: op.A(torch.randn(2, 1, 8, 8)), "expects"),  # wrong channels
        (lambda: op.A(torch.randn(2, C, 8, 9)), "expects"),  # wrong size
        (lambda: op.A(torch.randn(C, 8, 8)), "expects"),  # missing batch dim
        (lambda: op.A(torch.randn(3, C, 8, 8)), "batch size 3"),  # batch != operator's
        (lambda: op.At(torch.randn(2, C, 4, 4)), "measurement space"),
        (lambda: op.A(torch.ones(2, C, 8, 8, dtype=torch.int64)), "floating-point"),
        (lambda: op.solve(x, 0.0), "rho"),
        (lambda: op.solve(x, -1.0), "rho"),
        (lambda: op.solve(x, float("nan")), "rho"),
        (lambda: op.solve(x, torch.ones(3)), "rho"),
        (lambda: FFTBlur(torch.ones(9, 9), (C, 8, 8)), "larger than"),
        (lambda: FFTBlur(torch.ones(3, 9), (C, 8, 8)), "larger than"),
        (lambda: FFTBlur(torch.tensor([[1.0, float("nan")]]), (C, 8, 8)), "NaN or Inf"),
        (lambda: FFTBlur(torch.tensor([[1.0, float("inf")]]), (C, 8, 8)), "NaN or Inf"),
        (lambda: FFTBlur(torch.ones(5), (C, 8, 8)), "kh, kw"),
        (lambda: AveragePoolSR(3, (C, 8, 8)), "not divisible"),
        (lambda: AveragePoolSR(4, (C, 8, 6)), "not divisible"),
        (lambda: AveragePoolSR(0, (C, 8, 8)), "factor"),
        (lambda: AveragePoolSR(2.5, (C, 8, 8)), "factor"),
        (lambda: AveragePoolSR(2, (8, 8)), "3 entries"),
        (lambda: Inpainting(torch.full((8, 8), 0.5), C), "only 0 and 1"),
        (lambda: Inpainting(torch.ones(8), C), "H, W"),
        (lambda: Inpainting(torch.ones(2, 8, 8), C, per_channel=True), "channels"),
        (lambda: Inpainting(torch.ones(8, 8), C).A(torch.randn(1, 1, 8, 8)), "expects"),
        (lambda: CompressedSensing(torch.randn(5, 48), (C, 4, 4)), "not orthonormal"),
        (lambda: CompressedSensing(torch.eye(48)[:5], (C, 4, 5)), "must match"),
        (lambda: DenseOperator(torch.randn(5, 10), in_shape=(3, 3)), "must match"),
        (lambda: DenseOperator(torch.randn(5, 10)).A(torch.randn(2, 9)), "expects"),
        (lambda: random_mask(8, 1.5), "missing_fraction"),
        (lambda: box_mask(8, 9), "does not fit"),
        (lambda: gaussian_kernel(5, 0.0), "std"),
        (lambda: gaussian_kernel(0, 1.0), "kernel size"),
        (lambda: motion_kernel(5, 1.5), "intensity"),
    ]
    for fn, msg in cases:
        with pytest.raises(ValueError, match=msg):
            fn()


def test_shared_operator_accepts_any_batch_and_solve_is_exact_in_noiseless_direction():
    op = AveragePoolSR(2, (C, 8, 8))
    for b in (1, 5):
        x = torch.randn(b, C, 8, 8, dtype=torch.float64)
        assert op.A(x).shape == (b, C, 4, 4)
    # rho -> 0: rho * solve -> null projection (the noiseless limit), no overflow
    x = torch.randn(2, C, 8, 8, generator=gen(0), dtype=torch.float64)
    rho = 1e-12
    assert rel(rho * op.solve(x, rho), op.null_project(x)) < 1e-8


def test_cg_fallback_regularized_pinv():
    """FunctionOperator (CG only) against the dense SVD: rho = 0 is A^+ r, rho > 0 the
    Tikhonov pseudo-inverse; relative error below 1e-6."""
    op = _cg(build("blur-motion-odd-batched", 8))
    mat = dense_batched(op)
    u, s, vh = torch.linalg.svd(mat, full_matrices=False)
    r = randy(op)
    coef = u.transpose(1, 2) @ r.reshape(len(r), -1, 1)
    for rho in [1e-2, 1.0, 1e2]:
        want = (vh.transpose(1, 2) @ ((s / (s**2 + rho))[..., None] * coef)).reshape(r.shape[:1] + op.in_shape)
        assert rel(op.regularized_pinv(r, rho), want) < 1e-6, rho
        assert op.last_cg_info.converged
