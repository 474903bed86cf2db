"""Image scores: PSNR, SSIM (scikit-image convention) and the fair ensemble CRPS.

References are independent of the library code: SSIM by explicit loops over window
positions in numpy float64, closed forms for constant and checkerboard images, the CRPS
by its O(M^2) pair-sum definition and by the closed-form CRPS of a Gaussian.
"""

import math

import numpy as np
import pytest
import torch

from exactpost.core.metrics import crps, psnr, ssim


# --------------------------------------------------------------------------- PSNR


def test_psnr_hand_values():
    ref = torch.zeros(2, 3, 4, 4)
    x = ref.clone()
    x[0] += 0.1  # MSE 0.01 -> 10 log10(4 / 0.01)
    x[1, :, :2] = 0.5  # half the pixels off by 0.5: MSE 0.125 -> 10 log10(4 / 0.125)
    got = psnr(x, ref)
    assert got.shape == (2,) and got.dtype == torch.float64
    assert got[0].item() == pytest.approx(10 * math.log10(400), abs=1e-5)
    assert got[1].item() == pytest.approx(10 * math.log10(32), abs=1e-9)
    assert psnr(x, ref, data_range=1.0)[0].item() == pytest.approx(20.0, abs=1e-5)


def test_psnr_clamps_the_estimate_only():
    ref = torch.full((1, 1, 2, 2), 1.0)
    x = torch.full((1, 1, 2, 2), 3.0)
    assert psnr(x, ref).item() == math.inf  # clamped to 1 == ref
    # without clamping: MSE 4 -> 10 log10(4 / 4) = 0 dB
    assert psnr(x, ref, clamp=False).item() == pytest.approx(0.0, abs=1e-12)


def test_psnr_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="same shape"):
        psnr(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 5))


# --------------------------------------------------------------------------- SSIM


def _window_2d() -> np.ndarray:
    r = np.arange(-5, 6, dtype=np.float64)
    g = np.exp(-(r**2) / (2 * 1.5**2))
    g /= g.sum()
    return np.outer(g, g)


def _ssim_loops(x: np.ndarray, y: np.ndarray, data_range: float = 2.0) -> float:
    """Wang et al. SSIM of two [C, H, W] float64 arrays, one window position at a time."""
    w = _window_2d()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    C, H, W = x.shape
    values = []
    for c in range(C):
        for i in range(H - 10):
            for j in range(W - 10):
                a, b = x[c, i:i + 11, j:j + 11], y[c, i:i + 11, j:j + 11]
                ma, mb = (w * a).sum(), (w * b).sum()
                va = (w * (a - ma) ** 2).sum()
                vb = (w * (b - mb) ** 2).sum()
                cab = (w * (a - ma) * (b - mb)).sum()
                values.append((2 * ma * mb + c1) * (2 * cab + c2)
                              / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
    return float(np.mean(values))


def test_ssim_of_an_image_with_itself_is_one():
    x = torch.rand(3, 3, 16, 20, generator=torch.Generator().manual_seed(0)) * 2 - 1
    torch.testing.assert_close(ssim(x, x), torch.ones(3, dtype=torch.float64), rtol=0, atol=1e-12)


def test_ssim_matches_explicit_window_loops():
    g = torch.Generator().manual_seed(1)
    ref = torch.rand(2, 3, 16, 16, generator=g, dtype=torch.float64) * 2 - 1
    # a correlated estimate: ref blurred a little plus noise, kept inside [-1, 1]
    x = (0.7 * ref + 0.2 * torch.randn(2, 3, 16, 16, generator=g, dtype=torch.float64)).clamp(-1, 1)
    got = ssim(x, ref)
    want = [_ssim_loops(x[b].numpy(), ref[b].numpy()) for b in range(2)]
    assert 0.1 < min(want) < max(want) < 0.95  # a non-trivial case
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-10)
    # non-square, one channel, another data range
    x1, r1 = x[:1, :1, :, :14], ref[:1, :1, :, :14]
    np.testing.assert_allclose(ssim(x1, r1, data_range=1.0).numpy(),
                               [_ssim_loops(x1[0].numpy(), r1[0].numpy(), 1.0)], rtol=0, atol=1e-10)


