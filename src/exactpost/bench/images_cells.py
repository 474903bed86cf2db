"""One cell of the image benchmark: restore its batches through Model.restore, score them
(:func:`exactpost.core.metrics.restoration_scores` and the calibration and FD columns), and
time the bare sampler."""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Optional

import torch

from .gmm_bench import derived_seed
from .images_cache import Cache
from .images_config import CALIB_LEVEL, Cell, LEVEL, SIGMA_MAX, bare_key, batch_ranges, batch_seed, slice_operator
from .images_setup import Setup, features
from .machine import cpu_label

#: a cell whose batches were timed on more than one CPU (resumed on another machine): no cost ratio
MIXED_CPUS = "mixed"


# --- one cell ----------------------------------------------------------------------------
def restore_batch(setup: Setup, cell: Cell, op, y: torch.Tensor, g: torch.Generator):
    """One batch of ``cell``: a :class:`~exactpost.inference.restoration.Restoration` and the settings
    that differ from the method's defaults (the tuned ones)."""
    from ..inference.api import TRAINED, Measurement

    method = cell.method
    settings = dict(setup.tuned.get(method, {}).get(cell.task, {})) if method not in TRAINED else {}
    sampler = setup.cfg.eps_sampler if method == "eps" else None
    scheduler = setup.scheduler(method) if setup.cfg.scheduler is not None and method in TRAINED else None
    return setup.model.restore(Measurement(op, y, setup.cfg.sigma_y, cell.task), method=method,
                               samples=setup.cfg.samples, nfe=cell.nfe, generator=g, settings=settings,
                               sampler=sampler, scheduler=scheduler), settings


def score_cell(setup: Setup, samples: torch.Tensor, net_mean: Optional[torch.Tensor]) -> dict[str, Any]:
    """The scores of one cell from its samples [K, N, C, H, W] (module docstring)."""
    from ..core.metrics import (exchangeable_coverage, interval_coverage, mmd2_paired, rank_interval_coverage,
                                restoration_scores, spread_skill)

    x0 = setup.truth
    out: dict[str, Any] = {}
    finite = bool(torch.isfinite(samples).all())
    out["finite"] = finite
    scores = restoration_scores(x0, samples.mean(0), samples)  # the estimate: the samples' average
    out["psnr"], out["ssim"] = scores["psnr_mean"], scores["ssim_mean"]
    out["psnr_sample"], out["ssim_sample"] = scores["psnr_sample"], scores["ssim_sample"]
    if net_mean is not None:
        one = restoration_scores(x0, net_mean)
        out["psnr_1nfe_mean"], out["ssim_1nfe_mean"] = one["psnr_mean"], one["ssim_mean"]
    out["crps"] = scores["crps"]
    out["coverage90"] = interval_coverage(samples, x0, LEVEL) if finite else math.nan
    out["coverage80"] = rank_interval_coverage(samples, x0, CALIB_LEVEL) if finite else math.nan
    out["coverage80_reference"] = exchangeable_coverage(samples.shape[0], CALIB_LEVEL)
    ss = spread_skill(samples, x0) if finite else dict(spread=math.nan, skill=math.nan, ratio=math.nan)
    out.update(spread=ss["spread"], skill=ss["skill"], spread_skill=ss["ratio"])
    first = samples[0].clamp(-1, 1)
    out["mmd2"] = mmd2_paired(first, x0, setup.bandwidth) if finite else math.nan
    out["mmd_bandwidth"] = setup.bandwidth
    out.update(fd_of(setup, first if finite else None))
    return out


def fd_of(setup: Setup, first: Optional[torch.Tensor]) -> dict[str, Any]:
    """{fd, fd_encoder} of the first samples [N, C, H, W] (clamped) against the truth."""
    if setup.encoder is None or first is None:
        return dict(fd=None, fd_encoder=setup.encoder_name)
    from ..core.metrics import frechet_distance

    return dict(fd=float(frechet_distance(features(setup.encoder, first), setup.truth_features())),
                fd_encoder=setup.encoder_name)


