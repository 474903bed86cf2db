"""Gaussian interpolants x_t = a(t) x0 + s(t) e, e ~ N(0, I).

Every diffusion or flow model of the library is described by one of these. Samplers need,
for each interpolant:

* ``a(t)``, ``s(t)`` and their time derivatives ``da(t)``, ``ds(t)``;
* the noise level ``sigma(t) = s(t) / a(t)`` (the standard deviation of ``x_t / a`` around x0)
  and its inverse ``t_of_sigma``, so that any interpolant can be stepped on a sigma grid;
* the range of valid times, ``t_min`` / ``t_max``.

Dividing by ``a`` turns any interpolant into the variance-exploding one
(``x_t / a = x0 + sigma e``); that is why one network with EDM preconditioning in sigma
serves all of them.

All methods accept a float or a tensor ``t`` of any shape and return the same type/shape.
"""

from __future__ import annotations

import math
from typing import Protocol, Union

import torch

from .batching import batch_vector, per_sample  # noqa: F401 (batch_vector re-exported)

Time = Union[float, torch.Tensor]


class Denoiser(Protocol):
    """A denoiser ``D(x_t, t) -> x0_hat`` in an interpolant's coordinates: x_t [B, ...] at time
    t, a [B] tensor (samplers and baselines pass one; the posterior denoisers of
    :mod:`exactpost.core.posterior` also take a float), returning the estimate of x0, x_t's shape.
    Any such callable qualifies (a function, a lambda, an nn.Module): the one type the
    samplers, the posterior denoisers and the baselines share."""

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, /) -> torch.Tensor: ...


def _as_tensor(t: Time) -> torch.Tensor:
    return t if isinstance(t, torch.Tensor) else torch.tensor(float(t), dtype=torch.float64)


def _like_input(value: torch.Tensor, t: Time) -> Time:
    return value if isinstance(t, torch.Tensor) else float(value)


