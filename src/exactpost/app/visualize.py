"""Pictures of a restoration: the measurement as an image, the posterior std as an image,
and one panel per task (a row per image: truth | measurement | mean | samples | std)."""

from __future__ import annotations

import torch

from ..operators import AveragePoolSR, Inpainting
from ..operators.base import LinearOperator

#: Posterior std (in [-1, 1] image units, averaged over channels) shown as white.
STD_WHITE = 0.5


def measurement_image(op: LinearOperator, y: torch.Tensor) -> torch.Tensor:
    """y shown in image space, [B, C, H, W] in [-1, 1]: inpainting shows observed pixels
    and black (-1) holes; super-resolution shows the low-resolution image upsampled
    nearest-neighbour; blur shows the blurred image itself; any other operator shows
    its pseudo-inverse A^+ y."""
    if isinstance(op, Inpainting):
        mask = op.mask_like(y).to(y.dtype)
        return mask * y - (1 - mask)
    if isinstance(op, AveragePoolSR):
        return op.upsample(y)
    if tuple(op.out_shape) == tuple(op.in_shape):
        return y
    return op.pinv(y)


def std_image(std: torch.Tensor, white: float = STD_WHITE) -> torch.Tensor:
    """Per-pixel posterior std [B, C, H, W] -> grayscale [B, 1, H, W] in [-1, 1]:
    the channel mean, black at 0 and white at ``white`` (clipped above)."""
    s = std.mean(1, keepdim=True) / white
    return s.clamp(0, 1) * 2 - 1


def panel(truth: torch.Tensor, measurement: torch.Tensor, mean: torch.Tensor, samples: torch.Tensor,
          std: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Images of one task, row-major for :func:`exactpost.io.images.tile`: per image (row)
    truth, measurement, mean, the M samples and the std; returns (images [B*(M+4), 3, H, W],
    number of columns)."""
    B = truth.shape[0]
    std_rgb = std_image(std).expand(-1, 3, -1, -1)
    cols = [truth, measurement.clamp(-1, 1), mean] + [samples[m] for m in range(samples.shape[0])] + [std_rgb]
    rows = torch.stack([c.to(truth.dtype) for c in cols], dim=1)  # [B, ncol, 3, H, W]
    return rows.reshape((B * len(cols),) + tuple(truth.shape[1:])), len(cols)


def panel_labels(n_samples: int) -> list[str]:
    """The column labels of :func:`panel`: truth, measurement, mean, sample 1..M, std."""
    return ["truth", "measurement", "mean"] + [f"sample {m + 1}" for m in range(n_samples)] + ["std"]
