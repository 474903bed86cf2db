"""The baseline registry: one interface for every zero-shot method.

    run_method(name, prior, op, y, sigma_y, shape=None, *, interpolant, nfe, generator, **settings)
        -> BaselineResult(x0, nfe, backward_passes, settings)

``prior`` is a plain denoiser D(x_t, t) -> x0_hat in ``interpolant``'s coordinates (t a [B]
tensor; differentiable with autograd for DPS and PiGDM); ``op`` a
:class:`~exactpost.operators.LinearOperator` (shared or per sample), ``y`` [B, *out_shape],
``sigma_y`` a float or [B] tensor (>= 0), ``shape`` (optional) [B, *op.in_shape]. ``nfe`` is
the network-evaluation budget (each method's default is its paper's; pass nfe=100 to compare
all at 100); the result reports the NFE actually used, a forward pass that is also
backpropagated counting as one NFE, and the backward passes separately. Randomness comes
only from ``generator``. ``settings`` override the method's documented defaults; unknown
names raise ValueError.

=================  ===========  ==========================================================
name               default NFE  reference (module)
=================  ===========  ==========================================================
``dps``            1000         Chung et al., ICLR 2023 (:mod:`.dps`)
``pigdm``          100          Song et al., ICLR 2023 (:mod:`.pigdm`)
``ddnm``           100          Wang et al., ICLR 2023, DDNM / DDNM+ (:mod:`.ddnm`)
``ddrm``           20           Kawar et al., NeurIPS 2022 (:mod:`.ddrm`)
``daps``           1000         Zhang et al., CVPR 2025 (:mod:`.daps`)
``mpgd``           100          He et al., ICLR 2024 (:mod:`.mpgd`)
``zero-shot-pivot`` 100         the EPS pivot with the prior alone (:mod:`.zero_shot`)
=================  ===========  ==========================================================

``eps`` and ``palette`` are not here: they need trained conditional networks, and
:meth:`exactpost.Model.restore` runs them beside these methods.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch

import importlib

from ._common import BaselineResult

# the package re-exports the functions under the module names, so fetch the modules themselves
_dps, _pigdm, _ddnm, _ddrm, _daps, _mpgd, _zs = (
    importlib.import_module(f"{__package__}.{m}")
    for m in ("dps", "pigdm", "ddnm", "ddrm", "daps", "mpgd", "zero_shot"))

@dataclass(frozen=True)
class MethodSpec:
    """A registered method: its function, default settings, default NFE, the interpolants it
    supports, whether it backpropagates through the network, and per-task reference settings
    (task id of :mod:`exactpost.core.tasks` -> settings) where the paper gives them."""

    name: str
    fn: Callable[..., BaselineResult]
    defaults: Mapping[str, Any]
    default_nfe: int
    interpolants: tuple[str, ...]
    uses_backprop: bool
    needs_svd: bool
    description: str
    task_defaults: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


METHODS: dict[str, MethodSpec] = {}


def register_method(spec: MethodSpec, *, replace: bool = False) -> None:
    """Add a method to :data:`METHODS` (ValueError if the name is taken, unless replace)."""
    if spec.name in METHODS and not replace:
        raise ValueError(f"method {spec.name!r} is already registered")
    METHODS[spec.name] = spec


for _spec in (
    MethodSpec("dps", _dps.dps, _dps.DEFAULTS, _dps.DEFAULT_NFE, _dps.INTERPOLANTS, True, False,
               "DPS: DDPM ancestral steps + zeta/||r|| grad ||y - A x0_hat||^2 through the network",
               {k: {"zeta": v} for k, v in _dps.TASK_ZETA.items()}),
    MethodSpec("pigdm", _pigdm.pigdm, _pigdm.DEFAULTS, _pigdm.DEFAULT_NFE, _pigdm.INTERPOLANTS, True,
               False, "PiGDM: DDIM + VJP of A^T (r^2 A A^T + sigma_y^2 I)^-1 (y - A x0_hat)"),
    MethodSpec("ddnm", _ddnm.ddnm, _ddnm.DEFAULTS, _ddnm.DEFAULT_NFE, _ddnm.INTERPOLANTS, False,
               False, "DDNM / DDNM+: range-null space correction of x0_hat (DDNM+ needs the SVD "
               "when sigma_y > 0)"),
    MethodSpec("ddrm", _ddrm.ddrm, _ddrm.DEFAULTS, _ddrm.DEFAULT_NFE, _ddrm.INTERPOLANTS, False, True,
               "DDRM: spectral-space DDIM with the measurement (operators with a known SVD)"),
    MethodSpec("daps", _daps.daps, _daps.DEFAULTS, _daps.DEFAULT_NFE, _daps.INTERPOLANTS, False,
               False, "DAPS: annealing, inner PF-ODE for x0_hat, Langevin (or exact Gaussian) x0 | y"),
    MethodSpec("mpgd", _mpgd.mpgd, _mpgd.DEFAULTS, _mpgd.DEFAULT_NFE, _mpgd.INTERPOLANTS, False,
               False, "MPGD: DDIM + gradient step on x0_hat without backpropagation"),
    MethodSpec("zero-shot-pivot", _zs.zero_shot_pivot, _zs.DEFAULTS, _zs.DEFAULT_NFE,
               _zs.INTERPOLANTS, False, False, "the prior queried at the EPS pivot, EDM Heun"),
):
    register_method(_spec)


def get_method(name: str) -> MethodSpec:
    """The :class:`MethodSpec` of ``name``."""
    if name in METHODS:
        return METHODS[name]
    raise ValueError(f"unknown method {name!r}; registered: {', '.join(METHODS)}")


def run_method(name: str, prior, op, y: torch.Tensor, sigma_y, shape=None, *, interpolant=None,
               nfe: int | None = None, generator: torch.Generator | None = None,
               task: str | None = None, **settings) -> BaselineResult:
    """Run the registered method ``name`` (module docstring). ``task`` (optional) first applies
    the method's per-task reference settings, which explicit ``settings`` override."""
    spec = get_method(name)
    unknown = sorted(set(settings) - set(spec.defaults) - {"dtype"})
    if unknown:
        raise ValueError(f"{name} has no setting(s) {', '.join(unknown)}; its settings are "
                         f"{', '.join(sorted(spec.defaults))}")
    merged = dict(spec.task_defaults.get(task, {})) if task is not None else {}
    merged.update(settings)
    return spec.fn(prior, op, y, sigma_y, shape, interpolant=interpolant, nfe=nfe,
                   generator=generator, **merged)