class Interpolant:
    """Base class. Subclasses implement ``_a``, ``_s``, ``_da``, ``_ds`` and ``_t_of_sigma``
    on tensors; the public methods accept floats too."""

    name: str = "interpolant"
    #: smallest and largest time at which the interpolant is well defined with a > 0, s > 0
    t_min: float = 0.0
    t_max: float = 1.0

    # --- to implement -----------------------------------------------------------------
    def _a(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _s(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _da(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _ds(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _t_of_sigma(self, sigma: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # --- public API -------------------------------------------------------------------
    def a(self, t: Time) -> Time:
        """Signal coefficient a(t)."""
        return _like_input(self._a(_as_tensor(t)), t)

    def s(self, t: Time) -> Time:
        """Noise coefficient s(t)."""
        return _like_input(self._s(_as_tensor(t)), t)

    def da(self, t: Time) -> Time:
        """Time derivative a'(t)."""
        return _like_input(self._da(_as_tensor(t)), t)

    def ds(self, t: Time) -> Time:
        """Time derivative s'(t)."""
        return _like_input(self._ds(_as_tensor(t)), t)

    def sigma(self, t: Time) -> Time:
        """Noise level of x_t / a around x0: sigma(t) = s(t) / a(t)."""
        tt = _as_tensor(t)
        return _like_input(self._s(tt) / self._a(tt), t)

    def t_of_sigma(self, sigma: Time) -> Time:
        """Inverse of :meth:`sigma`: the time at which s/a equals ``sigma`` (> 0)."""
        sig = _as_tensor(sigma)
        if bool((sig <= 0).any()):
            raise ValueError(f"sigma must be > 0 to convert to a time, got {sigma}")
        return _like_input(self._t_of_sigma(sig), sigma)

    def velocity(self, x_t: torch.Tensor, x0_hat: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Probability-flow velocity dx_t/dt = a'(t) x0_hat + s'(t) e_hat,
        with e_hat = (x_t - a x0_hat) / s.  ``t`` broadcasts against the batch (shape [B])."""
        tt = t.to(torch.float64)
        a, s = self._a(tt), self._s(tt)
        da, ds = self._da(tt), self._ds(tt)
        a, s, da, ds = (per_sample(v.to(x_t.dtype), x_t.dim()) for v in (a, s, da, ds))
        e_hat = (x_t - a * x0_hat) / s
        return da * x0_hat + ds * e_hat

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class EDM(Interpolant):
    """Variance exploding (EDM, Karras et al. 2022): a = 1, s = t, so t is sigma itself."""

    name = "edm"
    t_min = 0.0
    t_max = math.inf

    def _a(self, t):
        return torch.ones_like(t)

    def _s(self, t):
        return t

    def _da(self, t):
        return torch.zeros_like(t)

    def _ds(self, t):
        return torch.ones_like(t)

    def _t_of_sigma(self, sigma):
        return sigma

    # Python floats (a sampler stepping on a sigma grid asks for one level at a time): the
    # values the tensor path returns, without building tensors
    def a(self, t: Time) -> Time:
        return 1.0 if type(t) is float else super().a(t)

    def t_of_sigma(self, sigma: Time) -> Time:
        if type(sigma) is not float:
            return super().t_of_sigma(sigma)
        if sigma <= 0:
            raise ValueError(f"sigma must be > 0 to convert to a time, got {sigma}")
        return sigma


class VPLinear(Interpolant):
    """Variance preserving with DDPM's linear beta schedule in continuous time
    (Song et al. 2021): abar(t) = exp(-(beta_min t + (beta_max - beta_min) t^2 / 2)),
    a = sqrt(abar), s = sqrt(1 - abar), t in (0, 1]. beta_min = 0.1, beta_max = 20 match
    DDPM's 1000 steps from 1e-4 to 0.02.  The formula is extended past t = 1 so that a
    sampler may start from a larger sigma than sigma(1) ~ 152."""

    name = "vp-linear"
    t_min = 0.0
    t_max = math.inf

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0):
        if not (0 < beta_min <= beta_max):
            raise ValueError(f"need 0 < beta_min <= beta_max, got {beta_min}, {beta_max}")
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)

    def _log_abar(self, t):
        return -(self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2)

    def _beta(self, t):
        return self.beta_min + (self.beta_max - self.beta_min) * t

    def _a(self, t):
        return torch.exp(0.5 * self._log_abar(t))

    def _s(self, t):
        return torch.sqrt(-torch.expm1(self._log_abar(t)))

    def _da(self, t):
        return -0.5 * self._beta(t) * self._a(t)

    def _ds(self, t):
        abar = torch.exp(self._log_abar(t))
        return 0.5 * self._beta(t) * abar / self._s(t)

    def _t_of_sigma(self, sigma):
        # sigma^2 = 1/abar - 1  =>  -log abar = log1p(sigma^2) = beta_min t + c t^2 / 2
        c = self.beta_max - self.beta_min
        L = torch.log1p(sigma.to(torch.float64) ** 2)
        if c == 0:
            return L / self.beta_min
        return (-self.beta_min + torch.sqrt(self.beta_min**2 + 2 * c * L)) / c

    def __repr__(self):
        return f"VPLinear(beta_min={self.beta_min}, beta_max={self.beta_max})"


class VPCosine(Interpolant):
    """Variance preserving with the cosine schedule (Nichol & Dhariwal 2021):
    abar(t) = cos^2(pi/2 (t + c)/(1 + c)) / cos^2(pi/2 c/(1 + c)), c = 0.008, t in (0, 1).
    At t = 1, abar = 0 (sigma = inf), so samplers start slightly before it."""

    name = "vp-cosine"
    t_min = 0.0
    t_max = 1.0

    def __init__(self, offset: float = 0.008):
        self.offset = float(offset)
        self._phi0 = 0.5 * math.pi * self.offset / (1 + self.offset)

    def _phi(self, t):
        return 0.5 * math.pi * (t + self.offset) / (1 + self.offset)

    def _a(self, t):
        return torch.cos(self._phi(t)) / math.cos(self._phi0)

    def _s(self, t):
        return torch.sqrt(torch.clamp(1 - self._a(t) ** 2, min=0.0))

    def _da(self, t):
        return -torch.sin(self._phi(t)) * (0.5 * math.pi / (1 + self.offset)) / math.cos(self._phi0)

    def _ds(self, t):
        return -self._a(t) * self._da(t) / self._s(t)

    def _t_of_sigma(self, sigma):
        # a = 1/sqrt(1 + sigma^2)  =>  cos(phi) = cos(phi0) / sqrt(1 + sigma^2)
        cos_phi = math.cos(self._phi0) / torch.sqrt(1 + sigma.to(torch.float64) ** 2)
        return torch.arccos(cos_phi) * (1 + self.offset) / (0.5 * math.pi) - self.offset

    def __repr__(self):
        return f"VPCosine(offset={self.offset})"


class RectifiedFlow(Interpolant):
    """Rectified flow / conditional flow matching: a = 1 - t, s = t, t in [0, 1).
    sigma = t / (1 - t), so t_of_sigma(sigma) = sigma / (1 + sigma)."""

    name = "flow"
    t_min = 0.0
    t_max = 1.0

    def _a(self, t):
        return 1 - t

    def _s(self, t):
        return t

    def _da(self, t):
        return -torch.ones_like(t)

    def _ds(self, t):
        return torch.ones_like(t)

    def _t_of_sigma(self, sigma):
        return sigma / (1 + sigma)


INTERPOLANTS = {
    "edm": EDM,
    "vp-linear": VPLinear,
    "vp-cosine": VPCosine,
    "flow": RectifiedFlow,
}


# --- per-sample noise levels (used by the posterior and the network wrappers) ---------------
def noise_levels(interpolant: Interpolant, t: Time, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(a, s, sigma = s/a) at time t, each [B] in ``like``'s dtype; requires a > 0, s > 0."""
    tt = batch_vector(t, like.shape[0], like, "t").to(torch.float64)
    a, s = interpolant.a(tt), interpolant.s(tt)
    if bool((a <= 0).any()) or bool((s <= 0).any()):
        raise ValueError(
            f"the pivot needs a(t) > 0 and s(t) > 0; t = {t} is outside "
            f"({interpolant.t_min}, {interpolant.t_max}) for {interpolant!r}"
        )
    return a.to(like.dtype), s.to(like.dtype), (s / a).to(like.dtype)


def get_interpolant(name: str | Interpolant) -> Interpolant:
    """Look an interpolant up by name (``edm``, ``vp-linear``, ``vp-cosine``, ``flow``)."""
    if isinstance(name, Interpolant):
        return name
    try:
        return INTERPOLANTS[name]()
    except KeyError:
        raise ValueError(
            f"unknown interpolant {name!r}; choose one of {', '.join(sorted(INTERPOLANTS))}"
        ) from None
