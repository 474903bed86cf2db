"""Shared machinery of the zero-shot baselines (private module).

Every baseline works in the *variance-exploding* coordinates of the project
(``x~ = x_t / a = x0 + sigma e``, see :mod:`exactpost.core.interpolants`) on a grid of noise levels
sigma, and queries the prior network as ``D(a(t) x~, t)`` with ``t = t_of_sigma(sigma)``. A
sigma-grid sampler is therefore the same algorithm for every interpolant (EDM, VP linear, VP
cosine, rectified flow); only the network call changes. Methods whose published form lives in
the DDPM coordinates x_t = sqrt(abar) x0 + sqrt(1 - abar) e (DPS, PiGDM, MPGD) are translated
with the *VP-equivalent* scale ``a_vp(sigma) = 1 / sqrt(1 + sigma^2)`` (the DDPM a at noise
level sigma), so that their step sizes mean what they mean in the papers; see each module.

Noise-level grids (``grid`` setting):

* ``"vp"``: uniform in the time of DDPM's linear-beta VP schedule
  (:class:`~exactpost.core.interpolants.VPLinear`) between t(sigma_max) and t(sigma_min), then 0:
  the respaced DDPM/DDIM schedule all the DDPM-based papers use (DPS, PiGDM, DDNM, DDRM, MPGD);
* ``"karras"``: EDM's polynomial grid (rho = 7), then 0;
* ``"uniform"``: uniform in the *given* interpolant's own time, then 0 (what
  :func:`exactpost.core.samplers.ddim` does).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence, Union

import torch

from ..core.batching import per_sample
from ..core.interpolants import Denoiser, Interpolant, VPLinear, get_interpolant
from ..operators.base import LinearOperator
from ..core.posterior import check_measurement, check_sigma_y
from ..core.samplers import edm_sigma_grid

Scalar = Union[float, torch.Tensor]

GRIDS = ("vp", "karras", "uniform")
ALL_INTERPOLANTS = ("edm", "vp-linear", "vp-cosine", "flow")


@dataclass
class BaselineResult:
    """Output of a baseline.

    Attributes:
        x0: the samples, [B, *op.in_shape].
        nfe: network evaluations, a forward pass followed by a backward pass counting as one.
        backward_passes: how many of those evaluations were also backpropagated through
            (vector-Jacobian products through the network; 0 for gradient-free methods).
        settings: the settings actually used (defaults filled in), for the record.
    """

    x0: torch.Tensor
    nfe: int
    backward_passes: int = 0
    settings: dict[str, Any] = field(default_factory=dict)


class Network:
    """The prior denoiser seen in variance-exploding coordinates, counting its use.

    ``net(x~, sigma)`` returns ``D(a(t) x~, t)`` with ``t = interpolant.t_of_sigma(sigma)``
    (t passed as a [B] tensor of x's dtype, like the samplers do). ``net.vjp(out, x, v)``
    returns ``J^T v`` for ``out = net(x, sigma)`` computed with ``x.requires_grad``; each VJP
    counts one backward pass (the forward pass it belongs to was already counted as one NFE).
    """

    def __init__(self, prior: Denoiser, interpolant: Interpolant):
        self.prior, self.interpolant = prior, interpolant
        self.nfe = 0
        self.backward_passes = 0

    def __call__(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        if not sigma > 0:
            raise ValueError(f"the network is queried at sigma > 0 only, got {sigma}")
        t = float(self.interpolant.t_of_sigma(float(sigma)))
        a = float(self.interpolant.a(t))
        tt = torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device)
        out = self.prior(a * x, tt)
        if out.shape != x.shape:
            raise ValueError(f"the prior denoiser returned shape {tuple(out.shape)} for input "
                             f"{tuple(x.shape)}")
        self.nfe += 1
        return out

    def vjp(self, out: torch.Tensor, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """J^T v with J = d out / d x (one backward pass through the network)."""
        (g,) = torch.autograd.grad(out, x, grad_outputs=v)
        self.backward_passes += 1
        return g


def a_vp(sigma: float) -> float:
    """The DDPM scale at noise level sigma: sqrt(abar) = 1 / sqrt(1 + sigma^2) (1 at sigma 0)."""
    return 1.0 / math.sqrt(1.0 + sigma**2)


def sigma_grid(kind: str, steps: int, sigma_min: float, sigma_max: float,
               interpolant: Interpolant | None = None, rho: float = 7.0) -> list[float]:
    """``steps`` decreasing noise levels from sigma_max to sigma_min, followed by 0
    (length steps + 1); ``kind`` is one of :data:`GRIDS` (module docstring)."""
    steps = int(steps)
    if steps < 1:
        raise ValueError(f"need at least one step, got {steps}")
    if not (0 < sigma_min < sigma_max < math.inf):
        raise ValueError(f"need 0 < sigma_min < sigma_max < inf, got {sigma_min}, {sigma_max}")
    if kind == "karras":
        return edm_sigma_grid(steps, sigma_min, sigma_max, rho)
    if kind not in ("vp", "uniform"):
        raise ValueError(f"unknown grid {kind!r}; choose one of {', '.join(GRIDS)}")
    interp = VPLinear() if kind == "vp" else interpolant
    if interp is None:
        raise ValueError("the 'uniform' grid needs the interpolant")
    t_hi = float(interp.t_of_sigma(sigma_max))
    t_lo = float(interp.t_of_sigma(sigma_min))
    if steps == 1:
        return [float(sigma_max), 0.0]
    ts = [t_hi + i / (steps - 1) * (t_lo - t_hi) for i in range(steps)]
    return [float(interp.sigma(t)) for t in ts] + [0.0]


def per_sample_norm(r: torch.Tensor) -> torch.Tensor:
    """||r_b|| for each sample of a batch [B, ...] -> [B]."""
    return r.reshape(r.shape[0], -1).norm(dim=1)


def unit_residual_gradient(op: LinearOperator, r: torch.Tensor) -> torch.Tensor:
    """grad_x ||y - A x|| at a point with residual r = y - A x: -A^T r / ||r|| per sample
    (0 where r = 0), [B, *in_shape]."""
    n = per_sample_norm(r)
    safe = torch.where(n > 0, n, torch.ones_like(n))
    g = -op.At(r) / per_sample(safe, r.dim())
    return torch.where(per_sample(n > 0, r.dim()), g, torch.zeros_like(g))


@dataclass
class Problem:
    """Validated inputs shared by every method, and what every method does with them: the
    noise-level grid (:meth:`schedule`), the counting network, the loop over consecutive
    levels (:meth:`transitions`) and the result (:meth:`result`)."""

    prior: Denoiser
    op: LinearOperator
    y: torch.Tensor  # [B, *out_shape]
    sigma_y: torch.Tensor  # [B]
    shape: tuple[int, ...]  # [B, *in_shape]
    interpolant: Interpolant
    generator: torch.Generator | None
    dtype: torch.dtype
    net: "Network | None" = None  # set by schedule()
    sigmas: list[float] = field(default_factory=list)  # set by schedule(): decreasing, then 0

    @property
    def device(self) -> torch.device:
        return self.y.device

    def randn(self, shape: Sequence[int] | None = None) -> torch.Tensor:
        """Standard normal draws from the generator, [B, *in_shape] by default."""
        return torch.randn(tuple(shape) if shape is not None else self.shape,
                           generator=self.generator, dtype=self.dtype, device=self.device)

    def sy(self, ndim: int) -> torch.Tensor:
        """sigma_y broadcast against a [B, ...] tensor of ``ndim`` dims."""
        return per_sample(self.sigma_y, ndim)

    def schedule(self, nfe: int | None, default_nfe: int, grid: str, sigma_min: float, sigma_max: float, *,
                 per_step: int = 1, rho: float = 7.0) -> int:
        """The steps an NFE budget buys (``per_step`` evaluations each, :func:`resolve_steps`),
        their noise levels ``self.sigmas`` (:func:`sigma_grid`, steps + 1 values ending at 0)
        and the counting network ``self.net``; returns the number of steps."""
        steps = resolve_steps(nfe, default_nfe, per_step)
        self.sigmas = sigma_grid(grid, steps, sigma_min, sigma_max, self.interpolant, rho)
        self.net = Network(self.prior, self.interpolant)
        return steps

    def transitions(self) -> list[tuple[float, float]]:
        """The consecutive noise levels (sigma, sigma_next) of the grid, sigma_next = 0 last."""
        return list(zip(self.sigmas[:-1], self.sigmas[1:]))

    def result(self, x: torch.Tensor, settings: dict[str, Any], nfe: int | None = None) -> BaselineResult:
        """The :class:`BaselineResult` of samples ``x``: the network's counts (or ``nfe`` for a
        method that brings its own sampler) and ``settings`` with the interpolant's name."""
        net = self.net
        return BaselineResult(x.detach(), net.nfe if nfe is None else int(nfe),
                              net.backward_passes if net is not None else 0,
                              dict(settings, interpolant=self.interpolant.name))


