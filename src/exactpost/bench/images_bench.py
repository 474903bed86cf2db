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
  image, one batch of the same size, timed once per budget in the run (after a warm-up call).

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
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import os
import platform
import shlex
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch

from ..app import argtypes
from ..inference import zoo
from ..io.atomic import write_atomic
from ..io.images import save_text
from ..core.sampler_spec import DEFAULT, LEGACY, parse_spec
from .gmm_bench import derived_seed
from .records import RecordLog, header_difference, json_safe, read_header

#: bump when the protocol changes, so old caches are not mixed with new cells
PROTOCOL_VERSION = 1
#: the paper protocol's budgets: EPS at 20, every other method at 100, DPS also at 250
EPS_NFE, OTHER_NFE, DPS_EXTRA_NFE = 20, 100, 250
SWEEP_NFE = (5, 10, 20, 50, 100)
SWEEP_TASKS = ("inpaint-random", "sr4")
#: smallest budget per method (the rest need 2: EPS's mean + one Heun step)
MIN_NFE = {"daps": 5}
LEVEL = 0.9
CALIB_LEVEL = 0.8  # the calibration columns' central interval (metrics.central_ranks)
SIGMA_MAX = 80.0
REPO_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_TUNED = REPO_ROOT / "benchmarks" / "results" / "baseline_tuning.json"
DEMO = "demo"
PLOTS_HINT = "pip install 'exactpost[plots]'"


# --- command line ---------------------------------------------------------------------
def _int_list(text: str) -> list[int]:
    try:
        out = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not out:
        raise argparse.ArgumentTypeError(f"expected at least one integer, got {text!r}")
    return out


