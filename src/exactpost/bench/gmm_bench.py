"""``exactpost bench gmm``: the Gaussian-mixture (MCGdiff) benchmark against exact posteriors.

Protocol (Cardoso et al. 2024, "MCGdiff", section on Gaussian mixtures; the construction is
:func:`exactpost.priors.gmm.mcgdiff_problem`): for every setting (d, dy), ``--problems`` independent
problems, each with

* a prior p(x0) = sum_{k=1..25} w_k N(x0; m_k, I), means on {-16,-8,0,8,16}^2 repeated over
  the d dimensions, w_k proportional to |N(0, 1)|^2 (redrawn per problem);
* a Gaussian A [dy, d] whose singular values are replaced by sorted U(0, 1) draws,
  sigma_y = U(0, 1) * s_max, y = A x0 + sigma_y n with x0 a prior draw;
* its exact posterior (again a 25-component mixture, :meth:`GaussianMixture.posterior`).

Per problem a *reference* set R of n exact posterior draws and L random unit directions
theta_l (shared by every method on that problem) are fixed; then every method draws
``--repeats`` independent sets of n samples X (each one batch, y repeated), each set is
scored by

* the sliced 2-Wasserstein distance to the reference,
  SW_2(X, R) = ( (1/L) sum_l W_2^2(<theta_l, X>, <theta_l, R>) )^{1/2}
  (:func:`exactpost.core.metrics.sliced_wasserstein`);
* the 90 % credible-interval coverage: with [q_lo,i, q_hi,i] the empirical
  (1 - level)/2 and (1 + level)/2 quantiles of coordinate i of X (``torch.quantile``),

      coverage = (1 / (n d)) sum_{j=1..n} sum_{i=1..d} 1[ q_lo,i <= R_ji <= q_hi,i ],

  i.e. the probability that a fresh *exact posterior* draw lies in the method's per-coordinate
  central interval, estimated with the n reference draws (the same number as
  :func:`exactpost.core.metrics.interval_coverage` with every reference draw as a truth). A
  calibrated sampler scores ``level`` up to the O(1/n) bias of empirical quantiles
  ((k_hi - k_lo)/(n + 1) for order statistics k); too narrow intervals score less, too wide
  ones more. (Using the one true x0 behind y instead would be an equally valid truth, but
  with one Bernoulli draw per coordinate and problem instead of n.)

and a cell's scores are the means over its sets (with well-separated modes the number of
draws landing in a light mode fluctuates, and one set's SW scatters by tens of percent).
The **noise floor** (method ``exact``) is the same pair of scores for ``--repeats`` further
independent sets of n exact posterior draws: what a perfect sampler scores with n samples.

Methods, all at each NFE budget of ``--nfe`` and all starting from ``--sigma-max``:

* ``eps-oracle``: EPS with the exact mixture oracle as the network
  (:class:`exactpost.priors.gmm.GMMEPSOracle`): the 1-NFE posterior mean at sigma_max, then each
  sampler of ``--eps-sampler`` (:mod:`exactpost.core.sampler_spec`; default
  :data:`~exactpost.core.sampler_spec.DEFAULT`) started around it with the remaining nfe - 1
  evaluations (EDM Heun with K levels uses 2 K - 1, so an even budget leaves one unused);
  one table row per sampler, the first one is the row the checks read;
* ``eps-mlp`` (``--learned``, d in {8, 80} only): EDM Heun (the legacy sampler) with a small MLP trained
  per problem by the EPS objective (:func:`exactpost.bench.gmm_learned.train_mlp`,
  ``--mlp-steps`` Adam steps of batch 512, width 256 x 3; its training time is reported);
* ``zero-shot-pivot``, ``dps``, ``pigdm``, ``ddnm``, ``ddrm``, ``daps``, ``mpgd``: the
  registry's baselines (:func:`exactpost.baselines.run_method`) with their documented
  default settings, the *exact* prior denoiser E[x0 | x_t] of the mixture as their network
  (EDM interpolant), ``nfe`` as the budget and ``sigma_max`` overridden by ``--sigma-max``.

Each table entry is the mean over problems with a 1.96 standard-error half-width,
mean +- 1.96 sd / sqrt(P) (sd with P - 1 degrees of freedom); the ratio column is
mean SW / mean noise floor of the setting.

Reproducibility and resumption: every problem, reference set and method run has its own
generator, seeded from (``--seed``, d, dy, problem, method, nfe), so a cell's numbers do not
depend on which other cells are run (EPS samplers of one budget share their random numbers).
A cell of an EPS sampler other than the legacy one (EDM Heun, rho 7, sigma_min 0.002) has
the sampler in its key, ``eps-oracle[SPEC]``, so legacy cells of earlier runs are reused. Each finished cell (setting, problem, method, nfe) is
appended to ``PREFIX.cache/cells.jsonl`` at once; a rerun with the same scoring options skips
them (a killed run continues where it stopped; adding settings, problems, methods or budgets
reuses what is there), and a rerun with different scoring options stops with one line unless
``--fresh`` discards the cache. Outputs: ``PREFIX.json`` and ``PREFIX.md`` (atomic writes),
and with ``--save-samples PATH.npz`` every sample set together with the prior, A, y, sigma_y,
the reference set and the projection directions, so the distances can be recomputed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import shlex
import statistics
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

from ..app import argtypes
from ..priors.gmm import GaussianMixture, GMMProblem, mcgdiff_problem
from ..io.atomic import write_atomic
from ..io.images import save_text
from ..core.interpolants import EDM
from ..core.metrics import random_directions, sliced_wasserstein
from ..operators import DenseOperator
from ..core.sampler_spec import DEFAULT, LEGACY, parse_specs
from .gmm_eval import eps_oracle_spec_draw
from .records import RecordLog, json_safe

#: the reference sampler whose scores are the noise floor
FLOOR = "exact"
#: EPS with the exact oracle network
ORACLE = "eps-oracle"
#: EPS with a small MLP trained by the EPS objective (``--learned``)
LEARNED = "eps-mlp"
#: the zero-shot baselines of :mod:`exactpost.baselines`, in table order
BASELINES = ("zero-shot-pivot", "dps", "pigdm", "ddnm", "ddrm", "daps", "mpgd")
#: ``--methods all``
ALL_METHODS = (ORACLE,) + BASELINES
#: dimensions for which ``--learned`` trains a network
LEARNED_DIMS = (8, 80)
#: bump when the protocol changes, so old caches are not mixed with new cells
PROTOCOL_VERSION = 1
SIGMA_MIN = 0.002  # EPS samplers' last noise level (the baselines keep their own default)
Z = 1.96


# --- command line ---------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``exactpost bench gmm`` to ``parser``."""
    parser.add_argument("--dims", type=argtypes.int_list(), default=[8, 80, 800],
                        help="comma-separated dimensions d (even; default 8,80,800; 800 is slow)")
    parser.add_argument("--dys", type=argtypes.int_list(), default=[1, 2, 4],
                        help="comma-separated measurement sizes dy (default 1,2,4)")
    parser.add_argument("--problems", type=argtypes.int_range(1), default=20, help="problems per setting (default 20)")
    parser.add_argument("--nfe", type=argtypes.int_list(), default=[20, 100],
                        help="comma-separated NFE budgets (default 20,100)")
    parser.add_argument("--methods", default="all",
                        help=f"comma-separated methods or 'all' ({', '.join(ALL_METHODS)}); the noise "
                             f"floor is always measured")
    parser.add_argument("--eps-sampler", default=DEFAULT.name, metavar="SPEC[,SPEC...]",
                        help=f"EPS sampler(s) of eps-oracle, comma-separated specs "
                             f"SOLVER[:SCHEDULE][:rho=R][:smin=S][:start=T][:churn=C][:eta=E] "
                             f"(exactpost.core.sampler_spec; 'default' = {DEFAULT.name}, 'legacy' = {LEGACY.name}); "
                             f"one row each, the first is checked")
    parser.add_argument("--learned", action="store_true",
                        help=f"add {LEARNED}: an MLP trained per problem by the EPS objective "
                             f"(d in {{8, 80}} only; ~20-50 s of training per problem on one CPU thread; default: off)")
    parser.add_argument("--mlp-steps", type=argtypes.int_range(1), default=3000, help="Adam steps per MLP (default 3000)")
    parser.add_argument("--samples", type=argtypes.int_range(2), default=2000,
                        help="samples per set, also the reference set size (default 2000)")
    parser.add_argument("--repeats", type=argtypes.int_range(1), default=3,
                        help="independent sample sets per method and problem, SW and coverage averaged "
                             "(default 3; one set's SW scatters by tens of percent with well-separated modes)")
    parser.add_argument("--projections", type=argtypes.int_range(1), default=200,
                        help="random directions of the sliced Wasserstein distance (default 200)")
    parser.add_argument("--level", type=argtypes.float_range(0.0, 1.0, lo_open=True), default=0.9,
                        help="credible-interval level, in (0, 1] (default 0.9)")
    parser.add_argument("--sigma-max", type=argtypes.float_range(0.0, lo_open=True), default=1000.0,
                        help="initial noise level of every method (default 1000; the prior's scale is 16)")
    parser.add_argument("--seed", type=argtypes.seed(), default=0, help="random seed of the problems and samplers, "
                                                                               "0..4294967295 (default 0)")
    parser.add_argument("--out", default="gmm_bench",
                        help="output prefix: PREFIX.json, PREFIX.md and the cache PREFIX.cache/ (default gmm_bench)")
    parser.add_argument("--save-samples", default=None, metavar="PATH.npz",
                        help="also write every sample set with the prior, A, y, sigma_y, reference and directions "
                             "(default: not written)")
    parser.add_argument("--fresh", action="store_true",
                        help="discard a cache made with different options instead of stopping (default: stop)")
    parser.add_argument("--threads", type=argtypes.int_range(0), default=0,
                        help="torch CPU threads, >= 0 (default: 0 = torch's choice)")
    parser.add_argument("--no-progress", action="store_true", help="do not show the progress bar (default: shown)")


