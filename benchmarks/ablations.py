"""The paper's ablations on a bundled model family (issue 6, item 4).

Parts (``--parts``, comma-separated):

- ``warmstart``: begin the EPS sampler at an intermediate noise level sigma_start from the
  1-NFE posterior mean (``eps_restore(sigma_start=...)``) instead of at sigma_max = 80, for
  each NFE in ``--nfe``; reports sample PSNR and CRPS, and for each sigma_start the smallest
  NFE whose CRPS is within ``--tolerance`` (relative) of the cold start's CRPS at the
  reference NFE (20): the NFE saved at equal quality.
- ``extreme``: harder measurements than the network was trained on, with the EPS network's
  nearest task embedding: 90% of pixels missing (task id inpaint-random, trained at 70%)
  and 8x super-resolution (task id sr4). The pivot and operator solves are exact for any
  operator; only the network's conditioning is out of distribution. EPS (1-NFE mean, 4
  samples at 20 NFE) against DDNM on the prior at 100 NFE (training-free, handles any
  operator), next to the in-distribution tasks.
- ``amortisation``: the all-task EPS network against an EPS network trained on
  inpaint-random alone with the same budget (``--single-task-model``, a checkpoint path),
  on inpaint-random. Skipped with a note when no such model is given.

Measurements are drawn exactly as ``exactpost demo`` / ``model_quality.py`` draw them (seed
per task), on the first ``--n`` test images. Writes
``benchmarks/results/ablations_<model>.json`` and ``.md``; parts not run this time are kept
from an existing file made with the same EPS model, images, samples, seed and sigma_y (each
part records its own command and seconds), so the parts can be run one at a time. Example::

    python benchmarks/ablations.py --model faces-32 --data ../shared/data/faces64.npz \\
        --test-split 2 --n 32 --parts warmstart,extreme
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Optional

import torch

from exactpost.inference import zoo
from exactpost.app.demo import task_seed
from exactpost.io.images import save_text
from exactpost.core.metrics import crps, psnr
from exactpost.inference.api import restore_measurement
from exactpost.inference.restoration import Restoration, eps_restore
from exactpost.core.tasks import TASKS, TaskSpec, make_operator, simulate
from exactpost.io.images import load_images, parse_split, to_float
from exactpost.nets import load_model

RESULTS = Path(__file__).resolve().parent / "results"
PARTS = ("warmstart", "extreme", "amortisation")
# harder operators, each with the trained task whose embedding the EPS network gets
EXTREME: dict[str, tuple[TaskSpec, str]] = {
    "inpaint-random-90": (dataclasses.replace(TASKS["inpaint-random"], name="inpaint-random-90",
                                              description="90% of pixels missing", missing_fraction=0.9),
                          "inpaint-random"),
    "sr8": (dataclasses.replace(TASKS["sr4"], name="sr8", description="8x super-resolution", factor=8), "sr4"),
}


def measure(spec: TaskSpec | str, seed_task: str, x0: torch.Tensor, sigma_y: float, seed: int):
    """Operator, measurement and the generator left for sampling, drawn as the demo does."""
    g = torch.Generator().manual_seed(task_seed(seed, seed_task))
    op = make_operator(spec, len(x0), tuple(x0.shape[1:]), generator=g)
    return op, simulate(op, x0, sigma_y, generator=g), g


def scores(res: Restoration, x0: torch.Tensor) -> dict[str, Any]:
    """PSNR of the network's 1-NFE mean (EPS only; None for methods without one), of the
    samples' average and of single samples; CRPS of the samples; NFE per sample; s/image."""
    out: dict[str, Any] = dict(net_mean_psnr=float(psnr(res.mean, x0).mean()) if res.nfe_mean == 1 else None,
                               nfe=res.nfe_sample, seconds_per_image=res.seconds / len(x0))
    if res.samples.shape[0]:
        out.update(sample_mean_psnr=float(psnr(res.samples.mean(0), x0).mean()),
                   sample_psnr=float(torch.stack([psnr(s, x0) for s in res.samples]).mean()),
                   crps=float(crps(res.samples, x0).mean()) if res.samples.shape[0] > 1 else float("nan"))
    return out


