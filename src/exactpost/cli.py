"""The ``exactpost`` command line: train, finetune, sample.

Every user error (a bad flag value, a missing or unreadable file, a checkpoint that does not
fit) prints one line ``exactpost: error: ...`` and exits with code 2, with no traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Sequence

from .training.checkpoint import CheckpointError
from .training.data import DataError
from .training.stop import TrainingStopped

#: TrainConfig fields settable by flags: flag -> (field, parser)
def _floats_or_range(text: str):
    parts = [float(p) for p in text.split(",")]
    if len(parts) == 1:
        return parts[0]
    if len(parts) == 2:
        return parts
    raise ValueError(f"sigma_y must be a number or 'lo,hi', got {text!r}")


def _int_list(text: str) -> list[int]:
    return [int(p) for p in text.split(",") if p.strip()]


def _str_list(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


TRAIN_FLAGS = {
    "run_dir": str, "objective": str, "tasks": _str_list, "sigma_y": _floats_or_range, "conditioning": str,
    "uniform_frac": float, "data": str, "data_key": str, "data_split": _int_list, "eval_key": str,
    "eval_split": _int_list, "image_size": int, "preset": str, "unet": json.loads, "init_from": str,
    "batch_size": int, "lr": float, "warmup_steps": int, "grad_clip": float, "weight_decay": float,
    "ema_halflife_kimg": float, "steps": int, "checkpoint_every": int, "eval_every": int, "eval_images": int,
    "log_every": int, "seed": int, "threads": int, "device": str,
}


class UsageError(ValueError):
    """A bad command line; printed as one line, exit code 2."""


def _add_train_flags(p: argparse.ArgumentParser, objective_default: str | None) -> None:
    p.add_argument("--config", help="JSON file with TrainConfig fields (flags override it)")
    for name, kind in TRAIN_FLAGS.items():
        flag = "--" + name.replace("_", "-")
        p.add_argument(flag, dest=name, default=None, metavar=name.upper(),
                       help=f"TrainConfig.{name}" + (" (comma-separated)" if kind in (_int_list, _str_list) else ""))
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    if objective_default:
        p.set_defaults(objective_default=objective_default)


def _train_config(args: argparse.Namespace, argv: Sequence[str]):
    from .training.loop import TrainConfig

    d: dict = {}
    if args.config:
        path = Path(args.config)
        if not path.is_file():
            raise UsageError(f"config file {path} does not exist")
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise UsageError(f"config file {path} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    for name, kind in TRAIN_FLAGS.items():
        value = getattr(args, name)
        if value is not None:
            try:
                d[name] = kind(value)
            except (ValueError, json.JSONDecodeError) as exc:
                raise UsageError(f"--{name.replace('_', '-')}: cannot parse {value!r} ({exc})") from None
    if getattr(args, "objective_default", None) and "objective" not in d:
        d["objective"] = args.objective_default
    if args.no_progress:
        d["progress"] = False
    d["command"] = "exactpost " + " ".join(shlex.quote(a) for a in argv)
    if not d.get("data"):
        raise UsageError("no training data: pass --data PATH (an .npz file or a folder of PNG/JPEG images)")
    return TrainConfig.from_dict(d)


def cmd_train(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from .training.loop import train

    cfg = _train_config(args, argv)
    if args.command == "finetune" and not cfg.init_from:
        raise UsageError("finetune needs --init-from PRIOR (a prior's model checkpoint, e.g. runs/prior/model)")
    metrics = train(cfg)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun/accelerate, rank 0 reports
        return 0
    print(f"done: {cfg.steps} steps; model in {Path(cfg.run_dir) / 'model.safetensors'}")
    if metrics:
        print("held-out: " + ", ".join(f"{k} {v:.2f}" for k, v in metrics.items() if k != "step"))
    return 0


def cmd_sample(args: argparse.Namespace, argv: Sequence[str]) -> int:
    import torch

    from .imageio import save_grid
    from .interpolants import EDM
    from .nets.precond import as_denoiser
    from .samplers import edm_heun
    from .training.loop import load_model

    if args.n < 1 or args.steps < 1:
        raise UsageError("--n and --steps must be >= 1")
    model, card = load_model(args.model)
    if model.config.cond_channels:
        raise UsageError(f"{args.model} is a conditional (EPS/Palette) model; sample draws from a prior")
    g = torch.Generator().manual_seed(args.seed)
    size = model.config.image_size
    with torch.no_grad():
        out = edm_heun(as_denoiser(model, EDM()), (args.n, 3, size, size), steps=args.steps, generator=g)
    path = save_grid(out.x0, args.out)
    print(f"wrote {args.n} samples ({out.nfe} NFE each) to {path}")
    return 0


def _fmt_int(v) -> str:
    return f"{v:,}" if isinstance(v, int) else "-"


def cmd_models(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from . import zoo

    entries = zoo.list_models()
    if args.json:
        print(json.dumps([{"name": e.name, "kind": e.kind, "path": str(e.path), "card": e.card} for e in entries],
                         indent=2))
        return 0
    if not entries:
        print(f"no bundled models in {zoo.models_dir()}")
        return 0
    print(f"bundled models in {zoo.models_dir()}:")
    print(f"{'name':<12} {'kind':<8} {'params':>10} {'steps':>7} {'images seen':>12} {'wall h':>7}  data / init")
    for e in entries:
        c = e.card
        wall = c.get("wall_time_s")
        data = c.get("data", {}) if isinstance(c.get("data"), dict) else {}
        where = f"{Path(str(data.get('path', '?'))).name} split {data.get('split')}"
        if c.get("init_from"):
            where += f", from {Path(str(c['init_from'])).name}"
        print(f"{e.name:<12} {e.kind:<8} {_fmt_int(c.get('params')):>10} {_fmt_int(c.get('steps')):>7} "
              f"{_fmt_int(c.get('images_seen')):>12} {(wall or 0) / 3600:>7.2f}  {where}")
        quality = c.get("quality")
        if isinstance(quality, dict) and quality.get("summary"):
            print(f"{'':<21} {quality['summary']}")
    print("cards (command, data, hardware, metrics): exactpost models --json, or models/<name>/<kind>.json")
    return 0


def cmd_demo(args: argparse.Namespace, argv: Sequence[str]) -> int:
    import torch

    from .demo import markdown_table, run_demo

    if args.threads:
        torch.set_num_threads(args.threads)
    tasks = _str_list(args.tasks) if args.tasks else None
    res = run_demo(model=args.model, tasks=tasks, n_images=args.images, n_samples=args.samples, nfe=args.nfe,
                   seed=args.seed, out=args.out, sigma_y=args.sigma_y, progress=not args.no_progress)
    print(markdown_table(res["tasks"]))
    print(f"model {res['model']} ({res['model_steps']} steps); {res['total_seconds']:.1f} s in total; "
          f"pictures and results.md/json in {Path(args.out).resolve()}")
    return 0


def cmd_restore(args: argparse.Namespace, argv: Sequence[str]) -> int:
    import torch

    from .restore import run_restore

    if args.threads:
        torch.set_num_threads(args.threads)
    info = run_restore(args.input, args.task, model=args.model, method=args.method, simulate_input=args.simulate,
                       mask=args.mask, kernel=args.kernel, n_samples=args.samples, nfe=args.nfe,
                       sigma_y=args.sigma_y, seed=args.seed, out=args.out, overwrite=args.overwrite)
    for notice in info["notices"]:
        print(f"notice: {notice}")
    mean = f"posterior mean ({info['nfe_mean']} NFE)" if info["nfe_mean"] else "the samples' mean"
    line = (f"{info['method']} on {info['task']} ({info['mode']}): {mean} and "
            f"{info['n_samples']} samples ({info['nfe_sample']} NFE each) in {info['seconds']:.1f} s")
    if "scores" in info:
        sc = info["scores"]
        line += f"; PSNR mean {sc['psnr_mean']:.2f} dB, SSIM mean {sc['ssim_mean']:.3f}"
    print(line)
    print(f"wrote mean.png, std.png, sample_*.png, measurement.png and restore.json to {Path(args.out).resolve()}")
    return 0


def cmd_bench(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from .bench import gmm_bench, images_bench

    return {"gmm": gmm_bench.run, "images": images_bench.run}[args.bench](args)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="exactpost", description="Exact posterior sampling (EPS) for linear inverse problems.")
    sub = ap.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a prior, an EPS or a Palette network")
    _add_train_flags(t, None)
    f = sub.add_parser("finetune", help="fine-tune a prior into an EPS network (--init-from PRIOR)")
    _add_train_flags(f, "eps")
    s = sub.add_parser("sample", help="unconditional samples from a prior, as a PNG grid")
    s.add_argument("--model", required=True, help="model checkpoint (path without extension, or the .safetensors)")
    s.add_argument("--n", type=int, default=16)
    s.add_argument("--steps", type=int, default=18, help="EDM Heun steps (NFE = 2 steps - 1)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", default="samples.png")
    m = sub.add_parser("models", help="list the bundled models and their cards")
    m.add_argument("--json", action="store_true", help="print the full cards as JSON")
    d = sub.add_parser("demo", help="posterior samples of bundled test images for every task (CPU, < 3 min)")
    d.add_argument("--model", default="faces-32", help="bundled model name or an EPS checkpoint path (default faces-32)")
    d.add_argument("--tasks", default=None, help="comma-separated task ids (default: all five)")
    d.add_argument("--images", type=int, default=8, help="number of bundled test images (default 8)")
    d.add_argument("--samples", type=int, default=4, help="posterior samples per image (default 4)")
    d.add_argument("--nfe", type=int, default=20, help="network evaluations per sample (default 20)")
    d.add_argument("--sigma-y", type=float, default=0.05, help="measurement noise std on [-1, 1] images (default 0.05)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--out", default="exactpost-demo", help="output folder (default ./exactpost-demo)")
    d.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    d.add_argument("--no-progress", action="store_true", help="no progress bar")
    b = sub.add_parser("bench", help="benchmarks (gmm: the Gaussian-mixture protocol with exact posteriors)")
    bsub = b.add_subparsers(dest="bench", required=True)
    from .bench import gmm_bench

    gmm_bench.add_arguments(bsub.add_parser("gmm", help="MCGdiff mixture benchmark: EPS and every baseline "
                                                        "against the exact posterior"))
    from .bench import images_bench

    images_bench.add_arguments(bsub.add_parser("images", help="EPS, Palette and every baseline on test images: "
                                                              "PSNR, SSIM, CRPS, MMD, FD, time and cost"))
    r = sub.add_parser("restore", help="restore your own image: posterior mean, samples and std as PNGs")
    r.add_argument("input", help="the measurement image (or, with --simulate, a clean image to degrade)")
    r.add_argument("--task", required=True, help="inpaint-random, inpaint-box, sr4, deblur-gauss or deblur-motion")
    r.add_argument("--simulate", action="store_true", help="degrade the clean input with the task's operator first")
    r.add_argument("--mask", default=None, help="inpainting mask image (white = observed, black = missing)")
    r.add_argument("--kernel", default=None, help="blur kernel: .npy, .txt/.csv or a grayscale image (>= 0)")
    r.add_argument("--model", default="faces-32", help="bundled model name or a checkpoint path (default faces-32)")
    r.add_argument("--method", default="eps", help="eps (default), palette, or a zero-shot baseline on the prior")
    r.add_argument("--samples", type=int, default=4, help="posterior samples (default 4)")
    r.add_argument("--nfe", type=int, default=None, help="network evaluations per sample (default 20 for eps, "
                                                          "100 otherwise)")
    r.add_argument("--sigma-y", type=float, default=0.05, help="measurement noise std on [-1, 1] images (0.05)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--out", default="exactpost-restore", help="output folder (default ./exactpost-restore)")
    r.add_argument("--overwrite", action="store_true", help="write into an existing non-empty output folder")
    r.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    from . import encoder

    encoder.add_arguments(sub.add_parser("train-encoder", help="train the small classifier whose features give the "
                                                               "encoder Frechet distance of `bench images`"))
    return ap


def cmd_train_encoder(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from . import encoder

    return encoder.run(args, "exactpost " + " ".join(shlex.quote(a) for a in argv))


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = build_parser()
    args = ap.parse_args(argv)  # argparse itself exits 2 with a one-line usage error
    handlers = {"train": cmd_train, "finetune": cmd_train, "sample": cmd_sample, "models": cmd_models,
                "demo": cmd_demo, "restore": cmd_restore,
                "bench": cmd_bench, "train-encoder": cmd_train_encoder}
    try:
        return handlers[args.command](args, argv)
    except (UsageError, DataError, CheckpointError, ValueError, FileNotFoundError) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        print(f"exactpost: error: {msg}", file=sys.stderr)
        return 2
    except TrainingStopped as exc:
        print(f"exactpost: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("exactpost: interrupted; rerun the same command to resume from the last checkpoint", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