# --- configuration ----------------------------------------------------------------------
@dataclass
class BenchConfig:
    """Validated options. ``scoring()`` lists those that change a cell's numbers."""

    dims: list[int]
    dys: list[int]
    problems: int
    nfe: list[int]
    methods: list[str]
    eps_samplers: list[str] = None  # spec names; None: [DEFAULT.name]
    learned: bool = False
    mlp_steps: int = 3000
    samples: int = 2000
    repeats: int = 3
    projections: int = 200
    level: float = 0.9
    sigma_max: float = 1000.0
    seed: int = 0
    out: str = "gmm_bench"
    save_samples: str | None = None
    fresh: bool = False
    threads: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        if self.eps_samplers is None:
            self.eps_samplers = [DEFAULT.name]

    def scoring(self) -> dict[str, Any]:
        """The options a cached cell depends on (a rerun must match them to reuse it)."""
        return dict(protocol=PROTOCOL_VERSION, seed=self.seed, samples=self.samples, repeats=self.repeats,
                    projections=self.projections, level=self.level, sigma_max=self.sigma_max,
                    mlp_steps=self.mlp_steps)

    def command(self) -> str:
        """The equivalent command line (every option spelled out)."""
        parts = ["exactpost", "bench", "gmm", "--dims", _join(self.dims), "--dys", _join(self.dys),
                 "--problems", str(self.problems), "--nfe", _join(self.nfe),
                 "--methods", ",".join(self.methods)]
        if ORACLE in self.methods:
            parts += ["--eps-sampler", ",".join(self.eps_samplers)]
        if self.learned:
            parts.append("--learned")
        if self.learned or self.mlp_steps != 3000:  # part of the cache's scoring options
            parts += ["--mlp-steps", str(self.mlp_steps)]
        parts += ["--samples", str(self.samples), "--repeats", str(self.repeats), "--projections", str(self.projections),
                  "--level", f"{self.level:g}", "--sigma-max", f"{self.sigma_max:g}", "--seed", str(self.seed),
                  "--out", self.out]
        if self.save_samples:
            parts += ["--save-samples", self.save_samples]
        if self.threads:
            parts += ["--threads", str(self.threads)]
        return " ".join(shlex.quote(p) for p in parts)


