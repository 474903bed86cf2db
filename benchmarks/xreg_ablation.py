"""Which operator input does the EPS network use? The ablation behind the ``pivot+aty+mask+xreg``
default, and the fp32/bf16 parity of the same run.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/xreg_ablation.py \\
        --data ../shared/data/faces64.npz --split 1 --n 64 \\
        --model "bundled (step 0)=models/faces-32/eps" \\
        --model "today's inputs +1000=runs/ablation-faces32-eps-aty-mask/snapshots/model-001000" \\
        --model "x_reg +1000=runs/faces32-eps-xreg/snapshots/model-001000" \\
        [--rho-factors 0.25,1,4] [--samples 4] [--nfe 20] [--out benchmarks/results --name xreg_ablation]

Every row is evaluated on the same held-out images (``--split``, the first ``--n``), the same
operators and noise per task (one generator seed per task) and the same sampler seed: the
1-NFE posterior mean's PSNR (E[x0 | y] from one call at sigma_max) and the fair CRPS of
``--samples`` posterior samples of ``--nfe`` NFE each (the restoration's default sampler),
per task. The rows' models are trained beforehand by ``exactpost finetune`` with the same
starting checkpoint, seed, batch and step budget (the commands are in each card and in the
JSON); snapshots come from ``--snapshot-every``.

``--parity RUN_A RUN_B --parity-step N`` adds the precision parity: the held-out 1-NFE PSNR
per task that two runs' own periodic evaluations (``metrics.jsonl``: the same validation
images, operators and noise) logged at step N, e.g. the same fine-tuning in fp32 and bf16.

``--rho-factors`` adds a training-free table: the PSNR of x_reg = (rho0 I + A^T A)^-1 A^T y
itself for rho0 = factor * sigma_y^2 / sigma_data^2 (factor 1 is the default) -- how good a
linear estimate each choice hands the network.

Writes ``NAME.json`` and ``NAME.md`` under ``--out``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import shlex  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from exactpost.io.images import save_text  # noqa: E402
from exactpost.core.conditioning import SIGMA_DATA  # noqa: E402
from exactpost.core.metrics import crps, psnr  # noqa: E402
from exactpost.inference.restoration import eps_restore  # noqa: E402
from exactpost.core.tasks import make_operator, simulate, task_names  # noqa: E402
from exactpost.io.images import load_images, to_float  # noqa: E402
from exactpost.nets import load_model  # noqa: E402


def _measurements(x0: torch.Tensor, sigma_y: float, seed: int) -> dict:
    """{task: (op, y)}: one operator and noise draw per task, the same for every row."""
    out = {}
    for k, task in enumerate(task_names()):
        g = torch.Generator().manual_seed(seed + k)
        op = make_operator(task, len(x0), tuple(x0.shape[1:]), generator=g)
        out[task] = (op, simulate(op, x0, sigma_y, generator=g))
    return out


def evaluate_model(path: str, x0: torch.Tensor, meas: dict, sigma_y: float, samples: int, nfe: int,
                   seed: int) -> dict:
    """Per task: 1-NFE mean PSNR (dB, mean over images) and CRPS (mean over images)."""
    net, card = load_model(path)
    rows = {}
    for task, (op, y) in meas.items():
        res = eps_restore(net, card, op, y, sigma_y, task, n_samples=samples, nfe=nfe,
                          generator=torch.Generator().manual_seed(seed))
        rows[task] = {"mean_psnr": float(psnr(res.mean, x0).mean()),
                      "crps": float(crps(res.samples, x0).mean()) if samples >= 2 else None,
                      "seconds": round(res.seconds, 2), "sampler": res.settings}
    return {"path": path, "steps": card.get("steps"), "conditioning": card["objective"]["conditioning"],
            "precision": card.get("precision", "fp32"), "command": card.get("command"), "tasks": rows}


def xreg_psnr(x0: torch.Tensor, meas: dict, sigma_y: float, factors: list[float]) -> dict:
    """{factor: {task: PSNR of x_reg with rho0 = factor * sigma_y^2 / sigma_data^2}}."""
    out = {}
    for f in factors:
        rho0 = f * (sigma_y / SIGMA_DATA) ** 2
        out[str(f)] = {task: float(psnr(op.regularized_pinv(y, rho0), x0).mean()) for task, (op, y) in meas.items()}
    return out


def parity(runs: list[str], step: int) -> dict:
    """{run: {"precision": ..., task: PSNR}} from each run's evaluation logged at ``step``."""
    out = {}
    for run in runs:
        evals = [json.loads(line)["eval"] for line in (Path(run) / "metrics.jsonl").read_text().splitlines()
                 if line.startswith('{"eval"')]
        at = [e for e in evals if e["step"] == step]
        if not at:
            raise SystemExit(f"{run}: no evaluation logged at step {step} (have {[e['step'] for e in evals]})")
        cfg = json.loads((Path(run) / "config.json").read_text())
        out[run] = {"precision": cfg.get("precision"), "channels_last": cfg.get("channels_last"),
                    **{k[len("psnr_mean_"):]: v for k, v in at[-1].items() if k.startswith("psnr_mean_")}}
    return out


