"""The paper's image claim, read off finished ``exactpost bench images`` runs: per family, task
and metric, does EPS (at its protocol budget, 20 NFE) beat every other method of the run, and by
how much; and issue 21's calibration targets per method.

The claim (arXiv 2606.17048, image table): EPS at 20 NFE has the best PSNR, SSIM and CRPS on
every task against every baseline at 100 NFE (DPS also at 250) and Palette. A "win" is EPS
strictly better than the best other row of the same task (PSNR, SSIM higher; CRPS lower); the
margin is EPS minus that best row (positive = EPS better, in the metric's own direction).

Calibration (issue 21; K samples per image): coverage of the per-pixel central interval nearest
80% from the K samples' order statistics against its exchangeable reference (the bench stores
both), target within ``COVERAGE_TOL``; spread/skill (1 for calibrated samples) within
``1 +- SPREAD_SKILL_TOL``.

Why PSNR can lose (the third table): the bench scores the mean of K samples, whose expected
squared error is the sampler's own posterior-mean error plus v/K (v the per-pixel variance of
its samples), so at K = 4 a calibrated sampler pays about 10 log10(1 + 1/K) = 0.97 dB and an
over-confident one less. From each cell's pooled spread and skill (bench fields,
:func:`exactpost.core.metrics.spread_skill`), with mean s^2 = spread^2 K / (K + 1) unbiased for v:

    MSE_K   = skill^2                                   (the K-sample mean, pooled over pixels)
    MSE_inf = skill^2 - spread^2 / (K + 1)              (unbiased for the method's own mean, K -> inf)

reported as pooled PSNR 10 log10(4 / MSE) (data range 2; pooled over all pixels, so not equal
to the bench's per-image average PSNR).

It computes nothing new: every number is a field of the bench JSON or the formula above. Usage::

    python benchmarks/paper_claim_images.py            # the two committed 100-image runs
    python benchmarks/paper_claim_images.py --bench benchmarks/results/bench_images_faces-32_n100.json ...

Writes ``benchmarks/results/paper_claim_images.json`` and ``.md`` (``--out`` prefix).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
DEFAULT_BENCHES = ("bench_images_faces-32_n100.json", "bench_images_cifar10-32_n100.json")
#: (field, label, higher is better)
METRICS = (("psnr", "PSNR", True), ("ssim", "SSIM", True), ("crps", "CRPS", False))
CALIBRATION_TASKS = ("inpaint-random", "sr4")
COVERAGE_TOL = 0.03
SPREAD_SKILL_TOL = 0.1
EPS_NFE = 20


class ClaimError(ValueError):
    """A bench file that cannot be read as a finished image bench."""


def label(cell: dict[str, Any]) -> str:
    """``method@NFE`` of a bench cell."""
    return f"{cell['method']}@{cell['nfe_budget']}"


def load_bench(path: Path) -> tuple[str, list[dict[str, Any]]]:
    """(family, cells) of a ``bench images`` JSON; ClaimError when it is missing or not one."""
    try:
        doc = json.loads(Path(path).read_text())
        family = doc["config"]["model"]
        cells = [c for c in doc["cells"] if c.get("task")]
    except FileNotFoundError:
        raise ClaimError(f"{path}: no such file; run `exactpost bench images ... --out {Path(path).with_suffix('')}` "
                         "first") from None
    except (ValueError, KeyError, TypeError) as e:
        raise ClaimError(f"{path}: not an `exactpost bench images` JSON ({e!r})") from None
    return family, cells


def task_claim(cells: Sequence[dict[str, Any]], task: str) -> dict[str, Any]:
    """Per metric: EPS's value, the best other row and the margin, and whether EPS wins.

    Returns {metric: {eps, best, best_value, margin, win}} plus ``others`` (the rows compared);
    ClaimError when the task has no EPS cell at ``EPS_NFE`` or no other method."""
    rows = [c for c in cells if c["task"] == task]
    eps = next((c for c in rows if c["method"] == "eps" and c["nfe_budget"] == EPS_NFE), None)
    others = [c for c in rows if c["method"] != "eps"]
    if eps is None or not others:
        raise ClaimError(f"task {task}: the bench has {'no EPS cell at %d NFE' % EPS_NFE if eps is None else 'no other method'}; "
                         "finish the bench run first")
    out: dict[str, Any] = {"others": [label(c) for c in others]}
    for field, _, higher in METRICS:
        sign = 1.0 if higher else -1.0
        best = max(others, key=lambda c: sign * c[field])
        margin = sign * (eps[field] - best[field])
        out[field] = dict(eps=eps[field], best=label(best), best_value=best[field], margin=margin, win=margin > 0)
    return out


def own_mean_psnr(cell: dict[str, Any]) -> Optional[dict[str, float]]:
    """Pooled PSNR of the cell's K-sample mean and the unbiased estimate of its own posterior
    mean's (K -> inf; module docstring); None without spread/skill."""
    spread, skill, k = cell.get("spread"), cell.get("skill"), cell.get("samples")
    if spread is None or skill is None or not k:
        return None
    mse_k = skill**2
    mse_inf = mse_k - spread**2 / (k + 1)
    psnr = lambda mse: 10 * math.log10(4.0 / mse) if mse > 0 else math.inf  # noqa: E731
    return dict(k=k, psnr_k=psnr(mse_k), psnr_inf=psnr(mse_inf))