def _join(values: Iterable[int]) -> str:
    return ",".join(str(v) for v in values)


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    """Check the parsed options; ValueError (one line) for a bad value."""
    if args.methods.strip() == "all":
        methods = list(ALL_METHODS)
    else:
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    known = set(ALL_METHODS) | {LEARNED}
    bad = [m for m in methods if m not in known]
    if bad or not methods:
        raise ValueError(f"--methods: unknown {', '.join(bad) or '(none given)'}; choose from "
                         f"{', '.join(ALL_METHODS + (LEARNED,))} or 'all'")
    learned = bool(args.learned) or LEARNED in methods
    methods = [m for m in dict.fromkeys(methods) if m != LEARNED]
    if learned:
        methods.append(LEARNED)
    for d in args.dims:
        if d < 2 or d % 2:
            raise ValueError(f"--dims: every d must be even and >= 2 (the MCGdiff mixture), got {d}")
    for dy in args.dys:
        if not 1 <= dy <= min(args.dims):
            raise ValueError(f"--dys: every dy must be in [1, min(d)] = [1, {min(args.dims)}], got {dy}")
    if args.problems < 1:
        raise ValueError(f"--problems must be >= 1, got {args.problems}")
    if min(args.nfe) < 2:
        raise ValueError(f"--nfe: every budget must be >= 2 (EPS: one Heun step + the mean start), got {min(args.nfe)}")
    if "daps" in methods and min(args.nfe) < 5:
        raise ValueError(f"--nfe: daps needs a budget >= 5 (5 ODE evaluations per annealing step), got {min(args.nfe)}")
    if args.samples < 10:
        raise ValueError(f"--samples must be >= 10 (quantiles and sorted projections), got {args.samples}")
    if args.projections < 1 or args.mlp_steps < 1 or args.repeats < 1:
        raise ValueError("--repeats, --projections and --mlp-steps must be >= 1")
    if not 0 < args.level < 1:
        raise ValueError(f"--level must be in (0, 1), got {args.level}")
    if not args.sigma_max > SIGMA_MIN * 10:
        raise ValueError(f"--sigma-max must be > {SIGMA_MIN * 10}, got {args.sigma_max}")
    eps_samplers = [spec.name for spec in parse_specs(args.eps_sampler)]
    if args.save_samples and not str(args.save_samples).endswith(".npz"):
        raise ValueError(f"--save-samples must name an .npz file, got {args.save_samples!r}")
    return BenchConfig(dims=list(dict.fromkeys(args.dims)), dys=list(dict.fromkeys(args.dys)),
                       problems=args.problems, nfe=sorted(set(args.nfe)), methods=methods,
                       eps_samplers=eps_samplers, learned=learned,
                       mlp_steps=args.mlp_steps, samples=args.samples, repeats=args.repeats, projections=args.projections,
                       level=float(args.level), sigma_max=float(args.sigma_max), seed=args.seed, out=args.out,
                       save_samples=args.save_samples, fresh=bool(args.fresh), threads=args.threads,
                       progress=not args.no_progress)