def warmstart(args: argparse.Namespace, net, card: dict, x0: torch.Tensor) -> dict[str, Any]:
    rows = []
    for task in args.warm_tasks:
        for s_start in args.sigma_starts:
            for nfe in args.nfe:
                op, y, g = measure(task, task, x0, args.sigma_y, args.seed)
                res = eps_restore(net, card, op, y, args.sigma_y, task, n_samples=args.samples, nfe=nfe,
                                  generator=g, sigma_start=s_start)
                rows.append(dict(task=task, sigma_start=s_start, **scores(res, x0)))
                print(json.dumps(rows[-1]), flush=True)
    saved = []
    for task in args.warm_tasks:
        ref = [r for r in rows if r["task"] == task and r["sigma_start"] == max(args.sigma_starts)
               and r["nfe"] == args.reference_nfe]
        if not ref:
            continue
        target = ref[0]["crps"] * (1 + args.tolerance)
        for s_start in args.sigma_starts:
            ok = sorted(r["nfe"] for r in rows if r["task"] == task and r["sigma_start"] == s_start
                        and r["crps"] <= target)
            saved.append(dict(task=task, sigma_start=s_start, reference_crps=ref[0]["crps"],
                              min_nfe_at_equal_crps=ok[0] if ok else None,
                              nfe_saved=(args.reference_nfe - ok[0]) if ok else None))
    return dict(rows=rows, equal_quality=saved)


def extreme(args: argparse.Namespace, net, card: dict, prior, x0: torch.Tensor) -> dict[str, Any]:
    rows = []
    cases = [(spec_task, TASKS[spec_task], spec_task) for spec_task in ("inpaint-random", "sr4")]
    cases += [(name, spec, embed) for name, (spec, embed) in EXTREME.items()]
    for name, spec, embed in cases:
        op, y, g = measure(spec, embed, x0, args.sigma_y, args.seed)
        eps = eps_restore(net, card, op, y, args.sigma_y, embed, n_samples=args.samples, nfe=20, generator=g)
        rows.append(dict(operator=name, method="eps", task_embedding=embed, **scores(eps, x0)))
        print(json.dumps(rows[-1]), flush=True)
        if args.baseline_nfe:
            base = restore_measurement(args.baseline, prior, {}, op, y, args.sigma_y, embed, n_samples=args.samples,
                                       nfe=args.baseline_nfe, generator=g)
            rows.append(dict(operator=name, method=args.baseline, task_embedding=None, **scores(base, x0)))
            print(json.dumps(rows[-1]), flush=True)
    return dict(rows=rows)


def amortisation(args: argparse.Namespace, net, card: dict, x0: torch.Tensor) -> dict[str, Any]:
    if not args.single_task_model:
        return dict(skipped="no --single-task-model given (an EPS network trained on inpaint-random alone "
                            "with the all-task model's budget)")
    single, single_card = load_model(args.single_task_model)
    rows = []
    for label, model, mcard in (("all-task EPS", net, card), ("inpaint-random-only EPS", single, single_card)):
        op, y, g = measure("inpaint-random", "inpaint-random", x0, args.sigma_y, args.seed)
        res = eps_restore(model, mcard, op, y, args.sigma_y, "inpaint-random", n_samples=args.samples, nfe=20,
                          generator=g)
        rows.append(dict(model=label, steps=mcard.get("steps"), tasks=mcard["objective"]["tasks"], **scores(res, x0)))
        print(json.dumps(rows[-1]), flush=True)
    return dict(rows=rows)


def _f(v: Optional[float], digits: int = 2) -> str:
    return "-" if v is None or v != v else f"{v:.{digits}f}"


