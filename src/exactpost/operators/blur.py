"""Blur: circular convolution, diagonalised by the 2-D FFT."""

from __future__ import annotations

from typing import Sequence

import torch

from ..core.batching import per_sample
from ._common import StructuredOperator, as_tensor_param, check_shape_tuple


class FFTBlur(StructuredOperator):
    """Circular convolution of every channel with one kernel: ``[B, C, H, W] -> [B, C, H, W]``.

    ``kernel`` is ``[kh, kw]`` (shared) or ``[B, kh, kw]`` (one kernel per sample), with
    ``kh <= H`` and ``kw <= W``; any sizes, odd or even. **Centre convention:** kernel entry
    ``(kh // 2, kw // 2)`` sits at the origin, i.e.

        (A x)[c, i, j] = sum_{p, q} k[p, q] x[c, (i - p + kh//2) mod H, (j - q + kw//2) mod W].

    With Hf = rfft2 of the zero-padded kernel rolled so its centre is at (0, 0) (the
    transfer function; its moduli are the singular values of A), all maps are diagonal in
    Fourier space, O(d log d):

    * ``A x = irfft2(Hf * rfft2 x)``, ``At y = irfft2(conj(Hf) * rfft2 y)``;
    * ``solve(v, rho) = irfft2(rfft2 v / (rho + |Hf|^2))``;
    * ``pinv(y) = irfft2(G * rfft2 y)`` with ``G = conj(Hf) / |Hf|^2`` where
      ``|Hf| > rcond * max|Hf|`` (max per kernel) and ``G = 0`` elsewhere: a truncated
      pseudo-inverse, identical to ``torch.linalg.pinv(dense A, rtol=rcond)``;
    * ``null_project(x) = irfft2((1 - keep) * rfft2 x)``, keep = the same frequency set;
    * ``regularized_pinv(r, rho) = irfft2(conj(Hf) / (|Hf|^2 + rho) * rfft2 r)`` for rho > 0,
      and ``pinv(r)`` for rho = 0.

    ``rcond`` (default 1e-3, i.e. |Hf|^2 > 1e-6 max|Hf|^2, the same for float32 and float64)
    decides which frequencies count as measured in the noiseless limit: below it a frequency
    is treated as part of the null space rather than inverted with a gain above 1/rcond.
    """

    def __init__(self, kernel, in_shape: Sequence[int], rcond: float = 1e-3) -> None:
        super().__init__()
        c, h, w = check_shape_tuple(in_shape, "in_shape (C, H, W)", ndim=3)
        k = as_tensor_param(kernel, "blur kernel")
        if k.dim() not in (2, 3):
            raise ValueError(
                f"blur kernel must be [kh, kw] (shared) or [B, kh, kw] (per sample), got shape "
                f"{tuple(k.shape)}"
            )
        kh, kw = int(k.shape[-2]), int(k.shape[-1])
        if kh > h or kw > w:
            raise ValueError(
                f"blur kernel of size {kh}x{kw} is larger than the {h}x{w} image; use a kernel "
                f"no larger than the image"
            )
        rcond = float(rcond)
        if not 0.0 <= rcond < 1.0:
            raise ValueError(f"rcond must be in [0, 1), got {rcond!r}")
        self.kernel = k
        self.rcond = rcond
        self.batch_size = int(k.shape[0]) if k.dim() == 3 else None
        self.in_shape = (c, h, w)
        self.out_shape = (c, h, w)

    @property
    def kernel_size(self) -> tuple[int, int]:
        return int(self.kernel.shape[-2]), int(self.kernel.shape[-1])

    def transfer(self, like: torch.Tensor) -> torch.Tensor:
        """The transfer function Hf in ``like``'s (real) dtype/device: complex
        ``[H, W//2 + 1]`` (shared) or ``[B, 1, H, W//2 + 1]`` (per sample)."""

        def make() -> torch.Tensor:
            k = self.kernel.to(dtype=like.dtype, device=like.device)
            kh, kw = self.kernel_size
            _, h, w = self.in_shape
            pad = k.new_zeros(k.shape[:-2] + (h, w))
            pad[..., :kh, :kw] = k
            pad = torch.roll(pad, shifts=(-(kh // 2), -(kw // 2)), dims=(-2, -1))
            hf = torch.fft.rfft2(pad)
            return hf[:, None] if self.batch_size is not None else hf

        return self.cached("transfer", like, make)

    def _keep(self, like: torch.Tensor) -> torch.Tensor:
        """Boolean mask of the frequencies the pseudo-inverse inverts."""

        def make() -> torch.Tensor:
            mod = self.transfer(like).abs()
            top = mod.amax(dim=(-2, -1), keepdim=True)
            return mod > self.rcond * top

        return self.cached("keep", like, make)

    def _apply(self, x: torch.Tensor, mult: torch.Tensor) -> torch.Tensor:
        h, w = self.in_shape[1:]
        return torch.fft.irfft2(torch.fft.rfft2(x) * mult, s=(h, w))

    def _A(self, x: torch.Tensor) -> torch.Tensor:
        return self._apply(x, self.transfer(x))

    def _At(self, y: torch.Tensor) -> torch.Tensor:
        return self._apply(y, self.transfer(y).conj())

    def _solve(self, v: torch.Tensor, rho: torch.Tensor) -> torch.Tensor:
        hf = self.transfer(v)
        return self._apply(v, 1.0 / (rho + hf.real**2 + hf.imag**2))

    def _pinv(self, y: torch.Tensor) -> torch.Tensor:
        return self._apply(y, self._pinv_mult(y))

    def _null_project(self, x: torch.Tensor) -> torch.Tensor:
        return self._apply(x, (~self._keep(x)).to(x.dtype))

    def _pinv_mult(self, like: torch.Tensor) -> torch.Tensor:
        def make() -> torch.Tensor:
            hf = self.transfer(like)
            keep = self._keep(like)
            mod2 = hf.real**2 + hf.imag**2
            return torch.where(keep, hf.conj() / torch.where(keep, mod2, torch.ones_like(mod2)), 0)

        return self.cached("pinv", like, make)

    def _mod2_conj(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(|Hf|^2, conj(Hf)), computed once per dtype/device (a sampler's pivot uses them
        every step)."""

        def make() -> tuple[torch.Tensor, torch.Tensor]:
            hf = self.transfer(like)
            return hf.real**2 + hf.imag**2, hf.conj()

        return self.cached("mod2_conj", like, make)

    def _regularized_pinv(self, r: torch.Tensor, rho: torch.Tensor) -> torch.Tensor:
        rho = per_sample(rho, r.dim())
        mod2, conj = self._mod2_conj(r)
        den = mod2 + rho
        if bool((rho > 0).all()):  # sigma_y > 0: Tikhonov everywhere (the same values as below)
            return self._apply(r, conj / den)
        tik = conj / torch.where(rho > 0, den, torch.ones_like(den))
        return self._apply(r, torch.where(rho > 0, tik, self._pinv_mult(r)))
