"""Out of distribution: restoring images unlike the model's training data.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/ood.py --model faces-32 \\
        [--photos ../shared/data/cifar10_32.npz --photos-key test_images] [--n 8] [--samples 4] \\
        [--methods ddnm,pigdm] [--out benchmarks/results]

Images (32x32, in [-1, 1]), ``--n`` of each kind:

* ``own test images``: the bundled test-split images of the model's own kind (the
  in-distribution reference the other sets are read against);
* ``patterns``: synthetic images no face or CIFAR photo looks like -- checkerboards, stripes
  at several angles and frequencies, colour gradients, discs and rectangles on flat
  backgrounds, white noise (drawn from a fixed seed);
* ``photos``: photographs of another kind than the model's (``--photos``, e.g. CIFAR-10 test
  images for the faces model, faces for the CIFAR model).

For every task (sigma_y = 0.05, operators and noise from a fixed seed per task): the PSNR of
the least-squares back-projection A^+ y (no prior), of the regularised back-projection x_reg
(an isotropic Gaussian prior), of the EPS 1-NFE posterior mean, of the average of
``--samples`` EPS samples at 20 NFE and of each baseline's sample average at 100 NFE on the
same prior, and the CRPS of the EPS and baseline samples. Where the EPS mean falls below A^+ y,
the learned prior is pulling the image toward its training distribution harder than the
measurement allows. Writes ``ood_<model>.json`` and ``.md``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import shlex  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

import exactpost  # noqa: E402
from exactpost.core.conditioning import regularized_backprojection  # noqa: E402
from exactpost.io.images import save_text  # noqa: E402
from exactpost.core.metrics import crps, psnr  # noqa: E402
from exactpost.core.tasks import task_names  # noqa: E402
from exactpost.io.images import load_images, to_float  # noqa: E402


def patterns(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    """n synthetic RGB images [n, 3, size, size] in [-1, 1], cycling through five families."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                            indexing="ij")
    out = []
    for i in range(n):
        c1, c2 = torch.rand(3, 1, 1, generator=g) * 2 - 1, torch.rand(3, 1, 1, generator=g) * 2 - 1
        kind = i % 5
        if kind == 0:  # checkerboard of random cell size
            cell = int(torch.randint(2, 9, (1,), generator=g))
            m = (((yy // cell) + (xx // cell)) % 2).float()
        elif kind == 1:  # stripes at a random angle and frequency
            a, f = float(torch.rand(1, generator=g)) * math.pi, 0.2 + 0.8 * float(torch.rand(1, generator=g))
            m = (torch.sin(f * (math.cos(a) * xx + math.sin(a) * yy)) > 0).float()
        elif kind == 2:  # smooth colour gradient
            a = float(torch.rand(1, generator=g)) * 2 * math.pi
            m = math.cos(a) * xx + math.sin(a) * yy
            m = (m - m.min()) / (m.max() - m.min())
        elif kind == 3:  # a disc and a rectangle on a flat background
            cy, cx, r = (torch.rand(3, generator=g) * torch.tensor([size, size, size / 3])).tolist()
            m = (((yy - cy) ** 2 + (xx - cx) ** 2) < (r + 3) ** 2).float()
            y0, x0 = torch.randint(0, size // 2, (2,), generator=g).tolist()
            m[y0:y0 + size // 3, x0:x0 + size // 4] = 1 - m[y0:y0 + size // 3, x0:x0 + size // 4]
        else:  # white noise
            out.append(torch.rand(3, size, size, generator=g) * 2 - 1)
            continue
        out.append(c1 * (1 - m) + c2 * m)
    return torch.stack(out).clamp(-1, 1)


def evaluate(model: exactpost.Model, x0: torch.Tensor, methods: list[str], samples: int, sigma_y: float,
             seed: int) -> dict:
    """{task: {column: value}} for one image set."""
    rows = {}
    for k, task in enumerate(task_names()):
        g = torch.Generator().manual_seed(seed + k)
        m = exactpost.Measurement.simulate(task, x0, sigma_y, generator=g)
        row = {"pinv_psnr": float(psnr(m.op.pinv(m.y), x0).mean()),
               "xreg_psnr": float(psnr(regularized_backprojection(m.op, m.y, sigma_y), x0).mean())}
        eps = model.restore(m, samples=samples, nfe=20, generator=torch.Generator().manual_seed(seed + 100))
        row.update(eps_mean_psnr=float(psnr(eps.mean, x0).mean()),
                   eps_avg_psnr=float(psnr(eps.samples.mean(0), x0).mean()),
                   eps_crps=float(crps(eps.samples, x0).mean()))
        for method in methods:
            res = model.restore(m, samples=samples, nfe=100, method=method,
                                generator=torch.Generator().manual_seed(seed + 100))
            row[f"{method}_avg_psnr"] = float(psnr(res.mean, x0).mean())
            row[f"{method}_crps"] = float(crps(res.samples, x0).mean())
        rows[task] = row
        print(f"  {task}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items()), flush=True)
    return rows


def markdown(res: dict) -> str:
    lines = [f"# Out of distribution: {res['model']}", "", f"`{res['command']}` on {res['date']}. "
             f"{res['n']} images per set, sigma_y = {res['sigma_y']}, {res['samples']} samples per image "
             f"(EPS at 20 NFE, baselines at 100 NFE). PSNR (dB) of the estimate named; CRPS of the samples "
             f"(lower is better). A^+ y: least-squares back-projection (no prior); x_reg: "
             f"(rho0 I + A^T A)^-1 A^T y (isotropic Gaussian prior).", ""]
    for name, rows in res["sets"].items():
        cols = list(next(iter(rows.values())))
        lines += [f"## {name}", "", "| task | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
        for task, row in rows.items():
            lines.append(f"| {task} | " + " | ".join(f"{row[c]:.4f}" if "crps" in c else f"{row[c]:.2f}"
                                                     for c in cols) + " |")
        below = [t for t, r in rows.items() if r["eps_mean_psnr"] < r["pinv_psnr"]]
        lines += ["", f"EPS 1-NFE mean below A^+ y on: {', '.join(below) if below else 'no task'}.", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="faces-32")
    ap.add_argument("--photos", default=None, help="an .npz of photographs of another kind")
    ap.add_argument("--photos-key", default=None)
    ap.add_argument("--photos-split", type=int, default=None)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--methods", default="ddnm,pigdm", help="baselines on the model's prior ('' for none)")
    ap.add_argument("--sigma-y", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = exactpost.load(args.model)
    size = model.image_shape[-1]
    # in-distribution reference: the bundled test-split images of the model's own kind
    sets = {"own test images (in distribution)": model.demo_images()[: args.n],
            "patterns": patterns(args.n, size, args.seed)}
    if args.photos:
        split = None if args.photos_split is None else [args.photos_split]
        sets[f"photos ({Path(args.photos).name})"] = to_float(
            load_images(args.photos, args.photos_key, split, size)[: args.n])
    methods = [m for m in args.methods.split(",") if m]
    res = dict(model=args.model, command="python benchmarks/ood.py " + shlex.join(sys.argv[1:]),
               date=datetime.date.today().isoformat(), n=args.n, samples=args.samples, sigma_y=args.sigma_y,
               methods=methods, eps_card_steps=model.entries["eps"].card.get("steps"),
               eps_conditioning=model.entries["eps"].card["objective"]["conditioning"], sets={})
    for name, x0 in sets.items():
        print(name, flush=True)
        res["sets"][name] = evaluate(model, x0, methods, args.samples, args.sigma_y, args.seed)
    save_text(Path(args.out) / f"ood_{args.model}.json", json.dumps(res, indent=1))
    save_text(Path(args.out) / f"ood_{args.model}.md", markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
