"""The image benchmark's protocol and command line: its constants, the options, BenchConfig,
and the cells (task, method, NFE) a run measures, with their seeds and batches."""

from __future__ import annotations

import argparse
import math
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence


from ..app import argtypes
from ..inference import zoo
from ..core.sampler_spec import parse_spec
from .gmm_bench import derived_seed

#: bump when the protocol changes, so old caches are not mixed with new cells (2: the models,
#: tuned settings and sampler moved from the header into each cell's ``depends``; protocol-1
#: caches are converted on opening, images_cache.convert_legacy)
PROTOCOL_VERSION = 2
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
    parser.add_argument("--nfe", type=argtypes.int_list(), default=None,
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
    parser.add_argument("--test-split", type=argtypes.int_list(), default=None,
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


def bare_key(nfe: int, cpu: Optional[str] = None) -> str:
    """The cache key of the bare sampler's timing at budget ``nfe`` on the CPU labelled ``cpu``
    (:func:`exactpost.bench.machine.cpu_label`); ``None``: a timing from before CPUs were recorded."""
    from .machine import slug

    return f"bare__nfe{nfe}" if cpu is None else f"bare__nfe{nfe}__{slug(cpu)}"


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
