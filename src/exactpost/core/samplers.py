"""Samplers: plain functions over a denoiser ``D(x_t, t) -> x0_hat``.

Every sampler takes the denoiser, the batch shape and the interpolant the denoiser works in,
draws its initial noise from an explicit ``torch.Generator`` (or takes ``noise``), and
returns a :class:`SampleResult` with the samples, the number of network evaluations (NFE)
it used and, on request, the trajectory of x0 estimates (one per evaluation).

All samplers start at noise level ``sigma_max`` (sigma = s/a; mapped to a time with
``interpolant.t_of_sigma``) from x = s(T) e, or x = s(T) e + a(T) m with ``init_mean`` m,
and end with clean samples. The exact marginal at T has mean a(T) E[x0] (E[x0 | y] for a
posterior), so starting from zero mean costs a start-up error that shrinks only as
|E[x0]| / sigma_max; passing m = the 1-NFE posterior mean (see
:func:`exactpost.core.posterior.EPSPosteriorDenoiser.posterior_mean`) removes most of it.

* :func:`edm_heun`, :func:`edm_euler`: Karras et al. (2022), Algorithms 1 and 2, on the
  sigma grid sigma_i = (sigma_max^(1/r) + i/(N-1) (sigma_min^(1/r) - sigma_max^(1/r)))^r,
  then 0. They integrate the probability-flow ODE dx~/dsigma = (x~ - D)/sigma of
  x~ = x_t / a, so they serve every interpolant. Heun with N steps uses 2N - 1 NFE.
  ``churn > 0`` adds EDM's stochastic churn. Both are :func:`heun_sigmas` on that grid.
* :func:`heun_sigmas`, :func:`dpmpp_2m`: Heun/Euler (with churn) and DPM-Solver++(2M)
  (ODE, or SDE with ``eta > 0``) through an explicit sequence of noise levels ``sigmas``
  (:mod:`exactpost.core.schedules`), for any interpolant; :mod:`exactpost.core.sampler_spec` names
  configurations of them by NFE budget.
* :func:`ddim` (eta), :func:`ddpm`: Song et al. (2021) / Ho et al. (2020), written for any
  interpolant: from t to t' < t,
  x' = a' x0_hat + sqrt(s'^2 - c^2) e_hat + c z,  e_hat = (x - a x0_hat)/s,
  c = eta a' sigma' sqrt(1 - sigma'^2/sigma^2)  (eta = 1: the ancestral DDPM step).
  Uniform time grid, N steps = N NFE.
* :func:`flow_euler`, :func:`flow_heun`: the probability-flow ODE in the interpolant's own
  time, dx/dt = a'(t) x0_hat + s'(t) e_hat (for rectified flow the usual v = e - x0),
  uniform time grid, last step to t = 0 returning x0_hat; Heun with N steps uses 2N - 1 NFE.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from .interpolants import EDM, Denoiser, Interpolant, RectifiedFlow, VPLinear
from .schedules import check_sigmas, karras_sigmas, with_zero


@dataclass
class SampleResult:
    """Output of a sampler.

    Attributes:
        x0: the samples, [B, *shape].
        nfe: network (denoiser) evaluations used.
        trajectory: x0 estimates, one per evaluation, if asked for (else None).
        times: the time t of each evaluation in ``trajectory`` (else None).
    """

    x0: torch.Tensor
    nfe: int
    trajectory: list[torch.Tensor] | None = None
    times: list[float] | None = field(default=None)


class _CountingDenoiser:
    """Calls the denoiser with t as a [B] tensor, counts calls, records estimates."""

    def __init__(self, denoiser: Denoiser, record: bool):
        self.denoiser, self.nfe = denoiser, 0
        self.trajectory: list[torch.Tensor] | None = [] if record else None
        self.times: list[float] | None = [] if record else None

    def __call__(self, x: torch.Tensor, t: float) -> torch.Tensor:
        tt = torch.full((x.shape[0],), float(t), dtype=x.dtype, device=x.device)
        out = self.denoiser(x, tt)
        if out.shape != x.shape:
            raise ValueError(f"the denoiser returned shape {tuple(out.shape)} for input {tuple(x.shape)}")
        self.nfe += 1
        if self.trajectory is not None:
            self.trajectory.append(out.detach().clone())
            self.times.append(float(t))
        return out

    def result(self, x0: torch.Tensor) -> SampleResult:
        return SampleResult(x0, self.nfe, self.trajectory, self.times)


def _check_common(steps: int, sigma_min: float, sigma_max: float) -> None:
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps}")
    if not (0 < sigma_min < sigma_max < math.inf):
        raise ValueError(f"need 0 < sigma_min < sigma_max < inf, got {sigma_min}, {sigma_max}")


def _initial_noise(shape: Sequence[int], noise, generator, device, dtype) -> torch.Tensor:
    if noise is not None:
        if tuple(noise.shape) != tuple(shape):
            raise ValueError(f"noise has shape {tuple(noise.shape)}, expected {tuple(shape)}")
        return noise.to(device=device or noise.device, dtype=dtype)
    return torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)


def _shift(x: torch.Tensor, init_mean: torch.Tensor | None, a: float) -> torch.Tensor:
    if init_mean is None:
        return x
    if init_mean.shape != x.shape:
        raise ValueError(f"init_mean has shape {tuple(init_mean.shape)}, expected {tuple(x.shape)}")
    return x + a * init_mean.to(x.dtype)


def edm_sigma_grid(steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0,
                   rho: float = 7.0) -> list[float]:
    """Karras et al.'s noise levels: ``steps`` values from sigma_max down to sigma_min
    (polynomial spacing with exponent rho), followed by 0. Length steps + 1."""
    _check_common(steps, sigma_min, sigma_max)
    return with_zero(karras_sigmas(steps, sigma_min, sigma_max, rho))


def edm_sampler(
    denoiser: Denoiser,
    shape: Sequence[int],
    *,
    steps: int = 18,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    **kwargs,
) -> SampleResult:
    """EDM sampler (Euler or Heun, optional churn) for a denoiser of any interpolant:
    :func:`heun_sigmas` (which takes the other keyword arguments: interpolant, heun, churn,
    churn_tmin, churn_tmax, churn_noise, generator, noise, init_mean, device, dtype,
    return_trajectory) on :func:`edm_sigma_grid` (``steps`` levels from sigma_max to
    sigma_min with exponent rho, then 0)."""
    return heun_sigmas(denoiser, shape, edm_sigma_grid(steps, sigma_min, sigma_max, rho), **kwargs)


def _ve_denoiser(D: "_CountingDenoiser", interp: Interpolant) -> Callable[[torch.Tensor, float], torch.Tensor]:
    """(x~, sigma) -> D(a(t) x~, t) with t = t(sigma): any interpolant's denoiser in the
    variance-exploding coordinates x~ = x_t / a."""

    def denoise_ve(x_ve: torch.Tensor, sigma: float) -> torch.Tensor:
        t = float(interp.t_of_sigma(sigma))
        return D(float(interp.a(t)) * x_ve, t)

    return denoise_ve


def _start(sigmas: list[float], shape, noise, generator, device, dtype, init_mean) -> torch.Tensor:
    """x~ at sigmas[0]: sigma_0 e (+ init_mean)."""
    return _shift(sigmas[0] * _initial_noise(shape, noise, generator, device, dtype), init_mean, 1.0)


def heun_sigmas(
    denoiser: Denoiser,
    shape: Sequence[int],
    sigmas: Sequence[float],
    *,
    interpolant: Interpolant | None = None,
    heun: bool = True,
    churn: float = 0.0,
    churn_tmin: float = 0.0,
    churn_tmax: float = math.inf,
    churn_noise: float = 1.0,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
    init_mean: torch.Tensor | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    return_trajectory: bool = False,
) -> SampleResult:
    """Euler or Heun (Karras et al. 2022, Algorithms 1 and 2) on the probability-flow ODE
    dx~/dsigma = (x~ - D(x~, sigma)) / sigma of x~ = x_t / a, through the levels ``sigmas``
    (see :mod:`exactpost.core.schedules`), so it serves every interpolant.

    Step sigma -> sigma' with d = (x~ - D(x~, sigma)) / sigma: Euler x~' = x~ + (sigma' - sigma) d;
    Heun adds d' at the Euler point and uses (d + d') / 2, except on the step to sigma' = 0,
    which is always the Euler step x~' = D(x~, sigma) (so "Heun with an Euler last step" is this
    function with the schedule's last positive level where the denoised estimate is to be
    taken). NFE for K positive levels followed by 0: 2 K - 1 (Heun), K (Euler). A schedule
    that does not end with 0 returns x~ at its last level (the flow map, for tests).

    ``churn > 0`` (EDM's stochastic churn): before each step with sigma in [churn_tmin,
    churn_tmax], raise the noise to sigma^ = sigma (1 + gamma), gamma = min(churn / K,
    sqrt(2) - 1), by adding sqrt(sigma^^2 - sigma^2) * churn_noise * z, z ~ N(0, I) from
    ``generator``; then step from sigma^.
    """
    interp = interpolant if interpolant is not None else EDM()
    sig = check_sigmas(sigmas)
    if churn < 0:
        raise ValueError(f"churn must be >= 0, got {churn}")
    D = _CountingDenoiser(denoiser, return_trajectory)
    denoise_ve = _ve_denoiser(D, interp)
    x = _start(sig, shape, noise, generator, device, dtype, init_mean)
    levels = sum(1 for s in sig if s > 0)
    gamma = min(churn / levels, math.sqrt(2) - 1)
    for sigma, sigma_next in zip(sig[:-1], sig[1:]):
        if churn > 0 and churn_tmin <= sigma <= churn_tmax:
            sigma_hat = sigma * (1 + gamma)
            z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = x + math.sqrt(sigma_hat**2 - sigma**2) * churn_noise * z
            sigma = sigma_hat
        d = (x - denoise_ve(x, sigma)) / sigma
        x_next = x + (sigma_next - sigma) * d
        if heun and sigma_next > 0:
            d_next = (x_next - denoise_ve(x_next, sigma_next)) / sigma_next
            x_next = x + (sigma_next - sigma) * 0.5 * (d + d_next)
        x = x_next
    return D.result(x)


def dpmpp_2m(
    denoiser: Denoiser,
    shape: Sequence[int],
    sigmas: Sequence[float],
    *,
    interpolant: Interpolant | None = None,
    eta: float = 0.0,
    noise_scale: float = 1.0,
    second_order: bool = True,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
    init_mean: torch.Tensor | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    return_trajectory: bool = False,
) -> SampleResult:
    """DPM-Solver++(2M) (Lu et al. 2022) in sigma coordinates: the multistep exponential
    integrator of the probability-flow ODE of x~ = x_t / a in data prediction, one NFE per
    positive level of ``sigmas``.

    With lambda = -log sigma, h = log(sigma / sigma') and D_i = D(x~_i, sigma_i):

        x~' = (sigma' / sigma) x~ + (1 - sigma' / sigma) D',
        D'  = (1 + 1/(2 r)) D_i - 1/(2 r) D_{i-1},   r = h_{i-1} / h_i,

    D' = D_i on the first step and on the step to sigma' = 0 (x~' = D_i); ``second_order =
    False`` always uses D' = D_i (DPM-Solver++ 1, i.e. DDIM in sigma). The update is exact
    when D is constant in lambda over a step and the 2M correction is second order.

    ``eta > 0`` is the SDE variant (DPM-Solver++(2M) SDE, midpoint form): with
    e = exp(-eta h),

        x~' = (sigma' / sigma) e x~ + (1 - (sigma' / sigma) e) D'
              + sigma' sqrt(1 - e^2) noise_scale z,   z ~ N(0, I) from ``generator``,

    where the 2M correction of D' is (1/(2 r)) (D_i - D_{i-1}) as above (eta = 1: the
    ancestral limit of Song et al.'s reverse SDE). A schedule that does not end with 0 returns
    x~ at its last level.
    """
    interp = interpolant if interpolant is not None else EDM()
    sig = check_sigmas(sigmas)
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    D = _CountingDenoiser(denoiser, return_trajectory)
    denoise_ve = _ve_denoiser(D, interp)
    x = _start(sig, shape, noise, generator, device, dtype, init_mean)
    prev, h_prev = None, None
    for sigma, sigma_next in zip(sig[:-1], sig[1:]):
        den = denoise_ve(x, sigma)
        if sigma_next == 0:
            x = den
            break
        h = math.log(sigma / sigma_next)
        use = den
        if second_order and prev is not None:
            r = h_prev / h
            use = den + (den - prev) / (2 * r)
        decay = (sigma_next / sigma) * math.exp(-eta * h)
        x = decay * x + (1 - decay) * use
        if eta > 0:
            z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = x + sigma_next * math.sqrt(-math.expm1(-2 * eta * h)) * noise_scale * z
        prev, h_prev = den, h
    return D.result(x)


def edm_heun(denoiser: Denoiser, shape: Sequence[int], **kwargs) -> SampleResult:
    """EDM's 2nd-order Heun sampler (2 steps - 1 NFE); see :func:`edm_sampler`."""
    return edm_sampler(denoiser, shape, heun=True, **kwargs)


def edm_euler(denoiser: Denoiser, shape: Sequence[int], **kwargs) -> SampleResult:
    """EDM's 1st-order Euler sampler (1 NFE per step); see :func:`edm_sampler`."""
    return edm_sampler(denoiser, shape, heun=False, **kwargs)


def heun_steps_for_nfe(nfe: int) -> int:
    """Number of Heun steps whose NFE (2 N - 1) is closest to ``nfe`` without exceeding it
    (at least 1)."""
    return max(1, (int(nfe) + 1) // 2)


def _uniform_times(interp: Interpolant, steps: int, sigma_min: float, sigma_max: float) -> list[float]:
    """Uniform grid in t from t(sigma_max) to t(sigma_min) (``steps`` values), then 0."""
    _check_common(steps, sigma_min, sigma_max)
    t_hi, t_lo = float(interp.t_of_sigma(sigma_max)), float(interp.t_of_sigma(sigma_min))
    if steps == 1:
        return [t_hi, 0.0]
    return [t_hi + i / (steps - 1) * (t_lo - t_hi) for i in range(steps)] + [0.0]


def ddim(
    denoiser: Denoiser,
    shape: Sequence[int],
    *,
    interpolant: Interpolant | None = None,
    steps: int = 50,
    eta: float = 0.0,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
    init_mean: torch.Tensor | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    return_trajectory: bool = False,
) -> SampleResult:
    """DDIM with stochasticity ``eta`` in [0, 1] (0: deterministic; 1: ancestral DDPM),
    on a uniform time grid of ``steps`` evaluations (default interpolant: VPLinear). The
    last step returns the x0 estimate (t' = 0)."""
    interp = interpolant if interpolant is not None else VPLinear()
    if not (0.0 <= eta <= 1.0):
        raise ValueError(f"eta must be in [0, 1], got {eta}")
    times = _uniform_times(interp, steps, sigma_min, sigma_max)
    D = _CountingDenoiser(denoiser, return_trajectory)
    x = float(interp.s(times[0])) * _initial_noise(shape, noise, generator, device, dtype)
    x = _shift(x, init_mean, float(interp.a(times[0])))
    for t, t_next in zip(times[:-1], times[1:]):
        a, s = float(interp.a(t)), float(interp.s(t))
        x0 = D(x, t)
        if t_next == 0.0:
            x = x0
            break
        a_n, s_n = float(interp.a(t_next)), float(interp.s(t_next))
        sig, sig_n = s / a, s_n / a_n
        c = eta * a_n * sig_n * math.sqrt(max(0.0, 1 - (sig_n / sig) ** 2))
        e_hat = (x - a * x0) / s
        x = a_n * x0 + math.sqrt(max(0.0, s_n**2 - c**2)) * e_hat
        if c > 0:
            x = x + c * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return D.result(x)


def ddpm(denoiser: Denoiser, shape: Sequence[int], *, steps: int = 1000, **kwargs) -> SampleResult:
    """DDPM ancestral sampling: :func:`ddim` with eta = 1 (default 1000 steps)."""
    if "eta" in kwargs:
        raise ValueError("ddpm is ddim with eta = 1; call ddim to choose eta")
    return ddim(denoiser, shape, steps=steps, eta=1.0, **kwargs)


def flow_sampler(
    denoiser: Denoiser,
    shape: Sequence[int],
    *,
    interpolant: Interpolant | None = None,
    steps: int = 50,
    heun: bool = False,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
    init_mean: torch.Tensor | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    return_trajectory: bool = False,
) -> SampleResult:
    """Euler or Heun on the probability-flow ODE dx/dt = a'(t) x0_hat + s'(t) e_hat in the
    interpolant's time (default: rectified flow), uniform grid from t(sigma_max) to
    t(sigma_min) then 0. The last step (to t = 0) returns the x0 estimate, which is exactly
    the Euler step for rectified flow (a = 1 - t, s = t) and costs no second evaluation."""
    interp = interpolant if interpolant is not None else RectifiedFlow()
    times = _uniform_times(interp, steps, sigma_min, sigma_max)
    D = _CountingDenoiser(denoiser, return_trajectory)

    def velocity(x: torch.Tensor, x0: torch.Tensor, t: float) -> torch.Tensor:
        tt = torch.full((x.shape[0],), t, dtype=torch.float64, device=x.device)
        return interp.velocity(x, x0, tt)

    x = float(interp.s(times[0])) * _initial_noise(shape, noise, generator, device, dtype)
    x = _shift(x, init_mean, float(interp.a(times[0])))
    for t, t_next in zip(times[:-1], times[1:]):
        x0 = D(x, t)
        if t_next == 0.0:
            x = x0  # the Euler step to t = 0 (exactly this for rectified flow)
            break
        v = velocity(x, x0, t)
        x_next = x + (t_next - t) * v
        if heun:
            x_next = x + (t_next - t) * 0.5 * (v + velocity(x_next, D(x_next, t_next), t_next))
        x = x_next
    return D.result(x)


def flow_euler(denoiser: Denoiser, shape: Sequence[int], **kwargs) -> SampleResult:
    """Flow Euler (1 NFE per step); see :func:`flow_sampler`."""
    return flow_sampler(denoiser, shape, heun=False, **kwargs)


def flow_heun(denoiser: Denoiser, shape: Sequence[int], **kwargs) -> SampleResult:
    """Flow Heun (2 steps - 1 NFE); see :func:`flow_sampler`."""
    return flow_sampler(denoiser, shape, heun=True, **kwargs)