# --- cells ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cell:
    """One measurement: ``method`` at budget ``nfe`` (0 for the noise floor) on problem
    ``problem`` of setting (d, dy); ``sampler``: the EPS sampler spec of eps-oracle cells
    ("" otherwise)."""

    d: int
    dy: int
    problem: int
    method: str
    nfe: int
    sampler: str = ""

    @property
    def variant(self) -> str:
        """``method``, or ``method[SPEC]`` for an EPS sampler other than the legacy one (the
        table row and the key; legacy cells keep the key they had before samplers were
        options)."""
        return f"{self.method}[{self.sampler}]" if self.sampler and self.sampler != LEGACY.name else self.method

    @property
    def setting(self) -> tuple[int, int]:
        return (self.d, self.dy)

    @property
    def problem_key(self) -> str:
        return f"d{self.d}_dy{self.dy}_p{self.problem}"

    @property
    def key(self) -> str:
        return f"{self.problem_key}__{self.variant}_nfe{self.nfe}"


def cells_of(cfg: BenchConfig) -> list[Cell]:
    """Every cell of the run, grouped by problem (floor first)."""
    out = []
    for d in cfg.dims:
        for dy in cfg.dys:
            for p in range(cfg.problems):
                out.append(Cell(d, dy, p, FLOOR, 0))
                for m in cfg.methods:
                    if m == LEARNED and d not in LEARNED_DIMS:
                        continue
                    specs = cfg.eps_samplers if m == ORACLE else [""]
                    out += [Cell(d, dy, p, m, nfe, spec) for spec in specs for nfe in cfg.nfe]
    return out


def derived_seed(*parts: Any) -> int:
    """A 63-bit seed from ``parts`` (stable across processes and Python versions)."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def _gen(*parts: Any) -> torch.Generator:
    return torch.Generator().manual_seed(derived_seed(*parts))


@dataclass
class ProblemContext:
    """A problem with its reference set and projection directions (and, lazily, its MLP)."""

    index: tuple[int, int, int]  # (d, dy, problem)
    problem: GMMProblem
    reference: torch.Tensor  # [n, d]
    directions: torch.Tensor  # [d, L]
    mlp: Any = None
    mlp_seconds: float = 0.0


def make_context(cfg: BenchConfig, d: int, dy: int, p: int) -> ProblemContext:
    """Problem p of setting (d, dy): the MCGdiff construction, its n reference draws and L
    directions, each from its own seeded generator."""
    problem = mcgdiff_problem(d, dy, _gen(cfg.seed, "problem", d, dy, p))
    g = _gen(cfg.seed, "reference", d, dy, p)
    reference = exact_sample(problem.posterior, cfg.samples, g)
    directions = random_directions(d, cfg.projections, g)
    return ProblemContext((d, dy, p), problem, reference, directions)


def exact_sample(mixture: GaussianMixture, n: int, g: torch.Generator) -> torch.Tensor:
    """n exact draws [n, d] of a mixture (:meth:`GaussianMixture.sample`, O(n d) memory)."""
    return mixture.sample(n, g)


def coverage(samples: torch.Tensor, reference: torch.Tensor, level: float = 0.9) -> float:
    """(1/(R d)) sum_j sum_i 1[q_lo,i <= reference_ji <= q_hi,i] with q_lo, q_hi the
    (1 -+ level)/2 empirical quantiles of coordinate i of ``samples`` [n, d]; reference
    [R, d] (module docstring)."""
    x = samples.detach().to(torch.float64)
    r = reference.detach().to(torch.float64)
    q = torch.quantile(x, torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64), dim=0)
    return float(((r >= q[0]) & (r <= q[1])).double().mean())


def draw(cfg: BenchConfig, ctx: ProblemContext, method: str, nfe: int, g: torch.Generator,
         sampler: str = "") -> tuple[torch.Tensor, int]:
    """One set of n samples [n, d] of ``method`` at budget ``nfe`` on the context's problem
    (eps-oracle with the sampler spec ``sampler``, default the legacy one), and the NFE used
    per sample."""
    pb, n = ctx.problem, cfg.samples
    if method == FLOOR:
        return exact_sample(pb.posterior, n, g), 0
    if method in (ORACLE, LEARNED):
        used: list[int] = []
        steps = max(1, nfe // 2)  # Heun: 2 steps - 1 NFE, plus the 1-NFE mean start
        if method == ORACLE:
            spec = parse_specs(sampler or LEGACY.name)[0]
            fn = eps_oracle_spec_draw(pb, spec, nfe, cfg.sigma_max, EDM(), nfe_out=used)
        else:
            from .gmm_learned import learned_draw

            fn = learned_draw(pb, _mlp(cfg, ctx), "eps", steps, cfg.sigma_max, SIGMA_MIN, nfe_out=used)
        x = fn(n, g)
        return x, used[-1]
    from ..baselines import run_method

    res = run_method(method, pb.prior.denoiser(EDM()), DenseOperator(pb.A), pb.y.expand(n, -1), pb.sigma_y,
                     interpolant=EDM(), nfe=nfe, generator=g, sigma_max=cfg.sigma_max)
    return res.x0.detach().reshape(n, -1), int(res.nfe)


def _mlp(cfg: BenchConfig, ctx: ProblemContext):
    """The problem's EPS-trained MLP (trained on first use)."""
    if ctx.mlp is None:
        from .gmm_learned import MLPTraining, train_mlp

        pb = ctx.problem
        t0 = time.perf_counter()
        ctx.mlp = train_mlp(pb.prior, pb.A, pb.sigma_y, "eps",
                            MLPTraining(steps=cfg.mlp_steps, sigma_max=cfg.sigma_max),
                            _gen(cfg.seed, "mlp", *ctx.index))
        ctx.mlp_seconds = time.perf_counter() - t0
    return ctx.mlp


