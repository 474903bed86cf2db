"""Per-sample values of a batch: the two helpers every module uses for a value that is one
number per sample.

* :func:`batch_vector`: a float, 0-d or [B] tensor -> a checked [B] tensor;
* :func:`per_sample`: a [B] tensor -> [B, 1, ..., 1], broadcasting against a [B, ...] batch.
"""

from __future__ import annotations

from typing import Union

import torch

Value = Union[float, torch.Tensor]


def batch_vector(value: Value, batch: int, like: torch.Tensor, name: str) -> torch.Tensor:
    """A float, 0-d or [B] tensor as a [B] tensor of ``like``'s dtype/device; rejects other
    shapes (nothing is silently broadcast but a scalar) and non-finite values."""
    v = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    if v.dim() == 0:
        v = v.expand(batch)
    if v.dim() != 1 or v.shape[0] != batch:
        raise ValueError(f"{name} must be a scalar or have shape [{batch}], got shape {tuple(v.shape)}")
    if not bool(torch.isfinite(v).all()):
        raise ValueError(f"{name} must be finite, got {value}")
    return v


def check_sigma_y(sigma_y: Value, batch: int, like: torch.Tensor) -> torch.Tensor:
    """Validate sigma_y (finite, >= 0; scalar or [B]) and return it as [B]."""
    sy = batch_vector(sigma_y, batch, like, "sigma_y")
    if bool((sy < 0).any()):
        raise ValueError(f"sigma_y must be >= 0 (0 means noiseless), got {sigma_y}")
    return sy


def per_sample(value: torch.Tensor, ndim: int) -> torch.Tensor:
    """Reshape a [B] tensor (or [B, 1, ..., 1]) to [B, 1, ..., 1] with ``ndim`` dims, to
    broadcast against a [B, ...] tensor with ``ndim`` dims."""
    return value.reshape((-1,) + (1,) * (ndim - 1))
