"""Where a posterior-mean estimate loses: its error split into the measured directions (the
row space of A) and the unmeasured ones (the null space), per task, against the Gaussian
LMMSE and the back-projection A^+ y.

    .venv/bin/python benchmarks/error_split.py --model faces-32 --data ../shared/data/faces64.npz \\
        --train-split 0 --test-split 2 --n 32 [--extra long=runs/faces32-eps-long/model]

For every task (sigma_y 0.05, operators and noise drawn as ``exactpost demo`` and
``benchmarks/model_quality.py`` draw them) and every estimate x_hat of the test images x
(clamped to [-1, 1]), with e = x_hat - x, P_null = I - A^+ A (``op.null_project``):

    MSE = MSE_row + MSE_null,   MSE_row = ||(I - P_null) e||^2 / d,   MSE_null = ||P_null e||^2 / d

(the two parts are orthogonal, so they add up; each is reported as the PSNR it alone would
give, 10 log10(4 / MSE_part), data range 2). Estimates: ``lmmse`` (the exact linear MMSE
under a Gaussian prior fitted to the training images), ``A+y`` (no prior: its row-space error
is the measurement noise itself, its null-space error the whole unmeasured image), and the
EPS 1-NFE posterior mean of the family's EPS model and of each ``--extra`` checkpoint; with
``--draws K`` (K > 1) also the average of K such 1-NFE means from independent x_T draws (seeds
seed, seed + 1, ...; K network evaluations). For the exact denoiser every draw estimates
E[x0 | y] (the tower property; at sigma_max = 80, x_T carries almost no information), so what
the average gains over one draw is the network's own sensitivity to the noise in its input,
and the table's ``draw spread`` column gives it: the root-mean-square per-pixel standard
deviation across the K draws.

An EPS mean whose row-space part is below A^+ y's does worse on what was measured than the
raw measurement; its null-space part against the LMMSE's says how well the learned prior
fills in what was not. For the blurs the split says little: the truncated pseudo-inverse
(rcond 1e-3) counts nearly every frequency as measured, attenuated ones included.

Writes ``benchmarks/results/error_split_<model>.json`` and ``.md`` (or ``--out`` PREFIX).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import torch

from exactpost.app.demo import task_seed
from exactpost.core.tasks import make_operator, simulate, task_names
from exactpost.inference import zoo
from exactpost.inference.restoration import eps_restore
from exactpost.io.images import load_images, parse_split, save_text, to_float
from exactpost.nets import load_model
from exactpost.priors.gaussian import GaussianPrior

RESULTS = Path(__file__).resolve().parent / "results"


def split_mse(op, estimate: torch.Tensor, truth: torch.Tensor) -> dict[str, float]:
    """{"all", "row", "null"}: the mean squared error per pixel of ``estimate`` (clamped to
    [-1, 1]) against ``truth`` ([B, C, H, W] both) and its row- and null-space parts, which
    sum to "all" (orthogonal projections)."""
    err = (estimate.clamp(-1, 1) - truth).double()
    null = op.null_project(err)
    d = err.numel()
    return {"all": float(err.pow(2).sum() / d), "row": float((err - null).pow(2).sum() / d),
            "null": float(null.pow(2).sum() / d)}


def _psnr(mse: float) -> float:
    return 10 * math.log10(4 / mse) if mse > 0 else math.inf


def _extra(text: str) -> tuple[str, str]:
    label, sep, path = text.partition("=")
    if not sep or not label or not path:
        raise argparse.ArgumentTypeError(f"--extra {text!r}: give LABEL=CHECKPOINT, e.g. long=runs/faces32-eps-long/model")
    return label, path


def measure(args: argparse.Namespace) -> dict:
    """The table's rows: one per (task, estimate), with the three MSEs and their PSNRs."""
    eps_entry = zoo.find_model(args.model, "eps")
    nets = {f"eps {args.model}": (zoo.load(eps_entry), eps_entry.card)}
    for label, path in args.extra:
        nets[f"eps {label}"] = load_model(path)
    size = next(iter(nets.values()))[0].config.image_size
    train = to_float(load_images(args.data, args.train_key, parse_split(args.train_split), size))
    test = to_float(load_images(args.data, args.test_key, parse_split(args.test_split), size))[: args.n]
    gauss = GaussianPrior.fit(train)
    rows = []
    for task in args.tasks or task_names():
        g = torch.Generator().manual_seed(task_seed(args.seed, task))
        op = make_operator(task, len(test), tuple(test.shape[1:]), generator=g)
        y = simulate(op, test, args.sigma_y, generator=g)
        estimates = {"lmmse": gauss.lmmse(op, y, args.sigma_y)[0].float(), "A+y": op.pinv(y)}
        spreads = {}
        for label, (net, card) in nets.items():
            draws = torch.stack([eps_restore(net, card, op, y, args.sigma_y, task, n_samples=0, nfe=20,
                                             generator=torch.Generator().manual_seed(args.seed + k)).mean
                                 for k in range(args.draws)])
            name = f"{label} ({card.get('steps', '?')} steps)"
            estimates[name] = draws[0]
            if args.draws > 1:
                name = f"{name}, mean of {args.draws} draws"
                estimates[name] = draws.mean(0)
                spreads[name] = float(draws.std(0).pow(2).mean().sqrt())
        for name, est in estimates.items():
            mse = split_mse(op, est, test)
            rows.append(dict(task=task, estimate=name, mse=mse, psnr={k: _psnr(v) for k, v in mse.items()},
                             **({"draw_spread": spreads[name]} if name in spreads else {})))
            print(json.dumps(rows[-1]), file=sys.stderr)
    return dict(model=args.model, n=len(test), seed=args.seed, sigma_y=args.sigma_y, draws=args.draws,
                data=dict(path=str(args.data), train_key=args.train_key, train_split=args.train_split,
                          test_key=args.test_key, test_split=args.test_split, train_images=len(train)),
                rows=rows, command=args.command, date=time.strftime("%Y-%m-%d"),
                hardware=f"{torch.get_num_threads()} threads, torch {torch.__version__}")