def run_cell(cfg: BenchConfig, ctx: ProblemContext, cell: Cell) -> tuple[dict[str, Any], torch.Tensor]:
    """Measure one cell: (its record, its samples [repeats, n, d]). The cell's SW and
    coverage are the means over its ``repeats`` independent sets (one generator, drawn in
    turn); None when a set has non-finite values."""
    g = _gen(cfg.seed, "cell", cell.d, cell.dy, cell.problem, cell.method, cell.nfe)
    t0 = time.perf_counter()
    train_before = ctx.mlp_seconds if ctx.mlp is not None else None
    sets = []
    for _ in range(cfg.repeats):
        x, nfe_used = draw(cfg, ctx, cell.method, cell.nfe, g, cell.sampler)
        sets.append(x.detach().to(torch.float64))
    xs = torch.stack(sets)
    seconds = time.perf_counter() - t0
    rec: dict[str, Any] = dict(key=cell.key, d=cell.d, dy=cell.dy, problem=cell.problem, method=cell.method,
                               nfe_budget=cell.nfe, nfe=nfe_used)
    if cell.sampler:
        rec["sampler"] = cell.sampler
    finite = bool(torch.isfinite(xs).all())
    rec["sw"] = statistics.fmean(sliced_wasserstein(x, ctx.reference, directions=ctx.directions)
                                 for x in xs) if finite else None
    rec["coverage"] = statistics.fmean(coverage(x, ctx.reference, cfg.level) for x in xs) if finite else None
    if cell.method == LEARNED and train_before is None:
        rec["train_seconds"] = ctx.mlp_seconds
        seconds -= ctx.mlp_seconds
    rec["seconds"] = seconds
    return rec, xs


# --- cache ------------------------------------------------------------------------------
class Cache:
    """``PREFIX.cache/cells.jsonl``: a header line with the scoring options, then one JSON
    record per finished cell (appended and fsynced at once; a torn last line is ignored);
    sample sets in ``PREFIX.cache/samples/<key>.npy`` when they are to be saved."""

    def __init__(self, cfg: BenchConfig):
        self.dir = Path(cfg.out + ".cache")
        self.samples_dir = self.dir / "samples"
        self.log = RecordLog(self.dir, cfg.scoring(), cfg.fresh, on_clear=self._clear)
        self.path, self.records = self.log.path, self.log.records

    def _clear(self) -> None:
        if self.samples_dir.is_dir():
            for f in self.samples_dir.glob("*.npy"):
                f.unlink()

    def sample_path(self, key: str) -> Path:
        return self.samples_dir / f"{key}.npy"

    def done(self, cell: Cell, need_samples: bool) -> bool:
        return cell.key in self.records and (not need_samples or self.sample_path(cell.key).exists())

    def add(self, rec: dict[str, Any], samples: torch.Tensor | None) -> None:
        if samples is not None:
            self.samples_dir.mkdir(parents=True, exist_ok=True)
            arr = samples.detach().to(torch.float64).numpy()
            write_atomic(self.sample_path(rec["key"]), lambda f: np.save(f, arr, allow_pickle=False))
        self.log.append(rec)


# --- aggregation ------------------------------------------------------------------------
def mean_ci(values: Sequence[float]) -> tuple[float, float]:
    """(mean, 1.96 sd / sqrt(P)) of P values, sd with P - 1 degrees of freedom; the
    half-width is nan for P < 2."""
    vals = [float(v) for v in values]
    if not vals:
        return math.nan, math.nan
    m = statistics.fmean(vals)
    if len(vals) < 2:
        return m, math.nan
    return m, Z * statistics.stdev(vals) / math.sqrt(len(vals))


