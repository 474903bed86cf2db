"""Inpainting: a 0/1 pixel mask, A = diag(mask), plus mask generators.

Convention: ``mask == 1`` (True) marks an *observed* pixel, 0 a missing one. The output has
the input's shape; missing entries of ``A x`` are 0. A^T A = A = diag(mask) is a projector.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..core.batching import per_sample
from ._common import StructuredOperator, as_tensor_param, check_batch_size, check_positive_int, generator_device


class Inpainting(StructuredOperator):
    """A x = mask * x on images ``[B, C, H, W]`` (out_shape = in_shape = ``(C, H, W)``).

    ``mask`` (0/1 values, bool or numeric; 1 = observed):

    * ``per_channel=False`` (default): ``[H, W]`` shared, or ``[B, H, W]`` per sample; the
      same mask applies to every channel;
    * ``per_channel=True``: ``[C, H, W]`` shared, or ``[B, C, H, W]`` per sample.

    Closed forms (M = diag(mask), M^2 = M):

    * ``At y = mask * y``;
    * ``solve(v, rho) = v / (rho + mask)``;
    * ``pinv(y) = mask * y``;
    * ``null_project(x) = (1 - mask) * x``;
    * ``regularized_pinv(r, rho) = (M + rho I)^{-1} M r = mask * r / (1 + rho)`` (rho >= 0).

    The mask is stored as ``bool`` in ``self.mask`` with shape ``[1 or C, H, W]`` (shared) or
    ``[B, 1 or C, H, W]`` (per sample), and cast to the input's dtype/device on use.
    """

    def __init__(self, mask, channels: int, per_channel: bool = False) -> None:
        super().__init__()
        channels = check_positive_int(channels, "channels")
        m = as_tensor_param(mask, "mask")
        if not bool(((m == 0) | (m == 1)).all()):
            raise ValueError("mask must contain only 0 and 1 (1 = observed pixel, 0 = missing)")
        m = m.to(torch.bool)
        if per_channel:
            if m.dim() not in (3, 4):
                raise ValueError(
                    f"a per-channel mask must be [C, H, W] (shared) or [B, C, H, W] (per "
                    f"sample), got shape {tuple(m.shape)}"
                )
            if m.shape[-3] != channels:
                raise ValueError(
                    f"per-channel mask has {m.shape[-3]} channels but channels={channels}"
                )
            self.batch_size = int(m.shape[0]) if m.dim() == 4 else None
        else:
            if m.dim() not in (2, 3):
                raise ValueError(
                    f"mask must be [H, W] (shared) or [B, H, W] (per sample), got shape "
                    f"{tuple(m.shape)}; for a per-channel mask pass per_channel=True"
                )
            if m.dim() == 3:
                self.batch_size = int(m.shape[0])
                m = m[:, None]
            else:
                self.batch_size = None
                m = m[None]
        self.mask = m
        self.channels = channels
        self.per_channel = bool(per_channel)
        self.in_shape = (channels, int(m.shape[-2]), int(m.shape[-1]))
        self.out_shape = self.in_shape

    def mask_like(self, x: torch.Tensor) -> torch.Tensor:
        """The mask in ``x``'s dtype/device, broadcastable against ``[B, C, H, W]``."""
        return self.cached("mask", x, lambda: self.mask.to(dtype=x.dtype, device=x.device))

    @property
    def observed_fraction(self) -> torch.Tensor:
        """Fraction of observed entries, per sample ([B]) or overall (0-d) if shared."""
        dims = tuple(range(-3, 0))
        return self.mask.to(torch.float64).mean(dim=dims)

    def _A(self, x: torch.Tensor) -> torch.Tensor:
        return self.mask_like(x) * x

    def _At(self, y: torch.Tensor) -> torch.Tensor:
        return self.mask_like(y) * y

    def _solve(self, v: torch.Tensor, rho: torch.Tensor) -> torch.Tensor:
        return v / (rho + self.mask_like(v))

    def _pinv(self, y: torch.Tensor) -> torch.Tensor:
        return self.mask_like(y) * y

    def _null_project(self, x: torch.Tensor) -> torch.Tensor:
        return (1 - self.mask_like(x)) * x

    def _regularized_pinv(self, r: torch.Tensor, rho: torch.Tensor) -> torch.Tensor:
        return self.mask_like(r) * r / (1 + per_sample(rho, r.dim()))


def _image_size(image_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(image_size, int) and not isinstance(image_size, bool):
        image_size = (image_size, image_size)
    try:
        h, w = image_size
    except (TypeError, ValueError):
        raise ValueError(f"image_size must be an int or (H, W), got {image_size!r}") from None
    return check_positive_int(h, "H"), check_positive_int(w, "W")


def random_mask(
    image_size: int | Sequence[int],
    missing_fraction: float,
    batch_size: int | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """A random pixel mask (True = observed) with exactly ``round(missing_fraction * H * W)``
    missing pixels per mask, chosen uniformly without replacement from ``generator``.

    Returns ``[H, W]`` (``batch_size=None``) or ``[B, H, W]`` bool, one draw per sample.
    """
    h, w = _image_size(image_size)
    f = float(missing_fraction)
    if not 0.0 <= f <= 1.0:
        raise ValueError(f"missing_fraction must be in [0, 1], got {missing_fraction!r}")
    b = check_batch_size(batch_size)
    n = h * w
    n_missing = int(round(f * n))
    scores = torch.rand((b or 1, n), generator=generator, device=generator_device(generator))
    order = scores.argsort(dim=1)
    mask = torch.ones((b or 1, n), dtype=torch.bool, device=scores.device)
    mask.scatter_(1, order[:, :n_missing], False)
    mask = mask.reshape(b or 1, h, w).to(device if device is not None else scores.device)
    return mask if b is not None else mask[0]


def box_mask(
    image_size: int | Sequence[int],
    side: int,
    batch_size: int | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """A mask (True = observed) with one missing ``side x side`` square lying fully inside the
    image, its top-left corner uniform over the ``(H - side + 1) x (W - side + 1)`` positions.

    Returns ``[H, W]`` (``batch_size=None``) or ``[B, H, W]`` bool, one box per sample.
    """
    h, w = _image_size(image_size)
    side = check_positive_int(side, "side")
    if side > min(h, w):
        raise ValueError(f"box side {side} does not fit in a {h}x{w} image; use side <= {min(h, w)}")
    b = check_batch_size(batch_size)
    gdev = generator_device(generator)
    top = torch.randint(0, h - side + 1, (b or 1,), generator=generator, device=gdev)
    left = torch.randint(0, w - side + 1, (b or 1,), generator=generator, device=gdev)
    rows = torch.arange(h, device=gdev)[None, :, None]
    cols = torch.arange(w, device=gdev)[None, None, :]
    t, l = top[:, None, None], left[:, None, None]
    hole = (rows >= t) & (rows < t + side) & (cols >= l) & (cols < l + side)
    mask = (~hole).to(device if device is not None else gdev)
    return mask if b is not None else mask[0]