def test_ssim_float32_input_is_computed_in_float64():
    g = torch.Generator().manual_seed(2)
    ref = torch.rand(1, 1, 12, 12, generator=g) * 2 - 1
    x = torch.rand(1, 1, 12, 12, generator=g) * 2 - 1
    want = _ssim_loops(x[0].double().numpy(), ref[0].double().numpy())
    assert ssim(x, ref).item() == pytest.approx(want, abs=1e-10)


def test_ssim_constant_images_closed_form():
    # zero variances: SSIM = (2 a b + C1) / (a^2 + b^2 + C1) at every window
    a, b = 0.3, -0.2
    c1 = (0.01 * 2) ** 2
    got = ssim(torch.full((1, 3, 13, 13), a), torch.full((1, 3, 13, 13), b, dtype=torch.float64))
    want = (2 * a * b + c1) / (a * a + b * b + c1)
    assert got.item() == pytest.approx(want, abs=1e-7)  # a, b rounded to float32


@pytest.mark.parametrize("c", [0.5, -0.8, 1.0])
def test_ssim_scaled_checkerboard_closed_form(c):
    # p = (-1)^(i+j): at every window the weighted mean of p is +-g^2 with
    # g = sum_k w_k (-1)^k (w the 1-D window) and the weighted mean of p^2 is 1, so for
    # x = s p and ref = c s p:  mu_x = +-s g^2, var_x = s^2 (1 - g^4), mu_ref = c mu_x,
    # var_ref = c^2 var_x, cov = c var_x, the same at every window position.
    s = 0.9
    r = np.arange(-5, 6, dtype=np.float64)
    w1 = np.exp(-(r**2) / (2 * 1.5**2))
    w1 /= w1.sum()
    g = float((w1 * (-1.0) ** np.arange(11)).sum())
    c1, c2 = (0.01 * 2) ** 2, (0.03 * 2) ** 2
    m2, v = s**2 * g**4, s**2 * (1 - g**4)
    want = (2 * c * m2 + c1) / ((1 + c * c) * m2 + c1) * (2 * c * v + c2) / ((1 + c * c) * v + c2)
    i = torch.arange(15, dtype=torch.float64)
    p = (-1.0) ** (i[:, None] + i[None, :])
    x = (s * p).expand(1, 2, 15, 15)
    got = ssim(x, c * x)
    assert got.item() == pytest.approx(want, abs=1e-12)
    if c != 1.0:
        assert abs(want - 1) > 0.05  # the case really tests the formula


def test_ssim_clamps_the_estimate_and_checks_size():
    ref = torch.rand(1, 1, 11, 11, generator=torch.Generator().manual_seed(3)) * 2 - 1
    assert ssim(ref.sign() * 5, ref.sign()).item() == pytest.approx(1.0, abs=1e-12)
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(torch.zeros(1, 1, 10, 16), torch.zeros(1, 1, 10, 16))


# --------------------------------------------------------------------------- CRPS


def test_crps_two_samples_by_hand():
    # M = 2: CRPS_fair = (|x1 - y| + |x2 - y|) / 2 - |x1 - x2| / 2
    y = torch.tensor([0.5, 0.1, -0.9, 0.0]).reshape(1, 1, 2, 2)
    x1 = torch.tensor([0.2, 0.2, -0.5, 0.3]).reshape(1, 1, 2, 2)
    x2 = torch.tensor([-0.4, 0.6, 0.1, 0.3]).reshape(1, 1, 2, 2)
    per_pixel = [(0.3 + 0.9) / 2 - 0.6 / 2,  # 0.3
                 (0.1 + 0.5) / 2 - 0.4 / 2,  # 0.1
                 (0.4 + 1.0) / 2 - 0.6 / 2,  # 0.4
                 (0.3 + 0.3) / 2 - 0.0]      # 0.3
    got = crps(torch.stack([x1, x2]), y)
    assert got.shape == (1,) and got.item() == pytest.approx(sum(per_pixel) / 4, abs=1e-7)


