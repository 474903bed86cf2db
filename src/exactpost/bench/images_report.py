"""The image benchmark's report: the Markdown table with its notes, the plots, and the FD of
cached cells computed after the fact."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any, Optional

import torch

from ..io.atomic import write_atomic
from ..core.sampler_spec import DEFAULT
from .images_cache import Cache
from .images_cells import MIXED_CPUS, fd_of
from .images_config import DPS_EXTRA_NFE, EPS_NFE, OTHER_NFE, bare_key, cells_of
from .images_setup import Setup


# --- reports ----------------------------------------------------------------------------
#: table columns: (record field, header, format, higher is better (None: not ranked))
COLUMNS = (("psnr", "PSNR", "{:.2f}", True), ("ssim", "SSIM", "{:.3f}", True), ("crps", "CRPS", "{:.4f}", False),
           ("fd", "FD", "{:.2f}", False))


def rows_of(setup: Setup, cache: Cache) -> list[dict[str, Any]]:
    """The run's cell records in table order, each with its cost ratio to the bare sampler
    timed on the same CPU (none for a cell whose batches ran on several). A cached record made
    with other dependencies (e.g. an older model's, its cell still pending) is left out."""
    rows = []
    for cell in cells_of(setup.cfg, setup.methods):
        if not cache.valid(cell.key, setup.depends(cell.method, cell.task)):
            continue
        rec = cache.records[cell.key]
        row = dict(rec)
        cpu = rec.get("cpu")
        key = bare_key(cell.nfe, cpu)
        bare = cache.records.get(key) if cpu != MIXED_CPUS and cache.valid(key, setup.depends("bare")) else None
        row["bare_seconds_per_image"] = bare["seconds_per_image"] if bare else None
        row["cost_ratio"] = (rec["seconds_per_image"] / bare["seconds_per_image"]
                             if bare and bare["seconds_per_image"] > 0 else None)
        if row.get("fd_encoder") != setup.encoder_name:
            row["fd"] = None
        rows.append(row)
    return rows


def _nfe_label(r: dict[str, Any]) -> str:
    s = str(r["nfe_budget"])
    extra = []
    if r["nfe_sample"] != r["nfe_budget"]:
        extra.append(str(r["nfe_sample"]))
    if r.get("backward_passes"):
        extra.append(f"+{r['backward_passes']} bwd")
    return s + (f" ({' '.join(extra)})" if extra else "")


def _calibration_cells(r: dict[str, Any]) -> list[str]:
    """The "cov80 (ref)" and "spread/skill" cells of a row ("-" where not recorded)."""
    cov, ref, ss = r.get("coverage80"), r.get("coverage80_reference"), r.get("spread_skill")
    ok = lambda v: isinstance(v, (int, float)) and math.isfinite(v)  # noqa: E731
    return [f"{cov:.3f} ({ref:.3f})" if ok(cov) and ok(ref) else "-", f"{ss:.2f}" if ok(ss) else "-"]


def _best(rows: list[dict[str, Any]], field_: str, higher: bool) -> Optional[float]:
    vals = [r[field_] for r in rows if isinstance(r.get(field_), (int, float)) and math.isfinite(r[field_])]
    if len(vals) < 2:
        return None
    return max(vals) if higher else min(vals)


def cpu_tags(rows: list[dict[str, Any]]) -> dict[Optional[str], str]:
    """A letter per CPU the rows were timed on (A, B, ... in order of appearance); empty when
    all were timed on one, so the table needs no CPU column."""
    cpus = list(dict.fromkeys(r.get("cpu") for r in rows))
    return {c: chr(ord("A") + i) for i, c in enumerate(cpus)} if len(cpus) > 1 else {}


def _cpu_text(cpu: Optional[str]) -> str:
    if cpu is None:
        return ("not recorded (timed before CPUs were recorded; its cost ratio is against the bare sampler timing "
                "also recorded without a CPU, which may come from another session)")
    if cpu == MIXED_CPUS:
        return "several (a cell resumed on another machine; no cost ratio)"
    return cpu


def markdown(setup: Setup, rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """The report: the table (paper layout, best per task in bold) with its notes and command."""
    cfg = setup.cfg
    d = setup.data
    enc = setup.encoder_name
    split = f", split {','.join(map(str, d['split']))}" if d.get("split") else ""
    key = f", array {d['key']}" if d.get("key") else ""
    tags = cpu_tags(rows)
    budgets = ("every method at NFE " + ",".join(map(str, cfg.nfe)) if cfg.nfe is not None else
               f"the paper protocol: eps at {EPS_NFE} NFE, every other method at {OTHER_NFE}, dps also at "
               f"{DPS_EXTRA_NFE}")
    L = [f"# Image restoration benchmark: {setup.family}", "",
         f"`{meta['command']}`", "",
         f"{meta['date']}, {meta['machine']}, torch {meta['torch']}, {meta['threads']} thread(s). This invocation "
         f"{meta['seconds']:.0f} s ({meta['computed']} cells computed, {meta['reused']} reused from the cache).", "",
         f"{cfg.images} test images ({d['path']}{key}{split}; first {cfg.images}), sigma_y = {cfg.sigma_y:g}, seed "
         f"{cfg.seed}; {cfg.samples} posterior samples per image, batches of {cfg.batch}; {budgets}. Baselines run "
         f"on the prior network"
         + (f" with the step sizes tuned on validation images at NFE 100 ({Path(setup.tuned_path).name}; "
            f"used at every budget)"
            if setup.tuned_path else " with the registry's default settings") + ".", "",
         "| task | method | NFE | PSNR | SSIM | CRPS | FD | cov80 (ref) | spread/skill | s / image | cost ratio |"
         + (" CPU |" if tags else ""),
         "|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" if tags else "")]
    for task in cfg.tasks:
        group = [r for r in rows if r["task"] == task]
        bests = {f: _best(group, f, hi) for f, _, _, hi in COLUMNS}
        for r in group:
            cells = []
            for f, _, fmt, _ in COLUMNS:
                v = r.get(f)
                if v is None or (isinstance(v, float) and not math.isfinite(v)):
                    cells.append("n/a" if f == "fd" else "-")
                    continue
                s = fmt.format(v)
                if s.startswith("-") and float(s) == 0:
                    s = s[1:]  # no "-0.0000"
                cells.append(f"**{s}**" if bests[f] is not None and v == bests[f] else s)
            ratio = f"{r['cost_ratio']:.2f}x" if r.get("cost_ratio") is not None else "-"
            L.append(f"| {task} | {r['method']} | {_nfe_label(r)} | " + " | ".join(cells + _calibration_cells(r))
                     + f" | {r['seconds_per_image']:.3f} | {ratio} |" + (f" {tags[r.get('cpu')]} |" if tags else ""))
    L += ["", "Columns (images in [-1, 1], samples clamped to [-1, 1]; best per task in bold):", "",
          f"- PSNR (dB, data range 2) and SSIM of the posterior-mean estimate: the mean of the {cfg.samples} "
          f"samples (not the network's 1-NFE mean), averaged over images. Higher is better.",
          f"- CRPS: fair ensemble CRPS of the {cfg.samples} samples per pixel, [-1, 1] units. Lower is better.",
          f"- MMD^2 (pixel space, paired U-statistic, h = {setup.bandwidth:.3f}) is in the JSON records (mmd2), not "
          f"in this table: at N = 100 its noise floor (+0.0015 for two disjoint sets of real test faces, "
          f"benchmarks/results/mmd_floor.md) exceeds nearly every method's value, so it ranks nothing here.",
          (f"- FD: Frechet distance between encoder features ({enc}) of the first sample of every image and of "
           f"the truth images; biased upward at small N, compare within this table only. Lower is better."
           if enc else f"- FD: n/a ({setup.encoder_note})."),
          f"- cov80 (ref): per-pixel coverage of the central order-statistic interval of the {cfg.samples} raw "
          f"samples nearest 80 %, and in parentheses what a truth exchangeable with them (a calibrated sampler) "
          f"scores, exactly (metrics.exchangeable_coverage). spread/skill: sqrt((K+1)/K * mean sample variance) / "
          f"RMSE of the sample mean, K = {cfg.samples}, over all pixels (1 = calibrated, > 1 over-dispersed, "
          f"< 1 over-confident). '-': a cell cached before these were recorded.",
          f"- NFE: the budget; in parentheses the network evaluations a sample actually used where they differ "
          f"(EDM Heun spends 2N - 1; EPS counts its shared 1-NFE mean) and backward passes through the network "
          f"per sample. EPS sampler: {cfg.eps_sampler or DEFAULT.name} (exactpost.core.sampler_spec).",
          f"- s / image: wall time of all {cfg.samples} samples (and the method's 1-NFE mean where it has one) "
          f"divided by the images; one process, {meta['threads']} thread(s), on a machine possibly running "
          f"other work: single timings, not medians.",
          f"- cost ratio: s / image over the bare sampler's at the same budget (unconditional EDM Heun of the "
          f"prior, one call at sigma_max + Heun with NFE - 1, {cfg.samples} samples per image, batch "
          f"{min(cfg.batch, cfg.images)}) timed on the same CPU"
          + (": compare seconds only between rows of the same CPU column, ratios across them." if tags else
             f" ({_cpu_text(rows[0].get('cpu')) if rows else '-'}).")]
    if tags:
        L.append("- CPU: where the cell was timed (this cache was filled on several machines): "
                 + "; ".join(f"{t} = {_cpu_text(c)}" for c, t in tags.items()) + ".")
    L.append("")
    one = [r for r in rows if r["method"] == "eps" and r.get("psnr_1nfe_mean") is not None]
    if one:
        L += ["EPS 1-NFE posterior mean PSNR (dB): " + ", ".join(
            f"{r['task']} {r['psnr_1nfe_mean']:.2f}" + (f" (budget {r['nfe_budget']})" if len(cfg.budgets('eps')) > 1
                                                        else "") for r in one) + ".", ""]
    for n in meta.get("notices", []):
        L.append(f"Note: {n}")
    if meta.get("notices"):
        L.append("")
    L += ["90 % interval coverage, per-sample PSNR/SSIM and the sampler settings of every cell are in the JSON.", ""]
    return "\n".join(L)


def write_plots(setup: Setup, rows: list[dict[str, Any]], prefix: Path) -> list[Path]:
    """``PREFIX_psnr_nfe.png`` and ``PREFIX_crps_nfe.png``: the score against the NFE budget,
    one line per method, one panel per task. Raises ImportError without matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    written = []
    tasks = setup.cfg.tasks
    for field_, label in (("psnr", "PSNR of the sample mean (dB)"), ("crps", "CRPS ([-1, 1] units)")):
        fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.6), squeeze=False)
        for ax, task in zip(axes[0], tasks):
            for m in setup.methods:
                pts = sorted((r["nfe_budget"], r[field_]) for r in rows
                             if r["task"] == task and r["method"] == m and isinstance(r.get(field_), (int, float))
                             and math.isfinite(r[field_]))
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=m)
            ax.set_xscale("log")
            ticks = sorted({r["nfe_budget"] for r in rows if r["task"] == task})
            ax.set_xticks(ticks, [str(t) for t in ticks])
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_title(task)
            ax.set_xlabel("NFE budget")
            ax.set_ylabel(label)
            ax.grid(True, alpha=0.3)
        axes[0][-1].legend(fontsize=7, loc="best")
        fig.suptitle(f"{setup.family}: {setup.cfg.images} images, {setup.cfg.samples} samples each")
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110)
        plt.close(fig)
        path = prefix.with_name(f"{prefix.name}_{field_}_nfe.png")
        write_atomic(path, lambda f: f.write(buf.getvalue()))
        written.append(path)
    return written


def refresh_fd(setup: Setup, cache: Cache) -> None:
    """Recompute FD of cached cells scored with another (or no) encoder, from their first samples."""
    if setup.encoder is None:
        return
    for cell in cells_of(setup.cfg, setup.methods):
        rec = cache.records.get(cell.key)
        if rec is None or rec.get("fd_encoder") == setup.encoder_name:
            continue
        firsts = cache.load_firsts(cell.key)
        if firsts is None:
            continue
        ok = bool(torch.isfinite(firsts).all())
        cache.add(dict(rec, **fd_of(setup, firsts.clamp(-1, 1) if ok else None)))