def markdown(res: dict[str, Any]) -> str:
    lines = [f"# Ablations: {res['model']}", "",
             f"{res['n']} test images, {res['samples']} samples each, sigma_y {res['sigma_y']}, seed {res['seed']}; "
             f"{res['hardware']}.", ""]
    runs = res.get("part_runs") or {}
    if len({r["command"] for r in runs.values()}) > 1:
        lines += ["Commands (the parts were run separately):", ""]
        lines += [f"- {p}: `{r['command']}` ({r['date']}, {r['seconds']:.0f} s)" for p, r in runs.items()]
        lines.append("")
    else:
        lines += [f"Command: `{res['command']}` ({res['date']}, {res['seconds']:.0f} s)", ""]
    if "warmstart" in res:
        w = res["warmstart"]
        lines += ["## Warm start (sampler begun at sigma_start from the 1-NFE mean)", "",
                  "| task | sigma_start | NFE per sample | single-sample PSNR | PSNR of the samples' average | CRPS |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {r['task']} | {r['sigma_start']:g} | {r['nfe']} | {_f(r['sample_psnr'])} | "
                  f"{_f(r['sample_mean_psnr'])} | {_f(r['crps'], 4)} |" for r in w["rows"]]
        lines += ["", f"NFE needed for CRPS within {res['tolerance']:.0%} of the cold start (sigma_start "
                  f"{max(res['sigma_starts']):g}) at {res['reference_nfe']} NFE:", "",
                  "| task | sigma_start | smallest NFE | NFE saved |", "|---|---|---|---|"]
        lines += [f"| {r['task']} | {r['sigma_start']:g} | {r['min_nfe_at_equal_crps'] or 'not reached'} | "
                  f"{r['nfe_saved'] if r['nfe_saved'] is not None else '-'} |" for r in w["equal_quality"]]
        lines.append("")
    if "extreme" in res:
        lines += ["## Extreme degradations (EPS uses the nearest trained task's embedding)", "",
                  "| operator | method | task embedding | NFE per sample | 1-NFE mean PSNR | PSNR of the samples' "
                  "average | single-sample PSNR | CRPS |", "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['operator']} | {r['method']} | {r['task_embedding'] or '-'} | {r['nfe']} | "
                  f"{_f(r['net_mean_psnr'])} | {_f(r.get('sample_mean_psnr'))} | {_f(r.get('sample_psnr'))} | "
                  f"{_f(r.get('crps'), 4)} |"
                  for r in res["extreme"]["rows"]]
        lines.append("")
    if "amortisation" in res:
        a = res["amortisation"]
        lines += ["## Amortisation (inpaint-random)", ""]
        if "skipped" in a:
            lines += [f"Not run: {a['skipped']}.", ""]
        else:
            lines += ["| model | steps | 1-NFE mean PSNR | single-sample PSNR | CRPS |", "|---|---|---|---|---|"]
            lines += [f"| {r['model']} | {r['steps']} | {_f(r['net_mean_psnr'])} | {_f(r['sample_psnr'])} | "
                      f"{_f(r['crps'], 4)} |" for r in a["rows"]]
            lines.append("")
    return "\n".join(lines)


def _floats(text: str) -> list[float]:
    return [float(t) for t in text.split(",")]