def test_crps_matches_pair_sum_definition():
    g = torch.Generator().manual_seed(4)
    M = 7
    xs = torch.rand(M, 2, 3, 4, 5, generator=g, dtype=torch.float64) * 2 - 1
    y = torch.rand(2, 3, 4, 5, generator=g, dtype=torch.float64) * 2 - 1
    skill = sum((xs[i] - y).abs() for i in range(M)) / M
    pairs = sum((xs[i] - xs[j]).abs() for i in range(M) for j in range(M) if i != j)
    want = (skill - pairs / (2 * M * (M - 1))).flatten(1).mean(1)
    torch.testing.assert_close(crps(xs, y), want, rtol=0, atol=1e-12)
    # the same ensemble in another order scores the same
    torch.testing.assert_close(crps(xs.flip(0), y), want, rtol=0, atol=1e-12)


def _gaussian_crps(mu: float, sd: float, y: float) -> float:
    z = (y - mu) / sd
    phi = math.exp(-z * z / 2) / math.sqrt(2 * math.pi)
    Phi = 0.5 * (1 + math.erf(z / math.sqrt(2)))
    return sd * (z * (2 * Phi - 1) + 2 * phi - 1 / math.sqrt(math.pi))


def test_crps_is_unbiased_for_a_gaussian_ensemble():
    # N independent pixels, each an ensemble of M draws from N(mu, sd^2) scored against the
    # same y. The fair estimator is unbiased for every M, so the mean over pixels is within
    # a few standard errors (estimated from the N per-pixel values) of the closed form.
    # 5 standard errors: a false failure has probability < 1e-6 for a correct estimator,
    # while the biased plug-in estimator (1/(2 M^2) pair weight) is off by
    # E|X - X'| / (2 M) = sd / (sqrt(pi) M), far outside that band (checked below).
    mu, sd, y, M, N = 0.1, 0.6, 0.5, 4, 40_000
    g = torch.Generator().manual_seed(5)
    xs = mu + sd * torch.randn(M, N, 1, 1, 1, generator=g, dtype=torch.float64)
    ref = torch.full((N, 1, 1, 1), y, dtype=torch.float64)
    per_pixel = crps(xs, ref, clamp=False)  # B = N pixels of one pixel each
    want = _gaussian_crps(mu, sd, y)
    se = per_pixel.std().item() / math.sqrt(N)
    tol = 5 * se
    plug_in_bias = sd / (math.sqrt(math.pi) * M)
    assert tol < plug_in_bias / 10
    assert abs(per_pixel.mean().item() - want) < tol
    # one image of N pixels averages the same way
    img = crps(xs.reshape(M, 1, 1, 200, 200), ref.reshape(1, 1, 200, 200), clamp=False)
    assert img.item() == pytest.approx(per_pixel.mean().item(), abs=1e-12)


def test_crps_clamps_samples_and_checks_shapes():
    y = torch.full((1, 1, 1, 1), 0.5)
    xs = torch.tensor([3.0, 2.0]).reshape(2, 1, 1, 1, 1)
    # clamped to 1 and 1: 0.5 - 0; raw: (2.5 + 1.5)/2 - 1/2
    assert crps(xs, y).item() == pytest.approx(0.5, abs=1e-7)
    assert crps(xs, y, clamp=False).item() == pytest.approx(1.5, abs=1e-7)
    with pytest.raises(ValueError, match="at least 2 samples"):
        crps(xs[:1], y)
    with pytest.raises(ValueError, match=r"\[M, B, C, H, W\]"):
        crps(xs[:, 0], y)


