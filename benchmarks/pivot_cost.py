"""Cost of the EPS pivot per task, as a ratio to one forward pass of a ~1M-parameter U-Net.

    .venv/bin/python benchmarks/pivot_cost.py [--out benchmarks/results] [--repeats 30]

For each task of the registry at 32x32 and 64x64, batch 16, it times (median of
``repeats`` interleaved runs, torch's default threads, no autograd):

* the pivot mu*(x_t, t, y) = x_t/a + A^+_rho (y - A x_t/a) of EPSPosteriorDenoiser.pivot
  (the per-step conditioning work of EPS; A^T y conditioning is computed once per
  measurement and not counted), and
* one forward pass of the reference network (exactpost.nets.UNet, base width 24,
  channel multipliers (1, 2, 2), 2 residual blocks per level, attention at 1/4 size; the
  parameter count is printed), on the same batch.

Target (issue 2): every ratio below 0.02. Writes pivot_cost.json and pivot_cost.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from exactpost.core.interpolants import EDM
from exactpost.nets import UNet, UNetConfig, count_parameters
from exactpost.core.posterior import EPSPosteriorDenoiser
from exactpost.core.tasks import make_operator, simulate, task_names

BATCH = 16


def reference_network(image_size: int) -> UNet:
    cfg = UNetConfig(image_size=image_size, base_width=24, channel_mults=(1, 2, 2), num_res_blocks=2,
                     attn_resolutions=(image_size // 4,))
    return UNet.from_config(cfg).eval()


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args()
    g = torch.Generator().manual_seed(0)
    rows = []
    for size in (32, 64):
        net = reference_network(size)
        params = count_parameters(net)
        x0 = torch.rand(BATCH, 3, size, size, generator=g) * 2 - 1
        x_t = x0 + 5.0 * torch.randn(x0.shape, generator=g)
        c_noise = torch.full((BATCH,), 0.4)
        with torch.no_grad():
            for task in task_names():
                op = make_operator(task, BATCH, (3, size, size), generator=g)
                y = simulate(op, x0, 0.05, generator=g)
                den = EPSPosteriorDenoiser(lambda mu, c, s: mu, op, y, 0.05, EDM())
                pivot = lambda: den.pivot(x_t, 5.0)  # noqa: E731
                forward = lambda: net(x_t, c_noise)  # noqa: E731
                for _ in range(3):  # warm-up
                    pivot()
                    forward()
                tp, tf = [], []
                for _ in range(args.repeats):  # interleaved, so load changes hit both alike
                    tp += timed(pivot, 1)
                    tf += timed(forward, 1)
                p, f = statistics.median(tp), statistics.median(tf)
                rows.append(dict(task=task, size=size, batch=BATCH, pivot_ms=1e3 * p, forward_ms=1e3 * f,
                                 ratio=p / f, net_params=params))
                print(f"{task:14s} {size}x{size}: pivot {1e3 * p:7.3f} ms, net {1e3 * f:7.2f} ms, ratio {p / f:.4f}",
                      flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = dict(command=f"python benchmarks/pivot_cost.py --repeats {args.repeats}", date=time.strftime("%Y-%m-%d"),
                machine=f"{platform.machine()}, {torch.get_num_threads()} torch threads, CPU",
                torch=torch.__version__)
    (out / "pivot_cost.json").write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))
    lines = ["# Pivot cost per task (ratio to one forward of a reference U-Net)", "",
             f"`{meta['command']}` on {meta['date']} ({meta['machine']}, torch {meta['torch']}); batch {BATCH},",
             f"median of {args.repeats} interleaved runs. Target: every ratio below 0.02.", "",
             "| task | size | pivot (ms) | network forward (ms) | net params | ratio |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['task']} | {r['size']} | {r['pivot_ms']:.3f} | {r['forward_ms']:.2f} | "
                     f"{r['net_params'] / 1e6:.2f}M | {r['ratio']:.4f} |")
    worst = max(r["ratio"] for r in rows)
    lines += ["", f"Worst ratio: {worst:.4f} ({'meets' if worst < 0.02 else 'misses'} the 0.02 target)."]
    (out / "pivot_cost.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'pivot_cost.md'}")


if __name__ == "__main__":
    main()
