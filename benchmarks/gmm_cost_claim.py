"""The paper's cost claim on the Gaussian-mixture (MCGdiff) protocol: for each method, the NFE at
which it first comes within 1.3x of the noise floor, or its best ratio and the NFE where it
reaches it.

Methods: EPS with the exact oracle and the default sampler (``eps-oracle[DEFAULT]``,
:data:`exactpost.core.sampler_spec.DEFAULT`), the zero-shot baselines DPS, PiGDM, DDNM, DAPS, MPGD
(the exact prior denoiser as their network, registry defaults), and, for reference, EPS with
the legacy EDM Heun sampler. Every cell is a cell of ``exactpost bench gmm``
(:mod:`exactpost.bench.gmm_bench`: 1000 samples x 3 repeats per problem, SW_2 with 200
directions, sigma_max 1000, seed 0), stored in one resumable cache,
``benchmarks/results/gmm_cost_claim.cache``.

The grid (``TIERS``) is not uniform, because CPU time is: the full protocol (20 problems, the
nine settings d in {8, 80, 800} x dy in {1, 2, 4}) at NFE 20 and 100 for every method (the cells
of ``benchmarks/results/gmm_bench``) and at 10 and 20 for EPS (``gmm_bench_samplers``), both
imported; EPS also at 5 NFE (d = 8, 80, 20 problems); the gradient-based baselines at 250 NFE
on the first 3 problems of the d = 8 settings and at 1000 on the first one, DDNM at 250 (d = 8,
3 problems), and DPS/PiGDM/MPGD at 250 on d = 80, dy = 1 (1 problem).

A ratio at a budget is mean SW over the problems measured there / mean noise-floor SW over the
*same* problems (so a 3-problem entry is compared with its own 3 floors); each entry says how
many problems it averages. For each method and setting: the first budget whose ratio is <= 1.3,
else the best ratio over the budgets measured and its budget.

Usage::

    python benchmarks/gmm_cost_claim.py --run   # measure the missing cells of TIERS (resumable), then report
    python benchmarks/gmm_cost_claim.py         # report from the cache only

Writes ``benchmarks/results/gmm_cost_claim.json`` and ``.md`` (``--out`` prefix).
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
TOL = 1.3
FULL = 20  # problems per setting of the full protocol
SETTINGS = [(d, dy) for d in (8, 80, 800) for dy in (1, 2, 4)]
#: scoring options of every cell (those of gmm_bench / gmm_bench_samplers, so their cells are reused)
SCORING = dict(samples=1000, repeats=3, projections=200, level=0.9, sigma_max=1000.0, seed=0, mlp_steps=1000)
#: caches whose cells (same scoring options) seed this one, in order: a key already present is kept
IMPORTS = ("gmm_bench", "gmm_bench_samplers")
#: the measured grid beyond the imported cells: (dims, dys, problems, nfe, methods)
TIERS = (
    ([8, 80], [1, 2, 4], 20, [5], ["eps-oracle"]),
    ([8], [1, 2, 4], 3, [250], ["dps", "pigdm", "mpgd"]),
    ([8], [1, 2, 4], 1, [1000], ["dps", "pigdm", "mpgd"]),
    ([8], [1, 2, 4], 3, [250], ["ddnm"]),
    ([80], [1], 1, [250], ["dps", "pigdm", "mpgd"]),
)
GRADIENT_BASED = ("dps", "pigdm", "mpgd", "daps")


def methods() -> list[tuple[str, str]]:
    """(cache variant, label) of the table rows."""
    from exactpost.core.sampler_spec import DEFAULT

    return [(f"eps-oracle[{DEFAULT.name}]", f"EPS oracle ({DEFAULT.name})"), ("dps", "DPS"), ("pigdm", "PiGDM"),
            ("ddnm", "DDNM"), ("daps", "DAPS"), ("mpgd", "MPGD"), ("eps-oracle", "EPS oracle (legacy EDM Heun)")]


def tier_config(prefix: str, dims, dys, problems, nfe, meths):
    from exactpost.bench.gmm_bench import BenchConfig

    return BenchConfig(dims=list(dims), dys=list(dys), problems=problems, nfe=list(nfe), methods=list(meths),
                       out=prefix, threads=1, progress=False, **SCORING)


def tier_command(prefix: str, tier) -> str:
    return tier_config(prefix, *tier).command()


def import_cells(prefix: str) -> int:
    """Append to ``prefix``'s cache every record of the IMPORTS caches (same header) whose key
    it lacks; returns how many."""
    from exactpost.bench.gmm_bench import Cache

    cache = Cache(tier_config(prefix, *TIERS[0]))
    added = 0
    for name in IMPORTS:
        path = RESULTS / f"{name}.cache" / "cells.jsonl"
        if not path.exists():
            continue
        lines = path.read_text().splitlines()
        if not lines or json.loads(lines[0]) != cache.log.header:
            print(f"skipped {path}: other scoring options")
            continue
        for line in lines[1:]:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict) and rec.get("key") and rec["key"] not in cache.records:
                cache.log.append(rec)
                added += 1
    return added


def measure(prefix: str) -> None:
    """Run every tier (cells already in the cache are skipped)."""
    from exactpost.bench.gmm_bench import run_config

    print(f"imported {import_cells(prefix)} cells")
    for tier in TIERS:
        print(f"{time.strftime('%H:%M:%S')} {tier_command(prefix, tier)}", flush=True)
        run_config(tier_config(prefix, *tier))


# --- report ----------------------------------------------------------------------------------
def load_records(prefix: str) -> dict[str, dict[str, Any]]:
    from exactpost.bench.records import RecordLog

    return RecordLog(Path(prefix + ".cache"), tier_config(prefix, *TIERS[0]).scoring(), fresh=False).records


def ratio_table(records: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (method variant, setting, budget) present: ratio over the problems measured
    there, against the floors of the same problems."""
    sw: dict[tuple, dict[int, float]] = {}
    for r in records.values():
        variant = f"{r['method']}[{r['sampler']}]" if r.get("sampler") and "heun:karras:rho=7:smin=0.002" != r["sampler"] \
            else r["method"]
        if r.get("sw") is None:
            continue
        sw.setdefault((variant, r["d"], r["dy"], r["nfe_budget"]), {})[r["problem"]] = float(r["sw"])
    rows = []
    for variant, _ in methods():
        for d, dy in SETTINGS:
            floors = sw.get(("exact", d, dy, 0), {})
            for (v, dd, ddy, nfe), per in sorted(sw.items(), key=lambda kv: kv[0][3]):
                if (v, dd, ddy) != (variant, d, dy):
                    continue
                probs = sorted(set(per) & set(floors))
                if not probs:
                    continue
                m = statistics.fmean(per[p] for p in probs)
                f = statistics.fmean(floors[p] for p in probs)
                rows.append(dict(variant=variant, d=d, dy=dy, nfe=nfe, problems=len(probs), sw=m, floor=f,
                                 ratio=m / f))
    return rows


