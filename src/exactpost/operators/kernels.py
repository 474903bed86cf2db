"""Blur-kernel generators: Gaussian and random-walk motion kernels.

Every kernel is nonnegative, sums to 1 and is centred on entry ``(size // 2, size // 2)``,
the origin of :class:`~exactpost.operators.blur.FFTBlur`, so blurring does not shift the
image on average.
"""

from __future__ import annotations

import math

import torch

from ._common import check_batch_size, check_positive_int, generator_device


def gaussian_kernel(size: int, std: float, dtype: torch.dtype = torch.float64,
                    device: torch.device | str | None = None) -> torch.Tensor:
    """Isotropic Gaussian ``[size, size]``: k[i, j] ∝ exp(-((i - c)^2 + (j - c)^2) / (2 std^2)),
    c = size // 2 (the blur's origin; for even sizes the tail is one pixel longer on the
    low side), truncated to the grid and normalised to sum 1."""
    size = check_positive_int(size, "kernel size")
    std = float(std)
    if not math.isfinite(std) or std <= 0:
        raise ValueError(f"Gaussian std must be finite and > 0 pixels, got {std!r}")
    r = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * std**2))
    return (g / g.sum()).to(dtype=dtype, device=device)


def motion_kernel(size: int, intensity: float = 0.5, generator: torch.Generator | None = None,
                  dtype: torch.dtype = torch.float64,
                  device: torch.device | str | None = None) -> torch.Tensor:
    """One random motion-blur kernel ``[size, size]`` (nonnegative, sum 1) from a random-walk
    camera trajectory.

    Algorithm (all random numbers from ``generator``, a fixed count per call):

    1. path length L = (size - 1) * (0.5 + 0.5 u) pixels, u ~ U(0, 1), split into
       n = 4 * size equal steps; initial heading uniform in [0, 2 pi);
    2. the heading turns by a smooth random amount each step: an AR(1) angular velocity
       w_k = 0.8 w_{k-1} + s z_k, z_k ~ N(0, 1), with s = intensity * pi / (5 sqrt(n)) so
       the total heading drift has standard deviation about intensity * pi;
    3. plus sharp jerks: with probability 2 * intensity / n per step (about 2 * intensity
       jerks per path) the heading jumps by U(-1, 1) * pi * intensity;
    4. the polyline is sampled 4 times per step (uniform speed, so equal exposure per
       sample) and shifted so its centroid is as close to (size // 2, size // 2) as
       possible while the whole path stays on the grid (always possible as L <= size - 1);
    5. every sample is splatted bilinearly onto its 4 neighbouring pixels; the kernel is
       normalised to sum 1.

    ``intensity`` in [0, 1]: 0 gives straight lines, 1 strongly curved, jerky paths.
    """
    return motion_kernels(1, size, intensity, generator, dtype, device)[0]


def motion_kernels(batch_size: int, size: int, intensity: float = 0.5,
                   generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64,
                   device: torch.device | str | None = None) -> torch.Tensor:
    """``batch_size`` independent :func:`motion_kernel` draws: ``[B, size, size]``.

    The random numbers are drawn kernel by kernel in :func:`motion_kernel`'s order (u[2],
    z[n], the jerks' u[n] and angles[n]), so B draws equal B successive single draws from the
    same generator; the paths and splats are then computed for the whole batch at once."""
    b = check_batch_size(batch_size)
    if b is None:
        raise ValueError("batch_size must be a positive int for motion_kernels")
    size = check_positive_int(size, "kernel size")
    intensity = float(intensity)
    if not 0.0 <= intensity <= 1.0:
        raise ValueError(f"motion intensity must be in [0, 1], got {intensity!r}")
    if size == 1:
        return torch.ones((b, 1, 1), dtype=dtype, device=device)
    n = 4 * size
    kw = dict(generator=generator, dtype=torch.float64, device=generator_device(generator))
    draws = [torch.cat([torch.rand(2, **kw), torch.randn(n, **kw), torch.rand(n, **kw), torch.rand(n, **kw)])
             for _ in range(b)]
    d = torch.stack(draws).cpu()  # [B, 2 + 3n]
    u, z, jerk_u, jerk_a = d[:, :2], d[:, 2:2 + n], d[:, 2 + n:2 + 2 * n], d[:, 2 + 2 * n:]

    length = (size - 1) * (0.5 + 0.5 * u[:, 1])  # [B]
    s = intensity * math.pi / (5 * math.sqrt(n))
    omega = torch.zeros(b, n, dtype=torch.float64)
    w = torch.zeros(b, dtype=torch.float64)
    for k in range(n):  # the AR(1) angular velocity, all kernels at once
        w = 0.8 * w + s * z[:, k]
        omega[:, k] = w
    jerks = torch.where(jerk_u < 2 * intensity / n, (2 * jerk_a - 1) * math.pi * intensity, 0.0)
    heading = 2 * math.pi * u[:, :1] + torch.cumsum(omega + jerks, 1)  # [B, n]
    steps = (length / n)[:, None, None] * torch.stack([torch.cos(heading), torch.sin(heading)], dim=2)
    verts = torch.cat([torch.zeros(b, 1, 2, dtype=torch.float64), torch.cumsum(steps, 1)], dim=1)  # [B, n+1, 2]

    sub = 4
    t = torch.arange(sub, dtype=torch.float64)[None, None, :, None] / sub
    pts = (verts[:, :-1, None] + t * (verts[:, 1:] - verts[:, :-1])[:, :, None]).reshape(b, -1, 2)
    pts = torch.cat([pts, verts[:, -1:]], dim=1)  # [B, n * sub + 1, 2] as (x = column, y = row)

    centre = float(size // 2)
    lo = -pts.min(dim=1).values
    hi = (size - 1) - pts.max(dim=1).values
    shift = torch.minimum(torch.maximum(centre - pts.mean(dim=1), lo), hi)  # [B, 2]
    pts = (pts + shift[:, None]).clamp(0.0, size - 1.0)

    x, y = pts[..., 0], pts[..., 1]
    j0 = x.floor().clamp(0, size - 2)
    i0 = y.floor().clamp(0, size - 2)
    fx, fy = x - j0, y - i0
    i0, j0 = i0.long(), j0.long()
    base = torch.arange(b)[:, None] * (size * size)
    k = torch.zeros(b * size * size, dtype=torch.float64)
    for di, dj, wgt in ((0, 0, (1 - fy) * (1 - fx)), (0, 1, (1 - fy) * fx),
                        (1, 0, fy * (1 - fx)), (1, 1, fy * fx)):
        k.index_add_(0, (base + (i0 + di) * size + (j0 + dj)).flatten(), wgt.flatten())
    k = k.clamp_min(0).reshape(b, size, size)
    return (k / k.sum(dim=(1, 2), keepdim=True)).to(dtype=dtype, device=device)