# --- distribution-level scores ------------------------------------------------------------
def _gauss(n, d, mean, std, seed):
    g = torch.Generator().manual_seed(seed)
    return mean + std * torch.randn(n, d, generator=g, dtype=torch.float64)


def test_mmd2_matches_the_closed_form_for_two_gaussians():
    """For N(m1, s^2 I) and N(m2, s^2 I) in d dims and bandwidth h,
    MMD^2 = 2 c (1 - exp(-|m1 - m2|^2 / (2 (h^2 + 2 s^2)))), c = (h^2 / (h^2 + 2 s^2))^(d/2).
    The estimator is unbiased: the mean over 20 draws is within 4 standard errors."""
    from exactpost.core.metrics import mmd2

    d, s, h = 3, 1.0, 2.0
    shift = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    c = (h * h / (h * h + 2 * s * s)) ** (d / 2)
    exact = 2 * c * (1 - math.exp(-float(shift @ shift) / (2 * (h * h + 2 * s * s))))
    vals = torch.tensor([mmd2(_gauss(300, d, 0.0, s, 2 * r), _gauss(300, d, shift, s, 2 * r + 1), bandwidth=h)
                         for r in range(20)])
    se = float(vals.std()) / math.sqrt(len(vals))
    assert abs(float(vals.mean()) - exact) < 4 * se, (float(vals.mean()), exact, se)
    same = torch.tensor([mmd2(_gauss(300, d, 0.0, s, 2 * r), _gauss(300, d, 0.0, s, 2 * r + 1), bandwidth=h)
                         for r in range(20)])
    assert abs(float(same.mean())) < 4 * float(same.std()) / math.sqrt(len(same))
    assert float(vals.mean()) > 10 * abs(float(same.mean()))  # it separates the two cases


def test_mmd2_by_hand_and_median_bandwidth():
    from exactpost.core.metrics import median_bandwidth, mmd2

    x = torch.tensor([[0.0], [1.0]], dtype=torch.float64)
    y = torch.tensor([[3.0], [5.0]], dtype=torch.float64)
    k = lambda a, b: math.exp(-((a - b) ** 2) / 2)  # noqa: E731  (h = 1)
    want = k(0, 1) + k(3, 5) - 0.5 * (k(0, 3) + k(0, 5) + k(1, 3) + k(1, 5))
    assert mmd2(x, y, bandwidth=1.0) == pytest.approx(want, abs=1e-12)
    # pooled distances 1, 3, 5, 2, 4, 2 -> sorted 1, 2, 2, 3, 4, 5 -> lower median 2
    assert median_bandwidth(x, y) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="bandwidth"):
        mmd2(x, y, bandwidth=0.0)


def test_interval_coverage_is_calibrated_for_the_true_distribution():
    from exactpost.core.metrics import interval_coverage

    g = torch.Generator().manual_seed(0)
    samples = torch.randn(2000, 50, 20, generator=g, dtype=torch.float64)  # M = 2000 per coordinate
    truth = torch.randn(50, 20, generator=g, dtype=torch.float64)
    cov = interval_coverage(samples, truth, 0.9)
    # 1000 coordinates: binomial SE = sqrt(0.9 * 0.1 / 1000) = 0.0095
    assert abs(cov - 0.9) < 4 * 0.0095
    assert interval_coverage(samples * 0.5, truth, 0.9) < 0.7  # overconfident samples under-cover
    assert interval_coverage(samples, truth + 3.0, 0.9) < 0.2
    with pytest.raises(ValueError, match="level"):
        interval_coverage(samples, truth, 1.0)


# --- Frechet distance ----------------------------------------------------------------------

from exactpost.core.metrics import frechet_distance, gaussian_frechet  # noqa: E402