def mean_estimates(cells: Sequence[dict[str, Any]], task: str) -> Optional[dict[str, Any]]:
    """EPS's pooled PSNR at K samples and at K -> inf against the other rows of ``task``: the
    best other row by each, and how many other rows EPS is above by each; None when the task's
    cells lack spread/skill."""
    rows = [(label(c), own_mean_psnr(c)) for c in cells if c["task"] == task]
    if not rows or any(v is None for _, v in rows):
        return None
    eps = next(v for name, v in rows if name == f"eps@{EPS_NFE}")
    others = [(name, v) for name, v in rows if not name.startswith("eps@")]
    out: dict[str, Any] = dict(eps=eps, others=len(others))
    for which in ("psnr_k", "psnr_inf"):
        best = max(others, key=lambda nv: nv[1][which])
        out[which] = dict(best=best[0], best_value=best[1][which],
                          eps_above=sum(eps[which] > v[which] for _, v in others))
    return out


def calibration(cells: Sequence[dict[str, Any]], task: str) -> list[dict[str, Any]]:
    """Each method's coverage (with its exchangeable reference) and spread/skill on ``task``,
    with the two target checks; rows without calibration fields are left out."""
    rows = []
    for c in cells:
        if c["task"] != task or c.get("coverage80") is None or c.get("spread_skill") is None:
            continue
        gap = c["coverage80"] - c["coverage80_reference"]
        rows.append(dict(method=label(c), coverage=c["coverage80"], reference=c["coverage80_reference"], gap=gap,
                         spread_skill=c["spread_skill"], coverage_ok=abs(gap) <= COVERAGE_TOL,
                         spread_skill_ok=abs(c["spread_skill"] - 1.0) <= SPREAD_SKILL_TOL))
    return rows


def family_claim(cells: Sequence[dict[str, Any]]) -> dict[str, Any]:
    tasks = list(dict.fromkeys(c["task"] for c in cells))
    per_task = {t: task_claim(cells, t) for t in tasks}
    wins = sum(per_task[t][f]["win"] for t in tasks for f, _, _ in METRICS)
    calib = {t: rows for t in CALIBRATION_TASKS if t in tasks and (rows := calibration(cells, t))}
    means = {t: m for t in tasks if (m := mean_estimates(cells, t)) is not None}
    return dict(tasks=per_task, wins=wins, cells=len(tasks) * len(METRICS), calibration=calib,
                mean_estimates=means)


def _fmt(field: str, v: float, sign: bool = False) -> str:
    digits = {"psnr": 2, "ssim": 3}.get(field, 4)
    return f"{v:+.{digits}f}" if sign else f"{v:.{digits}f}"


