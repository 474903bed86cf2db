"""Where EPS's calibration error lives on inpainting: coverage and spread/skill
(:mod:`exactpost.core.metrics`) on the observed and on the missing pixels separately.

The first ``--images`` test images of ``bench images`` (same data, measurement and seed as
``exactpost bench images --tasks inpaint-random``), K = ``--samples`` EPS samples per image at
each NFE of ``--nfe`` with the ``--sampler`` spec (default: the EPS default). Prints and writes
``PREFIX.json`` / ``PREFIX.md``. ``--train-images``: instead, ``--images`` images drawn at
random (seeded) from the EPS network's own training set (its card's ``data``), with their own
seeded inpaint-random measurement: is the miss there too (under-fitting) or only on held-out
images (generalisation)? Example::

    OMP_NUM_THREADS=1 python benchmarks/calibration_split.py --model cifar10-32 --images 4 --samples 8 \\
        --nfe 20,50 --out benchmarks/results/calibration_split_cifar10-32
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch

from exactpost.bench import images_bench as ib
from exactpost.bench.gmm_bench import derived_seed
from exactpost.bench.images_setup import _find_data_file, resolve_family
from exactpost.core.tasks import make_operator, simulate
from exactpost.io.images import load_images, save_text, to_float
from exactpost.core.metrics import exchangeable_coverage, rank_interval_coverage, spread_skill
from exactpost.inference.restoration import eps_restore


def split_scores(samples: torch.Tensor, truth: torch.Tensor, observed: torch.Tensor) -> dict:
    """Coverage (central interval nearest 80 %) and spread/skill on all, observed and missing
    pixels; ``observed`` a bool mask broadcastable to truth [N, C, H, W]."""
    obs = observed.expand_as(truth)
    out = {}
    for name, sel in (("all", torch.ones_like(obs)), ("observed", obs), ("missing", ~obs)):
        s, t = samples[:, sel], truth[sel]
        ss = spread_skill(s, t)
        out[name] = dict(pixels=int(sel.sum()), coverage80=rank_interval_coverage(s, t, 0.8),
                         spread=ss["spread"], skill=ss["skill"], spread_skill=ss["ratio"])
    return out


def training_set_measurement(card: dict, n: int, sigma_y: float, model: str):
    """(truth [n, 3, H, W], operator, y): n images drawn at random (seed 0) from the training
    data named in ``card["data"]`` (found as ``bench images`` finds the prior card's data), and
    their inpaint-random measurement (seeded by the model name)."""
    d = card["data"]
    family, root = resolve_family(model)
    path = _find_data_file(str(d["path"]), root, family)
    if path is None:
        raise SystemExit(f"the EPS card's training data {d['path']} is not found")
    imgs = load_images(path, d.get("key"), d.get("split"), d.get("image_size"))
    pick = torch.randperm(len(imgs), generator=torch.Generator().manual_seed(0))[:n]
    truth = to_float(imgs[pick])
    g = torch.Generator().manual_seed(derived_seed(0, "calibration_split", "train", model))
    op = make_operator("inpaint-random", len(truth), tuple(truth.shape[1:]), generator=g)
    return truth, op, simulate(op, truth, sigma_y, generator=g)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="faces-32")
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--nfe", default="20,50")
    ap.add_argument("--sampler", default=None, help="EPS sampler spec (default: sampler_spec.DEFAULT)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--data", default=None, help="test images as `bench images --data` (default: the prior card's)")
    ap.add_argument("--train-images", action="store_true",
                    help="measure on random images of the network's training set instead of the test images")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    parser = argparse.ArgumentParser()
    ib.add_arguments(parser)
    bench_args = ["--model", args.model, "--images", str(args.images), "--tasks", "inpaint-random", "--methods", "eps",
                  "--nfe", "20", "--out", "/tmp/x"] + (["--data", args.data] if args.data else [])
    cfg = ib.config_from_args(parser.parse_args(bench_args))
    setup = ib.load_setup(cfg)
    net, card = setup.net("eps"), setup.entries["eps"].card
    if args.train_images:
        truth, op, y = training_set_measurement(card, args.images, cfg.sigma_y, args.model)
    else:
        op, y = setup.measurement("inpaint-random")
        truth = setup.truth
    ref = exchangeable_coverage(args.samples, 0.8)
    rows = []
    for nfe in [int(v) for v in args.nfe.split(",")]:
        g = torch.Generator().manual_seed(derived_seed(0, "calibration_split", args.model, nfe))
        t0 = time.perf_counter()
        res = eps_restore(net, card, op, y, cfg.sigma_y, "inpaint-random", n_samples=args.samples, nfe=nfe,
                          generator=g, sampler=args.sampler)
        sc = split_scores(res.samples.double(), truth.double(), op.mask.bool())
        rows.append(dict(nfe=nfe, sampler=res.settings["sampler"], seconds=time.perf_counter() - t0, **sc))
        print(f"nfe {nfe}: " + "; ".join(f"{k} cov80 {v['coverage80']:.3f} (ref {ref:.3f}) spread {v['spread']:.4f} "
                                          f"skill {v['skill']:.4f} ratio {v['spread_skill']:.3f}"
                                          for k, v in sc.items() if isinstance(v, dict)), flush=True)
    cmd = "python benchmarks/calibration_split.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    doc = dict(command=cmd, model=args.model, images=args.images, train_images=args.train_images,
               samples=args.samples, reference=ref,
               sigma_y=cfg.sigma_y, rows=rows)
    out = Path(args.out)
    save_text(out.with_name(out.name + ".json"), json.dumps(doc, indent=1) + "\n")
    md = [f"# EPS calibration on observed and missing pixels: {args.model}, inpaint-random", "", f"`{cmd}`", "",
          f"{args.images} {'random training' if args.train_images else 'test'} images, K = {args.samples} samples, sigma_y = {cfg.sigma_y}; coverage of the central "
          f"order-statistic interval nearest 80 % (exchangeable reference {ref:.3f}); spread/skill = "
          f"sqrt((K+1)/K mean variance) / RMSE of the sample mean ([-1, 1] units).", "",
          "| NFE | sampler | pixels | coverage | spread | skill | spread/skill |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        for k in ("all", "observed", "missing"):
            v = r[k]
            md.append(f"| {r['nfe']} | {r['sampler']} | {k} | {v['coverage80']:.3f} | {v['spread']:.4f} | "
                      f"{v['skill']:.4f} | {v['spread_skill']:.3f} |")
    save_text(out.with_name(out.name + ".md"), "\n".join(md) + "\n")
    return doc


if __name__ == "__main__":
    main()
