"""Distances and scores between samples.

:func:`sliced_wasserstein`: the sliced 2-Wasserstein distance

    SW_2(X, Y) = ( mean_{l=1..L} W_2^2(<theta_l, X>, <theta_l, Y>) )^{1/2},

theta_l uniform on the unit sphere (L = ``n_projections``), where the 1-D W_2 between two
equal-size empirical distributions is the root-mean-square difference of their sorted
projections. Passing the same ``generator`` seed gives the same projections, so distances
of several sample sets to one reference are comparable.
"""

from __future__ import annotations

import torch


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