def _ints(text: str) -> list[int]:
    return [int(t) for t in text.split(",")]


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="faces-32")
    ap.add_argument("--data", required=True)
    ap.add_argument("--test-key", default=None)
    ap.add_argument("--test-split", default=None)
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--parts", default="warmstart,extreme,amortisation")
    ap.add_argument("--warm-tasks", type=lambda s: s.split(","), default=["inpaint-random", "sr4"])
    ap.add_argument("--sigma-starts", type=_floats, default=[80.0, 10.0, 3.0, 1.0, 0.5])
    ap.add_argument("--nfe", type=_ints, default=[4, 6, 10, 20])
    ap.add_argument("--reference-nfe", type=int, default=20)
    ap.add_argument("--tolerance", type=float, default=0.01, help="relative CRPS tolerance for 'equal quality'")
    ap.add_argument("--baseline", default="ddnm")
    ap.add_argument("--baseline-nfe", type=int, default=100, help="0: no baseline rows")
    ap.add_argument("--single-task-model", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sigma-y", type=float, default=0.05)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="results prefix (default benchmarks/results/ablations_<model>)")
    args = ap.parse_args(argv)
    args.parts = args.parts.split(",")
    unknown = sorted(set(args.parts) - set(PARTS))
    if unknown:
        ap.error(f"unknown parts {unknown}; choose from {', '.join(PARTS)}")
    if args.reference_nfe not in args.nfe:
        ap.error(f"--reference-nfe {args.reference_nfe} must be one of --nfe {args.nfe}")
    return args


def run(args: argparse.Namespace, command: str) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    t0 = time.time()
    eps_entry = zoo.find_model(args.model, "eps")
    net = zoo.load(eps_entry)
    size = net.config.image_size
    x0 = to_float(load_images(args.data, args.test_key, parse_split(args.test_split), size))[: args.n]
    res: dict[str, Any] = dict(model=args.model, eps_sha256=eps_entry.card.get("sha256"), n=len(x0),
                               samples=args.samples, sigma_y=args.sigma_y, seed=args.seed, command=command,
                               sigma_starts=args.sigma_starts, reference_nfe=args.reference_nfe,
                               tolerance=args.tolerance, date=time.strftime("%Y-%m-%d"),
                               hardware=f"CPU, {args.threads} torch thread(s), torch {torch.__version__}")
    with torch.no_grad():
        if "warmstart" in args.parts:
            res["warmstart"] = warmstart(args, net, eps_entry.card, x0)
        if "extreme" in args.parts:
            prior = zoo.load(zoo.find_model(args.model, "prior")) if args.baseline_nfe else None
            res["extreme"] = extreme(args, net, eps_entry.card, prior, x0)
        if "amortisation" in args.parts:
            res["amortisation"] = amortisation(args, net, eps_entry.card, x0)
    res["seconds"] = time.time() - t0
    prefix = Path(args.out) if args.out else RESULTS / f"ablations_{args.model}"
    res["part_runs"] = {part: dict(command=command, seconds=res["seconds"], date=res["date"])
                        for part in args.parts}
    res = merge_previous(res, prefix.with_suffix(".json"))
    save_text(prefix.with_suffix(".json"), json.dumps(res, indent=2) + "\n")
    save_text(prefix.with_suffix(".md"), markdown(res))
    print(f"wrote {prefix}.json and .md", file=sys.stderr)
    return res


#: what two runs must share for their parts to sit in one table
SAME_SETUP = ("model", "eps_sha256", "n", "samples", "sigma_y", "seed")


def merge_previous(res: dict[str, Any], path: Path) -> dict[str, Any]:
    """``res`` plus the parts of the result file at ``path`` that ``res`` did not run, when
    that file was made with the same setup (:data:`SAME_SETUP`); otherwise ``res`` alone."""
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return res
    if not isinstance(old, dict) or any(old.get(k) != res.get(k) for k in SAME_SETUP):
        return res
    merged = dict(res)
    runs = dict(old.get("part_runs") or {p: dict(command=old.get("command"), seconds=old.get("seconds"),
                                                 date=old.get("date")) for p in PARTS if p in old})
    for part in PARTS:
        if part not in res and part in old:
            merged[part] = old[part]
        elif part not in res:
            runs.pop(part, None)
    runs.update(res["part_runs"])
    merged["part_runs"] = {p: runs[p] for p in PARTS if p in runs}
    return merged


def main() -> None:
    run(parse_args(), "python benchmarks/ablations.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]))


if __name__ == "__main__":
    main()
