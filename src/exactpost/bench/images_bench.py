"""``exactpost bench images``: EPS, Palette and every zero-shot baseline on held-out images.

Protocol. ``--images`` N test images of the model family (default: the test split of the
data named in the prior's card; ``--data demo``: the family's bundled demo images), for every
task of ``--tasks``: the operator and the measurements y = A x0 + sigma_y n are drawn exactly
as ``exactpost demo`` and ``benchmarks/model_quality.py`` draw them (one generator seeded
:func:`exactpost.app.demo.task_seed` (seed, task), ``make_operator(task, N)`` then ``simulate``),
so every method sees the same y, and the numbers are comparable with the model-quality table.
Then for every cell (task, method, NFE budget) the N images are restored in batches of
``--batch`` by :meth:`exactpost.inference.api.Model.restore` (``eps``: the EPS network, the
1-NFE posterior mean and the ``--eps-sampler`` (default :data:`exactpost.core.sampler_spec.DEFAULT`)
from it; ``palette``: the Palette network; every zero-shot
baseline on the prior network, with the step sizes tuned on validation images, the
``benchmarks/results/baseline_tuning*.json`` tuned for this prior when there is one), K =
``--samples`` posterior samples per image. Default budgets (the paper's protocol): EPS at 20
NFE, every other method at 100, DPS also at 250; ``--nfe 5,10,20`` runs every method at
every listed budget; ``--sweep`` runs 5,10,20,50,100 for every method on inpaint-random and
sr4 (``--tasks`` / ``--nfe`` still override) and draws PSNR and CRPS against NFE.

Scores of a cell (images in [-1, 1], samples clamped to [-1, 1] as when saved as PNG):

* PSNR / SSIM of the **posterior-mean estimate, the mean of the K samples** (not the
  network's 1-NFE mean), :func:`exactpost.core.metrics.psnr` / :func:`~exactpost.core.metrics.ssim`
  (data range 2), averaged over images; for EPS (and Palette) the PSNR/SSIM of the network's
  own 1-NFE mean are recorded too (``psnr_1nfe_mean``), and for every method the samples'
  average PSNR (``psnr_sample``);
* CRPS: the fair ensemble CRPS of the K samples per pixel (:func:`~exactpost.core.metrics.crps`),
  [-1, 1] units, averaged over images;
* MMD: an unbiased MMD^2 in pixel space between the set {first sample x_i of every image}
  and the set {truth images y_i}, Gaussian kernel k(a, b) = exp(-||a - b||^2 / (2 h^2)) on
  the flattened images (the kernel of :func:`~exactpost.core.metrics.mmd2`) with one bandwidth for
  the whole run, h = the median pairwise distance of the N truth images (so cells compare).
  The sets are *paired* (x_i is drawn given the measurement of y_i), so the estimator is
  :func:`exactpost.core.metrics.mmd2_paired`, the U-statistic over the pairs (Gretton et al. 2012, eq. 4):
  metrics.mmd2's cross term also averages the N matched pairs k(x_i, y_i), which are close,
  and would reward a sample for resembling its own truth (a bias of about -2 (k_ii - k_ij) / N,
  -0.08 at N = 8) rather than measure the distance between the distributions. It can be
  slightly negative (indistinguishable up to noise). In the JSON only: at N = 100 its noise
  floor (two disjoint sets of real test faces: +0.0015, ``benchmarks/mmd_floor.py``) is above
  nearly every method's value, and it separates only gross failures (a 4x blur: +0.015) that
  PSNR and FD already flag, at the median bandwidth or a smaller one;
* FD: the Frechet distance (:func:`exactpost.core.metrics.frechet_distance`) between the
  features of the same two sets under the family's small encoder
  (:func:`exactpost.inference.zoo.find_encoder`); ``null`` / "n/a" when the family has none. Biased
  upward for small N, like FID: compare cells of one run only;
* ``coverage90``: the fraction of truth pixels inside the samples' central 90 % interval
  (:func:`~exactpost.core.metrics.interval_coverage`; with K = 4 even an exact sampler covers
  only about (K - 1)/(K + 1) = 60 %), in the JSON only;
* calibration (``coverage80``, ``coverage80_reference``, ``spread_skill``, with ``spread``,
  ``skill``; the table's "cov80 (ref)" and "spread/skill" columns), on the raw (unclamped)
  samples: the coverage of the per-pixel central order-statistic interval of the K samples
  nearest 80 % (:func:`~exactpost.core.metrics.rank_interval_coverage`), beside what a truth
  exchangeable with the K samples scores, exactly (:func:`~exactpost.core.metrics.exchangeable_coverage`:
  3/5 at K = 4, 7/9 at K = 8, 13/17 at K = 16); and the spread/skill ratio
  sqrt((K+1)/K * mean sample variance) / RMSE of the sample mean over all pixels
  (:func:`~exactpost.core.metrics.spread_skill`; 1 when calibrated, > 1 over-dispersed);
* seconds per image (wall time of all K samples, and of the method's 1-NFE mean where it
  computes one, divided by N), the NFE actually spent per sample, the backward passes per
  sample, and the **cost ratio**: seconds per image divided by those of the bare sampler at
  the same budget -- unconditional EDM Heun of the prior (one call at sigma_max, then Heun
  with NFE - 1, i.e. NFE network calls per sample; as ``benchmarks/cost.py``), K samples per
  image, one batch of the same size, timed once per budget and CPU (after a warm-up call). Every
  cell and bare timing records the CPU it ran on (:func:`exactpost.bench.machine.cpu_label`:
  these machines differ between sessions: 2.1-2.7x on the same cells), and a cell's ratio uses
  the bare timing of its own CPU; when a cache holds cells of several CPUs the table gets a CPU
  column, and a cell whose batches ran on several has no ratio.

Reproducibility and resumption. Each batch b of a cell draws from its own generator seeded
:func:`batch_seed` (seed, task, method, nfe, b), so a cell's numbers do not depend on which
other cells run (they do depend on N, K, the batch size, sigma_y and the models: those are the
run's fingerprint). Finished batches are saved at once (``PREFIX.cache/partial/``, atomic),
finished cells appended to ``PREFIX.cache/cells.jsonl`` (with the first samples kept in
``PREFIX.cache/firsts/`` so FD can be recomputed when an encoder appears), so a killed run
continues where it stopped and adding tasks, methods or budgets computes only the new cells; a
rerun with a different fingerprint stops with one line unless ``--fresh`` discards the cache.
Splitting a run across processes: run each share of the tasks (or methods) with its own
``--out``, then ``--merge OTHER_PREFIX`` (repeatable) folds the finished cells of those caches
into this run's cache before anything is measured (their fingerprint must equal this run's; a
cell this cache already holds keeps its own record, the bare-sampler timings included), so one
table covers them all.
Outputs (atomic writes): ``PREFIX.json`` (configuration, command, machine, per-cell records),
``PREFIX.md`` (the table, best value per task in bold) and, with ``--sweep``,
``PREFIX_psnr_nfe.png`` / ``PREFIX_crps_nfe.png`` (needs matplotlib: ``pip install
'exactpost[plots]'``).

Modules, one job each: :mod:`.images_config` (options, protocol constants, the cells, seeds,
batches), :mod:`.images_setup` (models, test images, tuned settings, schedulers, encoder),
:mod:`.images_cells` (restore, score and time one cell), :mod:`.images_cache` (the resumable
cache), :mod:`.images_report` (table, plots); this module runs them (:func:`run_config`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Sequence

import torch

from ..io.images import save_text
from .images_cache import Cache
from .images_cells import run_cell, time_bare
from .machine import cpu_label
from .images_config import (LEVEL, PLOTS_HINT, BenchConfig, add_arguments, bare_key, batch_ranges, cells_of,
                            config_from_args)
from .images_report import markdown, refresh_fd, rows_of, write_plots
from .images_setup import cell_depends, load_setup
from .records import json_safe


# --- entry point --------------------------------------------------------------------------
def run(args: argparse.Namespace) -> int:
    """``exactpost bench images`` (module docstring). Returns 0; ValueError for bad options."""
    return run_config(config_from_args(args))


def run_config(cfg: BenchConfig) -> int:
    """Measure the missing cells, then write PREFIX.json / PREFIX.md (and the sweep's plots)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    t_start = time.perf_counter()
    setup = load_setup(cfg)
    for n in setup.notices:
        print(f"notice: {n}")
    cache = Cache(cfg.out, setup.fingerprint(), cfg.fresh, depends_of=cell_depends)
    for other in cfg.merge:
        print(f"merged {cache.merge_from(other)} finished cells from {other}.cache")
    cells = cells_of(cfg, setup.methods)
    pending = [c for c in cells if not cache.valid(c.key, setup.depends(c.method, c.task))]
    budgets = sorted({c.nfe for c in cells})
    # the bare sampler is timed on this CPU for the budgets of the cells measured here (cells
    # cached from another machine keep the bare timing of theirs)
    cpu = cpu_label()
    bare_pending = [n for n in sorted({c.nfe for c in pending})
                    if not cache.valid(bare_key(n, cpu), setup.depends("bare"))] if cfg.bare else []
    n_batches = len(batch_ranges(cfg.images, cfg.batch))
    bar = None
    if cfg.progress and (pending or bare_pending):
        from tqdm import tqdm

        bar = tqdm(total=len(pending) * n_batches + len(bare_pending), desc="images bench", unit="batch",
                   dynamic_ncols=True, file=sys.stderr)
    for kind in {m if m in ("eps", "palette") else "prior" for m in (c.method for c in pending)}:
        setup.net(kind)  # load before anything is timed
    try:
        for n in bare_pending:
            if bar is not None:
                bar.set_postfix_str(f"bare sampler @ {n}")
            cache.add(time_bare(setup, n))
            if bar is not None:
                bar.update(1)
        for cell in pending:
            if bar is not None:
                bar.set_postfix_str(f"{cell.task} {cell.method}@{cell.nfe}")
            run_cell(setup, cache, cell, on_batch=(lambda: bar.update(1)) if bar is not None else (lambda: None))
    finally:
        if bar is not None:
            bar.close()
    refresh_fd(setup, cache)
    rows = rows_of(setup, cache)
    notices = list(setup.notices)
    if setup.encoder is None:
        notices.append(f"FD is n/a: {setup.encoder_note}")
    meta = dict(command=cfg.command(), date=time.strftime("%Y-%m-%d %H:%M"),
                machine=f"{platform.machine()} {platform.processor() or ''}".strip() + f", {os.cpu_count()} CPUs",
                python=platform.python_version(), torch=torch.__version__, threads=torch.get_num_threads(),
                seconds=time.perf_counter() - t_start, computed=len(pending), reused=len(cells) - len(pending),
                fingerprint=setup.fingerprint(), notices=notices)
    config = dict(model=cfg.model, family=setup.family, tasks=cfg.tasks, methods=setup.methods,
                  nfe={m: cfg.budgets(m) for m in setup.methods}, protocol="paper" if cfg.nfe is None else "list",
                  sweep=cfg.sweep, images=cfg.images, samples=cfg.samples, batch=cfg.batch, seed=cfg.seed,
                  sigma_y=cfg.sigma_y, level=LEVEL, tuned=setup.tuned_path, out=cfg.out)
    models = {k: (dict(path=str(e.path), sha256=e.card.get("sha256"), steps=e.card.get("steps")) if e else None)
              for k, e in setup.entries.items()}
    out = Path(cfg.out)
    doc = dict(meta=meta, config=config, models=models, data=setup.data,
               encoder=dict(name=setup.encoder_name, note=setup.encoder_note or None),
               mmd_bandwidth=setup.bandwidth,
               mmd_estimator="paired U-statistic, Gretton et al. 2012 eq. 4 (metrics.mmd2_paired)",
               bare=[r for r in cache.records.values() if r.get("kind") == "bare" and r["nfe_budget"] in budgets
                     and cache.valid(r["key"], setup.depends("bare"))],
               cells=rows)
    save_text(out.with_name(out.name + ".json"), json.dumps(json_safe(doc), indent=1) + "\n")
    save_text(out.with_name(out.name + ".md"), markdown(setup, rows, meta))
    written = [f"{out.name}.json", f"{out.name}.md"]
    if cfg.sweep:
        try:
            written += [p.name for p in write_plots(setup, rows, out)]
        except ImportError:
            print(f"notice: matplotlib is not installed, so the sweep's plots are skipped ({PLOTS_HINT})")
    print(f"images bench: {len(pending)} cells computed, {len(cells) - len(pending)} reused; wrote "
          f"{', '.join(written)} in {out.parent.resolve()}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry (``python -m exactpost.bench.images_bench``)."""
    ap = argparse.ArgumentParser(prog="exactpost bench images", description=__doc__.split("\n\n")[0])
    add_arguments(ap)
    return run(ap.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
