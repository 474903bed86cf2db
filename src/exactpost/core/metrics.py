"""Distances and scores between samples.

:func:`sliced_wasserstein`: the sliced 2-Wasserstein distance

    SW_2(X, Y) = ( mean_{l=1..L} W_2^2(<theta_l, X>, <theta_l, Y>) )^{1/2},

theta_l uniform on the unit sphere (L = ``n_projections``), where the 1-D W_2 between two
equal-size empirical distributions is the root-mean-square difference of their sorted
projections. Passing the same ``generator`` seed gives the same projections, so distances
of several sample sets to one reference are comparable.

Image scores, per sample (``Tensor[B]``), for images ``[B, C, H, W]`` in [-1, 1]. The
estimate ``x`` (or each posterior sample) is clamped to [-1, 1] first, as it is when saved
as a PNG; ``clamp=False`` scores the raw values. The reference is used as given.

:func:`psnr`: ``10 log10(data_range^2 / MSE)``, MSE over C, H, W; ``data_range = 2``
    for [-1, 1] images (the same number as PSNR of the 8-bit images with range 255, up to
    rounding). ``+inf`` for identical images.
:func:`ssim`: mean SSIM of Wang et al. (2004) with the scikit-image convention
    ``structural_similarity(x, ref, gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=2, channel_axis=...)``.
:func:`crps`: the fair (unbiased) ensemble CRPS of M samples, per pixel, averaged over
    pixels, in the images' units ([-1, 1] scale; halve it for a [0, 1] scale).

Distribution-level scores:

:func:`mmd2`: the unbiased squared maximum mean discrepancy between two sample sets with
    the Gaussian kernel k(a, b) = exp(-||a - b||^2 / (2 h^2)) on flattened samples (pixel
    space for images); h given, or the median of the pooled pairwise distances.
:func:`mmd2_paired`: the same for paired sets (sample i restores truth i), whose cross
    term leaves out the matched pairs (Gretton et al. 2012, eq. 4); use it for restorations.
:func:`interval_coverage`: the fraction of reference values inside the samples' central
    credible interval of the given level (per coordinate, empirical quantiles).
:func:`rank_interval_coverage` / :func:`exchangeable_coverage`: calibration of M samples
    per coordinate: the coverage of the central order-statistic interval [X_(l), X_(M+1-l)]
    (:func:`central_ranks`) and what a truth exchangeable with the M samples scores,
    (M + 1 - 2 l) / (M + 1), exactly and for any continuous distribution.
:func:`spread_skill`: sqrt((M+1)/M * mean sample variance) / RMSE of the sample mean; 1 for
    samples exchangeable with the truth (calibrated), > 1 over-dispersed, < 1 over-confident.
:func:`frechet_distance`: the Frechet (2-Wasserstein) distance between Gaussians fitted to
    two feature sets; with features from :mod:`exactpost.nets.encoder` this is the project's
    "encoder Frechet distance" (not Inception FID: a small classifier trained here).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def random_directions(d: int, n: int, generator: torch.Generator | None = None,
                      dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """n directions uniform on the unit sphere of R^d, [d, n]."""
    theta = torch.randn(d, n, generator=generator, dtype=dtype)
    return theta / theta.norm(dim=0, keepdim=True)


def sliced_wasserstein(x: torch.Tensor, y: torch.Tensor, n_projections: int = 1000,
                       generator: torch.Generator | None = None,
                       directions: torch.Tensor | None = None) -> float:
    """Sliced 2-Wasserstein distance between the empirical distributions of x [N, d] and
    y [N, d] (same N). ``directions`` [d, L] overrides the random projections."""
    if x.dim() != 2 or y.dim() != 2 or x.shape != y.shape:
        raise ValueError(f"need two [N, d] sample sets of the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    x, y = x.to(torch.float64), y.to(torch.float64)
    theta = directions if directions is not None else random_directions(x.shape[1], n_projections, generator)
    px = torch.sort(x @ theta, dim=0).values
    py = torch.sort(y @ theta, dim=0).values
    return float(((px - py) ** 2).mean().sqrt())


def _check_images(x: torch.Tensor, ref: torch.Tensor, what: str = "x") -> None:
    if not isinstance(x, torch.Tensor) or not isinstance(ref, torch.Tensor):
        raise ValueError(f"{what} and ref must be torch tensors")
    if x.dim() != 4 or x.shape != ref.shape:
        raise ValueError(f"{what} and ref must be images [B, C, H, W] of the same shape, got "
                         f"{tuple(x.shape)} and {tuple(ref.shape)}")


def _check_range(data_range: float) -> float:
    r = float(data_range)
    if not math.isfinite(r) or r <= 0:
        raise ValueError(f"data_range must be finite and > 0, got {data_range!r}")
    return r


def psnr(x: torch.Tensor, ref: torch.Tensor, data_range: float = 2.0, *,
         clamp: bool = True) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB, per sample: ``[B]`` (float64).

    ``PSNR = 10 log10(data_range^2 / MSE)``, ``MSE = mean_{c,h,w} (x - ref)^2`` with ``x``
    clamped to [-1, 1] (``clamp=True``); ``data_range = 2`` for images in [-1, 1].
    Identical images give ``+inf``.
    """
    _check_images(x, ref)
    r = _check_range(data_range)
    x = x.detach().to(torch.float64)
    if clamp:
        x = x.clamp(-1, 1)
    mse = ((x - ref.detach().to(torch.float64)) ** 2).mean(dim=(1, 2, 3))
    return 10 * torch.log10(r**2 / mse)