def markdown(claims: dict[str, Any], meta: dict[str, Any]) -> str:
    L = ["# The paper's image claim, measured: EPS@20 best in PSNR, SSIM and CRPS on every task?", "",
         f"{meta['date']}; `{meta['command']}`, from {', '.join(f'`{s}`' for s in meta['sources'])}. A win is EPS at "
         f"{EPS_NFE} NFE strictly better than every other row of the task (Palette and the baselines at their protocol "
         "budgets); margin = EPS minus the best other row, positive when EPS is better (CRPS: lower is better).", ""]
    for family, cl in claims.items():
        L += [f"## {family}: EPS wins {cl['wins']} of {cl['cells']}", "",
              "| task | " + " | ".join(f"{name}: EPS / best other (margin)" for _, name, _ in METRICS) + " |",
              "|---|" + "---|" * len(METRICS)]
        for task, tc in cl["tasks"].items():
            cells = []
            for field, _, _ in METRICS:
                m = tc[field]
                mark = "**win**" if m["win"] else "loss"
                cells.append(f"{_fmt(field, m['eps'])} / {_fmt(field, m['best_value'])} {m['best']} "
                             f"({_fmt(field, m['margin'], sign=True)}, {mark})")
            L.append(f"| {task} | " + " | ".join(cells) + " |")
        L.append("")
        if cl["calibration"]:
            L += [f"Calibration (issue 21 targets: coverage within {COVERAGE_TOL} of the exchangeable reference, "
                  f"spread/skill within 1 +- {SPREAD_SKILL_TOL}):", "",
                  "| task | method | cov80 | reference | gap | spread/skill | coverage target | spread/skill target |",
                  "|---|---|---|---|---|---|---|---|"]
            for task, rows in cl["calibration"].items():
                for r in rows:
                    L.append(f"| {task} | {r['method']} | {r['coverage']:.3f} | {r['reference']:.3f} | {r['gap']:+.3f} | "
                             f"{r['spread_skill']:.2f} | {'met' if r['coverage_ok'] else 'missed'} | "
                             f"{'met' if r['spread_skill_ok'] else 'missed'} |")
            L.append("")
        if cl["mean_estimates"]:
            L += ["Why PSNR (the mean of K samples pays their spread; module docstring): pooled PSNR of the K-sample "
                  "mean and of each method's own posterior mean (K -> inf, unbiased estimate):", "",
                  "| task | EPS: K-sample mean | best other: K-sample mean | EPS above (of others) | EPS: own mean "
                  "(K -> inf) | best other: own mean | EPS above (of others) |", "|---|---|---|---|---|---|---|"]
            for task, m in cl["mean_estimates"].items():
                k, inf = m["psnr_k"], m["psnr_inf"]
                L.append(f"| {task} | {m['eps']['psnr_k']:.2f} | {k['best_value']:.2f} {k['best']} | "
                         f"{k['eps_above']} of {m['others']} | {m['eps']['psnr_inf']:.2f} | "
                         f"{inf['best_value']:.2f} {inf['best']} | {inf['eps_above']} of {m['others']} |")
            L.append("")
    return "\n".join(L)


def _write_text(path: Path, text: str) -> None:
    from exactpost.io.atomic import write_atomic

    write_atomic(path, lambda f: f.write(text.encode()))


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bench", nargs="+", type=Path, default=[RESULTS / b for b in DEFAULT_BENCHES],
                    help="bench images JSON files, one per family (default: the two 100-image runs)")
    ap.add_argument("--out", type=Path, default=RESULTS / "paper_claim_images",
                    help="output prefix (.json and .md are written)")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = ap.parse_args(argv)
    claims = {}
    for path in args.bench:
        family, cells = load_bench(path)
        claims[family] = family_claim(cells)
    meta = dict(date=dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
                command="python benchmarks/paper_claim_images.py" + "".join(f" {a}" for a in argv),
                sources=[p.name for p in args.bench])
    result = dict(meta=meta, coverage_tol=COVERAGE_TOL, spread_skill_tol=SPREAD_SKILL_TOL, claims=claims)
    _write_text(args.out.with_suffix(".json"), json.dumps(result, indent=1))
    _write_text(args.out.with_suffix(".md"), markdown(claims, meta))
    for family, cl in claims.items():
        print(f"{family}: EPS wins {cl['wins']} of {cl['cells']}")
    return result


if __name__ == "__main__":
    try:
        main()
    except ClaimError as e:
        print(f"paper_claim_images.py: {e}", file=sys.stderr)
        sys.exit(2)
