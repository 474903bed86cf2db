"""Cost of EPS on a diffusers backbone: one scheduler step of the EPS posterior denoiser
around a fine-tuned UNet2DModel against the same scheduler step of the plain unconditional
UNet2DModel (the diffusers pipeline's own loop), as a ratio measured in one run.

    .venv/bin/python benchmarks/diffusers_cost.py [--arch small|ddpm-cifar10] [--scheduler DDIMScheduler]
        [--batch 4] [--steps 5] [--repeats 15] [--threads 1] [--out benchmarks/results]

Both sides use random weights of the same architecture (no downloads); the EPS network is
the same model grown for EPS (conv_in widened by the 7 channels of ``pivot+aty+mask+xreg``,
a class embedding for the task), as ``exactpost finetune --init-from`` makes it. Per task
(registry, 32x32) it times, interleaved, ``repeats`` runs of ``steps`` steps each:

* plain: as a diffusers pipeline does, one scheduler object, ``scheduler.set_timesteps(steps)``
  then ``for t: eps = unet(scheduler.scale_model_input(x, t), t); x = scheduler.step(eps, t, x)``;
* EPS:   :func:`exactpost.backbones.scheduler_sample` with the EPS posterior denoiser
  (pivot mu*, the network on [mu*, cond], x0 handed to the scheduler), the conditioning
  channels computed once per measurement before the run (timed separately, per
  measurement: it is paid once, not per step); the wrapper folds the constant conditioning
  and task embedding into the network on the first step
  (:mod:`exactpost.backbones.constant_inputs`);
* EPS, not folded (``--unfolded``, default on): the same with ``fold_constant_inputs = False``
  (conditioning concatenated to the input and the class embedding looked up every step), to
  show what the folding saves in the same run.

Times are the process's CPU time (``time.process_time``, one torch thread by default): on
this project's two shared cores, busy with training jobs, wall-clock times of the same run
varied 10x within minutes (pair ratios 0.15-1.66 measured), while CPU time does not count
the time the process waits for a core. Ratio = the median over pairs of (EPS run time / plain run time), each pair run back to back
in alternating order = the cost of one EPS step relative to one plain step (the ratio of the
medians is recorded too). Target (issue 17): at most 1.02. ``--arch small`` (1.1M parameters) is the default
because this machine's CPUs are shared with training jobs: a smaller network makes the
pivot's share larger, so its ratio bounds the larger ones'; ``ddpm-cifar10`` is the
architecture of the DDPM CIFAR-10 32x32 model (35.7M parameters); ``tiny`` is for the smoke test. Writes
diffusers_cost_<arch>.json and .md.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from exactpost.backbones import DiffusersUNetDenoiser, add_task_embedding, make_scheduler, scheduler_sample
from exactpost.backbones import widen_conv_in
from exactpost.backbones.diffusers_unet import import_diffusers, schedule_from_config
from exactpost.core.conditioning import build_conditioning, channels, task_embedding_index
from exactpost.core.interpolants import EDM
from exactpost.nets import as_eps_network
from exactpost.core.posterior import EPSPosteriorDenoiser
from exactpost.core.tasks import make_operator, simulate, task_names

SCHEDULER = {"_class_name": "DDPMScheduler", "num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02,
             "beta_schedule": "linear", "prediction_type": "epsilon", "clip_sample": True}
ARCHS = {
    "tiny": dict(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4, attention_head_dim=4,
                 down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D")),
    "small": dict(block_out_channels=(32, 64, 64), layers_per_block=1, norm_num_groups=8,
                  down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
                  up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D")),
    "ddpm-cifar10": dict(block_out_channels=(128, 256, 256, 256), layers_per_block=2,
                         down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
                         up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D")),
}
KIND = "pivot+aty+mask+xreg"
SIGMA_Y = 0.05


def build(arch: str, seed: int):
    """(plain UNet2DModel, the EPS-grown copy with the same weights), both eval mode."""
    import copy

    diffusers = import_diffusers()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        plain = diffusers.UNet2DModel(sample_size=32, in_channels=3, out_channels=3, **ARCHS[arch]).eval()
    grown = copy.deepcopy(plain)
    widen_conv_in(grown, channels(KIND))
    add_task_embedding(grown, len(task_names()))
    return plain, grown.eval()


def plain_run(unet, sched, x_T: torch.Tensor, steps: int) -> torch.Tensor:
    """A diffusers pipeline's loop: the scheduler object reused, its timesteps set per run."""
    sched.set_timesteps(steps)
    x = x_T * sched.init_noise_sigma
    for t in sched.timesteps:
        eps = unet(sched.scale_model_input(x, t), t, return_dict=False)[0]
        x = sched.step(eps, t, x, return_dict=False)[0]
    return x


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", choices=sorted(ARCHS), default="small")
    ap.add_argument("--scheduler", default="DDIMScheduler")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--tasks", default=",".join(task_names()))
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: steadier on a shared machine)")
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--unfolded", action=argparse.BooleanOptionalAction, default=True,
                    help="also time EPS without folding the constant inputs (default: on)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    plain, grown = build(args.arch, 0)
    params = sum(p.numel() for p in plain.parameters())
    model = DiffusersUNetDenoiser(grown, schedule_from_config(SCHEDULER), "epsilon", image_channels=3,
                                  num_tasks=len(task_names()))
    sched = make_scheduler(args.scheduler, SCHEDULER)
    g = torch.Generator().manual_seed(0)
    shape = (args.batch, 3, 32, 32)
    x0 = torch.rand(shape, generator=g) * 2 - 1
    x_T = torch.randn(shape, generator=g)
    rows = []
    with torch.no_grad():
        for task in args.tasks.split(","):
            op = make_operator(task, args.batch, (3, 32, 32), generator=g)
            y = simulate(op, x0, SIGMA_Y, generator=g)
            t0 = time.process_time()
            cond = build_conditioning(KIND, op, y, SIGMA_Y)
            cond_s = time.process_time() - t0
            tid = torch.full((args.batch,), task_embedding_index(task), dtype=torch.long)
            den = EPSPosteriorDenoiser(as_eps_network(model, tid), op, y, SIGMA_Y, EDM(), cond=cond)

            def eps_run():
                model.fold_constant_inputs = True
                return scheduler_sample(den, sched, shape, steps=args.steps, noise=x_T).x0

            def unfolded_run():
                model.fold_constant_inputs = False
                return scheduler_sample(den, sched, shape, steps=args.steps, noise=x_T).x0

            base_sched = make_scheduler(args.scheduler, SCHEDULER)

            def base_run():
                return plain_run(plain, base_sched, x_T, args.steps)

            runs = [(base_run, []), (eps_run, [])] + ([(unfolded_run, [])] if args.unfolded else [])
            for fn, _ in runs:  # warm-up
                fn()
            for r in range(args.repeats):  # back-to-back, order rotating: load drifts hit every side alike
                for fn, acc in runs[r % len(runs):] + runs[: r % len(runs)]:
                    t0 = time.process_time()
                    fn()
                    acc.append(time.process_time() - t0)
            tb, te = runs[0][1], runs[1][1]
            pair_ratios = sorted(x / y for x, y in zip(te, tb))
            e, b = statistics.median(te), statistics.median(tb)
            row = dict(task=task, plain_step_ms=1e3 * b / args.steps, eps_step_ms=1e3 * e / args.steps,
                       ratio=statistics.median(pair_ratios), ratio_of_medians=e / b,
                       conditioning_ms=1e3 * cond_s, ratio_range=[pair_ratios[0], pair_ratios[-1]])
            if args.unfolded:
                tu = runs[2][1]
                row.update(unfolded_step_ms=1e3 * statistics.median(tu) / args.steps,
                           unfolded_ratio=statistics.median(sorted(x / y for x, y in zip(tu, tb))))
            rows.append(row)
            print(f"{task:14s} plain {row['plain_step_ms']:8.2f} ms/step, EPS {row['eps_step_ms']:8.2f} "
                  f"ms/step, ratio {row['ratio']:.4f} (pairs {pair_ratios[0]:.3f}-{pair_ratios[-1]:.3f})"
                  + (f"; not folded {row['unfolded_ratio']:.4f}" if args.unfolded else "")
                  + f"; conditioning once {1e3 * cond_s:.2f} ms", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cmd = (f"python benchmarks/diffusers_cost.py --arch {args.arch} --scheduler {args.scheduler} --batch {args.batch} "
           f"--steps {args.steps} --repeats {args.repeats} --threads {args.threads}"
           + ("" if args.unfolded else " --no-unfolded")
           + ("" if args.tasks == ",".join(task_names()) else f" --tasks {args.tasks}"))
    meta = dict(command=cmd, date=time.strftime("%Y-%m-%d"), params=params, arch=args.arch,
                machine=f"{platform.machine()}, {torch.get_num_threads()} torch threads, CPU", torch=torch.__version__,
                diffusers=import_diffusers().__version__)
    stem = f"diffusers_cost_{args.arch}"
    (out / f"{stem}.json").write_text(json.dumps(dict(meta=meta, rows=rows), indent=1) + "\n")
    worst = max(r["ratio"] for r in rows)
    lines = [f"# EPS step on a diffusers UNet2DModel vs the plain scheduler step ({args.arch})", "",
             f"`{cmd}` on {meta['date']} ({meta['machine']}, torch {meta['torch']}, diffusers {meta['diffusers']});",
             f"{params / 1e6:.2f}M-parameter UNet2DModel, 32x32, batch {args.batch}, {args.scheduler}, median of "
             f"{args.repeats} back-to-back runs of {args.steps} steps per side. Target: ratio <= 1.02. "
             "'not folded': EPS with the conditioning concatenated and the task embedding looked up every step "
             "(fold_constant_inputs = False), same run.", "",
             "| task | plain step (CPU ms) | EPS step (CPU ms) | ratio (median pair) | pair ratio range | "
             "not folded: step (CPU ms) | not folded: ratio | conditioning, once (ms) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lo, hi = r["ratio_range"]
        unf = (f"{r['unfolded_step_ms']:.2f} | {r['unfolded_ratio']:.4f}" if "unfolded_ratio" in r else "- | -")
        lines.append(f"| {r['task']} | {r['plain_step_ms']:.2f} | {r['eps_step_ms']:.2f} | {r['ratio']:.4f} | "
                     f"{lo:.3f}-{hi:.3f} | {unf} | {r['conditioning_ms']:.2f} |")
    lines += ["", f"Worst ratio: {worst:.4f} ({'meets' if worst <= 1.02 else 'misses'} the 1.02 target)."]
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / (stem + '.md')}")
    return rows


if __name__ == "__main__":
    main()
