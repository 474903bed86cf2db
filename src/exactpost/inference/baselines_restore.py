"""Zero-shot baselines (:mod:`exactpost.baselines`) as restorations of the prior network:
``n_samples`` independent runs of the method; the reported mean is the samples' average
(these methods have no 1-NFE posterior mean, so ``nfe_mean`` is 0: it costs nothing beyond
the samples) and the std the per-pixel spread of the samples."""

from __future__ import annotations

import time
from typing import Optional

import torch

from ..baselines import get_method, run_method
from ..core.interpolants import EDM
from ..nets.precond import as_denoiser
from ..operators.base import LinearOperator
from .restoration import Restoration


def baseline_restore(method: str, prior_net: torch.nn.Module, op: LinearOperator, y: torch.Tensor, sigma_y: float,
                     *, n_samples: int = 4, nfe: int = 100, generator: Optional[torch.Generator] = None,
                     task: Optional[str] = None, settings: Optional[dict] = None) -> Restoration:
    """Run baseline ``method`` on the prior ``prior_net`` (an unconditional EDMPrecond, EDM
    interpolant) ``n_samples`` times; ``task`` selects the method's per-task reference
    settings where the paper gives them, and ``settings`` (e.g. tuned step sizes) override
    them (passed to :func:`exactpost.baselines.run_method`)."""
    settings = dict(settings or {})
    spec = get_method(method)
    t0 = time.perf_counter()
    prior = as_denoiser(prior_net, EDM())
    shape = (y.shape[0],) + tuple(op.in_shape)
    draws, nfe_used, backward = [], 0, 0
    for _ in range(n_samples):
        with torch.enable_grad() if spec.uses_backprop else torch.no_grad():
            res = run_method(method, prior, op, y, sigma_y, shape, interpolant=EDM(), nfe=nfe, generator=generator,
                             task=task, **settings)
        draws.append(res.x0.detach())
        nfe_used, backward = res.nfe, res.backward_passes
    samples = torch.stack(draws)
    return Restoration(samples.mean(0), samples, samples.std(0, unbiased=True) if n_samples > 1 else
                       torch.zeros_like(samples[0]), 0, nfe_used, time.perf_counter() - t0, method,
                       dict(method=method, backward_passes_per_sample=backward, interpolant="edm",
                            mean="average of the samples", **({"tuned": settings} if settings else {})))

