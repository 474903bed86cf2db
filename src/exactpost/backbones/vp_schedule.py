"""A diffusers model's own discrete VP (DDPM) noise schedule, seen in exactpost's sigma.

A DDPM-style model was trained on x_k = sqrt(abar_k) x0 + sqrt(1 - abar_k) e at integer
timesteps k = 0 .. T-1. Dividing by sqrt(abar_k) gives exactpost's variance-exploding form
x~ = x0 + sigma_k e with

    sigma_k = sqrt((1 - abar_k) / abar_k),      increasing in k.

The network is queried at any sigma > 0 with the timestep found from sigma by linear
interpolation of log sigma_k between neighbouring integers (as diffusers' Euler schedulers
do), clamped to [0, T-1]:

    t(sigma) = k + (log sigma - log sigma_k) / (log sigma_{k+1} - log sigma_k),

so t(sigma_k) = k exactly. Outside [sigma_0, sigma_{T-1}] the network sees the end timestep,
while the conversion of its output to x0 stays exact at the true sigma (see
:mod:`exactpost.backbones.diffusers_unet`).

Only schedulers of the DDPM family (discrete VP betas, one integer timestep per noise level)
are accepted: flow-matching, EDM, variance-exploding (score SDE) and consistency
schedulers get a one-line error naming the ones that work.
"""

from __future__ import annotations

import bisect
import math
from typing import Any, Mapping

import torch

from .layout import BackboneError

#: scheduler classes whose training schedule is a discrete DDPM-style VP schedule
VP_SCHEDULERS = (
    "DDPMScheduler", "DDIMScheduler", "PNDMScheduler", "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler",
    "DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler", "UniPCMultistepScheduler", "DEISMultistepScheduler",
    "HeunDiscreteScheduler", "LMSDiscreteScheduler", "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler",
    "DDPMParallelScheduler", "DDIMParallelScheduler", "SASolverScheduler",
)
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
#: smallest abar kept (diffusers' choice for zero-terminal-SNR schedules: sigma stays finite)
MIN_ALPHA_BAR = 2.0**-24


def check_scheduler_config(config: Mapping[str, Any], where: str = "the scheduler config") -> str:
    """The prediction type of a DDPM-style scheduler config; BackboneError (one line) for a
    scheduler that is not a discrete VP schedule or an unknown prediction type."""
    cls = str(config.get("_class_name", "?"))
    if cls not in VP_SCHEDULERS:
        raise BackboneError(f"{where} is a {cls}, not a DDPM-style discrete VP schedule; exactpost wraps models trained "
                            f"with one of {', '.join(VP_SCHEDULERS[:6])}, ...")
    if config.get("timestep_type", "discrete") != "discrete":
        raise BackboneError(f"{where} uses continuous (EDM-style) timesteps; exactpost needs discrete DDPM timesteps")
    if config.get("trained_betas") is None and config.get("beta_schedule") is None:
        raise BackboneError(f"{where} has neither beta_schedule nor trained_betas")
    pred = str(config.get("prediction_type", "epsilon"))
    if pred not in PREDICTION_TYPES:
        raise BackboneError(f"{where} has prediction_type {pred!r}; exactpost wraps {', '.join(PREDICTION_TYPES)}")
    return pred


class VPSchedule:
    """The sigma table of a discrete VP schedule and the sigma <-> timestep maps.

    Args:
        alphas_cumprod: [T] abar_k (decreasing, in (0, 1]); values below 2^-24 are raised to
            it (zero terminal SNR would make sigma infinite).
    """

    def __init__(self, alphas_cumprod: torch.Tensor):
        abar = torch.as_tensor(alphas_cumprod, dtype=torch.float64).flatten().clamp(min=MIN_ALPHA_BAR)
        if abar.numel() < 2 or bool((abar > 1).any()):
            raise BackboneError("the schedule needs at least two alphas_cumprod values in (0, 1]")
        sig = ((1 - abar) / abar).sqrt()
        if bool((sig[0] <= 0)) or bool((sig[1:] <= sig[:-1]).any()):
            raise BackboneError("alphas_cumprod must be strictly decreasing and below 1 (a VP schedule)")
        self.alphas_cumprod = abar
        #: [T] sigma_k, increasing
        self.sigmas = sig
        self._log = sig.log()
        self._log_list = self._log.tolist()  # the same table as Python floats (timestep_float)

    @property
    def num_train_timesteps(self) -> int:
        return int(self.sigmas.numel())

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """t(sigma) (module docstring), float64 of sigma's shape, in [0, T-1]; sigma > 0."""
        ls = torch.as_tensor(sigma, dtype=torch.float64).log()
        k = torch.searchsorted(self._log, ls.flatten(), right=True).clamp(1, self.num_train_timesteps - 1) - 1
        lo, hi = self._log[k], self._log[k + 1]
        t = k.to(torch.float64) + (ls.flatten() - lo) / (hi - lo)
        return t.clamp(0, self.num_train_timesteps - 1).reshape(ls.shape)

    def timestep_float(self, sigma: float) -> float:
        """t(sigma) for one sigma > 0 in Python floats (the same formula as :meth:`timestep`,
        without tensor operations: a sampler step queries one noise level for the whole batch)."""
        ls, table, n = math.log(sigma), self._log_list, len(self._log_list)
        k = min(max(bisect.bisect_right(table, ls), 1), n - 1) - 1
        t = k + (ls - table[k]) / (table[k + 1] - table[k])
        return min(max(t, 0.0), float(n - 1))

    def sigma_of_timestep(self, t: torch.Tensor) -> torch.Tensor:
        """The inverse map on [0, T-1]: log sigma linear between integer timesteps (float64)."""
        tt = torch.as_tensor(t, dtype=torch.float64).clamp(0, self.num_train_timesteps - 1)
        k = tt.floor().long().clamp(max=self.num_train_timesteps - 2)
        w = tt - k
        return ((1 - w) * self._log[k] + w * self._log[k + 1]).exp()

    def __repr__(self) -> str:
        return f"VPSchedule(T={self.num_train_timesteps}, sigma {self.sigma_min:.4g} .. {self.sigma_max:.4g})"
