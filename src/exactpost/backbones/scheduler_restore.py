"""Restoration with a diffusers model's own scheduler (``exactpost restore --scheduler NAME``).

:func:`scheduler_restore` is :func:`exactpost.inference.restoration.eps_restore` /
:func:`~exactpost.inference.restoration.palette_restore` with a diffusers scheduler
(:func:`~exactpost.backbones.scheduler_sampling.scheduler_sample`) in place of exactpost's
sampler; the posterior mean and the conditioning are the same:

* EPS: the posterior mean is one call of the EPS posterior denoiser at sigma_max = 80
  (1 NFE, as in ``eps_restore``); each sample is ``nfe - 1`` steps of the scheduler driven
  by the EPS posterior denoiser (one network evaluation a step), from the scheduler's own
  start (pure noise at its largest noise level, ``init_noise_sigma``), so a sample costs
  ``nfe`` NFE counting the shared mean. At the start level of a DDPM schedule (sigma ~ 157
  for the linear betas of 1000 steps) the exact start N(mean, sigma^2 I) and pure noise
  differ by mean / sigma, well below the sampler's own error (measured on a Gaussian prior:
  ``tests/test_scheduler_sampling.py``).
* Palette: the mean is the network's single call at sigma_max (as in ``palette_restore``);
  each sample is ``nfe`` scheduler steps of the conditional network as a plain denoiser.

The conditioning channels (A^T y, the certainty map, x_reg) and the task id are built once
per measurement, before the steps (:func:`exactpost.inference.restoration._prepare`).

Scheduler names (:data:`SCHEDULER_NAMES`, case-insensitive; a diffusers class name of
:data:`~exactpost.backbones.scheduler_sampling.DRIVABLE` works too): ``own`` (the class the
folder's ``scheduler_config.json`` names), ``ddpm``, ``ddim``, ``euler``, ``euler-ancestral``,
``dpmsolver`` and ``unipc``, each built from the folder's scheduler config (the model's betas).
This module imports diffusers only when a scheduler is built.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

import torch

from ..core.interpolants import EDM
from ..operators.base import LinearOperator
from ..core.posterior import EPSPosteriorDenoiser
from ..nets.precond import as_eps_network
from ..inference.restoration import SIGMA_MAX, Restoration, _prepare, _stats
from .layout import BackboneError, read_json, resolve_folder
from .scheduler_sampling import DRIVABLE, make_scheduler, scheduler_sample

#: the short names ``--scheduler`` takes (``own``: the folder's own scheduler class)
SCHEDULER_NAMES = {
    "own": None, "ddpm": "DDPMScheduler", "ddim": "DDIMScheduler", "euler": "EulerDiscreteScheduler",
    "euler-ancestral": "EulerAncestralDiscreteScheduler", "dpmsolver": "DPMSolverMultistepScheduler",
    "unipc": "UniPCMultistepScheduler",
}


def scheduler_choices() -> str:
    """The accepted names, for help texts and errors."""
    return ", ".join(SCHEDULER_NAMES)


def check_scheduler_name(name: str) -> str:
    """The canonical name of ``name`` (a key of :data:`SCHEDULER_NAMES`, or a class name of
    :data:`DRIVABLE`); BackboneError (one line) otherwise. Pure Python: no diffusers import."""
    key = str(name).strip().lower().replace("_", "-")
    if key in SCHEDULER_NAMES:
        return key
    for cls in DRIVABLE:
        if str(name).strip() == cls:
            return cls
    raise BackboneError(f"unknown scheduler {name!r}; choose one of {scheduler_choices()} (or a diffusers class name: "
                        f"{', '.join(DRIVABLE)})")


def load_scheduler(folder: str | Path, name: str) -> Any:
    """The diffusers scheduler ``name`` (:func:`check_scheduler_name`) built from the
    scheduler config of the diffusers folder ``folder`` (either layout)."""
    key = check_scheduler_name(name)
    lay = resolve_folder(folder)
    config = read_json(lay.scheduler_config, "scheduler config")
    cls = SCHEDULER_NAMES.get(key, key)
    if cls is None:  # own
        cls = str(config.get("_class_name"))
        if cls not in DRIVABLE:
            raise BackboneError(f"the model's own scheduler {cls} is not one exactpost drives; pass --scheduler with "
                                f"one of {', '.join(k for k in SCHEDULER_NAMES if k != 'own')}")
    return make_scheduler(cls, config)


@torch.no_grad()
def scheduler_restore(method: str, net: torch.nn.Module, card: dict, scheduler: Any, op: LinearOperator,
                      y: torch.Tensor, sigma_y: float, task: str, *, n_samples: int = 4, nfe: int = 20,
                      generator: Optional[torch.Generator] = None, sigma_max: float = SIGMA_MAX) -> Restoration:
    """Mean, ``n_samples`` samples [M, B, C, H, W] and std of ``method`` (``eps`` or
    ``palette``) on a diffusers backbone ``net`` with ``card``, sampled by the diffusers
    ``scheduler`` (module docstring); y [B, *op.out_shape]. ``nfe`` network evaluations per
    sample (EPS: the shared mean + ``nfe - 1`` steps; Palette: ``nfe`` steps)."""
    if method not in ("eps", "palette"):
        raise ValueError(f"{method} has its own sampler; a diffusers scheduler drives eps and palette only")
    t0 = time.perf_counter()
    minimum = 2 if method == "eps" else 1
    tid, syv, cond = _prepare(net, card, method, op, y, sigma_y, task, n_samples, nfe, minimum_nfe=minimum)
    shape = (y.shape[0],) + tuple(op.in_shape)
    if method == "eps":
        network = as_eps_network(net, tid, syv, op=op, op_sigma_y=sigma_y)
        den: Any = EPSPosteriorDenoiser(network, op, y, sigma_y, EDM(), cond=cond)
        mean = den.posterior_mean(sigma_max, generator, y.dtype)
        steps, start = nfe - 1, "scheduler noise"
    else:
        def den(x_t: torch.Tensor, t: Any) -> torch.Tensor:  # EDM: a = 1, sigma = t
            return net(x_t, t, cond=cond, task_id=tid, sigma_y=syv)

        e = torch.randn(shape, generator=generator, dtype=y.dtype)
        mean = den(sigma_max * e, sigma_max)
        steps, start = nfe, "scheduler noise"
    draws, nfe_run = [], 0
    for _ in range(n_samples):
        out = scheduler_sample(den, scheduler, shape, steps=steps, generator=generator, dtype=y.dtype)
        draws.append(out.x0)
        nfe_run = out.nfe
    samples = torch.stack(draws) if draws else mean.new_zeros((0,) + tuple(mean.shape))
    nfe_sample = (nfe_run + 1 if method == "eps" else nfe_run) if n_samples else 0
    name = type(scheduler).__name__
    settings = dict(sampler=f"diffusers:{name}", scheduler=name, steps=steps, sigma_max=sigma_max, start=start,
                    timestep_spacing=scheduler.config.get("timestep_spacing"))
    return Restoration(mean, samples, _stats(samples), 1, nfe_sample, time.perf_counter() - t0, method, settings)
