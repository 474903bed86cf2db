"""Posterior restoration with a trained network: the 1-NFE posterior mean, posterior
samples and the per-pixel posterior standard deviation, for EPS and for Palette.

EPS (the default): the network was trained to denoise the pivot mu* (see
:mod:`exactpost.core.posterior`), so ``EPSPosteriorDenoiser`` is a plain denoiser of
p(x_t | y) and any sampler of the backbone samples the posterior.

- posterior mean: one call at sigma_max (1 NFE): D~(s(T) e, T) -> E[x0 | y];
- samples: a sampler of :mod:`exactpost.core.sampler_spec` on the posterior denoiser (default
  :data:`~exactpost.core.sampler_spec.DEFAULT`, DPM-Solver++(2M) on a log-linear schedule down
  to sigma 0.03, one evaluation per level, chosen on the Gaussian-mixture oracle; ``"legacy"``
  is EDM Heun, rho 7, 2 N - 1 evaluations for N levels), started at sigma_max from
  N(mean, sigma_max^2 I) (the exact start), with ``nfe - 1`` evaluations so that, counting
  the shared mean, each sample costs ``nfe`` network evaluations;
- std: the per-pixel standard deviation over the samples (unbiased, M - 1).

Palette (the trained baseline): the network denoises x_t given [A^T y, certainty];
samples come from EDM Heun (the legacy sampler, unless another spec is given) from pure
noise with ``nfe`` evaluations, and its "mean" is
the network's single call at sigma_max (Palette's regression to E[x0 | y]).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch

from ..core.interpolants import EDM
from ..operators.base import LinearOperator
from ..core.posterior import EPSPosteriorDenoiser
from ..nets.precond import as_eps_network
from ..core.sampler_spec import DEFAULT, LEGACY, SamplerSpec, parse_spec, with_start
from ..core.conditioning import build_conditioning, card_task_index

SIGMA_MAX = 80.0


@dataclass
class Restoration:
    """What a restoration returns (images in [-1, 1]).

    mean [B, C, H, W]; samples [M, B, C, H, W]; std [B, C, H, W] (per pixel over the M
    samples); ``nfe_mean`` network evaluations for the mean, ``nfe_sample`` per sample
    (including a shared start such as the mean); ``seconds`` of wall time in total."""

    mean: torch.Tensor
    samples: torch.Tensor
    std: torch.Tensor
    nfe_mean: int
    nfe_sample: int
    seconds: float
    method: str
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def nfe(self) -> int:
        """Network evaluations per sample (the shared mean included, as in ``nfe_sample``)."""
        return self.nfe_sample


def _card_objective(card: dict) -> dict:
    obj = card.get("objective")
    if not isinstance(obj, dict) or "kind" not in obj:
        raise ValueError("the model card has no 'objective' entry; it was not written by exactpost's training loop")
    return obj


def _embeddings(net: torch.nn.Module, card: dict, task: str, sigma_y: float, batch: int
                ) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    cfg = net.config
    tid = torch.full((batch,), card_task_index(_card_objective(card), task), dtype=torch.long) if cfg.num_tasks else None
    syv = torch.full((batch,), float(sigma_y)) if cfg.sigma_y_embedding else None
    return tid, syv


def _stats(samples: torch.Tensor) -> torch.Tensor:
    """Per-pixel std over samples [M, B, ...] (zeros when M < 2)."""
    return samples.std(0, unbiased=True) if samples.shape[0] > 1 else torch.zeros(samples.shape[1:])


def _draw(den: Callable[[torch.Tensor, Any], torch.Tensor], like: torch.Tensor, n_samples: int, spec: SamplerSpec,
          budget: int, sigma_max: float, generator: Optional[torch.Generator], init_mean: Optional[torch.Tensor],
          on_sample: Optional[Callable[[int], None]]) -> tuple[torch.Tensor, int]:
    """``n_samples`` runs of the sampler ``spec`` with at most ``budget`` evaluations of
    ``den``, shaped like ``like`` [B, ...]: samples [M, B, ...] and the NFE of one run (0 when
    M = 0)."""
    draws, nfe = [], 0
    for i in range(n_samples):
        out = spec.run(den, tuple(like.shape), budget, sigma_max, generator=generator, init_mean=init_mean,
                       dtype=like.dtype)
        draws.append(out.x0)
        nfe = out.nfe
        if on_sample is not None:
            on_sample(i)
    return (torch.stack(draws) if draws else like.new_zeros((0,) + tuple(like.shape))), nfe


def _prepare(net: torch.nn.Module, card: dict, kind: str, op: LinearOperator, y: torch.Tensor, sigma_y: float,
             task: str, n_samples: int, nfe: int, minimum_nfe: int
             ) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor], Optional[torch.Tensor]]:
    """Check the request and the card's kind; the task/sigma_y embeddings and the
    conditioning channels computed once per measurement."""
    obj = _card_objective(card)
    if obj["kind"] != kind:
        name = {"eps": "an EPS", "palette": "a Palette"}[kind]
        raise ValueError(f"this is a {obj['kind']} model; this restoration needs {name} network")
    if n_samples < 0:
        raise ValueError(f"the number of samples must be >= 0, got {n_samples}")
    if nfe < minimum_nfe:
        raise ValueError(f"nfe must be >= {minimum_nfe}, got {nfe}")
    tid, syv = _embeddings(net, card, task, sigma_y, y.shape[0])
    return tid, syv, build_conditioning(obj["conditioning"], op, y, sigma_y)


@torch.no_grad()
def eps_restore(net: torch.nn.Module, card: dict, op: LinearOperator, y: torch.Tensor, sigma_y: float, task: str,
                *, n_samples: int = 4, nfe: int = 20, generator: Optional[torch.Generator] = None,
                sigma_max: float = SIGMA_MAX, on_sample: Optional[Callable[[int], None]] = None,
                sigma_start: Optional[float] = None, sampler: str | SamplerSpec | None = None) -> Restoration:
    """EPS posterior mean (1 NFE) and ``n_samples`` posterior samples of ``nfe`` NFE each.

    ``net`` is an EPS :class:`~exactpost.nets.EDMPrecond` and ``card`` its model card (for
    the task list and conditioning); y [B, *op.out_shape]. ``on_sample(i)`` is called after
    each sample (progress).

    ``sigma_start`` (warm start, the paper's ablation): begin the sampler at this lower
    noise level from x = mean + sigma_start * e (e ~ N(0, I)) and integrate from
    sigma_start only, so the same ``nfe`` buys finer steps. Exact only at sigma_start =
    sigma_max (there p(x_t | y) ~ N(mean, sigma_max^2 I)); below, p(x_t | y) is not Gaussian
    around the mean and the start is an approximation whose cost is measured by
    ``benchmarks/ablations.py``.

    ``sampler``: a :class:`~exactpost.core.sampler_spec.SamplerSpec` or its text form (None: the
    measured default :data:`~exactpost.core.sampler_spec.DEFAULT`; ``"legacy"``: EDM Heun, rho 7,
    as before issue 21); it gets ``nfe - 1`` evaluations."""
    t0 = time.perf_counter()
    tid, syv, cond = _prepare(net, card, "eps", op, y, sigma_y, task, n_samples, nfe, minimum_nfe=2)
    start = sigma_max if sigma_start is None else float(sigma_start)
    if not 0 < start <= sigma_max:
        raise ValueError(f"sigma_start must be in (0, sigma_max = {sigma_max}], got {sigma_start}")

    network = as_eps_network(net, tid, syv, op=op, op_sigma_y=sigma_y)
    den = EPSPosteriorDenoiser(network, op, y, sigma_y, EDM(), cond=cond)
    mean = den.posterior_mean(sigma_max, generator, y.dtype)
    spec = parse_spec(sampler) if sampler is not None else DEFAULT
    if sigma_start is not None:
        spec = with_start(spec, start)
    samples, nfe_sample = _draw(den, mean, n_samples, spec, nfe - 1, sigma_max, generator, mean, on_sample)
    start = min(spec.start or sigma_max, sigma_max)
    return Restoration(mean, samples, _stats(samples), 1, nfe_sample + 1 if n_samples else 0,
                       time.perf_counter() - t0, "eps",
                       dict(_sampler_settings(spec, nfe - 1), sigma_max=sigma_max, sigma_start=start,
                            start="posterior mean"))


@torch.no_grad()
def palette_restore(net: torch.nn.Module, card: dict, op: LinearOperator, y: torch.Tensor, sigma_y: float, task: str,
                    *, n_samples: int = 4, nfe: int = 100, generator: Optional[torch.Generator] = None,
                    sigma_max: float = SIGMA_MAX, on_sample: Optional[Callable[[int], None]] = None,
                    sampler: str | SamplerSpec | None = None) -> Restoration:
    """Palette: one call at sigma_max as the mean, and ``n_samples`` samples from pure noise
    with ``nfe`` NFE each (the conditional network as a plain denoiser), by ``sampler`` (None:
    EDM Heun, rho 7, :data:`~exactpost.core.sampler_spec.LEGACY`; the EPS default was chosen for
    EPS and is not measured for Palette)."""
    t0 = time.perf_counter()
    tid, syv, cond = _prepare(net, card, "palette", op, y, sigma_y, task, n_samples, nfe, minimum_nfe=1)

    def den(x_t: torch.Tensor, t: Any) -> torch.Tensor:  # EDM: a = 1, sigma = t
        return net(x_t, t, cond=cond, task_id=tid, sigma_y=syv)

    shape = (y.shape[0],) + tuple(op.in_shape)
    e = torch.randn(shape, generator=generator, dtype=y.dtype)
    mean = den(sigma_max * e, sigma_max)
    spec = parse_spec(sampler) if sampler is not None else LEGACY
    samples, nfe_sample = _draw(den, mean, n_samples, spec, nfe, sigma_max, generator, None, on_sample)
    return Restoration(mean, samples, _stats(samples), 1, nfe_sample, time.perf_counter() - t0, "palette",
                       dict(_sampler_settings(spec, nfe), sigma_max=sigma_max, start="noise"))


def _sampler_settings(spec: SamplerSpec, budget: int) -> dict[str, Any]:
    """What a Restoration records about its sampler: the spec's text form and its number of
    positive noise levels at ``budget`` (for Heun also ``heun_steps``, as before)."""
    levels = spec.levels_for_nfe(budget)
    out: dict[str, Any] = dict(sampler=spec.name, levels=levels)
    if spec.solver == "heun":
        out["heun_steps"] = levels
    return out