def subset_rows(records: dict[str, dict[str, Any]], problems: Sequence[int]) -> list[dict[str, Any]]:
    """:func:`ratio_table` restricted to ``problems``, keeping only the entries measured on all of
    them: every budget of a method on the same problems, so a high budget measured on a few
    problems is compared with the lower budgets on those problems."""
    keep = {k: r for k, r in records.items() if r.get("problem") in set(problems)}
    return [r for r in ratio_table(keep) if r["problems"] == len(problems)]


def claim(rows: list[dict[str, Any]], tol: float = TOL) -> dict[str, Any]:
    """Per method variant and setting, over the budgets measured on the full protocol (``FULL``
    problems; budgets measured on fewer problems are too noisy to decide a crossing -- one
    problem's ratio ranges from 1 to 30 -- and are reported apart, :func:`subset_rows`): the
    first budget within ``tol`` (and its ratio), else the best ratio and its budget; per method
    a summary over the nine settings."""
    rows = [r for r in rows if r["problems"] >= FULL]
    out: dict[str, Any] = {}
    for variant, label in methods():
        per_setting = {}
        for d, dy in SETTINGS:
            rs = sorted((r for r in rows if r["variant"] == variant and (r["d"], r["dy"]) == (d, dy)),
                        key=lambda r: r["nfe"])
            if not rs:
                continue
            first = next((r for r in rs if r["ratio"] <= tol), None)
            best = min(rs, key=lambda r: r["ratio"])
            per_setting[f"d={d}, dy={dy}"] = dict(
                within=first is not None, nfe=(first or best)["nfe"], ratio=(first or best)["ratio"],
                problems=(first or best)["problems"], budgets=[r["nfe"] for r in rs],
                best_ratio=best["ratio"], best_nfe=best["nfe"])
        reached = [v for v in per_setting.values() if v["within"]]
        out[variant] = dict(label=label, settings=per_setting, reached=len(reached), measured=len(per_setting),
                            nfe_all=max(v["nfe"] for v in reached) if reached and len(reached) == len(per_setting)
                            else None,
                            best_ratio_min=min((v["best_ratio"] for v in per_setting.values()), default=math.nan),
                            best_ratio_max=max((v["best_ratio"] for v in per_setting.values()), default=math.nan),
                            max_nfe=max((max(v["budgets"]) for v in per_setting.values()), default=0))
    return out