SSIM_SIGMA = 1.5
SSIM_RADIUS = 5  # int(3.5 * sigma + 0.5): scipy's gaussian_filter truncate=3.5 -> 11 x 11
SSIM_K1, SSIM_K2 = 0.01, 0.03


def ssim_window(dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The separable SSIM window, 1-D: ``w[k] ∝ exp(-(k - 5)^2 / (2 * 1.5^2))``, k = 0..10,
    normalised to sum 1 (the 2-D window is ``w w^T``, also summing to 1)."""
    r = torch.arange(-SSIM_RADIUS, SSIM_RADIUS + 1, dtype=torch.float64)
    w = torch.exp(-(r**2) / (2 * SSIM_SIGMA**2))
    return (w / w.sum()).to(dtype)


def ssim(x: torch.Tensor, ref: torch.Tensor, data_range: float = 2.0, *,
         clamp: bool = True) -> torch.Tensor:
    """Mean structural similarity (Wang et al. 2004), per sample: ``[B]`` (float64).

    Convention: scikit-image's ``structural_similarity(x, ref, gaussian_weights=True,
    sigma=1.5, use_sample_covariance=False, data_range=data_range, channel_axis=0)`` per
    image. With the 11 x 11 Gaussian window w (std 1.5 px, sum 1; :func:`ssim_window`) and
    ``E_w`` the w-weighted local mean at each *valid* window position (no padding, so the
    map is ``(H - 10) x (W - 10)``; scikit-image filters with reflection and then crops the
    same 5-pixel border, which gives identical numbers),

        mu_x = E_w[x],  var_x = E_w[x^2] - mu_x^2,  cov = E_w[x ref] - mu_x mu_ref  (same for ref)
        S = (2 mu_x mu_ref + C1)(2 cov + C2) / ((mu_x^2 + mu_ref^2 + C1)(var_x + var_ref + C2)),
        C1 = (0.01 data_range)^2,  C2 = (0.03 data_range)^2,

    computed per channel; the result is the mean of S over channels and positions.
    ``x`` is clamped to [-1, 1] (``clamp=True``); ``data_range = 2`` for [-1, 1] images.
    Needs H, W >= 11. Computed in float64.
    """
    _check_images(x, ref)
    r = _check_range(data_range)
    B, C, H, W = x.shape
    k = 2 * SSIM_RADIUS + 1
    if H < k or W < k:
        raise ValueError(f"SSIM needs images of at least {k}x{k} pixels (the Gaussian window), "
                         f"got {H}x{W}")
    x = x.detach().to(torch.float64)
    if clamp:
        x = x.clamp(-1, 1)
    y = ref.detach().to(device=x.device, dtype=torch.float64)
    x, y = x.reshape(B * C, 1, H, W), y.reshape(B * C, 1, H, W)
    stack = torch.cat([x, y, x * x, y * y, x * y], dim=1)  # [B C, 5, H, W]
    w = ssim_window().to(x.device)
    stack = F.conv2d(stack, w.reshape(1, 1, k, 1).expand(5, 1, k, 1), groups=5)
    stack = F.conv2d(stack, w.reshape(1, 1, 1, k).expand(5, 1, 1, k), groups=5)
    mx, my, exx, eyy, exy = stack.unbind(1)
    vx, vy, cxy = exx - mx * mx, eyy - my * my, exy - mx * my
    c1, c2 = (SSIM_K1 * r) ** 2, (SSIM_K2 * r) ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.reshape(B, -1).mean(dim=1)


def crps(samples: torch.Tensor, ref: torch.Tensor, *, clamp: bool = True) -> torch.Tensor:
    """Fair ensemble CRPS per pixel, averaged over pixels, per sample: ``[B]`` (float64).

    ``samples`` ``[M, B, C, H, W]`` (M >= 2 posterior samples per measurement), ``ref``
    ``[B, C, H, W]``. For every pixel, with ensemble x_1..x_M and truth y,

        CRPS_fair = (1/M) sum_i |x_i - y|  -  1/(2 M (M - 1)) sum_{i != j} |x_i - x_j|,

    the unbiased estimator of CRPS(F, y) = E|X - y| - E|X - X'|/2 for X, X' ~ F iid (the
    "fair" CRPS of Ferro 2014; the plug-in version divides by 2 M^2 instead and is biased
    upward by E|X - X'| / (2 M)). It can be slightly negative. It is in the images' units
    (the [-1, 1] scale; half of it on a [0, 1] scale); lower is better, and for M = 1 it
    would reduce to the MAE, which is why M >= 2 is required. The pair sum is computed in
    O(M log M) from the sorted ensemble: sum_{i<j} |x_(j) - x_(i)| = sum_k (2k - M - 1) x_(k),
    k = 1..M. Samples are clamped to [-1, 1] (``clamp=True``).
    """
    if not isinstance(samples, torch.Tensor) or not isinstance(ref, torch.Tensor):
        raise ValueError("samples and ref must be torch tensors")
    if samples.dim() != 5 or samples.shape[1:] != ref.shape:
        raise ValueError(f"samples must be [M, B, C, H, W] and ref [B, C, H, W] with matching "
                         f"B, C, H, W, got {tuple(samples.shape)} and {tuple(ref.shape)}")
    M = samples.shape[0]
    if M < 2:
        raise ValueError(f"the ensemble CRPS needs at least 2 samples per measurement, got {M}")
    xs = samples.detach().to(torch.float64)
    if clamp:
        xs = xs.clamp(-1, 1)
    y = ref.detach().to(device=xs.device, dtype=torch.float64)
    skill = (xs - y).abs().mean(dim=0)
    srt = torch.sort(xs, dim=0).values
    coef = (2 * torch.arange(1, M + 1, dtype=torch.float64, device=xs.device) - M - 1)
    pair_sum = (coef.reshape(M, 1, 1, 1, 1) * srt).sum(dim=0)  # sum_{i<j} |x_i - x_j|
    spread = pair_sum / (M * (M - 1))  # = 1/(2 M (M-1)) sum_{i != j}
    return (skill - spread).flatten(1).mean(dim=1)


def _flat(x: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.dim() < 2 or x.shape[0] < 2:
        raise ValueError(f"{name} must be a tensor [N >= 2, ...] of samples, got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    return x.detach().reshape(x.shape[0], -1).to(torch.float64)


def median_bandwidth(x: torch.Tensor, y: torch.Tensor) -> float:
    """The median heuristic: the median of the pairwise distances of the pooled samples
    (distinct pairs; the lower median for an even count, as ``torch.median``), x [N, ...],
    y [M, ...]."""
    z = torch.cat([_flat(x, "x"), _flat(y, "y")])
    d = torch.cdist(z, z)
    iu = torch.triu_indices(len(z), len(z), offset=1)
    return float(d[iu[0], iu[1]].median())


def mmd2(x: torch.Tensor, y: torch.Tensor, bandwidth: float | None = None) -> float:
    """Unbiased MMD^2 (Gretton et al. 2012, eq. 3) between x [N, ...] and y [M, ...]:

        1/(N(N-1)) sum_{i != j} k(x_i, x_j) + 1/(M(M-1)) sum_{i != j} k(y_i, y_j)
        - 2/(N M) sum_{i, j} k(x_i, y_j),

    k(a, b) = exp(-||a - b||^2 / (2 h^2)), h = ``bandwidth`` or :func:`median_bandwidth`.
    Its expectation is 0 when x and y come from the same distribution (it can be negative)."""
    a, b = _flat(x, "x"), _flat(y, "y")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"x and y must have the same sample shape, got {tuple(x.shape[1:])} and {tuple(y.shape[1:])}")
    h = median_bandwidth(x, y) if bandwidth is None else float(bandwidth)
    if not h > 0:
        raise ValueError(f"the kernel bandwidth must be > 0, got {h}")

    def k(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return torch.exp(-torch.cdist(u, v) ** 2 / (2 * h * h))

    n, m = len(a), len(b)
    kxx, kyy = k(a, a), k(b, b)
    xx = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
    yy = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return float(xx + yy - 2 * k(a, b).mean())


def mmd2_paired(x: torch.Tensor, y: torch.Tensor, bandwidth: float | None = None) -> float:
    """Unbiased MMD^2 of paired samples x [N, ...], y [N, ...] (Gretton et al. 2012, eq. 4):

        1/(N(N-1)) sum_{i != j} [ k(x_i, x_j) + k(y_i, y_j) - k(x_i, y_j) - k(x_j, y_i) ],

    k(a, b) = exp(-||a - b||^2 / (2 h^2)) on the flattened samples, h = ``bandwidth`` or
    :func:`median_bandwidth`. It differs from :func:`mmd2` (eq. 3) only in the cross term,
    which leaves out the matched pairs (x_i, y_i): with independent sets both are unbiased;
    with paired ones (sample i restores truth i) only this one is, since k(x_i, y_i) is large
    for a good restoration whatever the distributions."""
    a = x.detach().reshape(x.shape[0], -1).to(torch.float64)
    b = y.detach().reshape(y.shape[0], -1).to(torch.float64)
    if a.shape != b.shape or len(a) < 2:
        raise ValueError(f"need two paired sets [N >= 2, ...] of the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    bandwidth = median_bandwidth(x, y) if bandwidth is None else float(bandwidth)
    if not bandwidth > 0:
        raise ValueError(f"the kernel bandwidth must be > 0, got {bandwidth}")
    n = len(a)

    def off_diagonal_mean(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        k = torch.exp(-torch.cdist(u, v) ** 2 / (2 * bandwidth * bandwidth))
        return (k.sum() - k.diagonal().sum()) / (n * (n - 1))

    return float(off_diagonal_mean(a, a) + off_diagonal_mean(b, b) - 2 * off_diagonal_mean(a, b))


def interval_coverage(samples: torch.Tensor, ref: torch.Tensor, level: float = 0.9) -> float:
    """Fraction of the coordinates of ``ref`` [B, ...] inside the central ``level`` credible
    interval [q_(1-level)/2, q_(1+level)/2] of ``samples`` [M, B, ...], the quantiles taken
    per coordinate over the M samples (``torch.quantile``, linear interpolation). For a
    calibrated posterior the expected coverage is ``level`` when M is large; with few
    samples the empirical interval is narrower and coverage falls below ``level``."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if samples.dim() < 2 or samples.shape[1:] != ref.shape or samples.shape[0] < 2:
        raise ValueError(f"samples must be [M >= 2, *ref.shape], got {tuple(samples.shape)} and {tuple(ref.shape)}")
    xs = samples.detach().reshape(samples.shape[0], -1).to(torch.float64)
    r = ref.detach().reshape(-1).to(torch.float64)
    q = torch.quantile(xs, torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64), dim=0)
    return float(((r >= q[0]) & (r <= q[1])).double().mean())