def make_problem(prior: Denoiser, op: LinearOperator, y: torch.Tensor, sigma_y: Scalar,
                 shape: Sequence[int] | None, interpolant: Interpolant | str | None,
                 generator: torch.Generator | None, dtype: torch.dtype | None) -> Problem:
    """Check and normalise the common arguments of the baselines."""
    if not callable(prior):
        raise ValueError("prior must be a denoiser D(x_t, t) -> x0_hat")
    if not isinstance(op, LinearOperator):
        raise ValueError(f"op must be a LinearOperator, got {type(op).__name__}")
    check_measurement(op, y)
    dtype = dtype or (y.dtype if y.is_floating_point() else torch.float32)
    y = y.to(dtype)
    B = y.shape[0]
    full = (B,) + tuple(op.in_shape)
    if shape is not None and tuple(shape) != full:
        raise ValueError(f"shape {tuple(shape)} does not match the measurement batch and the "
                         f"operator: expected {full}")
    interp = get_interpolant(interpolant if interpolant is not None else "edm")
    sy = check_sigma_y(sigma_y, B, y)
    return Problem(prior, op, y, sy, full, interp, generator, dtype)


def begin(name: str, supported: Sequence[str], prior: Denoiser, op: LinearOperator, y: torch.Tensor,
          sigma_y: Scalar, shape: Sequence[int] | None, interpolant: Interpolant | str | None,
          generator: torch.Generator | None, dtype: torch.dtype | None) -> Problem:
    """Every method's first line: the checked :class:`Problem` (:func:`make_problem`), refusing
    an interpolant outside ``supported``."""
    pb = make_problem(prior, op, y, sigma_y, shape, interpolant, generator, dtype)
    check_interpolant(name, pb, supported)
    return pb