def markdown(rows: list[dict[str, Any]], cl: dict[str, Any], meta: dict[str, Any]) -> str:
    cols = [f"d={d}, dy={dy}" for d, dy in SETTINGS]
    L = ["# The cost claim on the Gaussian-mixture protocol: NFE to come within 1.3x the noise floor", "",
         f"{meta['date']}; cells of `exactpost bench gmm` (1000 samples x 3 repeats per problem, SW_2 with 200 "
         f"directions, sigma_max 1000, seed 0) in `{meta['cache']}`. A ratio is mean SW / mean noise-floor SW over "
         f"the same problems; full protocol = 20 problems per setting, fewer where marked. Each method's first "
         f"budget within {TOL}x, else its best ratio, over the budgets measured on the full protocol (budgets "
         f"measured on fewer problems are in the last tables, each beside the lower budgets on the same problems).",
         "",
         "## Summary", "",
         "| method | budgets on the full protocol (NFE) | settings within 1.3x | NFE at which every setting is within 1.3x "
         "| best ratio over the budgets (range over the nine settings) |",
         "|---|---|---|---|---|"]
    for variant, c in cl.items():
        budgets = sorted({r["nfe"] for r in rows if r["variant"] == variant and r["problems"] >= FULL})
        nfe_all = str(c["nfe_all"]) if c["nfe_all"] is not None else "never (up to " + str(c["max_nfe"]) + ")"
        L.append(f"| {c['label']} | {', '.join(map(str, budgets))} | {c['reached']}/{c['measured']} | {nfe_all} | "
                 f"{c['best_ratio_min']:.2f}-{c['best_ratio_max']:.2f} |")
    L += ["", "## Per setting: first NFE within 1.3x (its ratio), else best ratio @ NFE (full protocol)", "",
          "| method | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for variant, c in cl.items():
        cells = []
        for col in cols:
            v = c["settings"].get(col)
            if v is None:
                cells.append("-")
                continue
            note = ""
            cells.append(f"**{v['nfe']}** ({v['ratio']:.2f}{note})" if v["within"]
                         else f"best {v['ratio']:.2f} @ {v['nfe']}{note}")
        L.append(f"| {c['label']} | " + " | ".join(cells) + " |")
    L += ["", "## Every ratio measured (method @ NFE; [P] = problems averaged, if fewer than 20)", "",
          "| method @ NFE | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    labels = dict(methods())
    for variant, _ in methods():
        for nfe in sorted({r["nfe"] for r in rows if r["variant"] == variant}):
            by = {(r["d"], r["dy"]): r for r in rows if r["variant"] == variant and r["nfe"] == nfe}
            cells = [(f"{by[s]['ratio']:.2f}" + (f" [{by[s]['problems']}]" if by[s]["problems"] < 20 else ""))
                     if s in by else "-" for s in SETTINGS]
            L.append(f"| {labels[variant]} @ {nfe} | " + " | ".join(cells) + " |")
    for probs in ([0, 1, 2], [0]):
        sub = subset_rows(meta["_records"], probs)
        high = {(r["variant"], r["d"], r["dy"]) for r in sub if r["nfe"] > 100 and r["variant"] in GRADIENT_BASED + ("ddnm",)}
        if not high:
            continue
        subset_settings = [s for s in SETTINGS if any((v, *s) in high for v, _ in methods())]
        L += ["", f"## Beyond 100 NFE, on problem{'s' if len(probs) > 1 else ''} {', '.join(map(str, probs))} only "
                  f"(every budget on the same problems, floor of the same problems)", "",
              "| method @ NFE | " + " | ".join(f"d={d}, dy={dy}" for d, dy in subset_settings) + " |",
              "|---|" + "---|" * len(subset_settings)]
        for variant, label in methods():
            if not any(h[0] == variant for h in high):
                continue
            for nfe in sorted({r["nfe"] for r in sub if r["variant"] == variant}):
                by = {(r["d"], r["dy"]): r for r in sub if r["variant"] == variant and r["nfe"] == nfe}
                L.append(f"| {label} @ {nfe} | " + " | ".join(f"{by[s]['ratio']:.2f}" if s in by and
                                                              (variant, *s) in high else "-"
                                                              for s in subset_settings) + " |")
    L += ["", "## Commands", "",
          "Imported cells (same scoring options): `benchmarks/results/gmm_bench.cache` (every method at 20 and 100 "
          "NFE, the full protocol; see gmm_bench.md) and `gmm_bench_samplers.cache` (EPS with the default sampler at "
          "10 and 20 NFE; see gmm_bench_samplers.md); a key already present is kept. Then, each resumable:", ""]
    L += [f"    {c}" for c in meta["commands"]]
    L += ["", f"Report: `{meta['command']}`.", ""]
    return "\n".join(L)


def report(prefix: str) -> dict[str, Any]:
    records = load_records(prefix)
    rows = ratio_table(records)
    cl = claim(rows)
    meta = dict(date=time.strftime("%Y-%m-%d"), cache=str(Path(prefix + ".cache").relative_to(HERE.parent))
                if Path(prefix).resolve().is_relative_to(HERE.parent) else prefix + ".cache",
                commands=[tier_command(_rel(prefix), t) for t in TIERS],
                command="python benchmarks/gmm_cost_claim.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
                tolerance=TOL)
    subsets = {f"problems {','.join(map(str, p))}": subset_rows(records, p) for p in ([0, 1, 2], [0])}
    out = Path(prefix)
    from exactpost.io.images import save_text

    save_text(out.with_name(out.name + ".json"), json.dumps(dict(meta=meta, claim=cl, rows=rows, subsets=subsets), indent=1) + "\n")
    save_text(out.with_name(out.name + ".md"), markdown(rows, cl, dict(meta, _records=records)))
    for variant, c in cl.items():
        print(f"{c['label']:40s} within {TOL}x in {c['reached']}/{c['measured']} settings; all from NFE "
              f"{c['nfe_all']}; best ratios {c['best_ratio_min']:.2f}-{c['best_ratio_max']:.2f}")
    return dict(rows=rows, claim=cl)


def _rel(prefix: str) -> str:
    p = Path(prefix).resolve()
    return str(p.relative_to(HERE.parent)) if p.is_relative_to(HERE.parent) else prefix


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", action="store_true", help="measure the missing cells of TIERS first (default: report only)")
    ap.add_argument("--out", default=str(RESULTS / "gmm_cost_claim"),
                    help="prefix of the cache, .json and .md (default benchmarks/results/gmm_cost_claim)")
    args = ap.parse_args(argv)
    if args.run:
        measure(args.out)
    return report(args.out)


if __name__ == "__main__":
    main()