def _str_list(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``exactpost bench images`` to ``parser``."""
    parser.add_argument("--model", default=zoo.DEFAULT_MODEL,
                        help="model family: a bundled name (default faces-32) or a folder holding "
                             "prior/eps/palette checkpoints")
    parser.add_argument("--tasks", default=None,
                        help="comma-separated task ids (default: all five; with --sweep inpaint-random,sr4)")
    parser.add_argument("--methods", default=None,
                        help="comma-separated methods (default: eps, palette and every zero-shot baseline)")
    parser.add_argument("--nfe", type=_int_list, default=None,
                        help="comma-separated NFE budgets, every method at each (default: the paper protocol, "
                             f"eps at {EPS_NFE}, the others at {OTHER_NFE}, dps also at {DPS_EXTRA_NFE}; "
                             f"with --sweep {','.join(map(str, SWEEP_NFE))})")
    parser.add_argument("--sweep", action="store_true",
                        help="NFE sweep 5,10,20,50,100 for every method on inpaint-random and sr4, "
                             "with PSNR/CRPS-against-NFE plots (default: off)")
    parser.add_argument("--images", type=argtypes.int_range(1), default=100, help="test images, >= 1 (default 100)")
    parser.add_argument("--samples", type=argtypes.int_range(2), default=4,
                        help="posterior samples per image, >= 2 (default 4)")
    parser.add_argument("--batch", type=argtypes.int_range(1), default=16, help="images per batch, >= 1 (default 16)")
    parser.add_argument("--seed", type=argtypes.seed(), default=0,
                        help="random seed of the operators, noise and samples, 0..4294967295 (default 0)")
    parser.add_argument("--sigma-y", type=argtypes.float_range(0.0), default=0.05,
                        help="measurement noise std on [-1, 1] images (default 0.05)")
    parser.add_argument("--data", default=None,
                        help="test images: an .npz or a folder (default: the data in the prior's card, its "
                             "test split or test_images array); 'demo': the family's bundled demo images")
    parser.add_argument("--test-key", default=None,
                        help="array of the .npz holding the test images (default: see --data)")
    parser.add_argument("--test-split", type=_int_list, default=None,
                        help="rows of the .npz's 'split' array to use (default 2, the test split)")
    parser.add_argument("--tuned", default=None,
                        help="baseline settings JSON of benchmarks/tune_baselines.py (default: "
                             "the benchmarks/results/baseline_tuning*.json tuned for this prior); "
                             "'none': the registry defaults")
    parser.add_argument("--out", default=None,
                        help="output prefix: PREFIX.json, PREFIX.md, the cache PREFIX.cache/ "
                             "(default benchmarks/results/bench_images_<family>)")
    parser.add_argument("--eps-sampler", default=None, metavar="SPEC",
                        help="sampler of the eps cells (exactpost.core.sampler_spec, e.g. 'dpmpp2m:loglinear:smin=0.01'; "
                             "'legacy': EDM Heun rho 7, the sampler of the runs before issue 21; default: the "
                             "measured default)")
    parser.add_argument("--scheduler", default=None, metavar="NAME",
                        help="sample the eps and palette cells with the diffusers models' own scheduler (the family's "
                             "eps/palette must be diffusers folders; names as in restore --scheduler: own, ddpm, "
                             "ddim, euler, euler-ancestral, dpmsolver, unipc; recorded in the cache fingerprint) "
                             "(default: exactpost's samplers)")
    parser.add_argument("--fresh", action="store_true",
                        help="discard a cache made with a different fingerprint instead of stopping (default: stop)")
    parser.add_argument("--merge", action="append", default=[], metavar="PREFIX",
                        help="first fold in the finished cells of another run's cache PREFIX.cache/ made with "
                             "the same settings (e.g. a share of the tasks run by another process); repeatable (default: none)")
    parser.add_argument("--threads", type=argtypes.int_range(0), default=0,
                        help="torch CPU threads, >= 0 (default: 0 = torch's choice)")
    parser.add_argument("--no-bare", action="store_true",
                        help="do not time the bare sampler, so the cost ratio column shows '-' (saves its runs on a "
                             "busy machine where the timings mean little; default: timed)")
    parser.add_argument("--no-progress", action="store_true", help="do not show the progress bar (default: shown)")


# --- configuration ----------------------------------------------------------------------
def all_methods() -> list[str]:
    """eps, palette, then every zero-shot baseline (:func:`exactpost.inference.api.methods`)."""
    from ..inference.api import methods

    return methods()


@dataclass
class BenchConfig:
    """Validated options (no files read yet)."""

    model: str
    tasks: list[str]
    methods: list[str]
    nfe: Optional[list[int]]  # None: the paper protocol
    sweep: bool = False
    images: int = 100
    samples: int = 4
    batch: int = 16
    seed: int = 0
    sigma_y: float = 0.05
    data: Optional[str] = None
    test_key: Optional[str] = None
    test_split: Optional[list[int]] = None
    tuned: Optional[str] = None
    out: str = ""
    fresh: bool = False
    threads: int = 0
    progress: bool = True
    bare: bool = True  # time the bare sampler (--no-bare: not)
    methods_given: bool = False
    merge: list[str] = field(default_factory=list)
    eps_sampler: Optional[str] = None  # spec name; None: sampler_spec.DEFAULT
    scheduler: Optional[str] = None  # a diffusers scheduler name for eps/palette (backbones.scheduler_restore)

    def budgets(self, method: str) -> list[int]:
        """The NFE budgets of ``method`` (ascending)."""
        if self.nfe is not None:
            return list(self.nfe)
        if method == "eps":
            return [EPS_NFE]
        if method == "dps":
            return [OTHER_NFE, DPS_EXTRA_NFE]
        return [OTHER_NFE]

    def command(self) -> str:
        """The equivalent command line (every option spelled out)."""
        parts = ["exactpost", "bench", "images", "--model", self.model, "--tasks", ",".join(self.tasks),
                 "--methods", ",".join(self.methods)]
        if self.sweep:
            parts.append("--sweep")
        if self.nfe is not None:
            parts += ["--nfe", ",".join(map(str, self.nfe))]
        parts += ["--images", str(self.images), "--samples", str(self.samples), "--batch", str(self.batch),
                  "--seed", str(self.seed), "--sigma-y", f"{self.sigma_y:g}"]
        if self.data is not None:
            parts += ["--data", self.data]
        if self.test_key is not None:
            parts += ["--test-key", self.test_key]
        if self.test_split is not None:
            parts += ["--test-split", ",".join(map(str, self.test_split))]
        if self.tuned is not None:
            parts += ["--tuned", self.tuned]
        if self.eps_sampler is not None:
            parts += ["--eps-sampler", self.eps_sampler]
        if self.scheduler is not None:
            parts += ["--scheduler", self.scheduler]
        parts += ["--out", self.out]
        for other in self.merge:
            parts += ["--merge", other]
        if not self.bare:
            parts.append("--no-bare")
        if self.threads:
            parts += ["--threads", str(self.threads)]
        return " ".join(shlex.quote(p) for p in parts)


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    """Check the parsed options; ValueError (one line) for a bad value."""
    from ..core.tasks import task_names

    known_tasks = task_names()
    if args.tasks is not None:
        tasks = list(dict.fromkeys(_str_list(args.tasks)))
    else:
        tasks = list(SWEEP_TASKS) if args.sweep else known_tasks
    bad = [t for t in tasks if t not in known_tasks]
    if bad or not tasks:
        raise ValueError(f"--tasks: unknown {', '.join(map(repr, bad)) or '(none given)'}; choose from "
                         f"{', '.join(known_tasks)}")
    known = all_methods()
    methods = list(dict.fromkeys(_str_list(args.methods))) if args.methods is not None else known
    bad = [m for m in methods if m not in known]
    if bad or not methods:
        raise ValueError(f"--methods: unknown {', '.join(map(repr, bad)) or '(none given)'}; choose from "
                         f"{', '.join(known)}")
    nfe = sorted(set(args.nfe)) if args.nfe is not None else (list(SWEEP_NFE) if args.sweep else None)
    cfg = BenchConfig(model=str(args.model), tasks=tasks, methods=methods, nfe=nfe, sweep=bool(args.sweep),
                      images=args.images, samples=args.samples, batch=args.batch, seed=args.seed,
                      sigma_y=float(args.sigma_y), data=args.data, test_key=args.test_key,
                      test_split=args.test_split, tuned=args.tuned, fresh=bool(args.fresh), threads=args.threads,
                      progress=not args.no_progress, methods_given=args.methods is not None,
                      bare=not getattr(args, "no_bare", False),
                      merge=list(getattr(args, "merge", None) or []))
    if getattr(args, "eps_sampler", None) is not None:
        cfg.eps_sampler = parse_spec(args.eps_sampler).name
    if getattr(args, "scheduler", None) is not None:
        from ..backbones.scheduler_restore import check_scheduler_name  # pure Python (no diffusers import)

        if cfg.eps_sampler is not None:
            raise ValueError("give --eps-sampler or --scheduler, not both")
        cfg.scheduler = check_scheduler_name(args.scheduler)
    for m in methods:
        low = min(cfg.budgets(m))
        need = MIN_NFE.get(m, 2)
        if low < need:
            raise ValueError(f"--nfe: {m} needs a budget >= {need}, got {low}")
    if args.images < 2:
        raise ValueError(f"--images must be >= 2 (MMD and FD compare sets of images), got {args.images}")
    if args.samples < 2:
        raise ValueError(f"--samples must be >= 2 (the CRPS needs two samples per image), got {args.samples}")
    if args.batch < 1:
        raise ValueError(f"--batch must be >= 1, got {args.batch}")
    if not (math.isfinite(cfg.sigma_y) and cfg.sigma_y >= 0):
        raise ValueError(f"--sigma-y must be a finite number >= 0, got {args.sigma_y}")
    if args.threads < 0:
        raise ValueError(f"--threads must be >= 0, got {args.threads}")
    cfg.out = args.out or str(Path("benchmarks") / "results" / f"bench_images_{Path(cfg.model).name}")
    for other in cfg.merge:
        if not (Path(other + ".cache") / "cells.jsonl").is_file():
            raise ValueError(f"--merge {other}: no cache at {other}.cache/cells.jsonl; give the --out prefix of "
                             f"the run to fold in")
        if Path(other + ".cache").resolve() == Path(cfg.out + ".cache").resolve():
            raise ValueError(f"--merge {other}: that is this run's own cache (--out); give another run's prefix")
    return cfg


# --- cells --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cell:
    """``method`` at budget ``nfe`` on ``task`` (all images)."""

    task: str
    method: str
    nfe: int

    @property
    def key(self) -> str:
        return f"{self.task}__{self.method}__nfe{self.nfe}"


def cells_of(cfg: BenchConfig, methods: Optional[Sequence[str]] = None) -> list[Cell]:
    """Every cell of the run, in table order (task, method, NFE)."""
    return [Cell(t, m, n) for t in cfg.tasks for m in (methods or cfg.methods) for n in cfg.budgets(m)]


def bare_key(nfe: int) -> str:
    return f"bare__nfe{nfe}"


def batch_seed(seed: int, task: str, method: str, nfe: int, batch_index: int) -> int:
    """The generator seed of batch ``batch_index`` of cell (task, method, nfe)."""
    return derived_seed(seed, "images", task, method, nfe, batch_index)


def batch_ranges(n: int, batch: int) -> list[tuple[int, int]]:
    return [(i, min(i + batch, n)) for i in range(0, n, batch)]


def slice_operator(op, i: int, j: int):
    """The operator of samples i..j-1 of a per-sample operator (a shared one is returned)."""
    from ..operators import FFTBlur, Inpainting

    if op.batch_size is None:
        return op
    if isinstance(op, Inpainting):
        mask = op.mask[i:j] if op.per_channel else op.mask[i:j, 0]
        return Inpainting(mask, channels=op.channels, per_channel=op.per_channel)
    if isinstance(op, FFTBlur):
        return FFTBlur(op.kernel[i:j], op.in_shape, rcond=op.rcond)
    raise ValueError(f"cannot split a per-sample {type(op).__name__} into batches; use --batch >= --images")


# --- data and models ----------------------------------------------------------------------
def resolve_family(model: str) -> tuple[str, Path]:
    """(family name, models root) of ``--model``: a bundled name or a family folder."""
    p = Path(model)
    if p.is_dir() and p.name in zoo.model_names(p.parent):  # checkpoints or diffusers folders
        return p.name, p.parent
    if p.parent != Path(".") or p.suffix:
        raise zoo.ModelNotFound(f"--model {model}: not a model family folder (one holding prior.json, eps.json "
                                f"or palette.json) nor a bundled name")
    names = zoo.model_names()
    if model not in names:
        raise zoo.ModelNotFound(f"unknown model {model!r}; bundled models: {', '.join(names) or 'none'} "
                                f"(see `exactpost models`)")
    return model, zoo.models_dir()


def _find_data_file(path: str, root: Path, family: str) -> Optional[Path]:
    p = Path(path)
    for cand in (p, REPO_ROOT / p, root.parent / p, root / family / p):
        if cand.exists():
            return cand
    return None


def load_test_images(cfg: BenchConfig, family: str, root: Path, prior_card: dict, size: int
                     ) -> tuple[torch.Tensor, dict[str, Any]]:
    """The first ``cfg.images`` test images, uint8 [N, 3, size, size], and where they came from."""
    from ..io.images import DataError, load_images, resize_uint8, to_nchw_uint8

    if cfg.data == DEMO:
        imgs = to_nchw_uint8(zoo.demo_images(family, root), "demo images")
        if imgs.shape[-1] != size:
            imgs = resize_uint8(imgs, size)
        info: dict[str, Any] = dict(path=str(root / family / "demo_images.npz"), key="images", split=None,
                                    source="demo")
    else:
        if cfg.data is not None:
            path = Path(cfg.data)
            if not path.exists():
                raise DataError(f"--data {cfg.data}: no such file or folder")
            source = "--data"
        else:
            data = prior_card.get("data") if isinstance(prior_card.get("data"), dict) else {}
            named = data.get("path")
            if not named:
                raise DataError("the prior's card names no data; pass --data PATH (or --data demo)")
            found = _find_data_file(str(named), root, family)
            if found is None:
                raise DataError(f"test images: the prior's card names data {named}, which is not found; pass "
                                f"--data PATH (an .npz with a 'split' or 'test_images' array) or --data demo")
            path, source = found, "card"
        key, split = cfg.test_key, cfg.test_split
        if path.suffix == ".npz" and key is None and split is None:
            try:
                with np.load(path, allow_pickle=False) as z:
                    names = list(z.files)
            except Exception as exc:  # noqa: BLE001 - a user-data problem
                raise DataError(f"cannot read {path} as an .npz array file ({exc.__class__.__name__})") from None
            if "split" in names:
                split = [2]
                if source == "card":
                    key = (prior_card.get("data") or {}).get("key")
            elif "test_images" in names:
                key = "test_images"
            else:
                raise DataError(f"{path} has no 'split' or 'test_images' array; pass --test-key/--test-split")
        imgs = load_images(path, key, split, size)
        info = dict(path=str(path), key=key, split=split, source=source)
    if len(imgs) < cfg.images:
        where = f" (split {','.join(map(str, info['split']))})" if info.get("split") else ""
        raise DataError(f"only {len(imgs)} test images in {info['path']}{where}; use --images <= {len(imgs)}")
    imgs = imgs[: cfg.images].contiguous()
    info.update(images=len(imgs), sha256=hashlib.sha256(imgs.numpy().tobytes()).hexdigest())
    return imgs, info


def _read_tuned(path: Path) -> tuple[dict, Optional[str]]:
    """({method: {task: settings}}, the sha256 of the prior it was tuned for) of a tuning JSON."""
    try:
        data = json.loads(path.read_text())
        tuned = {m: {t: dict(s) for t, s in per.items()} for m, per in data["tuned"].items()}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"--tuned {path}: not a baseline_tuning.json ({exc.__class__.__name__})") from None
    return tuned, (data.get("model") or {}).get("sha256")


def load_tuned(cfg: BenchConfig, prior_sha: Optional[str], notices: list[str]) -> tuple[dict, Optional[str]]:
    """The tuned baseline settings {method: {task: settings}} and the file they came from.

    Without ``--tuned``: the first ``benchmarks/results/baseline_tuning*.json`` tuned for this
    prior (same weights sha256), else the registry defaults (with a notice)."""
    if cfg.tuned is not None and cfg.tuned.lower() == "none":
        return {}, None
    if cfg.tuned is not None:
        path = Path(cfg.tuned)
        if not path.is_file():
            raise ValueError(f"--tuned {cfg.tuned}: no such file")
        tuned, tuned_for = _read_tuned(path)
        if tuned_for != prior_sha:
            notices.append(f"{path.name} was tuned for another prior (sha256 {str(tuned_for)[:12]}); used as given")
        return tuned, str(path)
    candidates = sorted(DEFAULT_TUNED.parent.glob(DEFAULT_TUNED.stem + "*.json"))
    for path in candidates:
        tuned, tuned_for = _read_tuned(path)
        if tuned_for == prior_sha:
            return tuned, str(path)
    if candidates:
        notices.append(f"no {DEFAULT_TUNED.stem}*.json was tuned for this prior; the baselines use the registry "
                       "defaults (tune them: benchmarks/tune_baselines.py)")
    return {}, None


@dataclass
class Setup:
    """Everything the cells share: models, test images, measurements, encoder, tuned settings."""

    cfg: BenchConfig
    family: str
    root: Path
    entries: dict[str, Any]
    truth: torch.Tensor  # [N, 3, H, W] float32 in [-1, 1]
    data: dict[str, Any]
    tuned: dict
    tuned_path: Optional[str]
    methods: list[str]
    notices: list[str] = field(default_factory=list)
    encoder: Any = None
    encoder_note: str = ""
    model: Any = None  # the exactpost.inference.api.Model of the family's networks (loaded lazily, frozen)
    measurements: dict[str, tuple[Any, torch.Tensor]] = field(default_factory=dict)
    _truth_feats: Optional[torch.Tensor] = None
    _bandwidth: Optional[float] = None
    schedulers: dict[str, Any] = field(default_factory=dict)  # --scheduler: one per model kind

    def net(self, kind: str) -> torch.nn.Module:
        return self.model.network(kind)

    def measurement(self, task: str) -> tuple[Any, torch.Tensor]:
        """The operator and y of ``task`` for all N images (seeded as the demo)."""
        if task not in self.measurements:
            from ..app.demo import task_seed
            from ..core.tasks import make_operator, simulate

            g = torch.Generator().manual_seed(task_seed(self.cfg.seed, task))
            op = make_operator(task, len(self.truth), tuple(self.truth.shape[1:]), generator=g)
            self.measurements[task] = (op, simulate(op, self.truth, self.cfg.sigma_y, generator=g))
        return self.measurements[task]

    @property
    def bandwidth(self) -> float:
        """The MMD kernel bandwidth: the median pairwise distance of the truth images."""
        if self._bandwidth is None:
            z = self.truth.reshape(len(self.truth), -1).to(torch.float64)
            d = torch.cdist(z, z)
            iu = torch.triu_indices(len(z), len(z), offset=1)
            self._bandwidth = float(d[iu[0], iu[1]].median())
        return self._bandwidth

    @property
    def encoder_name(self) -> Optional[str]:
        """The encoder's name, with the first 12 hex digits of its weights' sha256 when its
        card has one (a retrained encoder then counts as another one)."""
        if self.encoder is None:
            return None
        card = getattr(self.encoder, "card", None)
        sha = card.get("sha256") if isinstance(card, dict) else None
        return f"{self.encoder.name}@{str(sha)[:12]}" if sha else str(self.encoder.name)

    def truth_features(self) -> torch.Tensor:
        if self._truth_feats is None:
            self._truth_feats = features(self.encoder, self.truth)
        return self._truth_feats

    def fingerprint(self) -> dict[str, Any]:
        """What a cached cell depends on: a rerun must match it to reuse the cache."""
        cfg = self.cfg
        return dict(protocol=PROTOCOL_VERSION, family=self.family,
                    models={k: (e.card.get("sha256") if e is not None else None) for k, e in self.entries.items()},
                    data_sha256=self.data["sha256"], images=cfg.images, samples=cfg.samples, batch=cfg.batch,
                    seed=cfg.seed, sigma_y=cfg.sigma_y, tuned=self.tuned, **self.sampler_fingerprint())

    def sampler_fingerprint(self) -> dict[str, Any]:
        """{eps_sampler: spec} when the eps cells use a sampler other than the legacy EDM Heun
        (so caches of earlier runs stay valid with ``--eps-sampler legacy`` and are never mixed
        with cells of another sampler); {} otherwise."""
        if self.cfg.scheduler is not None:  # eps and palette cells both sampled by the diffusers scheduler
            return dict(scheduler=self.cfg.scheduler)
        spec = parse_spec(self.cfg.eps_sampler) if self.cfg.eps_sampler is not None else DEFAULT
        return {} if spec == LEGACY else dict(eps_sampler=spec.name)

    def scheduler(self, kind: str) -> Any:
        """The diffusers scheduler of ``--scheduler`` built from the ``kind`` model's folder."""
        from ..backbones.scheduler_restore import load_scheduler

        if kind not in self.schedulers:
            self.schedulers[kind] = load_scheduler(self.entries[kind].path, self.cfg.scheduler)
        return self.schedulers[kind]


def find_encoder(model: str) -> tuple[Any, str]:
    """The family's feature encoder (or None) and a note why not."""
    try:
        from ..core.metrics import frechet_distance  # noqa: F401 - needed for FD
        from ..inference.zoo import find_encoder as _find
        from ..nets import encoder  # noqa: F401 - the encoder's architecture
    except ImportError as exc:
        return None, f"no encoder module ({exc.__class__.__name__}: {exc})"
    try:
        enc = _find(model)
    except Exception as exc:  # noqa: BLE001 - FD is optional; say why it is missing
        return None, f"the encoder could not be loaded ({exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
    return enc, "" if enc is not None else "this family has no encoder"


@torch.no_grad()
def features(encoder: Any, x: torch.Tensor, batch: int = 256) -> torch.Tensor:
    return torch.cat([encoder.features(x[i:i + batch]).detach().to(torch.float64).reshape(len(x[i:i + batch]), -1)
                      for i in range(0, len(x), batch)])


def load_setup(cfg: BenchConfig) -> Setup:
    """Resolve the model family, its networks' cards, the test images, the tuned settings and
    the encoder; ValueError (one line) when something is missing."""
    from ..io.images import to_float

    family, root = resolve_family(cfg.model)
    notices: list[str] = []
    prior = zoo.find_model(family, "prior", root)
    entries: dict[str, Any] = {"prior": prior}
    methods = list(cfg.methods)
    for kind in ("eps", "palette"):
        try:
            entries[kind] = zoo.find_model(family, kind, root)
        except zoo.ModelNotFound:
            entries[kind] = None
            if kind in methods:
                if cfg.methods_given:
                    raise
                methods.remove(kind)
                notices.append(f"model {family!r} has no {kind} network; {kind} is left out")
    if cfg.scheduler is not None:
        plain = [k for k in ("eps", "palette") if k in methods and entries[k] is not None and not zoo.is_diffusers(entries[k])]
        if plain:
            raise ValueError(f"--scheduler drives diffusers models' own schedulers; the {' and '.join(plain)} model of "
                             f"{family!r} is not a diffusers folder (drop --scheduler)")
    from ..inference.api import Model

    model = Model({k: e for k, e in entries.items() if e is not None}, family)
    imgs, data = load_test_images(cfg, family, root, prior.card, model.network("prior").config.image_size)
    tuned, tuned_path = load_tuned(cfg, prior.card.get("sha256"), notices)
    encoder, note = find_encoder(cfg.model)
    return Setup(cfg, family, root, entries, to_float(imgs), data, tuned, tuned_path, methods, notices,
                 encoder, note, model=model)


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
    from ..core.metrics import exchangeable_coverage, interval_coverage, mmd2_paired, rank_interval_coverage, restoration_scores, spread_skill

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
    parts = []
    for b, (i, j) in enumerate(batch_ranges(len(setup.truth), cfg.batch)):
        part = cache.load_partial(cell.key, b)
        if part is None:
            g = torch.Generator().manual_seed(batch_seed(cfg.seed, cell.task, cell.method, cell.nfe, b))
            t0 = time.perf_counter()
            res, settings = restore_batch(setup, cell, slice_operator(op, i, j), y[i:j], g)
            seconds = time.perf_counter() - t0
            part = dict(samples=res.samples.detach().float(),
                        mean=res.mean.detach().float() if res.nfe_mean else None,
                        info=dict(seconds=seconds, nfe_mean=int(res.nfe_mean), nfe_sample=int(res.nfe_sample),
                                  backward=int(res.settings.get("backward_passes_per_sample", 0)),
                                  sampler={k: v for k, v in res.settings.items() if k != "tuned"},
                                  tuned=settings))
            cache.save_partial(cell.key, b, part)
        parts.append(part)
        on_batch()
    samples = torch.cat([p["samples"] for p in parts], dim=1)
    net_mean = torch.cat([p["mean"] for p in parts]) if all(p["mean"] is not None for p in parts) else None
    info = parts[0]["info"]
    seconds = sum(p["info"]["seconds"] for p in parts)
    rec: dict[str, Any] = dict(key=cell.key, task=cell.task, method=cell.method, nfe_budget=cell.nfe,
                               nfe_sample=info["nfe_sample"], nfe_mean=info["nfe_mean"],
                               backward_passes=info["backward"], images=len(setup.truth), samples=cfg.samples,
                               batch=cfg.batch, seconds=seconds, seconds_per_image=seconds / len(setup.truth),
                               sampler=info["sampler"], tuned=info["tuned"] or None)
    rec.update(score_cell(setup, samples, net_mean))
    cache.add(rec, samples[0])
    return rec


def time_bare(setup: Setup, nfe: int) -> dict[str, Any]:
    """Wall time of the bare unconditional sampler at budget ``nfe``: K samples of one batch
    (module docstring)."""
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
    return dict(key=bare_key(nfe), kind="bare", nfe_budget=nfe, nfe_sample=used, batch=b, samples=cfg.samples,
                seconds=seconds, seconds_per_image=seconds / b)


# --- cache ------------------------------------------------------------------------------
class Cache:
    """``PREFIX.cache/``: ``cells.jsonl`` (a header line with the fingerprint, then one JSON
    record per finished cell or bare timing, appended and fsynced; a torn last line is
    ignored; a later record of a key replaces an earlier one), ``partial/<key>/batch_<b>.npz``
    (finished batches of an unfinished cell) and ``firsts/<key>.npy`` (each cell's first
    samples, float32 [N, C, H, W], for recomputing FD)."""

    def __init__(self, prefix: str, header: dict[str, Any], fresh: bool):
        self.dir = Path(prefix + ".cache")
        self.partial_dir = self.dir / "partial"
        self.firsts_dir = self.dir / "firsts"
        self.log = RecordLog(self.dir, header, fresh, on_clear=self.clear)
        self.path, self.records = self.log.path, self.log.records

    def clear(self) -> None:
        for d in (self.partial_dir, self.firsts_dir):
            if d.is_dir():
                shutil.rmtree(d)

    def _partial_path(self, key: str, b: int) -> Path:
        return self.partial_dir / key / f"batch_{b:05d}.npz"

    def load_partial(self, key: str, b: int) -> Optional[dict[str, Any]]:
        path = self._partial_path(key, b)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                info = json.loads(str(z["info"]))
                mean = torch.from_numpy(z["mean"]) if bool(z["has_mean"]) else None
                return dict(samples=torch.from_numpy(z["samples"]), mean=mean, info=info)
        except Exception:  # noqa: BLE001 - a damaged batch file is recomputed
            return None

    def save_partial(self, key: str, b: int, part: dict[str, Any]) -> None:
        mean = part["mean"]
        arrays = dict(samples=part["samples"].numpy(), has_mean=np.array(mean is not None),
                      mean=(mean.numpy() if mean is not None else np.zeros(0, np.float32)),
                      info=np.array(json.dumps(part["info"])))
        write_atomic(self._partial_path(key, b), lambda f: np.savez(f, **arrays))

    def firsts_path(self, key: str) -> Path:
        return self.firsts_dir / f"{key}.npy"

    def load_firsts(self, key: str) -> Optional[torch.Tensor]:
        path = self.firsts_path(key)
        return torch.from_numpy(np.load(path, allow_pickle=False)) if path.is_file() else None

    def merge_from(self, prefix: str) -> int:
        """Fold in the finished cells of ``prefix.cache/`` (same header, else ValueError naming
        what differs); keys this cache holds keep their own records. Returns how many came in."""
        src_dir = Path(prefix + ".cache")
        old = read_header(src_dir)
        if old != self.log.header:
            raise ValueError(f"--merge {prefix}: its cells were measured with other settings "
                             f"({header_difference(old, self.log.header)}); merge only runs of the same models, "
                             f"images, samples, batch, seed and sigma_y")
        other = RecordLog(src_dir, self.log.header["header"], fresh=False)
        added = 0
        for key, rec in other.records.items():
            if key in self.records:
                continue
            src = src_dir / "firsts" / f"{key}.npy"
            if src.is_file():
                data = src.read_bytes()
                write_atomic(self.firsts_path(key), lambda f: f.write(data))
            self.add(rec)
            added += 1
        return added

    def add(self, rec: dict[str, Any], firsts: Optional[torch.Tensor] = None) -> None:
        if firsts is not None:
            arr = firsts.detach().float().numpy()
            write_atomic(self.firsts_path(rec["key"]), lambda f: np.save(f, arr, allow_pickle=False))
        self.log.append(rec)
        part = self.partial_dir / rec["key"]
        if part.is_dir():
            shutil.rmtree(part)


# --- reports ----------------------------------------------------------------------------
#: table columns: (record field, header, format, higher is better (None: not ranked))
COLUMNS = (("psnr", "PSNR", "{:.2f}", True), ("ssim", "SSIM", "{:.3f}", True), ("crps", "CRPS", "{:.4f}", False),
           ("fd", "FD", "{:.2f}", False))


def rows_of(setup: Setup, cache: Cache) -> list[dict[str, Any]]:
    """The run's cell records in table order, each with its cost ratio to the bare sampler."""
    rows = []
    for cell in cells_of(setup.cfg, setup.methods):
        rec = cache.records.get(cell.key)
        if rec is None:
            continue
        row = dict(rec)
        bare = cache.records.get(bare_key(cell.nfe))
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


def markdown(setup: Setup, rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """The report: the table (paper layout, best per task in bold) with its notes and command."""
    cfg = setup.cfg
    d = setup.data
    enc = setup.encoder_name
    split = f", split {','.join(map(str, d['split']))}" if d.get("split") else ""
    key = f", array {d['key']}" if d.get("key") else ""
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
         "| task | method | NFE | PSNR | SSIM | CRPS | FD | cov80 (ref) | spread/skill | s / image | cost ratio |",
         "|---|---|---|---|---|---|---|---|---|---|---|"]
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
                     + f" | {r['seconds_per_image']:.3f} | {ratio} |")
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
          f"{min(cfg.batch, cfg.images)}, timed in this run).", ""]
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


def _refresh_fd(setup: Setup, cache: Cache) -> None:
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
    cache = Cache(cfg.out, setup.fingerprint(), cfg.fresh)
    for other in cfg.merge:
        print(f"merged {cache.merge_from(other)} finished cells from {other}.cache")
    cells = cells_of(cfg, setup.methods)
    pending = [c for c in cells if c.key not in cache.records]
    budgets = sorted({c.nfe for c in cells})
    bare_pending = [n for n in budgets if bare_key(n) not in cache.records] if cfg.bare else []
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
    _refresh_fd(setup, cache)
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
               bare=[cache.records[bare_key(n)] for n in budgets if bare_key(n) in cache.records], cells=rows)
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