def central_ranks(m: int, level: float) -> tuple[int, int]:
    """The 1-based ranks (l, u = M + 1 - l) of the symmetric order-statistic interval
    [X_(l), X_(u)] of M samples whose exchangeable coverage (u - l) / (M + 1)
    (:func:`exchangeable_coverage`) is closest to ``level``, l in 1..floor(M/2) (a tie goes to
    the wider interval, smaller l). E.g. level 0.8: M = 4 -> (1, 4) (coverage 3/5), M = 8 ->
    (1, 8) (7/9), M = 16 -> (2, 15) (13/17), M = 100 -> (10, 91) (81/101)."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if m < 2:
        raise ValueError(f"need M >= 2 samples for an interval, got {m}")
    best = min(range(1, m // 2 + 1), key=lambda l: (abs((m + 1 - 2 * l) / (m + 1) - level), l))
    return best, m + 1 - best


def exchangeable_coverage(m: int, level: float) -> float:
    """The probability that a truth T exchangeable with M samples X_1..X_M (e.g. T and the X
    i.i.d. from one continuous distribution: T drawn from the posterior like the samples)
    falls in [X_(l), X_(u)], (l, u) = :func:`central_ranks` (M, level): T's rank among the
    M + 1 values is uniform on {1..M+1} (ties have probability 0), and T is inside iff
    exactly l..u-1 of the X lie below it, so the probability is (u - l) / (M + 1)
    = (M + 1 - 2 l) / (M + 1), whatever the distribution. This is the reference that
    :func:`rank_interval_coverage` of a calibrated sampler matches (in expectation)."""
    lo, hi = central_ranks(m, level)
    return (hi - lo) / (m + 1)


def rank_interval_coverage(samples: torch.Tensor, ref: torch.Tensor, level: float = 0.8) -> float:
    """Fraction of the coordinates of ``ref`` [B, ...] inside [X_(l), X_(u)], the order
    statistics of the M samples ``samples`` [M, B, ...] per coordinate with (l, u) =
    :func:`central_ranks` (M, level) (no interpolation, so that the calibrated value,
    :func:`exchangeable_coverage`, is exact and distribution-free; the interval is closed).
    Samples are used as given (not clamped)."""
    if samples.dim() < 2 or samples.shape[1:] != ref.shape or samples.shape[0] < 2:
        raise ValueError(f"samples must be [M >= 2, *ref.shape], got {tuple(samples.shape)} and {tuple(ref.shape)}")
    lo, hi = central_ranks(samples.shape[0], level)
    xs = samples.detach().reshape(samples.shape[0], -1).to(torch.float64).sort(dim=0).values
    r = ref.detach().reshape(-1).to(torch.float64)
    return float(((r >= xs[lo - 1]) & (r <= xs[hi - 1])).double().mean())


def spread_skill(samples: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    """Spread/skill of M samples ``samples`` [M, B, ...] against the truth ``ref`` [B, ...],
    over all P coordinates (pixels of all images), samples used as given (not clamped):

        spread = sqrt( (M + 1)/M * (1/P) sum_p s_p^2 ),  s_p^2 = 1/(M-1) sum_m (x_mp - xbar_p)^2,
        skill  = sqrt( (1/P) sum_p (xbar_p - t_p)^2 )      (RMSE of the sample mean xbar),
        ratio  = spread / skill.

    Why (M + 1)/M: if the truth t_p and the M samples are i.i.d. given y (a calibrated
    sampler), E s_p^2 = v_p and E (xbar_p - t_p)^2 = v_p + v_p / M = (M + 1)/M v_p, so
    E[spread^2] = E[skill^2] and the ratio tends to 1 as P grows; without the factor it would
    tend to sqrt(M / (M + 1)) (0.89 at M = 4). ratio > 1: over-dispersed samples, < 1:
    over-confident. Returns {"spread", "skill", "ratio"} (ratio nan when skill is 0)."""
    if samples.dim() < 2 or samples.shape[1:] != ref.shape or samples.shape[0] < 2:
        raise ValueError(f"samples must be [M >= 2, *ref.shape], got {tuple(samples.shape)} and {tuple(ref.shape)}")
    m = samples.shape[0]
    xs = samples.detach().reshape(m, -1).to(torch.float64)
    r = ref.detach().reshape(-1).to(torch.float64)
    spread = math.sqrt((m + 1) / m * float(xs.var(dim=0, unbiased=True).mean()))
    skill = math.sqrt(float((xs.mean(0) - r).square().mean()))
    return dict(spread=spread, skill=skill, ratio=spread / skill if skill > 0 else math.nan)


def _sqrtm_psd(s: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of a symmetric positive semi-definite matrix (eigh; negative
    round-off eigenvalues clamped to 0)."""
    w, v = torch.linalg.eigh((s + s.T) / 2)
    return (v * w.clamp_min(0).sqrt()) @ v.T


