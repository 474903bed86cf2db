"""Which inputs should the EPS network get? The ablation behind the default conditioning.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/conditioning_ablation.py \
        --data ../shared/data/faces64.npz [--steps 600] [--out benchmarks/results]

Trains the same network (preset ``tiny``, 32x32 faces from split 0, batch 32, same seed and
step budget) on random inpainting (70% missing, sigma_y = 0.05) with five input sets:

* ``pivot``            : the pivot mu* only (+ task and sigma_y embeddings);
* ``pivot+aty``        : mu* and A^T y;
* ``pivot+aty+mask``   : mu*, A^T y and the certainty map diag(A^T A) (the default);
* ``xt+aty``           : x_t / a instead of the pivot, with A^T y (Palette's classic input);
* ``xt+aty+mask``      : x_t / a with the same channels as the default (our Palette);

and reports, on 64 validation faces (split 1), the PSNR of the 1-NFE posterior mean (the
EPS estimate of E[x0 | y], queried at sigma = 80), the final training loss, and -- since the
1-NFE mean is not what a user samples -- ``--samples`` posterior samples per face of
``--sample-nfe`` NFE each (EDM Heun; EPS from its 1-NFE mean, Palette from pure noise, both at
the same budget): the fair CRPS and the PSNR of the sample average. The measurements
(operator and noise) and the sampler seed are the same for every row. Rerunning on finished
runs only evaluates (training resumes at its last step). Writes conditioning_ablation.json / .md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from exactpost.core.metrics import crps, psnr
from exactpost.inference.restoration import eps_restore, palette_restore
from exactpost.core.tasks import make_operator, simulate
from exactpost.io.images import load_images, to_float
from exactpost.nets import load_model
from exactpost.training.loop import TrainConfig, evaluate, train

VARIANTS = {  # name: (objective kind, conditioning)
    "pivot": ("eps", "pivot"),
    "pivot+aty": ("eps", "pivot+aty"),
    "pivot+aty+mask": ("eps", "pivot+aty+mask"),
    "xt+aty": ("palette", "xt+aty"),
    "xt+aty+mask": ("palette", "xt+aty+mask"),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--task", default="inpaint-random")
    ap.add_argument("--runs", default="runs/ablation")
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--samples", type=int, default=4, help="posterior samples per face (>= 2 for CRPS)")
    ap.add_argument("--sample-nfe", type=int, default=20, help="NFE per posterior sample")
    ap.add_argument("--sigma-y", type=float, default=0.05)
    args = ap.parse_args()
    if args.samples < 2:
        raise SystemExit("--samples must be >= 2 (the fair CRPS needs two samples per face)")
    val = to_float(load_images(args.data, split=[1], image_size=32)[:64])
    g = torch.Generator().manual_seed(7)
    op = make_operator(args.task, len(val), tuple(val.shape[1:]), generator=g)
    y = simulate(op, val, args.sigma_y, generator=g)
    rows = []
    for name, (kind, cond) in VARIANTS.items():
        cfg = TrainConfig(run_dir=f"{args.runs}/{name}", objective=kind, tasks=[args.task], conditioning=cond,
                          data=args.data, data_split=[0], image_size=32, preset="tiny", batch_size=args.batch_size,
                          lr=3e-4, warmup_steps=100, steps=args.steps, checkpoint_every=200, eval_every=0,
                          seed=0, threads=args.threads, progress=False)
        train(cfg)
        model, card = load_model(Path(cfg.run_dir) / "model")
        t0 = time.time()
        metrics = evaluate(model, cfg.objective_spec(), val)
        losses = [json.loads(l)["loss"] for l in open(Path(cfg.run_dir) / "metrics.jsonl") if '"loss"' in l]
        tail = losses[-10:]
        sample = eps_restore if kind == "eps" else palette_restore
        with torch.no_grad():
            res = sample(model.eval(), card, op, y, args.sigma_y, args.task, n_samples=args.samples,
                         nfe=args.sample_nfe, generator=torch.Generator().manual_seed(11))
        row = dict(variant=name, objective=kind, conditioning=cond, steps=args.steps,
                   psnr_mean_1nfe=metrics[f"psnr_mean_{args.task}"], final_loss=sum(tail) / len(tail),
                   sample_nfe=res.nfe_sample, samples=args.samples,
                   crps=float(crps(res.samples, val).mean()),
                   psnr_sample_average=float(psnr(res.samples.mean(0).clamp(-1, 1), val).mean()),
                   train_seconds=card.get("wall_time_s"), eval_seconds=round(time.time() - t0, 1))
        rows.append(row)
        print(row, flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cmd = (f"python benchmarks/conditioning_ablation.py --data {args.data} --steps {args.steps} "
           f"--batch-size {args.batch_size} --task {args.task} --samples {args.samples} --sample-nfe {args.sample_nfe}")
    (out / "conditioning_ablation.json").write_text(json.dumps({"command": cmd, "date": time.strftime("%Y-%m-%d"),
                                                               "rows": rows}, indent=1))
    lines = [f"# EPS input ablation ({args.task}, faces 32x32, {args.steps} steps of batch {args.batch_size})", "",
             f"`{cmd}` on {time.strftime('%Y-%m-%d')} (2-core CPU). On 64 validation faces (split 1), sigma_y = "
             f"{args.sigma_y}: PSNR of the 1-NFE posterior mean, and {args.samples} posterior samples per face of "
             f"{args.sample_nfe} NFE (EDM Heun; EPS from its 1-NFE mean, Palette from noise): fair CRPS (lower is "
             "better) and PSNR of their average. Same network, seed, budget and measurements for every row; "
             "training seconds from the model card (wall time of the training steps).", "",
             "| inputs | objective | 1-NFE mean PSNR (dB) | CRPS | sample-average PSNR (dB) | final loss "
             "(mean of last 10 logs) | training s | evaluation s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['objective']} | {r['psnr_mean_1nfe']:.2f} | {r['crps']:.4f} | "
                     f"{r['psnr_sample_average']:.2f} | {r['final_loss']:.4f} | {r['train_seconds']} | {r['eval_seconds']} |")
    (out / "conditioning_ablation.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'conditioning_ablation.md'}")


if __name__ == "__main__":
    main()
