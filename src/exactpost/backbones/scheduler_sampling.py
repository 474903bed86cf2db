"""Drive a diffusers scheduler with any exactpost denoiser (e.g. the EPS posterior denoiser).

exactpost's denoisers return x0_hat = D(x_t, t) in an exactpost interpolant
(x_t = a(t) x0 + s(t) e). A diffusers scheduler works on its own sample at its own timesteps;
at each step, after ``scale_model_input``, the model input is in the DDPM scale
x_vp = (x0 + sigma e) / sqrt(1 + sigma^2), where sigma is the sample's noise level:
``scheduler.sigmas[i]`` for the sigma-based schedulers (Euler, DPM-Solver, UniPC) and
sqrt((1 - abar_t) / abar_t) at the integer timestep t for DDPM / DDIM. So one step is

    x~  = sqrt(1 + sigma^2) x_vp                  (= x0 + sigma e)
    tau = interpolant.t_of_sigma(sigma)
    x0_hat = D(a(tau) x~, tau)                    (the denoiser in place of the network)
    sample = scheduler.step(x0_hat, t, sample)    (a copy with prediction_type="sample")

Handing the scheduler x0_hat itself (``prediction_type="sample"``) avoids any conversion;
EulerAncestral, which has no sample prediction, gets e_hat = (x~ - x0_hat) / sigma with
``prediction_type="epsilon"`` (its own x0 = x~ - sigma e_hat recovers x0_hat).
The scheduler is copied, never modified; a learned-variance DDPM scheduler is driven with
``variance_type="fixed_small"`` (the variance half of a network is not used). Schedulers
driven and tested: DDPM, DDIM (``eta`` through ``step_kwargs``), EulerDiscrete,
EulerAncestralDiscrete, DPMSolverMultistep, UniPCMultistep.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import math
import weakref
from typing import Any, Mapping, Optional, Sequence

import torch

from ..core.interpolants import EDM, Denoiser, Interpolant
from ..core.samplers import SampleResult, _CountingDenoiser, _initial_noise
from .layout import BackboneError

#: schedulers this module drives (each tested against an exact posterior)
DRIVABLE = ("DDPMScheduler", "DDIMScheduler", "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler",
            "DPMSolverMultistepScheduler", "UniPCMultistepScheduler")
#: the ones without ``prediction_type="sample"``: handed e_hat = (x~ - x0_hat) / sigma instead
EPSILON_ONLY = ("EulerAncestralDiscreteScheduler",)


def make_scheduler(name: str, config: Mapping[str, Any], **overrides: Any) -> Any:
    """A diffusers scheduler ``name`` (one of :data:`DRIVABLE`) built from another scheduler's
    config (its betas and prediction type), with ``overrides``."""
    from .diffusers_unet import import_diffusers

    if name not in DRIVABLE:
        raise BackboneError(f"scheduler {name!r} is not one exactpost drives; choose one of {', '.join(DRIVABLE)}")
    return getattr(import_diffusers(), name).from_config(dict(config), **overrides)


#: scheduler -> (its config object, the driving template built from it): from_config costs
#: ~1.2-1.7 ms (diffusers inspects signatures), a deep copy of the template ~0.25 ms
_TEMPLATES: "weakref.WeakKeyDictionary[Any, tuple[Any, Any]]" = weakref.WeakKeyDictionary()


def _driving_copy(scheduler: Any) -> Any:
    """A fresh copy of ``scheduler`` set up to be driven (module docstring): a deep copy of a
    template built once per scheduler object and config (the caller's is never modified)."""
    try:
        cached = _TEMPLATES.get(scheduler)
    except TypeError:  # not weak-referenceable
        cached = None
    if cached is not None and cached[0] is scheduler.config:
        return copy.deepcopy(cached[1])
    template = _build_driving(scheduler)
    with contextlib.suppress(TypeError):
        _TEMPLATES[scheduler] = (scheduler.config, template)
    return copy.deepcopy(template)


def _build_driving(scheduler: Any) -> Any:
    name = type(scheduler).__name__
    if name not in DRIVABLE:
        raise BackboneError(f"scheduler {name} is not one exactpost drives; choose one of {', '.join(DRIVABLE)}")
    overrides: dict[str, Any] = {"prediction_type": "epsilon" if name in EPSILON_ONLY else "sample"}
    if str(scheduler.config.get("variance_type", "")).startswith("learned"):
        overrides["variance_type"] = "fixed_small"
    return type(scheduler).from_config(scheduler.config, **overrides)


def _noise_level(sched: Any, i: int, t: torch.Tensor, table: Optional[list[float]] = None) -> float:
    """sigma of the sample at step i / timestep t (module docstring). ``table``: the
    scheduler's ``sigmas`` (or ``alphas_cumprod``) as Python floats (:func:`_level_table`),
    read instead of indexing the tensor (the same values)."""
    sigmas = getattr(sched, "sigmas", None)
    if sigmas is not None:
        idx = sched.step_index if getattr(sched, "step_index", None) is not None else i
        return table[idx] if table is not None else float(sigmas[idx])
    abar = table[int(t)] if table is not None else float(sched.alphas_cumprod[int(t)])
    return math.sqrt((1.0 - abar) / abar)


def _level_table(sched: Any) -> list[float]:
    """What :func:`_noise_level` reads, as Python floats, once per run (after
    ``set_timesteps``; neither table changes during the steps)."""
    sigmas = getattr(sched, "sigmas", None)
    return (sigmas if sigmas is not None else sched.alphas_cumprod).tolist()


def scheduler_sample(denoiser: Denoiser, scheduler: Any, shape: Sequence[int], *, steps: int = 50,
                     interpolant: Optional[Interpolant] = None, generator: Optional[torch.Generator] = None,
                     noise: Optional[torch.Tensor] = None, device: torch.device | str | None = None,
                     dtype: torch.dtype = torch.float32, step_kwargs: Optional[Mapping[str, Any]] = None,
                     return_trajectory: bool = False) -> SampleResult:
    """Samples [*shape] from ``steps`` steps of the diffusers ``scheduler`` (one of
    :data:`DRIVABLE`; any DDPM-style config) with ``denoiser`` D(x_t, t) in ``interpolant``'s
    coordinates (default EDM, like :mod:`exactpost.core.samplers`) in place of the network.

    One denoiser call per scheduler timestep (NFE = steps for every listed scheduler).
    Randomness (initial noise, DDPM/ancestral noise) comes from ``generator`` only.
    ``step_kwargs`` go to ``scheduler.step`` (e.g. ``{"eta": 1.0}`` for DDIM)."""
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps}")
    interp = interpolant if interpolant is not None else EDM()
    sched = _driving_copy(scheduler)
    sched.set_timesteps(int(steps), device=device)
    kwargs = dict(step_kwargs or {})
    if "generator" in inspect.signature(sched.step).parameters:
        kwargs["generator"] = generator
    D = _CountingDenoiser(denoiser, return_trajectory)
    sample = _initial_noise(shape, noise, generator, device, dtype) * float(sched.init_noise_sigma)
    table, x0_out = _level_table(sched), sched.config.prediction_type == "sample"
    for i, t in enumerate(sched.timesteps):
        model_input = sched.scale_model_input(sample, t)
        sigma = _noise_level(sched, i, t, table)
        tau = float(interp.t_of_sigma(sigma))
        a = float(interp.a(tau))
        x_t = (a * math.sqrt(1.0 + sigma**2)) * model_input
        x0 = D(x_t.to(dtype), tau)
        out = x0 if x0_out else (x_t / a - x0) / sigma
        sample = sched.step(out, t, sample, return_dict=False, **kwargs)[0].to(dtype)
    return D.result(sample)