def markdown(res: dict) -> str:
    lines = [f"# Error split: {res['model']}", "", f"`{res['command']}`", "",
             f"{res['n']} test images, seed {res['seed']}, sigma_y {res['sigma_y']}, {res['date']}. "
             "PSNR (dB, data range 2) of the whole error and of its row-space (measured) and null-space "
             "(unmeasured) parts alone; share: the null-space part's fraction of the MSE. The EPS rows are "
             "1-NFE posterior means (steps: the checkpoint card's own count); LMMSE: a Gaussian prior fitted to the "
             f"{res['data']['train_images']} training images; A+y: no prior. Draw spread (rows averaging "
             "several 1-NFE draws): RMS over pixels of the per-pixel std across the draws ([-1, 1] units).", "",
             "| task | estimate | PSNR | row-space part | null-space part | null share | draw spread |",
             "|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        p, m = r["psnr"], r["mse"]
        spread = f"{r['draw_spread']:.4f}" if "draw_spread" in r else ""
        lines.append(f"| {r['task']} | {r['estimate']} | {p['all']:.2f} | {p['row']:.2f} | {p['null']:.2f} | "
                     f"{m['null'] / m['all']:.0%} | {spread} |")
    lines += ["", "For the blurs the split says little: their truncated pseudo-inverse counts nearly every "
              "frequency as measured.", ""]
    return "\n".join(lines)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="faces-32", help="bundled family (its EPS model) or a folder of checkpoints")
    ap.add_argument("--data", required=True, help="the .npz of training and test images")
    ap.add_argument("--train-key", default=None)
    ap.add_argument("--train-split", default=None, help="split id(s) of the training images (the LMMSE's prior)")
    ap.add_argument("--test-key", default=None)
    ap.add_argument("--test-split", default=None)
    ap.add_argument("--n", type=int, default=32, help="test images (the first n)")
    ap.add_argument("--tasks", type=lambda s: s.split(","), default=None, help="default: all five")
    ap.add_argument("--extra", type=_extra, action="append", default=[],
                    help="LABEL=CHECKPOINT: another EPS model to split (repeatable)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sigma-y", type=float, default=0.05)
    ap.add_argument("--draws", type=int, default=1, help="also average this many independent 1-NFE means per EPS "
                                                          "model (default 1: the single draw only)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="results prefix (default benchmarks/results/error_split_<model>)")
    args = ap.parse_args(argv)
    if args.n < 1:
        ap.error(f"--n {args.n}: need at least one test image")
    if args.draws < 1:
        ap.error(f"--draws {args.draws}: need at least one draw")
    args.command = "python benchmarks/error_split.py " + " ".join(sys.argv[1:] if argv is None else argv)
    return args


def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    res = measure(args)
    out = Path(args.out) if args.out else RESULTS / f"error_split_{args.model}"
    save_text(out.with_suffix(".json"), json.dumps(res, indent=2) + "\n")
    save_text(out.with_suffix(".md"), markdown(res))
    print(markdown(res))
    return res


if __name__ == "__main__":
    main()
