"""Where EPS's calibration error lives on inpainting: coverage and spread/skill
(:mod:`exactpost.core.metrics`) on the observed and on the missing pixels separately.

The first ``--images`` test images of ``bench images`` (same data, measurement and seed as
``exactpost bench images --tasks inpaint-random``), K = ``--samples`` EPS samples per image at
each NFE of ``--nfe`` with the ``--sampler`` spec (default: the EPS default). Prints and writes
``PREFIX.json`` / ``PREFIX.md``. Example::

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
from exactpost.io.images import save_text
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


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="faces-32")
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--nfe", default="20,50")
    ap.add_argument("--sampler", default=None, help="EPS sampler spec (default: sampler_spec.DEFAULT)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    parser = argparse.ArgumentParser()
    ib.add_arguments(parser)
    cfg = ib.config_from_args(parser.parse_args(["--model", args.model, "--images", str(args.images), "--tasks",
                                                 "inpaint-random", "--methods", "eps", "--nfe", "20", "--out", "/tmp/x"]))
    setup = ib.load_setup(cfg)
    op, y = setup.measurement("inpaint-random")
    truth = setup.truth
    net, card = setup.net("eps"), setup.entries["eps"].card
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
    doc = dict(command=cmd, model=args.model, images=args.images, samples=args.samples, reference=ref,
               sigma_y=cfg.sigma_y, rows=rows)
    out = Path(args.out)
    save_text(out.with_name(out.name + ".json"), json.dumps(doc, indent=1) + "\n")
    md = [f"# EPS calibration on observed and missing pixels: {args.model}, inpaint-random", "", f"`{cmd}`", "",
          f"{args.images} test images, K = {args.samples} samples, sigma_y = {cfg.sigma_y}; coverage of the central "
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