def _spd(d: int, seed: int) -> np.ndarray:
    a = np.random.default_rng(seed).normal(size=(d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def test_gaussian_frechet_one_dimension_closed_form():
    # W2^2(N(m1, s1^2), N(m2, s2^2)) = (m1 - m2)^2 + (s1 - s2)^2
    f64 = dict(dtype=torch.float64)
    got = gaussian_frechet(torch.tensor([0.3], **f64), torch.tensor([[4.0]], **f64), torch.tensor([-1.2], **f64),
                           torch.tensor([[0.25]], **f64))
    assert got == pytest.approx(1.5 ** 2 + (2.0 - 0.5) ** 2, rel=1e-12)


def test_gaussian_frechet_non_commuting_matches_eigenvalues_of_the_product():
    # independent form: tr((A^1/2 B A^1/2)^1/2) = sum sqrt(eig(A B)) (A B is similar to a PSD matrix)
    d = 6
    a, b = _spd(d, 1), _spd(d, 2)
    assert np.abs(a @ b - b @ a).max() > 0.1  # really non-commuting
    mu_a, mu_b = np.arange(d) / d, -np.ones(d) / 3
    cross = np.sqrt(np.linalg.eigvals(a @ b).real).sum()
    want = ((mu_a - mu_b) ** 2).sum() + np.trace(a) + np.trace(b) - 2 * cross
    t = torch.from_numpy
    got = gaussian_frechet(t(mu_a), t(a), t(mu_b), t(b))
    assert got == pytest.approx(want, rel=1e-10)
    assert gaussian_frechet(t(mu_b), t(b), t(mu_a), t(a)) == pytest.approx(want, rel=1e-10)  # symmetric
    assert gaussian_frechet(t(mu_a), t(a), t(mu_a), t(a)) == pytest.approx(0.0, abs=1e-10)


def test_frechet_distance_fits_gaussians_to_features():
    g = torch.Generator().manual_seed(0)
    fa = torch.randn(200, 5, generator=g, dtype=torch.float64)
    fb = 2.0 * torch.randn(300, 5, generator=g, dtype=torch.float64) + 1.0
    na, nb = fa.numpy(), fb.numpy()
    want = gaussian_frechet(torch.from_numpy(na.mean(0)), torch.from_numpy(np.cov(na.T)),
                            torch.from_numpy(nb.mean(0)), torch.from_numpy(np.cov(nb.T)))
    assert frechet_distance(fa, fb) == pytest.approx(want, rel=1e-12)
    # population value: 5 * 1^2 (means) + 5 * (2 - 1)^2 (scales) = 10; sample noise is a few percent
    assert frechet_distance(fa, fb) == pytest.approx(10.0, rel=0.25)
    assert frechet_distance(fa, fa) == pytest.approx(0.0, abs=1e-9)


def test_frechet_distance_rejects_mismatched_features():
    with pytest.raises(ValueError, match="same F"):
        frechet_distance(torch.zeros(4, 3), torch.zeros(4, 2))


# --- calibration: rank interval coverage and spread/skill --------------------------------------

def test_central_ranks_pick_the_closest_symmetric_interval():
    from exactpost.core.metrics import central_ranks, exchangeable_coverage

    assert central_ranks(4, 0.8) == (1, 4)
    assert central_ranks(8, 0.8) == (1, 8)
    assert central_ranks(16, 0.8) == (2, 15)
    assert central_ranks(100, 0.8) == (10, 91)
    assert exchangeable_coverage(4, 0.8) == pytest.approx(3 / 5)
    assert exchangeable_coverage(8, 0.8) == pytest.approx(7 / 9)
    assert exchangeable_coverage(16, 0.8) == pytest.approx(13 / 17)
    # every candidate l is at least as far from the level as the chosen one
    for m in range(2, 40):
        lo, hi = central_ranks(m, 0.8)
        assert hi == m + 1 - lo and 1 <= lo < hi <= m
        best = abs(exchangeable_coverage(m, 0.8) - 0.8)
        assert all(abs((m + 1 - 2 * l) / (m + 1) - 0.8) >= best - 1e-12 for l in range(1, m // 2 + 1))
    with pytest.raises(ValueError, match="M >= 2"):
        central_ranks(1, 0.8)
    with pytest.raises(ValueError, match="level"):
        central_ranks(8, 1.0)


@pytest.mark.parametrize("m", [4, 8, 16])
@pytest.mark.parametrize("dist", ["normal", "exponential"])
def test_rank_interval_coverage_of_exchangeable_draws_matches_the_exact_reference(m, dist):
    from exactpost.core.metrics import exchangeable_coverage, rank_interval_coverage

    g = torch.Generator().manual_seed(m)
    n = 200_000  # coordinates, each with its own M + 1 i.i.d. draws (the last one is the truth)
    z = torch.randn(m + 1, n, generator=g, dtype=torch.float64)
    if dist == "exponential":  # skewed: the reference does not depend on the distribution
        z = -torch.log(torch.rand(m + 1, n, generator=g, dtype=torch.float64))
    ref = exchangeable_coverage(m, 0.8)
    cov = rank_interval_coverage(z[:m], z[m], 0.8)
    se = math.sqrt(ref * (1 - ref) / n)  # ~0.001
    assert abs(cov - ref) < 5 * se
    # over-confident samples (half the spread) cover less, over-dispersed ones more
    c = z[:m].mean(0)
    assert rank_interval_coverage(c + 0.5 * (z[:m] - c), z[m], 0.8) < ref - 0.1
    assert rank_interval_coverage(c + 2.0 * (z[:m] - c), z[m], 0.8) > ref + 0.1


def test_rank_interval_coverage_is_closed_and_rejects_bad_shapes():
    from exactpost.core.metrics import rank_interval_coverage

    samples = torch.tensor([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0], [3.0, 3.0]])  # M = 4 -> [min, max]
    assert rank_interval_coverage(samples, torch.tensor([0.0, 3.0]), 0.8) == 1.0
    assert rank_interval_coverage(samples, torch.tensor([-0.1, 3.5]), 0.8) == 0.0
    with pytest.raises(ValueError, match="samples must be"):
        rank_interval_coverage(samples, torch.zeros(3), 0.8)


def test_spread_skill_by_hand_and_calibrated_for_exchangeable_draws():
    from exactpost.core.metrics import spread_skill

    # one coordinate, M = 2 samples 0 and 2 (mean 1, s^2 = 2), truth 4: spread sqrt(3/2 * 2), skill 3
    out = spread_skill(torch.tensor([[0.0], [2.0]]), torch.tensor([4.0]))
    assert out["spread"] == pytest.approx(math.sqrt(3.0))
    assert out["skill"] == pytest.approx(3.0)
    assert out["ratio"] == pytest.approx(math.sqrt(3.0) / 3.0)

    g = torch.Generator().manual_seed(1)
    m, n = 4, 200_000
    mu = 2 * torch.randn(n, generator=g, dtype=torch.float64)  # per-coordinate posterior means
    sd = 0.2 + 1.8 * torch.rand(n, generator=g, dtype=torch.float64)  # and posterior stds
    truth = mu + sd * torch.randn(n, generator=g, dtype=torch.float64)
    z = torch.randn(m, n, generator=g, dtype=torch.float64)
    assert spread_skill(mu + sd * z, truth)["ratio"] == pytest.approx(1.0, abs=0.02)
    # without the (M + 1)/M factor a calibrated ensemble would score sqrt(4/5) = 0.894: the test can tell
    over = spread_skill(mu + 2 * sd * z, truth)["ratio"]  # expected 2 sqrt(5/4) / sqrt(1 + 4/4) = 1.58
    assert over == pytest.approx(2 * math.sqrt(5 / 4) / math.sqrt(2.0), rel=0.03)
    assert spread_skill(mu + 0.5 * sd * z, truth)["ratio"] < 0.7