def check_interpolant(name: str, problem: Problem, supported: Sequence[str]) -> None:
    if problem.interpolant.name not in supported:
        raise ValueError(f"{name} supports the interpolants {', '.join(supported)}; got "
                         f"{problem.interpolant.name!r}")


def resolve_steps(nfe: int | None, default: int, per_step: int = 1) -> int:
    """Number of steps for an NFE budget (``per_step`` evaluations per step)."""
    n = default if nfe is None else int(nfe)
    if n < per_step:
        raise ValueError(f"nfe must be at least {per_step}, got {nfe}")
    return n // per_step


def ddim_ve_step(x: torch.Tensor, x0: torch.Tensor, sigma: float, sigma_next: float, eta: float,
                 z: torch.Tensor | None, eps: torch.Tensor | None = None) -> torch.Tensor:
    """One DDIM step in variance-exploding coordinates (Song et al. 2021, Eq. 12, divided by
    the next a):

        x~' = x0 + sqrt(sigma'^2 - c^2) e + c z,   c = eta sigma' sqrt(1 - sigma'^2 / sigma^2),

    with e = (x~ - x0) / sigma unless ``eps`` is given (methods that move x0 but keep the
    network's noise estimate pass it). eta = 1 is DDPM's ancestral step with the posterior
    variance beta~ (DDPM's "fixedsmall"); sigma' = 0 returns x0."""
    if sigma_next == 0.0:
        return x0
    c = eta * sigma_next * math.sqrt(max(0.0, 1.0 - (sigma_next / sigma) ** 2))
    e = (x - x0) / sigma if eps is None else eps
    out = x0 + math.sqrt(max(0.0, sigma_next**2 - c**2)) * e
    if c > 0:
        out = out + c * z
    return out