def run_cell(setup: Setup, cache: "Cache", cell: Cell, on_batch: Callable[[], None] = lambda: None
             ) -> dict[str, Any]:
    """Measure ``cell`` batch by batch (reusing batches saved by an interrupted run), score
    it and store it in the cache; returns its record."""
    cfg = setup.cfg
    op, y = setup.measurement(cell.task)
    depends = setup.depends(cell.method, cell.task)
    parts = []
    for b, (i, j) in enumerate(batch_ranges(len(setup.truth), cfg.batch)):
        part = cache.load_partial(cell.key, b, depends)
        if part is None:
            g = torch.Generator().manual_seed(batch_seed(cfg.seed, cell.task, cell.method, cell.nfe, b))
            t0 = time.perf_counter()
            res, settings = restore_batch(setup, cell, slice_operator(op, i, j), y[i:j], g)
            seconds = time.perf_counter() - t0
            part = dict(samples=res.samples.detach().float(),
                        mean=res.mean.detach().float() if res.nfe_mean else None,
                        info=dict(seconds=seconds, cpu=cpu_label(), nfe_mean=int(res.nfe_mean),
                                  nfe_sample=int(res.nfe_sample),
                                  backward=int(res.settings.get("backward_passes_per_sample", 0)),
                                  sampler={k: v for k, v in res.settings.items() if k != "tuned"},
                                  tuned=settings))
            cache.save_partial(cell.key, b, depends, part)
        parts.append(part)
        on_batch()
    samples = torch.cat([p["samples"] for p in parts], dim=1)
    net_mean = torch.cat([p["mean"] for p in parts]) if all(p["mean"] is not None for p in parts) else None
    info = parts[0]["info"]
    seconds = sum(p["info"]["seconds"] for p in parts)
    cpus = {p["info"].get("cpu") for p in parts}  # None: a batch saved before CPUs were recorded
    rec: dict[str, Any] = dict(key=cell.key, task=cell.task, method=cell.method, nfe_budget=cell.nfe,
                               nfe_sample=info["nfe_sample"], nfe_mean=info["nfe_mean"],
                               backward_passes=info["backward"], images=len(setup.truth), samples=cfg.samples,
                               batch=cfg.batch, seconds=seconds, seconds_per_image=seconds / len(setup.truth),
                               sampler=info["sampler"], tuned=info["tuned"] or None, depends=depends,
                               cpu=cpus.pop() if len(cpus) == 1 else MIXED_CPUS)
    rec.update(score_cell(setup, samples, net_mean))
    cache.add(rec, samples[0])
    return rec


def time_bare(setup: Setup, nfe: int) -> dict[str, Any]:
    """Wall time of the bare unconditional sampler at budget ``nfe`` on this CPU: K samples of
    one batch (module docstring); keyed by the CPU, so each machine's cells have their own."""
    from ..core.interpolants import EDM
    from ..nets.precond import as_denoiser
    from ..core.samplers import edm_heun, heun_steps_for_nfe

    cfg = setup.cfg
    b = min(cfg.batch, len(setup.truth))
    shape = (b,) + tuple(setup.truth.shape[1:])
    prior = as_denoiser(setup.net("prior"), EDM())
    g = torch.Generator().manual_seed(derived_seed(cfg.seed, "bare", nfe))
    steps = heun_steps_for_nfe(nfe - 1)
    with torch.no_grad():
        prior(SIGMA_MAX * torch.randn(shape, generator=g), SIGMA_MAX)  # warm-up, not timed
        t0 = time.perf_counter()
        used = 0
        for _ in range(cfg.samples):
            mean = prior(SIGMA_MAX * torch.randn(shape, generator=g), SIGMA_MAX)
            out = edm_heun(prior, shape, steps=steps, sigma_max=SIGMA_MAX, generator=g, init_mean=mean)
            used = 1 + out.nfe
        seconds = time.perf_counter() - t0
    cpu = cpu_label()
    return dict(key=bare_key(nfe, cpu), kind="bare", nfe_budget=nfe, nfe_sample=used, batch=b, samples=cfg.samples,
                seconds=seconds, seconds_per_image=seconds / b, depends=setup.depends("bare"), cpu=cpu)
