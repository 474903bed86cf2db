"""Write benchmarks/RESULTS.md: every committed result table in one page.

Each benchmark writes its own ``benchmarks/results/<name>.md`` (with the command that made
it, the machine and the date in its header) and ``.json``; this script gathers those
Markdown files, in the order below, under one index, and links the PNG plots found next to
them. It computes nothing: rerun the benchmark itself to refresh a table, then this.

    python benchmarks/collect_results.py
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import re
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

# (file stem or prefix, section title, what it shows); files not listed come last
ORDER = [
    ("bench_images_", "Image benchmarks (bundled models)", "EPS against Palette and the training-free baselines on test images"),
    ("paper_claim_images", "The paper's image claim", "EPS@20 against the best other method per task and metric; "
     "calibration targets"),
    ("model_quality_", "Bundled model quality", "EPS 1-NFE mean vs the Gaussian LMMSE; EPS CRPS vs Palette"),
    ("gmm_bench", "Gaussian-mixture benchmark (exact posteriors)", "MCGdiff protocol, SW to the exact posterior"),
    ("gmm_exactness", "EPS with the exact oracle on mixtures", "SW / noise floor"),
    ("gmm_learned_eps", "Learned EPS on a d = 8 mixture", "EPS-trained MLP vs prior MLP + zero-shot pivot"),
    ("cost", "Cost per image", "ratio to the bare sampler at NFE 100"),
    ("pivot_cost", "Pivot cost", "per task, ratio to one network forward"),
    ("train_throughput", "Training throughput", "prior vs EPS vs Palette"),
    ("conditioning_ablation", "EPS conditioning ablation", "which inputs the EPS network gets"),
    ("baseline_tuning", "Baseline tuning (faces-32)", "step sizes chosen on validation images"),
    ("baseline_tuning_cifar10-32", "Baseline tuning (cifar10-32)",
     "step sizes chosen on the last 8 CIFAR-10 test images (the benchmarks score the first ones)"),
]


def _rank(path: Path) -> tuple[int, str]:
    for i, (prefix, _, _) in enumerate(ORDER):
        if path.stem == prefix or (prefix.endswith("_") and path.stem.startswith(prefix)):
            return i, path.stem
    return len(ORDER), path.stem


def _demote(text: str) -> str:
    """Shift every Markdown heading down two levels so each table nests under its section."""
    return re.sub(r"^(#{1,4}) ", lambda m: "#" * (len(m.group(1)) + 2) + " ", text, flags=re.M)


def collect(results: Path = RESULTS) -> str:
    tables = sorted(results.glob("*.md"), key=_rank)
    lines = ["# Benchmark results", "",
             f"Collected {dt.date.today().isoformat()} by `python benchmarks/collect_results.py` on "
             f"{platform.machine()} ({torch.get_num_threads()} torch threads available here), torch {torch.__version__}. "
             "Each table below states the command, machine, threads and date of the run that produced it; "
             "the JSON next to each table (`benchmarks/results/`) holds every number.", "",
             "## Contents", ""]
    for path in tables:
        i, _ = _rank(path)
        title = ORDER[i][1] if i < len(ORDER) else path.stem
        suffix = f" ({path.stem.split('_')[-1]})" if i < len(ORDER) and ORDER[i][0].endswith("_") else ""
        lines.append(f"- [{title}{suffix}](results/{path.name})")
    lines.append("")
    owner = {}  # each plot goes under the table with the longest name that prefixes it
    for png in sorted(results.glob("*.png")):
        stems = [t.stem for t in tables if png.stem.startswith(t.stem + "_")]
        if stems:
            owner.setdefault(max(stems, key=len), []).append(png)
    for path in tables:
        lines += ["---", "", f"<!-- from results/{path.name} -->", _demote(path.read_text().strip()), ""]
        for png in owner.get(path.stem, []):
            lines += [f"![{png.stem}](results/{png.name})", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    args = ap.parse_args()
    from exactpost.io.images import save_text

    save_text(args.out, collect())
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
