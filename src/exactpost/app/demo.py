"""``exactpost demo``: posterior samples of bundled test images for every task.

For each task: simulate y = A x0 + sigma_y n (operators and noise seeded), compute the
1-NFE posterior mean and ``n_samples`` posterior samples at ``nfe`` NFE with the EPS
network, and write ``<task>.png`` (a row per image: truth | measurement | mean |
samples | per-pixel std; images enlarged 4x, nearest neighbour, under column labels), then ``results.json`` and ``results.md`` (PSNR and SSIM of the
mean and of the samples, CRPS of the samples, NFE, seconds per image).
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from typing import Any, Optional, Sequence

import torch

from ..inference import zoo
from ..inference.api import Measurement, load
from ..io.images import save_grid, save_text
from ..core.metrics import restoration_scores
from .output_paths import check_output_dir
from ..inference.restoration import Restoration
from ..core.sampler_spec import DEFAULT, parse_spec
from ..core.tasks import TASKS, task_names
from .visualize import STD_WHITE, measurement_image, panel, panel_labels


#: the demo's PNGs show every image enlarged this many times (nearest neighbour): 32-pixel
#: images at their native size are too small to judge
PNG_SCALE = 4


def task_seed(seed: int, task: str) -> int:
    """The generator seed of ``task`` in a run seeded ``seed`` (tasks are independent, so
    running a subset of tasks gives the same numbers for each)."""
    return seed * 1000 + task_names().index(task)


def score(res: Restoration, x0: torch.Tensor) -> dict[str, float]:
    """PSNR/SSIM of the mean and (averaged over samples) of the samples, and the samples'
    CRPS, all averaged over images (:func:`exactpost.core.metrics.restoration_scores`)."""
    return restoration_scores(x0, res.mean, res.samples)


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """The per-task results as a Markdown table."""
    head = "| task | PSNR mean (1 NFE) | SSIM mean | PSNR sample | SSIM sample | CRPS | NFE / sample | s / image |"
    lines = [head, "|---|---|---|---|---|---|---|---|"]
    fmt = lambda r, k, f: (f.format(r[k]) if k in r else "-")  # noqa: E731
    for r in rows:
        lines.append(f"| {r['task']} | {fmt(r, 'psnr_mean', '{:.2f}')} | {fmt(r, 'ssim_mean', '{:.3f}')} | "
                     f"{fmt(r, 'psnr_sample', '{:.2f}')} | {fmt(r, 'ssim_sample', '{:.3f}')} | "
                     f"{fmt(r, 'crps', '{:.4f}')} | {r['nfe_sample']} | {r['seconds_per_image']:.3f} |")
    return "\n".join(lines)


def run_demo(model: str = zoo.DEFAULT_MODEL, tasks: Optional[Sequence[str]] = None, n_images: int = 8,
             n_samples: int = 4, nfe: int = 20, seed: int = 0, out: str | os.PathLike = "exactpost-demo",
             sigma_y: float = 0.05, images: Optional[torch.Tensor] = None, progress: bool = True,
             sampler: Optional[str] = None) -> dict[str, Any]:
    """Run the demo and write its files under ``out``; returns the results dict.

    ``images`` [N, 3, H, W] in [-1, 1] overrides the model's bundled demo images. ``sampler``:
    the EPS sampler spec (:mod:`exactpost.core.sampler_spec`; None: its DEFAULT)."""
    t_start = time.perf_counter()
    tasks = list(tasks) if tasks else task_names()
    for t in tasks:
        if t not in TASKS:
            raise ValueError(f"unknown task {t!r}; choose from {', '.join(task_names())}")
    if n_images < 1 or n_samples < 2:
        raise ValueError("need --images >= 1 and --samples >= 2 (the std and CRPS need two samples)")
    if nfe < 2:
        raise ValueError(f"--nfe must be >= 2 (1 for the mean, the rest for the sampler), got {nfe}")
    if not (math.isfinite(sigma_y) and sigma_y >= 0):
        raise ValueError(f"--sigma-y must be a finite number >= 0, got {sigma_y}")
    spec = parse_spec(sampler) if sampler is not None else DEFAULT  # a bad spec: one line, before any work
    out_dir = check_output_dir(out, existing_ok=True)  # before any work: a file, a broken link, no permission
    restorer = load(model)
    entry = restorer.entry("eps")
    size = restorer.network("eps").config.image_size
    if images is None:
        images = restorer.demo_images()
    if images.shape[-1] != size or images.shape[-2] != size:
        raise ValueError(f"the demo images are {images.shape[-2]}x{images.shape[-1]} but the model is for {size}x{size}")
    if n_images > images.shape[0]:
        raise ValueError(f"only {images.shape[0]} demo images are bundled with {entry.name}; use --images <= that")
    x0 = images[:n_images].float()
    out_dir.mkdir(parents=True, exist_ok=True)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(tasks) * n_samples, desc="demo", unit="sample", leave=False)
    rows = []
    for task in tasks:
        g = torch.Generator().manual_seed(task_seed(seed, task))
        m = Measurement.simulate(task, x0, sigma_y, generator=g)
        if bar is not None:
            bar.set_postfix(task=task)
        res = restorer.restore(m, samples=n_samples, nfe=nfe, generator=g, sampler=spec,
                               on_sample=(lambda i: bar.update(1)) if bar is not None else None)
        imgs, ncol = panel(x0, measurement_image(m.op, m.y), res.mean, res.samples, res.std)
        save_grid(imgs, out_dir / f"{task}.png", ncol=ncol, scale=PNG_SCALE, labels=panel_labels(n_samples))
        rows.append(dict(task=task, **score(res, x0), nfe_mean=res.nfe_mean, nfe_sample=res.nfe_sample,
                         seconds_per_image=res.seconds / n_images, image=f"{task}.png"))
    if bar is not None:
        bar.close()
    total = time.perf_counter() - t_start
    results = dict(
        model=entry.name, model_path=str(entry.path), model_sha256=entry.card.get("sha256"),
        model_steps=entry.card.get("steps"), tasks=rows,
        settings=dict(n_images=n_images, n_samples=n_samples, nfe=nfe, seed=seed, sigma_y=sigma_y,
                      sampler=res.settings, std_white=STD_WHITE),
        total_seconds=total, hardware=f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
                                      f"{torch.get_num_threads()} threads",
    )
    save_text(out_dir / "results.json", json.dumps(results, indent=2) + "\n")
    md = [f"# exactpost demo: {entry.name} (EPS, {entry.card.get('steps')} training steps)", "",
          f"{n_images} bundled test-split images, sigma_y = {sigma_y}, seed {seed}; {n_samples} posterior samples "
          f"at {nfe} NFE (sampler {spec.name} from the 1-NFE posterior mean) per image. PSNR/SSIM on [-1, 1] images "
          f"(peak-to-peak 2); CRPS per pixel from the {n_samples} samples, in [-1, 1] units (lower is better).",
          "", markdown_table(rows), "",
          f"Each `<task>.png` (every image enlarged {PNG_SCALE}x, nearest neighbour; columns labelled): a row per "
          f"image: truth | measurement | posterior mean | {n_samples} samples | per-pixel posterior std "
          f"(black 0, white >= {STD_WHITE}).", "",
          f"Total wall time {total:.1f} s on {results['hardware']}.", ""]
    save_text(out_dir / "results.md", "\n".join(md))
    return results