def markdown(result: dict) -> str:
    tasks = task_names()
    lines = [f"# {result['title']}", "", f"Command: `{result['command']}`", ""]
    if result["rows"]:
        lines += [
             f"{result['n']} held-out images (split {result['split']} of `{result['data']}`), sigma_y = "
             f"{result['sigma_y']}; the same operators, noise and sampler seed for every row. "
             f"Cells: 1-NFE mean PSNR (dB) / CRPS of {result['samples']} samples at {result['nfe']} NFE "
             f"(lower is better).", "",
             "| model | steps | conditioning | precision | " + " | ".join(tasks) + " |",
             "|---|---|---|---|" + "---|" * len(tasks)]
    for name, row in result["rows"].items():
        cells = [f"{row['tasks'][t]['mean_psnr']:.2f} / "
                 + ("-" if row["tasks"][t]["crps"] is None else f"{row['tasks'][t]['crps']:.4f}") for t in tasks]
        lines.append(f"| {name} | {row['steps']} | {row['conditioning']} | {row['precision']} | " + " | ".join(cells) + " |")
    if result.get("parity"):
        runs = list(result["parity"])
        lines += ["", f"Precision parity: held-out 1-NFE PSNR (dB) logged by each run's own evaluation at step "
                      f"{result['parity_step']} (the same validation faces, operators and noise):", "",
                  "| run | precision | " + " | ".join(tasks) + " |", "|---|---|" + "---|" * len(tasks)]
        for run in runs:
            r = result["parity"][run]
            lines.append(f"| {run} | {r['precision']} | " + " | ".join(f"{r[t]:.2f}" for t in tasks) + " |")
        if len(runs) == 2:
            diffs = [result["parity"][runs[1]][t] - result["parity"][runs[0]][t] for t in tasks]
            lines.append("| difference | | " + " | ".join(f"{d:+.2f}" for d in diffs) + " |")
    if result.get("xreg_psnr"):
        lines += ["", "PSNR (dB) of x_reg itself, rho0 = factor x sigma_y^2 / sigma_data^2 (no network):", "",
                  "| factor | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
        for f, row in result["xreg_psnr"].items():
            lines.append(f"| {f} | " + " | ".join(f"{row[t]:.2f}" for t in tasks) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="an .npz of images with a 'split' array")
    ap.add_argument("--split", type=int, default=1, help="held-out split (default 1, validation)")
    ap.add_argument("--n", type=int, default=64, help="held-out images (default 64)")
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--model", action="append", default=[], metavar="NAME=PATH",
                    help="a row: its name and model checkpoint (repeat)")
    ap.add_argument("--sigma-y", type=float, default=0.05)
    ap.add_argument("--samples", type=int, default=4, help="posterior samples per image (>= 2 for CRPS; default 4)")
    ap.add_argument("--nfe", type=int, default=20, help="NFE per sample (default 20)")
    ap.add_argument("--rho-factors", default="0.25,1,4", help="x_reg table factors ('' for none)")
    ap.add_argument("--parity", nargs=2, metavar="RUN", default=None, help="two run folders to compare")
    ap.add_argument("--parity-step", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--title", default="EPS operator input ablation (faces-32, validation split)")
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--name", default="xreg_ablation")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    models = []
    for spec in args.model:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            ap.error(f"--model takes NAME=PATH, got {spec!r}")
        models.append((name, path))
    if not models and not args.parity:
        ap.error("give at least one --model NAME=PATH (or --parity RUN_A RUN_B)")
    x0 = to_float(load_images(args.data, None, [args.split], args.image_size)[: args.n])
    meas = _measurements(x0, args.sigma_y, args.seed)
    result = {"title": args.title, "command": "python benchmarks/xreg_ablation.py " + shlex.join(sys.argv[1:] if argv is None else argv),
              "date": datetime.date.today().isoformat(), "data": args.data, "split": args.split, "n": len(x0),
              "sigma_y": args.sigma_y, "samples": args.samples, "nfe": args.nfe, "seed": args.seed, "rows": {}}
    factors = [float(f) for f in args.rho_factors.split(",") if f.strip()]
    result["xreg_psnr"] = xreg_psnr(x0, meas, args.sigma_y, factors) if factors else {}
    if args.parity:
        result["parity"], result["parity_step"] = parity(args.parity, args.parity_step), args.parity_step
    for name, path in models:
        t0 = time.perf_counter()
        result["rows"][name] = evaluate_model(path, x0, meas, args.sigma_y, args.samples, args.nfe, args.seed + 100)
        print(f"{name}: {time.perf_counter() - t0:.0f} s", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    save_text(out / f"{args.name}.json", json.dumps(result, indent=1))
    save_text(out / f"{args.name}.md", markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
