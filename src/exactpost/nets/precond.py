"""EDM preconditioning (Karras et al. 2022, Table 1) around the U-Net.

With sigma_data = sd and a noisy input x = x0 + n, std(n) <= sigma (variance-exploding
scale: for any interpolant x = x_t / a(t), sigma = s(t) / a(t)), the denoiser is

    D(x, sigma) = c_skip x + c_out F( concat(c_in x, cond), c_noise )

    c_skip  = sd^2 / (sigma^2 + sd^2)          -> 1 as sigma -> 0,  -> 0 as sigma -> inf
    c_out   = sigma sd / sqrt(sigma^2 + sd^2)  -> 0 as sigma -> 0,  -> sd as sigma -> inf
    c_in    = 1 / sqrt(sigma^2 + sd^2)         (unit-variance network input)
    c_noise = log(sigma) / 4

so that one network, trained in sigma, serves every interpolant (EDM, VP, flow): see
:func:`as_denoiser`.

Gaussian skip (``skip="gaussian"``, EPS networks only): c_skip x is replaced by

    S mu* = sd^2 (sd^2 I + Sigma*)^{-1} mu* = c_skip mu* + (1 - c_skip) A^+_{rho_e} A mu*,

the posterior mean under the isotropic prior N(0, sd^2 I) given the pivot
(:func:`exactpost.core.skip.gaussian_skip`). EDM's c_skip is its special case with
nothing measured; with it, the measured content of the pivot (nearly noiseless at every
sigma) passes through the skip instead of being re-synthesised by F from an input scaled
by c_in ~ 1/sigma -- at the 1-NFE query (sigma = 80, c_skip ~ 4e-5) the scalar skip makes F
rebuild every observed pixel. The skip needs the operator and sigma_y, so it is computed by
the caller (:func:`as_eps_network`, the training batch) and passed as ``skip``; c_out,
c_in and the loss weight are EDM's. Cards without a ``skip`` entry are the scalar skip. The conditioning channels ``cond`` (e.g. A^T y for EPS, a certainty
map) are concatenated AFTER the c_in scaling and are NOT scaled: they are at data scale
whatever sigma is, so scaling them would only hide the measurement at high noise.

The EDM training loss is ``loss_weight(sigma) * ||D(x0 + sigma e, sigma) - x0||^2`` with
``loss_weight(sigma) = (sigma^2 + sd^2) / (sigma sd)^2``, which equals
``||F - (x0 - c_skip x) / c_out||^2``: the network's own target has unit weight.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Union

import torch
from torch import nn

from ..core.batching import per_sample
from ..core.interpolants import Interpolant, noise_levels
from ..core.skip import gaussian_skip
from ..operators.base import LinearOperator
from .unet import UNet, UNetConfig

__all__ = ["EDMPrecond", "SKIPS", "edm_coefficients", "loss_weight", "as_denoiser", "as_eps_network"]

#: the skip connections: EDM's scalar c_skip, or the operator-aware Gaussian skip S mu*
SKIPS = ("scalar", "gaussian")

Scalar = Union[float, torch.Tensor]


def _sigma_vector(sigma: Scalar, batch: int, like: torch.Tensor) -> torch.Tensor:
    """sigma as a float64 [B] tensor on ``like``'s device; finite and > 0."""
    s = torch.as_tensor(sigma, dtype=torch.float64, device=like.device)
    if s.dim() == 0:
        s = s.expand(batch)
    if s.shape != (batch,):
        raise ValueError(f"sigma must be a float or have shape [{batch}], got shape {tuple(s.shape)}")
    if not bool(torch.isfinite(s).all()) or bool((s <= 0).any()):
        raise ValueError(f"sigma must be finite and > 0, got {s.tolist()}; use sigma_min > 0 for the last step")
    return s