def gaussian_frechet(mu_a: torch.Tensor, cov_a: torch.Tensor, mu_b: torch.Tensor, cov_b: torch.Tensor) -> float:
    """Squared 2-Wasserstein distance between N(mu_a, cov_a) and N(mu_b, cov_b):

        ||mu_a - mu_b||^2 + tr(cov_a) + tr(cov_b) - 2 tr( (cov_a^{1/2} cov_b cov_a^{1/2})^{1/2} ),

    computed in float64 with symmetric eigendecompositions (no complex sqrtm)."""
    mu_a, mu_b, cov_a, cov_b = (t.detach().to(torch.float64) for t in (mu_a, mu_b, cov_a, cov_b))
    root_a = _sqrtm_psd(cov_a)
    cross = torch.linalg.eigvalsh(root_a @ cov_b @ root_a).clamp_min(0).sqrt().sum()
    value = ((mu_a - mu_b) ** 2).sum() + cov_a.trace() + cov_b.trace() - 2 * cross
    return float(value.clamp_min(0))


def frechet_distance(feats_a: torch.Tensor, feats_b: torch.Tensor) -> float:
    """Frechet distance (the FID formula) between feature sets a [N, F] and b [M, F]: fit
    a Gaussian to each (sample mean, covariance with 1/(N-1)) and return
    :func:`gaussian_frechet`. Biased upward for small N (as FID is); compare methods only at
    the same N and feature extractor."""
    a, b = _flat(feats_a, "feats_a"), _flat(feats_b, "feats_b")
    if feats_a.dim() != 2 or feats_b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"need two [N, F] feature sets with the same F, got {tuple(feats_a.shape)} and {tuple(feats_b.shape)}")
    return gaussian_frechet(a.mean(0), torch.cov(a.T, correction=1).reshape(a.shape[1], a.shape[1]),
                            b.mean(0), torch.cov(b.T, correction=1).reshape(b.shape[1], b.shape[1]))


