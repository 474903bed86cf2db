"""Known singular value decompositions of the structured operators, for DDRM and DDNM+.

DDRM (Kawar et al. 2022) and the noisy DDNM+ (Wang et al. 2023) act coordinate-wise in the
spectral coordinates x_bar = V^T x of A = U diag(s) V^T, with rules that depend on each
coordinate's singular value only. A :class:`SpectralView` gives those coordinates for the
families whose SVD is known in closed form:

=====================  ==========================================  ======================
operator               coordinates ``spec(x)``                     singular values ``s``
=====================  ==========================================  ======================
Inpainting             the pixels themselves (V = I)               the mask (1 / 0)
Denoising              the pixels (V = I)                          1
AveragePoolSR (f)      (P x, x - P x), P = f^2 A^T A               (1/f, 0)
Colorization (C)       (P x, x - P x), P = C A^T A                 (1/sqrt(C), 0)
CompressedSensing      (P x, x - P x), P = A^T A                   (1, 0)
FFTBlur                orthonormal 2-D real FFT (rfft2, "ortho")   |H(k)| on the kept
                                                                   frequencies, else 0
DenseOperator          (V_k^T x, x - V_k V_k^T x) from its SVD     (s_k above rcond, 0)
=====================  ==========================================  ======================

For the projector families every measured direction has the same singular value, so the
coordinate-wise rules commute with any rotation inside the range and inside the null space;
carrying the two projections P x and x - P x (each in pixel space) is then equivalent to an
explicit orthonormal basis, and white noise maps to (P z, z - P z), again the right law.
For the FFT, the rules multiply each complex coefficient by real numbers that depend on |H(k)|
only (|H(k)| = |H(-k)|), so real signals stay real. In every case ``spec(A^+ y)`` holds
y_bar_i / s_i on the measured coordinates and 0 elsewhere, and the noise of y maps to
standard deviation sigma_y / s_i there.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from ..operators import (
    AveragePoolSR,
    Colorization,
    CompressedSensing,
    DenseOperator,
    Denoising,
    FFTBlur,
    Inpainting,
    LinearOperator,
)

SUPPORTED = (Inpainting, Denoising, AveragePoolSR, Colorization, CompressedSensing, FFTBlur,
             DenseOperator)


class SpectralView:
    """Spectral coordinates of an operator: ``spec(x)`` ([B, ...], possibly complex),
    its inverse ``unspec``, and the singular values ``s`` (real, broadcastable against
    ``spec(x)``; 0 marks an unmeasured coordinate)."""

    def __init__(self, spec: Callable[[torch.Tensor], torch.Tensor],
                 unspec: Callable[[torch.Tensor], torch.Tensor], s: torch.Tensor):
        self.spec, self.unspec, self.s = spec, unspec, s

    @property
    def measured(self) -> torch.Tensor:
        return self.s > 0

    def inv_s(self) -> torch.Tensor:
        """1/s on measured coordinates, 0 elsewhere."""
        return torch.where(self.measured, 1.0 / torch.where(self.measured, self.s, torch.ones_like(self.s)),
                           torch.zeros_like(self.s))


def has_known_svd(op: LinearOperator) -> bool:
    return isinstance(op, SUPPORTED)


def spectral_view(op: LinearOperator, like: torch.Tensor) -> SpectralView:
    """The :class:`SpectralView` of ``op`` in ``like``'s dtype/device; ValueError for an
    operator without a known SVD."""
    dt, dev = like.dtype, like.device
    if isinstance(op, Inpainting):
        return SpectralView(lambda x: x, lambda xb: xb, op.mask_like(like))
    if isinstance(op, Denoising):
        return SpectralView(lambda x: x, lambda xb: xb, torch.ones((), dtype=dt, device=dev))
    if isinstance(op, (AveragePoolSR, Colorization, CompressedSensing)):
        if isinstance(op, AveragePoolSR):
            s_r = 1.0 / op.factor
        elif isinstance(op, Colorization):
            s_r = 1.0 / math.sqrt(op.channels)
        else:
            s_r = 1.0
        nd = like.dim()
        s = torch.tensor([s_r, 0.0], dtype=dt, device=dev).reshape((1, 2) + (1,) * (nd - 1))

        def spec(x: torch.Tensor) -> torch.Tensor:
            null = op.null_project(x)
            return torch.stack([x - null, null], dim=1)

        return SpectralView(spec, lambda xb: xb[:, 0] + xb[:, 1], s)
    if isinstance(op, FFTBlur):
        h, w = op.in_shape[1:]
        hf = op.transfer(like)
        keep = op._keep(like)  # the frequencies the operator's pinv inverts (rcond rule)
        s = torch.where(keep, hf.abs(), torch.zeros_like(hf.abs()))
        return SpectralView(lambda x: torch.fft.rfft2(x, norm="ortho"),
                            lambda xb: torch.fft.irfft2(xb, s=(h, w), norm="ortho"), s)
    if isinstance(op, DenseOperator):
        _, sv, vh = op.svd()
        keep = sv > op.rcond * sv.amax(dim=-1, keepdim=True)
        sv = torch.where(keep, sv, torch.zeros_like(sv)).to(dtype=dt, device=dev)
        vh = vh.to(dtype=dt, device=dev)  # [(B,) k, d]
        d = op.in_dim
        s = torch.cat([sv, torch.zeros(sv.shape[:-1] + (d,), dtype=dt, device=dev)], dim=-1)
        shape = tuple(op.in_shape)

        def coef(flat: torch.Tensor) -> torch.Tensor:  # V_k^T x: [B, k]
            return flat @ vh.T if vh.dim() == 2 else torch.einsum("bkd,bd->bk", vh, flat)

        def back(c: torch.Tensor) -> torch.Tensor:  # V_k c: [B, d]
            return c @ vh if vh.dim() == 2 else torch.einsum("bkd,bk->bd", vh, c)

        def spec(x: torch.Tensor) -> torch.Tensor:
            flat = x.reshape(x.shape[0], -1)
            c = coef(flat)
            return torch.cat([c, flat - back(c)], dim=1)

        def unspec(xb: torch.Tensor) -> torch.Tensor:
            k = vh.shape[-2]
            return (back(xb[:, :k]) + xb[:, k:]).reshape((xb.shape[0],) + shape)

        return SpectralView(spec, unspec, s)
    names = ", ".join(c.__name__ for c in SUPPORTED)
    raise ValueError(
        f"{type(op).__name__} has no known SVD; DDRM and the noisy DDNM+ need one of: {names} "
        f"(wrap a small operator's matrix in DenseOperator to use its SVD)"
    )
