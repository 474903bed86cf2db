"""Tune the step sizes the baseline papers leave open for our interpolants, on validation images only.

    OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/tune_baselines.py \\
        --data ../shared/data/faces64.npz --split 1 --n 8

Protocol (issue 5): the comparison runs every method at NFE = 100 with sigma_y = 0.05 on the
bundled faces prior (``models/faces-32/prior``, EDM preconditioning, as a plain denoiser).
The papers fix their step sizes for their own schedules (DPS at 1000 NFE, DAPS at 1000 NFE,
...), so for each method with an open step size and each of the five tasks this script runs a
small log-spaced grid around the paper's value on ``--n`` *validation* images (faces split 1,
the first n; never test images):

=========  ====================  ==========================================================
method     tuned setting         grid (``x`` = the paper / registry reference value)
=========  ====================  ==========================================================
dps        ``zeta``              x * {1/2, 1, 2, 4, 8}, x = the per-task reference zeta (*)
pigdm      ``guidance_scale``    x * {1/4, 1/2, 1, 2, 4}, x = 1
mpgd       ``scale``             x * {1/4, 1/2, 1, 2, 4}, x = 4
daps       ``lr`` (Langevin)     x * {1/4, 1/2, 1, 2, 4}, x = 1e-4 (tau kept at 0.01)
ddnm       ``eta``               {0.25, 0.5, 0.85, 1}    (bounded: eta in [0, 1])
ddrm       ``eta``               {0.25, 0.5, 0.85, 1}
=========  ====================  ==========================================================

(*) DPS's reference zeta is for 1000 steps; at 100 the steps are 10x fewer, so the grid leans
towards larger steps (a quick 10-NFE probe preferred 8-16x the reference).

If the best value of a log-spaced grid lies on its edge, the grid is extended by a factor 2
beyond that edge, at most ``--max-extend`` times, so the optimum is bracketed where possible.

Criterion: the mean over the ``--n`` images of the PSNR of one posterior sample per image
(images in [-1, 1], sample clamped), i.e. :func:`exactpost.core.metrics.psnr` averaged; a sample
with NaN/Inf counts as diverged (-inf). Ties go to the value closest (in log) to the reference.
Every grid point of a (method, task) uses the same measurements and the same sampler seed
(common random numbers), so the differences come from the setting alone. The SSIM of the
sample is stored too, but not used. Caveat: one sample's PSNR favours low-variance settings
(a sample closer to the posterior mean scores higher); it is the criterion the comparison
reports, written down here so it is not chosen after the fact.

Measurements: per task, ``make_operator(task, n, (3, 32, 32), generator=g)`` and
``simulate(op, x, 0.05, generator=g)`` with ``g`` seeded ``exactpost.app.demo.task_seed(seed, task)``;
the sampler's generator is seeded ``task_seed(seed, task) + 100000`` for every grid point.

For CIFAR-10, whose file has no validation split, tune on the *last* test images, which no
benchmark scores (they all take the first ones)::

    .venv/bin/python benchmarks/tune_baselines.py --model cifar10-32 --data ../shared/data/cifar10_32.npz \
        --key test_images --split none --last --n 8 --name baseline_tuning_cifar10-32

Writes ``benchmarks/results/baseline_tuning.json`` (or ``NAME.json`` with ``--name``) (``tuned``: {method: {task: {setting: value}}},
``reference``, the full ``grid`` scores and the command) and ``baseline_tuning.md``. Other
benchmarks load the chosen settings with :func:`load_tuned` and pass them to
:func:`exactpost.baselines.run_method` (``run_method(m, ..., task=task, **tuned[m][task])``).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from exactpost.bench.records import json_safe

RESULTS = Path(__file__).resolve().parent / "results"
TUNED_PATH = RESULTS / "baseline_tuning.json"

#: method -> (setting, kind, values): kind "log" = factors of the reference value (extended
#: at the edges), "fixed" = the listed values themselves
GRIDS: dict[str, tuple[str, str, tuple[float, ...]]] = {
    "dps": ("zeta", "log", (0.5, 1.0, 2.0, 4.0, 8.0)),
    "pigdm": ("guidance_scale", "log", (0.25, 0.5, 1.0, 2.0, 4.0)),
    "mpgd": ("scale", "log", (0.25, 0.5, 1.0, 2.0, 4.0)),
    "daps": ("lr", "log", (0.25, 0.5, 1.0, 2.0, 4.0)),
    "ddnm": ("eta", "fixed", (0.25, 0.5, 0.85, 1.0)),
    "ddrm": ("eta", "fixed", (0.25, 0.5, 0.85, 1.0)),
}
SAMPLER_SEED_OFFSET = 100000


def load_tuned(path: str | Path = TUNED_PATH) -> dict[str, dict[str, dict[str, Any]]]:
    """The tuned settings {method: {task: {setting: value}}} of a tuning run (default: the
    committed ``benchmarks/results/baseline_tuning.json``); pass ``**load_tuned()[m][task]`` to
    :func:`exactpost.baselines.run_method` together with ``task=task``."""
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    return {m: {t: dict(s) for t, s in per_task.items()} for m, per_task in data["tuned"].items()}


def reference_value(method: str, task: str) -> float:
    """The paper / registry value the grid of ``method`` on ``task`` is centred on."""
    from exactpost.baselines import get_method

    spec = get_method(method)
    name = GRIDS[method][0]
    return float(spec.task_defaults.get(task, {}).get(name, spec.defaults[name]))


def sample_score(x: torch.Tensor, ref: torch.Tensor) -> tuple[float, float, bool]:
    """(mean PSNR, mean SSIM, finite) of one sample per image; non-finite -> (-inf, -inf, False)."""
    from exactpost.core.metrics import psnr, ssim

    if not bool(torch.isfinite(x).all()):
        return -math.inf, -math.inf, False
    return float(psnr(x, ref).mean()), float(ssim(x, ref).mean()), True


def _best(points: list[dict], ref: float, log: bool) -> dict:
    def key(p: dict) -> tuple[float, float]:
        v = p["value"]
        dist = abs(math.log(v / ref)) if log and v > 0 and ref > 0 else abs(v - ref)
        return (p["psnr"], -dist)
    return max(points, key=key)


def tune_one(method: str, task: str, prior, op, y: torch.Tensor, x: torch.Tensor, sigma_y: float, nfe: int,
             sampler_seed: int, max_extend: int, log=print) -> dict:
    """Run the grid of ``method`` on one task; returns {setting, reference, points, best}."""
    from exactpost.baselines import get_method, run_method
    from exactpost.core.interpolants import EDM

    spec = get_method(method)
    name, kind, values = GRIDS[method]
    ref = reference_value(method, task)
    is_log = kind == "log"
    points: list[dict] = []

    def run(value: float) -> dict:
        t0 = time.perf_counter()
        g = torch.Generator().manual_seed(sampler_seed)
        with torch.enable_grad() if spec.uses_backprop else torch.no_grad():
            res = run_method(method, prior, op, y, sigma_y, tuple(x.shape), interpolant=EDM(), nfe=nfe,
                             generator=g, task=task, **{name: value})
        p, s, finite = sample_score(res.x0.detach(), x)
        pt = dict(value=value, factor=value / ref if is_log else None, psnr=p, ssim=s, finite=finite,
                  nfe=res.nfe, backward_passes=res.backward_passes, seconds=time.perf_counter() - t0)
        log(f"  {method:6s} {task:14s} {name}={value:<10.4g} PSNR {p:7.3f}  SSIM {s:.4f}  "
            f"({pt['seconds']:.1f} s, {res.nfe} NFE, {res.backward_passes} backward)")
        return pt

    grid = [ref * f for f in values] if is_log else list(values)
    points = [run(v) for v in grid]
    extended = 0
    while is_log and extended < max_extend:
        vals = sorted(p["value"] for p in points)
        best = _best(points, ref, True)
        if best["value"] == vals[-1]:
            points.append(run(vals[-1] * 2.0))
        elif best["value"] == vals[0]:
            points.append(run(vals[0] / 2.0))
        else:
            break
        extended += 1
    points.sort(key=lambda p: p["value"])
    best = _best(points, ref, is_log)
    ref_point = next((p for p in points if math.isclose(p["value"], ref, rel_tol=1e-12)), None)
    vals = [p["value"] for p in points]
    return dict(setting=name, reference=ref, points=points, best=best["value"], best_psnr=best["psnr"],
                reference_psnr=ref_point["psnr"] if ref_point else None, extensions=extended,
                best_on_edge=is_log and best["value"] in (vals[0], vals[-1]))


def run_tuning(args: argparse.Namespace) -> dict:
    """Load the prior and the validation images, tune every (method, task); the result dict."""
    from exactpost.inference import zoo
    from exactpost.app.demo import task_seed
    from exactpost.core.interpolants import EDM
    from exactpost.nets.precond import as_denoiser
    from exactpost.core.tasks import make_operator, simulate, task_names
    from exactpost.io.images import load_images, to_float

    entry = zoo.find_model(args.model, "prior")
    net = zoo.load(entry).eval()
    for p in net.parameters():
        p.requires_grad_(False)  # gradients w.r.t. the input only
    prior = as_denoiser(net, EDM())
    size = net.config.image_size
    split = None if args.split.lower() == "none" else [int(s) for s in args.split.split(",")]
    images = load_images(args.data, args.key, split, size)
    if args.n > len(images):
        raise SystemExit(f"--n {args.n}: the selection holds only {len(images)} images")
    x = to_float(images[-args.n:] if args.last else images[: args.n])
    tasks = args.tasks or task_names()
    methods = args.methods or list(GRIDS)
    unknown = sorted(set(methods) - set(GRIDS))
    if unknown:
        raise SystemExit(f"no tuning grid for {', '.join(unknown)}; grids exist for {', '.join(GRIDS)}")
    t_start = time.perf_counter()
    results: dict[str, dict[str, dict]] = {m: {} for m in methods}
    for task in tasks:
        g = torch.Generator().manual_seed(task_seed(args.seed, task))
        op = make_operator(task, len(x), tuple(x.shape[1:]), generator=g)
        y = simulate(op, x, args.sigma_y, generator=g)
        for m in methods:
            results[m][task] = tune_one(m, task, prior, op, y, x, args.sigma_y, args.nfe,
                                        task_seed(args.seed, task) + SAMPLER_SEED_OFFSET, args.max_extend)
            r = results[m][task]
            print(f"{m} {task}: {r['setting']} = {r['best']:.4g} (reference {r['reference']:.4g}), "
                  f"PSNR {r['best_psnr']:.3f}; elapsed {time.perf_counter() - t_start:.0f} s", flush=True)
    tuned = {m: {t: {r["setting"]: r["best"]} for t, r in per.items()} for m, per in results.items()}
    reference = {m: {t: {r["setting"]: r["reference"]} for t, r in per.items()} for m, per in results.items()}
    return dict(
        tuned=tuned, reference=reference, grid=results,
        criterion=("mean over the images of the PSNR (dB, [-1, 1] images, data range 2, sample clamped) of one "
                   "posterior sample per image; non-finite samples score -inf; ties -> closest to the reference"),
        protocol=dict(nfe=args.nfe, sigma_y=args.sigma_y, seed=args.seed, samples_per_image=1,
                      sampler_seed="task_seed(seed, task) + 100000, the same for every grid point",
                      operators="make_operator/simulate with a generator seeded task_seed(seed, task)",
                      interpolant="edm", max_extend=args.max_extend,
                      grids={m: dict(setting=GRIDS[m][0], kind=GRIDS[m][1], values=list(GRIDS[m][2]))
                             for m in methods}),
        data=dict(path=str(args.data), key=args.key, split=args.split, n=len(x), image_size=size,
                  images=f"the {'last' if args.last else 'first'} n images of the selection"),
        model=dict(name=args.model, kind="prior", sha256=entry.card.get("sha256"), steps=entry.card.get("steps"),
                   params=entry.card.get("params")),
        command=args.command, seconds=time.perf_counter() - t_start, date=time.strftime("%Y-%m-%d"),
        machine=f"{platform.machine()}, {torch.get_num_threads()} torch thread(s), CPU, torch {torch.__version__}",
    )


def _fmt(v: Optional[float]) -> str:
    return "-" if v is None else (f"{v:.4g}" if math.isfinite(v) else "diverged")


def markdown(res: dict) -> str:
    """The Markdown report of a tuning result."""
    grid = res["grid"]
    tasks = list(next(iter(grid.values())).keys()) if grid else []
    pr = res["protocol"]
    lines = ["# Baseline step sizes tuned on validation images", "",
             f"{res['data']['n']} validation images ({res['data']['path']}, key {res['data'].get('key') or 'images'}, "
             f"split {res['data']['split']}, {res['data'].get('images', 'the first n images of the split')}, "
             f"{res['data']['image_size']}x{res['data']['image_size']}), NFE {pr['nfe']}, sigma_y {pr['sigma_y']}, "
             f"seed {pr['seed']}, one sample per image, prior {res['model']['name']} "
             f"(sha256 {str(res['model']['sha256'])[:12]}...).", "",
             f"Criterion: {res['criterion']}.", "",
             "## Chosen settings (reference value in parentheses; \"edge\": best at the end of the extended grid)", "",
             "| method | setting | " + " | ".join(tasks) + " |", "|---|---|" + "---|" * len(tasks)]
    for m, per in grid.items():
        cells = []
        for t in tasks:
            r = per[t]
            edge = ", edge" if r["best_on_edge"] else ""
            cells.append(f"**{_fmt(r['best'])}** (ref {_fmt(r['reference'])}{edge})")
        lines.append(f"| {m} | {per[tasks[0]]['setting']} | " + " | ".join(cells) + " |")
    lines += ["", "## Sample PSNR (dB): chosen / reference", "",
              "| method | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
    for m, per in grid.items():
        lines.append(f"| {m} | " + " | ".join(f"{per[t]['best_psnr']:.2f} / {_fmt(per[t]['reference_psnr'])}"
                                              if per[t]['reference_psnr'] is None or
                                              not math.isfinite(per[t]['reference_psnr'])
                                              else f"{per[t]['best_psnr']:.2f} / {per[t]['reference_psnr']:.2f}"
                                              for t in tasks) + " |")
    lines += ["", "## Full grids (value: sample PSNR dB)", ""]
    for m, per in grid.items():
        for t in tasks:
            r = per[t]
            pts = ", ".join(f"{_fmt(p['value'])}: {p['psnr']:.2f}" if p["finite"] else f"{_fmt(p['value'])}: diverged"
                            for p in r["points"])
            lines.append(f"- {m} / {t} ({r['setting']}): {pts}")
    lines += ["", f"Command: `{res['command']}` ({res['seconds'] / 60:.1f} min, {res['machine']}, {res['date']}).", ""]
    return "\n".join(lines)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/faces64.npz")
    ap.add_argument("--key", default=None, help="npz key of the images (default: images)")
    ap.add_argument("--split", default="1", help="split id(s), comma separated (1 = validation; never test); "
                    "'none' for an .npz without a split array")
    ap.add_argument("--n", type=int, default=8, help="number of validation images (the first n, or the last with --last)")
    ap.add_argument("--last", action="store_true",
                    help="take the last n images of the selection: held-out images of a test array (CIFAR-10's "
                         "test_images) stay disjoint from the first ones that the benchmarks score")
    ap.add_argument("--model", default="faces-32")
    ap.add_argument("--nfe", type=int, default=100)
    ap.add_argument("--sigma-y", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--methods", nargs="*", default=None, help=f"default: {' '.join(GRIDS)}")
    ap.add_argument("--tasks", nargs="*", default=None, help="default: the five tasks of the registry")
    ap.add_argument("--max-extend", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(RESULTS), help="output folder")
    ap.add_argument("--name", default="baseline_tuning",
                    help="file stem: NAME.json and NAME.md (default baseline_tuning; e.g. baseline_tuning_cifar10-32 "
                         "for a second family: exactpost bench images picks the file tuned for its prior)")
    args = ap.parse_args(argv)
    args.command = "python benchmarks/tune_baselines.py " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    return args


def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if "2" in args.split.split(","):
        raise SystemExit("split 2 is the test split; tune on validation images only")
    if args.key is not None and "test" in args.key and not args.last:
        raise SystemExit(f"--key {args.key} holds test images; add --last so the tuning images stay disjoint from "
                         "the first images the benchmarks score")
    res = run_tuning(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / f"{args.name}.json", out / f"{args.name}.md"
    json_path.write_text(json.dumps(json_safe(res), indent=1, allow_nan=False) + "\n")
    md_path.write_text(markdown(res))
    print(f"wrote {json_path} and {md_path} ({res['seconds'] / 60:.1f} min)")
    return res


if __name__ == "__main__":
    main()