def aggregate(cfg: BenchConfig, records: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (d, dy, method variant, nfe budget) over the run's problems: SW and
    coverage mean +- 1.96 SE, ratio to the setting's mean floor, NFE used, seconds per problem.
    ``variant`` is :attr:`Cell.variant`; ``sampler`` the EPS sampler spec ("" for others)."""
    groups: dict[tuple, list[dict]] = {}
    for cell in cells_of(cfg):
        rec = records.get(cell.key)
        if rec is not None:
            groups.setdefault((cell.d, cell.dy, cell.method, cell.sampler, cell.nfe), []).append(rec)
    floors = {(d, dy): mean_ci([r["sw"] for r in recs])[0]
              for (d, dy, m, _, _), recs in groups.items() if m == FLOOR}
    rows = []
    for (d, dy, method, sampler, nfe), recs in groups.items():
        ok = [r for r in recs if r["sw"] is not None]
        sw, sw_ci = mean_ci([r["sw"] for r in ok])
        cov, cov_ci = mean_ci([r["coverage"] for r in ok])
        floor = floors.get((d, dy), math.nan)
        row = dict(d=d, dy=dy, method=method, sampler=sampler,
                   variant=Cell(d, dy, 0, method, nfe, sampler).variant, nfe_budget=nfe, nfe=max(r["nfe"] for r in recs),
                   problems=len(recs), failed=len(recs) - len(ok), sw=sw, sw_ci=sw_ci, floor=floor,
                   ratio=sw / floor if floor and not math.isnan(floor) else math.nan,
                   coverage=cov, coverage_ci=cov_ci, seconds=statistics.fmean(r["seconds"] for r in recs))
        rows.append(row)
    return rows


def checks(cfg: BenchConfig, rows: list[dict[str, Any]], tol: float = 1.3, cov_tol: float = 0.02) -> dict[str, Any]:
    """The issues' targets, evaluated on the rows of EPS-oracle with the first sampler of
    ``--eps-sampler`` (each None when its rows are missing): within ``tol`` x the noise floor in
    every setting at the largest budget, and at 20 NFE when 20 is a smaller budget of the run;
    its SW at the largest budget below every baseline's (at every budget) in every setting; its
    coverage there within ``cov_tol`` of the level."""
    if ORACLE not in cfg.methods:
        return {}
    top = max(cfg.nfe)
    eps = Cell(0, 0, 0, ORACLE, top, cfg.eps_samplers[0]).variant
    by = {(r["d"], r["dy"], r.get("variant", r["method"]), r["nfe_budget"]): r for r in rows}
    settings = [(d, dy) for d in cfg.dims for dy in cfg.dys if (d, dy, eps, top) in by]
    budgets = [top] + ([20] if 20 in cfg.nfe and top != 20 else [])
    far: dict[int, list[str]] = {nfe: [] for nfe in budgets}
    beaten, off = [], []
    for d, dy in settings:
        o = by[(d, dy, eps, top)]
        for nfe in budgets:
            r = by.get((d, dy, eps, nfe))
            if r is None or not r["ratio"] <= tol:
                far[nfe].append(f"d={d} dy={dy}: {r['ratio']:.2f}" if r else f"d={d} dy={dy}: missing")
        for m in BASELINES:
            for nfe in cfg.nfe:
                b = by.get((d, dy, m, nfe))
                if b is not None and not o["sw"] < b["sw"]:
                    beaten.append(f"d={d} dy={dy}: {m}@{nfe} {b['sw']:.3g} <= {o['sw']:.3g}")
        if not abs(o["coverage"] - cfg.level) <= cov_tol:
            off.append(f"d={d} dy={dy}: {o['coverage']:.3f}")
    if not settings:
        return {}
    out = {f"eps-oracle within {tol}x the noise floor at {nfe} NFE": dict(ok=not far[nfe], failures=far[nfe])
           for nfe in budgets}
    return {**out, "eps-oracle below every baseline": dict(ok=not beaten, failures=beaten),
            f"eps-oracle coverage within {cov_tol} of {cfg.level:g}": dict(ok=not off, failures=off)}


# --- reports ----------------------------------------------------------------------------
def _fmt(v: float, ci: float | None = None, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    s = f"{v:.{digits}g}" if abs(v) >= 1e-3 else f"{v:.2e}"
    if ci is not None and not math.isnan(ci):
        s += f" ± {ci:.2g}"
    return s


def _row_order(cfg: BenchConfig) -> list[tuple[str, str, int]]:
    """(variant, label stem, nfe) of the table rows in order."""
    out = [(FLOOR, FLOOR, 0)]
    for m in cfg.methods:
        for spec in (cfg.eps_samplers if m == ORACLE else [""]):
            cell = Cell(0, 0, 0, m, 0, spec)
            stem = f"{m} [{spec}]" if spec else m
            out += [(cell.variant, stem, nfe) for nfe in cfg.nfe]
    return out


def _label(method: str, nfe: int, nfe_used: int | None) -> str:
    if method == FLOOR:
        return "exact posterior (noise floor)"
    return f"{method} @ {nfe}" + (f" ({nfe_used} NFE)" if nfe_used is not None and nfe_used != nfe else "")


def markdown(cfg: BenchConfig, rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """The report: protocol, three tables (SW, ratio, coverage; rows method @ NFE budget,
    columns settings) and the checks."""
    settings = [(d, dy) for d in cfg.dims for dy in cfg.dys]
    by = {(r["d"], r["dy"], r.get("variant", r["method"]), r["nfe_budget"]): r for r in rows}
    head = "| method @ NFE | " + " | ".join(f"d={d}, dy={dy}" for d, dy in settings) + " |"
    sep = "|---|" + "---|" * len(settings)

    def table(value: Callable[[dict], str]) -> list[str]:
        lines = [head, sep]
        for variant, stem, nfe in _row_order(cfg):
            cells = [by.get((d, dy, variant, nfe)) for d, dy in settings]
            if not any(cells):
                continue
            used = {c["nfe"] for c in cells if c}
            label = _label(stem, nfe, used.pop() if len(used) == 1 else None)
            lines.append(f"| {label} | " + " | ".join(value(c) if c else "-" for c in cells) + " |")
        return lines

    L = [f"# Gaussian-mixture posterior benchmark (MCGdiff protocol)", "",
         f"`{meta['command']}`", "",
         f"{meta['date']}, torch {meta['torch']}, {meta['threads']} thread(s); {meta['compute_seconds']:.0f} s of "
         f"sampling and training over all {meta['computed'] + meta['reused']} cells; this invocation "
         f"{meta['seconds']:.0f} s ({meta['computed']} cells computed, {meta['reused']} reused from the cache).", "",
         f"Protocol: 25-component mixture (means on {{-16,-8,0,8,16}}^2 repeated, identity covariances, "
         f"weights |N(0,1)|^2), Gaussian A [dy, d] with U(0,1) singular values, sigma_y = U(0,1) * s_max; "
         f"{cfg.problems} problems per setting; per problem {cfg.repeats} independent set(s) of {cfg.samples} "
         f"samples per method (scores averaged over the sets) against one set of {cfg.samples} exact posterior "
         f"reference draws; sliced Wasserstein SW_2 with {cfg.projections} random "
         f"directions (shared per problem); every method starts at sigma_max = {cfg.sigma_max:g}. "
         f"Entries: mean ± 1.96 standard errors over problems. Noise floor: {cfg.repeats} further exact "
         f"posterior set(s) scored the same way. The label's NFE is the budget; the actual NFE per sample is in "
         f"parentheses where it differs. EPS: the 1-NFE posterior mean at sigma_max, then the sampler "
         f"in brackets (exactpost.core.sampler_spec: solver, schedule, rho, last positive level smin) with the "
         f"remaining evaluations, started around the mean; eps-mlp uses EDM Heun (rho 7, smin 0.002). "
         f"Baselines: registry defaults with the exact prior denoiser as their network.", "",
         "## Sliced Wasserstein to the exact posterior (lower is better)", ""]
    L += table(lambda r: _fmt(r["sw"], r["sw_ci"]) + (f" ({r['failed']} failed)" if r["failed"] else ""))
    L += ["", "## Ratio to the noise floor (mean SW / mean floor SW; 1 = exact)", ""]
    L += table(lambda r: _fmt(r["ratio"]))
    L += ["", f"## {cfg.level:.0%} credible-interval coverage (target {cfg.level:g})", "",
          f"Per-coordinate central {cfg.level:.0%} interval of the method's samples (empirical quantiles); "
          f"coverage = fraction of (exact reference draw, coordinate) pairs inside, averaged over problems.", ""]
    L += table(lambda r: _fmt(r["coverage"], r["coverage_ci"]))
    per = meta.get("train_seconds_per_problem")
    if per is not None:
        L += ["", f"{LEARNED}: MLP 256 x 3, {cfg.mlp_steps} Adam steps of batch 512 trained per problem "
                  f"(fixed A and sigma_y, amortised over y) by the EPS objective; {per:.1f} s of training per "
                  f"problem on average, not included in the method's seconds. Trained for d in {{8, 80}} only."]
    ck = meta.get("checks") or {}
    if ck:
        L += ["", "## Checks", ""]
        for name, res in ck.items():
            L.append(f"- {name}: {'yes' if res['ok'] else 'no'}" +
                     (f" ({'; '.join(res['failures'][:6])}{' ...' if len(res['failures']) > 6 else ''})"
                      if res["failures"] else ""))
    L += ["", f"## Seconds per problem (sampling only, all {cfg.repeats} set(s))", ""]
    L += table(lambda r: f"{r['seconds']:.2f}")
    return "\n".join(L) + "\n"


def write_samples_npz(cfg: BenchConfig, cache: Cache, path: str | os.PathLike) -> Path:
    """Every problem of the run as arrays ``<problem>__<name>`` (problem = d{d}_dy{dy}_p{p}):
    prior_weights [25], prior_means [25, d] (identity covariances), A [dy, d], y [dy],
    sigma_y [], directions [d, L], reference [n, d], and ``<variant>_nfe<budget>`` [repeats, n, d]
    for each cell (``exact_nfe0`` are the noise-floor sets); plus ``protocol`` (JSON text). Recheck a
    distance with exactpost.core.metrics.sliced_wasserstein(samples, reference,
    directions=directions), averaged over the sets. Written entry by entry (low memory), atomically."""
    by_problem: dict[tuple, list[Cell]] = {}
    for cell in cells_of(cfg):
        by_problem.setdefault((cell.d, cell.dy, cell.problem), []).append(cell)
    protocol = dict(cfg.scoring(), command=cfg.command(), covariances="identity",
                    layout="<problem>__<array>, problem = d{d}_dy{dy}_p{p}")

    def write(f) -> None:
        with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            def put(name: str, arr: Any) -> None:
                with zf.open(name + ".npy", "w", force_zip64=True) as fh:
                    np.lib.format.write_array(fh, np.asarray(arr), allow_pickle=False)

            put("protocol", np.array(json.dumps(protocol)))
            for (d, dy, p), cells in by_problem.items():
                ctx = make_context(cfg, d, dy, p)
                pb, pre = ctx.problem, cells[0].problem_key
                for name, arr in (("prior_weights", pb.prior.weights), ("prior_means", pb.prior.means),
                                  ("A", pb.A), ("y", pb.y), ("sigma_y", torch.tensor(pb.sigma_y, dtype=torch.float64)),
                                  ("directions", ctx.directions), ("reference", ctx.reference)):
                    put(f"{pre}__{name}", arr.numpy())
                for cell in cells:
                    src = cache.sample_path(cell.key)
                    if src.exists():
                        put(f"{pre}__{cell.variant}_nfe{cell.nfe}", np.load(src))

    return write_atomic(path, write)


# --- entry point --------------------------------------------------------------------------
def run(args: argparse.Namespace) -> int:
    """``exactpost bench gmm`` (module docstring). Returns 0; ValueError for bad options."""
    cfg = config_from_args(args)
    return run_config(cfg)


def run_config(cfg: BenchConfig) -> int:
    """Measure the missing cells, then write PREFIX.json / PREFIX.md (and the .npz)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    t_start = time.perf_counter()
    cache = Cache(cfg)
    need = bool(cfg.save_samples)
    cells = cells_of(cfg)
    pending = [c for c in cells if not cache.done(c, need)]
    bar = None
    if cfg.progress and pending:
        from tqdm import tqdm

        bar = tqdm(total=len(pending), desc="gmm bench", unit="cell", dynamic_ncols=True, file=sys.stderr)
    ctx_key, ctx = None, None
    try:
        for cell in pending:
            pk = (cell.d, cell.dy, cell.problem)
            if pk != ctx_key:
                ctx_key, ctx = pk, make_context(cfg, *pk)
            if bar is not None:
                bar.set_postfix_str(f"d={cell.d} dy={cell.dy} p={cell.problem} {cell.variant}@{cell.nfe}")
            with torch.enable_grad():
                rec, x = run_cell(cfg, ctx, cell)
            cache.add(rec, x if need else None)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    rows = aggregate(cfg, cache.records)
    meta = dict(command=cfg.command(), date=time.strftime("%Y-%m-%d"),
                machine=platform.processor() or platform.machine(), torch=torch.__version__,
                threads=torch.get_num_threads(), seconds=time.perf_counter() - t_start,
                computed=len(pending), reused=len(cells) - len(pending), options=cfg.scoring(),
                compute_seconds=sum(cache.records[c.key]["seconds"] + cache.records[c.key].get("train_seconds", 0.0)
                                    for c in cells))
    trained = [cache.records[c.key] for c in cells if c.method == LEARNED]
    if trained:
        meta["train_seconds_per_problem"] = (sum(r.get("train_seconds", 0.0) for r in trained)
                                             / len({(r["d"], r["dy"], r["problem"]) for r in trained}))
    meta["checks"] = checks(cfg, rows)
    out = Path(cfg.out)
    save_text(out.with_name(out.name + ".json"),
              json.dumps(json_safe(dict(meta=meta, rows=rows,
                                         cells=[cache.records[c.key] for c in cells])), indent=1) + "\n")
    save_text(out.with_name(out.name + ".md"), markdown(cfg, rows, meta))
    if cfg.save_samples:
        write_samples_npz(cfg, cache, cfg.save_samples)
    print(f"gmm bench: {len(pending)} cells computed, {len(cells) - len(pending)} reused; wrote "
          f"{out.name}.json and {out.name}.md in {out.parent.resolve()}"
          + (f" and {cfg.save_samples}" if cfg.save_samples else ""))
    for name, res in meta["checks"].items():
        print(f"  {name}: {'yes' if res['ok'] else 'no'}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry (``python -m exactpost.bench.gmm_bench``), the same as ``exactpost bench gmm``."""
    ap = argparse.ArgumentParser(prog="exactpost bench gmm", description=__doc__.split("\n\n")[0])
    add_arguments(ap)
    return run(ap.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