def restoration_scores(truth: torch.Tensor, mean: torch.Tensor | None = None,
                       samples: torch.Tensor | None = None) -> dict[str, float]:
    """The scores of a restoration of ``truth`` [B, C, H, W] (images in [-1, 1]), each averaged
    over the B images -- the one scoring function of the demo, ``restore --simulate``, the image
    benchmark and the training loop's evaluation:

    * ``psnr_mean``, ``ssim_mean``: of the estimate ``mean`` [B, C, H, W] (when given);
    * ``psnr_sample``, ``ssim_sample``: of each of the samples [M, B, C, H, W], averaged over
      the samples (when M >= 1);
    * ``crps``: per pixel, of the sample ensemble (when M >= 2).

    SSIM is NaN for an input with a non-finite value (PSNR then reads NaN or inf by itself)."""

    def ssim_or_nan(x: torch.Tensor) -> float:
        return float(ssim(x, truth).mean()) if bool(torch.isfinite(x).all()) else math.nan

    out: dict[str, float] = {}
    if mean is not None:
        out["psnr_mean"] = float(psnr(mean, truth).mean())
        out["ssim_mean"] = ssim_or_nan(mean)
    if samples is not None and samples.shape[0] >= 1:
        out["psnr_sample"] = float(torch.stack([psnr(s, truth) for s in samples]).mean())
        out["ssim_sample"] = float(torch.stack([ssim(s, truth) for s in samples]).mean()) \
            if bool(torch.isfinite(samples).all()) else math.nan
    if samples is not None and samples.shape[0] >= 2:
        out["crps"] = float(crps(samples, truth).mean())
    return out
