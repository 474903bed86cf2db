"""Does the ``small`` U-Net preset buy more per CPU-hour than ``tiny``? (issue 16's pilot)

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/preset_pilot.py \\
        --run tiny=runs/pilot-faces32-prior-tiny --run small=runs/pilot-faces32-prior-small \\
        --data ../shared/data/faces64.npz --split 1 --n 256 [--out benchmarks/results --name preset_pilot]

The runs are two ``exactpost train`` priors trained from scratch with identical settings but
the preset, started together as two 1-thread processes on the two cores (so they share the
machine's load), each exporting EMA snapshots (``--snapshot-every``). For every snapshot this
script measures, on the same ``--n`` held-out images and the same noise draw:

* the denoising PSNR of D(x0 + sigma n, sigma) at sigma in ``--sigmas`` (dB, images in [-1, 1]);
* the EDM-weighted denoising loss averaged over those sigmas,
  L = mean_sigma lambda(sigma) ||D(x0 + sigma n, sigma) - x0||^2 / d, lambda = 1/sigma^2 + 1/0.5^2,

and puts it beside the training wall time at that step (``metrics.jsonl``), so the two presets
compare at equal CPU time (each process had one core) and at equal steps. Writes ``NAME.json``
and ``NAME.md`` under ``--out``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import shlex  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from exactpost.io.images import save_text  # noqa: E402
from exactpost.io.images import load_images, to_float  # noqa: E402
from exactpost.nets import load_model  # noqa: E402

SIGMA_DATA = 0.5


def _wall_times(run: Path) -> dict[int, float]:
    """{step: wall_time_s} from the run's training log lines."""
    out = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "step" in rec and "wall_time_s" in rec:
            out[int(rec["step"])] = float(rec["wall_time_s"])
    return out


@torch.no_grad()
def evaluate(model: torch.nn.Module, x0: torch.Tensor, sigmas: list[float], seed: int) -> dict:
    """PSNR per sigma and the EDM-weighted loss averaged over ``sigmas`` (see the module doc)."""
    g = torch.Generator().manual_seed(seed)
    out: dict = {"psnr": {}, "loss": 0.0}
    for s in sigmas:
        noise = torch.randn(x0.shape, generator=g)
        den = torch.cat([model(chunk, s) for chunk in (x0 + s * noise).split(64)])
        mse = ((den - x0) ** 2).flatten(1).mean(1)
        out["psnr"][str(s)] = float((10 * torch.log10(4.0 / mse.clamp(min=1e-12))).mean())
        out["loss"] += float(mse.mean()) * (1 / s ** 2 + 1 / SIGMA_DATA ** 2) / len(sigmas)
    return out


def _interp(points: list[tuple[float, float]], x: float) -> float | None:
    """Linear interpolation of sorted (x, y) points at ``x`` (None outside their range)."""
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x0 <= x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0) if x1 > x0 else y0
    return None


def _comparison(rows: list[dict]) -> list[str]:
    """Each later label's snapshots against the first label's curve, at the same training
    wall time and at the same step (loss interpolated linearly between snapshots)."""
    labels = list(dict.fromkeys(r["label"] for r in rows))
    if len(labels) < 2:
        return []
    ref = [r for r in rows if r["label"] == labels[0]]
    by_wall = sorted((r["wall_time_s"], r["loss"]) for r in ref if r["wall_time_s"] is not None)
    by_step = sorted((r["step"], r["loss"]) for r in ref)
    out = [f"| snapshot | its loss | {labels[0]} at the same wall time | {labels[0]} at the same step |",
           "|---|---|---|---|"]
    for r in rows:
        if r["label"] == labels[0]:
            continue
        w = _interp(by_wall, r["wall_time_s"]) if r["wall_time_s"] is not None else None
        st = _interp(by_step, r["step"])
        fmt = lambda v: f"{v:.4f}" if v is not None else "outside the run"  # noqa: E731
        out.append(f"| {r['label']} step {r['step']} | {r['loss']:.4f} | {fmt(w)} | {fmt(st)} |")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", action="append", required=True, help="LABEL=RUN_DIR (repeat)")
    p.add_argument("--data", required=True)
    p.add_argument("--data-key", default=None)
    p.add_argument("--split", type=int, default=1)
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--sigmas", default="0.05,0.2,0.5,1,2,5")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--name", default="preset_pilot")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    sigmas = [float(s) for s in args.sigmas.split(",")]
    x0 = to_float(load_images(args.data, args.data_key, args.split, args.image_size)[: args.n])
    rows = []
    for spec in args.run:
        label, run = spec.split("=", 1)
        times = _wall_times(Path(run))
        for card_file in sorted((Path(run) / "snapshots").glob("model-*.json")):
            snap = card_file.with_suffix("")
            step = int(snap.name.split("-")[1])
            model, card = load_model(snap)
            ev = evaluate(model, x0, sigmas, args.seed)
            rows.append(dict(label=label, run=run, step=step, wall_time_s=_interp(sorted(times.items()), step),
                             params=card.get("params"), **ev))
            print(f"{label} step {step}: loss {ev['loss']:.4f} psnr {ev['psnr']}", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = dict(command="python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])]),
                date=datetime.date.today().isoformat(), torch=torch.__version__, images=len(x0), sigmas=sigmas)
    save_text(out / f"{args.name}.json", json.dumps(dict(meta=meta, rows=rows), indent=1))
    lines = [f"# Preset pilot: tiny vs small per CPU-hour ({meta['date']})", "",
             f"`{meta['command']}`", "",
             f"{len(x0)} held-out images, denoising PSNR (dB) per sigma and the EDM-weighted loss "
             "(lower is better) of each EMA snapshot; wall time = the training process's own time "
             "at that step (one core each, run concurrently).", "",
             "| preset | params | step | wall (min) | loss | " + " | ".join(f"PSNR s={s:g}" for s in sigmas) + " |",
             "|---|---|---|---|---|" + "---|" * len(sigmas)]
    for r in rows:
        wall = f"{r['wall_time_s'] / 60:.1f}" if r["wall_time_s"] is not None else "?"
        lines.append(f"| {r['label']} | {r['params'] / 1e6:.2f}M | {r['step']} | {wall} | {r['loss']:.4f} | "
                     + " | ".join(f"{r['psnr'][str(s)]:.2f}" for s in sigmas) + " |")
    lines += ["", *_comparison(rows)]
    save_text(out / f"{args.name}.md", "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