def edm_coefficients(sigma: Scalar, sigma_data: float = 0.5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(c_skip, c_out, c_in, c_noise) of EDM Table 1, each of sigma's shape, in float64.

    c_skip = sd^2/(sigma^2+sd^2), c_out = sigma sd/sqrt(sigma^2+sd^2),
    c_in = 1/sqrt(sigma^2+sd^2), c_noise = log(sigma)/4.
    """
    s = torch.as_tensor(sigma, dtype=torch.float64)
    sd = float(sigma_data)
    var = s**2 + sd**2
    return sd**2 / var, s * sd / var.sqrt(), 1.0 / var.sqrt(), s.log() / 4


def loss_weight(sigma: Scalar, sigma_data: float = 0.5) -> Scalar:
    """EDM loss weight lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2 = 1 / c_out^2
    (float in, float out; tensor in, tensor of the same shape and dtype out)."""
    if isinstance(sigma, torch.Tensor):
        return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2
    s = float(sigma)
    return (s**2 + sigma_data**2) / (s * sigma_data) ** 2


class EDMPrecond(nn.Module):
    """EDM-preconditioned denoiser D(x, sigma, cond) -> x0_hat around a :class:`UNet`.

    Args:
        unet: the raw network F; its ``in_channels`` image channels take c_in x, its
            ``cond_channels`` take ``cond`` unscaled.
        sigma_data: std of the data (0.5 for images in [-1, 1]).
        skip: ``"scalar"`` (EDM's c_skip x) or ``"gaussian"`` (the caller passes
            ``skip = S x``, see the module docstring; EPS networks).
    """

    def __init__(self, unet: UNet, sigma_data: float = 0.5, skip: str = "scalar"):
        super().__init__()
        if not isinstance(unet, UNet):
            raise ValueError(f"EDMPrecond wraps a UNet, got {type(unet).__name__}")
        if not sigma_data > 0:
            raise ValueError(f"sigma_data must be > 0, got {sigma_data}")
        if unet.config.out_channels != unet.config.in_channels:
            raise ValueError(
                f"EDMPrecond needs out_channels == in_channels (c_skip x + c_out F), got "
                f"{unet.config.out_channels} and {unet.config.in_channels}"
            )
        if skip not in SKIPS:
            raise ValueError(f"skip must be one of {', '.join(SKIPS)}, got {skip!r}")
        self.unet = unet
        self.sigma_data = float(sigma_data)
        self.skip = skip

    @property
    def config(self) -> UNetConfig:
        """The wrapped network's configuration."""
        return self.unet.config

    def to_dict(self) -> dict[str, Any]:
        """JSON description: {"precond": "edm", "sigma_data": ..., "unet": UNetConfig dict}, plus
        "skip": "gaussian" for a Gaussian-skip network (absent: the scalar skip, so the cards
        and training states written before the option are unchanged)."""
        out = {"precond": "edm", "sigma_data": self.sigma_data, "unet": self.unet.config.to_dict()}
        if self.skip != "scalar":
            out["skip"] = self.skip
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], generator: Optional[torch.Generator] = None) -> "EDMPrecond":
        """Inverse of :meth:`to_dict` (fresh weights; load a checkpoint into it)."""
        if d.get("precond") != "edm" or "unet" not in d:
            raise ValueError(f"not an EDMPrecond description (need precond='edm' and a 'unet' entry), got keys {sorted(d)}")
        return cls(UNet.from_config(d["unet"], generator=generator), sigma_data=float(d.get("sigma_data", 0.5)),
                   skip=str(d.get("skip", "scalar")))

    def loss_weight(self, sigma: Scalar) -> Scalar:
        """EDM loss weight at this wrapper's sigma_data (see :func:`loss_weight`)."""
        return loss_weight(sigma, self.sigma_data)

    def forward(self, x: torch.Tensor, sigma: Scalar, cond: Optional[torch.Tensor] = None,
                task_id: Any = None, sigma_y: Any = None, skip: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x [B, in_channels, H, W] (x0 + noise of std <= sigma), sigma float or [B] (> 0),
        cond [B, cond_channels, H, W] or None (exactly when cond_channels == 0),
        skip [B, in_channels, H, W] = S x for a Gaussian-skip network, else None
        -> x0_hat [B, in_channels, H, W], in x's dtype."""
        cfg = self.unet.config
        if x.dim() != 4 or x.shape[1] != cfg.in_channels:
            raise ValueError(f"x must have shape [B, {cfg.in_channels}, H, W], got {tuple(x.shape)}")
        B = x.shape[0]
        if cfg.cond_channels == 0:
            if cond is not None:
                raise ValueError("cond given but the network has cond_channels=0; drop cond or use add_condition_channels")
            inp_cond = None
        else:
            if cond is None:
                raise ValueError(f"the network expects cond with {cfg.cond_channels} channels; pass cond [B, {cfg.cond_channels}, H, W]")
            want = (B, cfg.cond_channels) + tuple(x.shape[2:])
            if tuple(cond.shape) != want:
                raise ValueError(f"cond must have shape {list(want)} (cond_channels={cfg.cond_channels}), got {tuple(cond.shape)}")
            inp_cond = cond.to(x.dtype)
        if self.skip == "gaussian":
            if skip is None or tuple(skip.shape) != tuple(x.shape):
                got = "none" if skip is None else f"shape {tuple(skip.shape)}"
                raise ValueError(f"this network has the Gaussian skip: pass skip = gaussian_skip(x, sigma, op, sigma_y) "
                                 f"of x's shape {tuple(x.shape)} (got {got}); as_eps_network(..., op=op) does it")
        elif skip is not None:
            raise ValueError("skip given but this network has EDM's scalar skip; drop skip")
        s = _sigma_vector(sigma, B, x)
        c_skip, c_out, c_in, c_noise = edm_coefficients(s, self.sigma_data)
        shape = (B, 1, 1, 1)
        c_skip, c_out, c_in = (c.to(x.dtype).reshape(shape) for c in (c_skip, c_out, c_in))
        inp = c_in * x
        if inp_cond is not None:
            inp = torch.cat([inp, inp_cond], dim=1)
        F_x = self.unet(inp, c_noise.to(torch.float32), task_id=task_id, sigma_y=sigma_y)
        base = c_skip * x if skip is None else skip.to(x.dtype)
        return base + c_out * F_x.to(x.dtype)


def as_denoiser(precond: EDMPrecond, interpolant: Interpolant, task_id: Any = None,
                sigma_y: Any = None) -> Callable[[torch.Tensor, Scalar], torch.Tensor]:
    """An unconditional denoiser D(x_t, t) -> x0_hat for ``interpolant`` (x_t = a x0 + s e):

        D(x_t, t) = precond(x_t / a(t), sigma(t)),   sigma(t) = s(t) / a(t),

    t a float or [B]. Needs a network without conditioning channels (for EPS use the
    posterior denoiser with :func:`as_eps_network`); ``task_id``/``sigma_y`` are passed on
    to networks that embed them."""
    if precond.config.cond_channels != 0:
        raise ValueError(
            f"as_denoiser needs a network without conditioning channels (this one has {precond.config.cond_channels}); "
            "wrap it with as_eps_network and exactpost.core.posterior.EPSPosteriorDenoiser instead"
        )

    def denoiser(x_t: torch.Tensor, t: Scalar) -> torch.Tensor:
        a, _, sigma = noise_levels(interpolant, t, x_t)
        return precond(x_t / per_sample(a, x_t.dim()), sigma, task_id=task_id, sigma_y=sigma_y)

    return denoiser


def as_eps_network(precond: Any, task_id: Any = None, sigma_y: Any = None,
                   op: Optional[LinearOperator] = None, op_sigma_y: Any = None
                   ) -> Callable[[torch.Tensor, Any, torch.Tensor], torch.Tensor]:
    """The EPS network signature of :mod:`exactpost.core.posterior`:
    ``net(pivot, cond, sigma) = precond(pivot, sigma, cond=cond, task_id, sigma_y[, skip])``.

    ``sigma_y`` is what the network's sigma_y embedding is given (None for a network without
    one). A Gaussian-skip network also needs the operator ``op`` and the measurement noise
    ``op_sigma_y`` (float or [B]; default ``sigma_y``): its skip is
    ``gaussian_skip(pivot, sigma, op, op_sigma_y)``. ``precond`` is an :class:`EDMPrecond` or
    any module with its call signature (a network without a ``skip`` attribute has the scalar
    skip)."""
    gaussian = getattr(precond, "skip", "scalar") == "gaussian"
    noise = sigma_y if op_sigma_y is None else op_sigma_y
    if gaussian and (op is None or noise is None):
        raise ValueError("this EPS network has the Gaussian skip: give as_eps_network the operator (op=) and the "
                         "measurement noise (op_sigma_y=)")

    def net(pivot: torch.Tensor, cond: Any, sigma: torch.Tensor) -> torch.Tensor:
        if not gaussian:
            return precond(pivot, sigma, cond=cond, task_id=task_id, sigma_y=sigma_y)
        skip = gaussian_skip(pivot, sigma, op, noise, precond.sigma_data)
        return precond(pivot, sigma, cond=cond, task_id=task_id, sigma_y=sigma_y, skip=skip)

    return net
