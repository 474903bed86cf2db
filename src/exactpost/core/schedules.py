"""Noise schedules: the sequence of noise levels sigma_0 > sigma_1 > ... a sampler visits.

A schedule is a plain list of floats (sigma = s/a, the interpolant-free noise level), strictly
decreasing and positive, optionally ending with 0 (the last step then lands on x0). The
samplers of :mod:`exactpost.core.samplers` that take ``sigmas=`` step through exactly these levels.

* :func:`karras_sigmas` (Karras et al. 2022, eq. 5):
  sigma_i = (sigma_max^(1/rho) + i/(n-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho,
  i = 0..n-1. rho = 7 spends most levels at small sigma; rho = 1 is uniform in sigma.
* :func:`loglinear_sigmas`: uniform in log sigma (the rho -> inf limit of the above; uniform
  in DPM-Solver's lambda = -log sigma):
  sigma_i = sigma_max (sigma_min / sigma_max)^(i/(n-1)).

Both return n levels without the final 0; :func:`with_zero` appends it.
"""

from __future__ import annotations

import math
from typing import Sequence


def _check(n: int, sigma_min: float, sigma_max: float) -> None:
    if int(n) != n or n < 1:
        raise ValueError(f"the number of noise levels must be a positive integer, got {n}")
    if not (0 < sigma_min < sigma_max < math.inf):
        raise ValueError(f"need 0 < sigma_min < sigma_max < inf, got {sigma_min}, {sigma_max}")


def karras_sigmas(n: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0) -> list[float]:
    """n levels from sigma_max down to sigma_min with polynomial spacing of exponent rho
    (module docstring); n = 1 gives [sigma_max]."""
    _check(n, sigma_min, sigma_max)
    if not rho > 0:
        raise ValueError(f"rho must be > 0, got {rho}")
    if n == 1:
        return [float(sigma_max)]
    hi, lo = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    out = [(hi + i / (n - 1) * (lo - hi)) ** rho for i in range(n)]
    out[0], out[-1] = float(sigma_max), float(sigma_min)
    return out


def loglinear_sigmas(n: int, sigma_min: float = 0.002, sigma_max: float = 80.0) -> list[float]:
    """n levels from sigma_max down to sigma_min, uniform in log sigma; n = 1 gives
    [sigma_max]."""
    _check(n, sigma_min, sigma_max)
    if n == 1:
        return [float(sigma_max)]
    ratio = math.log(sigma_min / sigma_max)
    out = [sigma_max * math.exp(ratio * i / (n - 1)) for i in range(n)]
    out[0], out[-1] = float(sigma_max), float(sigma_min)
    return out


def with_zero(sigmas: Sequence[float]) -> list[float]:
    """``sigmas`` followed by 0 (the step onto x0)."""
    return [float(s) for s in sigmas] + [0.0]


def check_sigmas(sigmas: Sequence[float]) -> list[float]:
    """The schedule as a list of floats; ValueError unless it has at least two levels, is
    strictly decreasing, finite, and positive except possibly for a final 0."""
    out = [float(s) for s in sigmas]
    if len(out) < 2:
        raise ValueError(f"a schedule needs at least two noise levels (start and end), got {out}")
    if not all(math.isfinite(s) for s in out):
        raise ValueError(f"noise levels must be finite, got {out}")
    if not all(a > b for a, b in zip(out, out[1:])):
        raise ValueError(f"noise levels must be strictly decreasing, got {out}")
    if out[-2] <= 0 or out[-1] < 0:
        raise ValueError(f"noise levels must be > 0 except a final 0, got {out}")
    return out
