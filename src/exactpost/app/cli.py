"""The ``exactpost`` command line: train, finetune, sample, models, demo, restore, bench,
train-encoder.

Errors and exit codes
    ``0``   success.
    ``2``   a bad input or an expected failure: a bad option value, a missing, unreadable or
            damaged file, an output path that cannot be written, a request too large for
            the memory, a disk that fills while writing. One line ``exactpost: error: ...``
            on stderr says what is wrong and how to fix it; no traceback. Outputs written
            before the failure are left as they were (see :mod:`exactpost.io.atomic`).
    ``1``   a bug: the Python traceback, then one line asking to report it.
    ``130`` interrupted (Ctrl-C); ``128 + N`` training stopped cleanly by signal N (e.g. 143
            for SIGTERM) with its state saved.

``--debug`` (before or after the subcommand) or ``EXACTPOST_DEBUG=1`` in the environment
also prints the full traceback of an expected error (the exit code stays 2).

Every option is checked before any work starts (ranges of numbers, output paths); the
training options are generated from :class:`~exactpost.training.loop.TrainConfig`'s fields,
with the help texts of :data:`TRAIN_HELP`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import shlex
import sys
import textwrap
import traceback
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from . import argtypes
from .output_paths import check_output_dir, check_output_file
from ..io.checkpoint import CheckpointError
from ..io.images import DataError
from ..core.sampler_spec import DEFAULT as DEFAULT_SAMPLER
from ..core.sampler_spec import parse_spec, syntax_help
from ..training.stop import TrainingStopped

#: environment variable that turns on full tracebacks (like ``--debug``)
DEBUG_ENV = "EXACTPOST_DEBUG"


class UsageError(ValueError):
    """A bad command line; printed as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line (raised as :class:`UsageError`,
    printed by :func:`main`) instead of argparse's usage block."""

    def error(self, message: str) -> None:  # type: ignore[override]
        head, sep, rest = message.partition(": ")
        if head.startswith("argument ") and rest.startswith("must "):  # our range types
            message = f"{head[len('argument '):].split('/')[0]} {rest}"
        raise UsageError(f"{message} (see {self.prog} --help)")


class _HelpFormatter(argparse.HelpFormatter):
    """Adds ``(default: X)`` to every option whose help does not state its default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (action.option_strings and "default" not in text.lower() and action.default is not None
                and action.default is not False and action.default != argparse.SUPPRESS and action.default != []):
            text += " (default: %(default)s)"
        return text

    def _split_lines(self, text: str, width: int) -> list[str]:
        """Wrap at spaces only: a hyphenated name (zero-shot-pivot, --sigma-y) stays on one line."""
        return textwrap.wrap(self._whitespace_matcher.sub(" ", text).strip(), width, break_on_hyphens=False)


# --- training options: generated from TrainConfig's fields ----------------------------------
def _sigma_y(text: str) -> float | list[float]:
    """``'0.05'`` -> 0.05; ``'0.01,0.1'`` -> [0.01, 0.1]."""
    parts = [p for p in str(text).split(",") if p.strip()]
    if len(parts) not in (1, 2):
        raise argparse.ArgumentTypeError(f"must be a number or LO,HI, got {text!r}")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number or LO,HI, got {text!r}") from None
    _check_sigma_y(values if len(values) == 2 else values[0])
    return values if len(values) == 2 else values[0]


def _check_sigma_y(value: Any) -> None:
    is_num = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)  # noqa: E731
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    if len(values) not in (1, 2) or not all(is_num(v) for v in values):
        raise argparse.ArgumentTypeError(f"must be a number or a pair LO,HI, got {value!r}")
    if not all(math.isfinite(v) and v >= 0 for v in values) or (len(values) == 2 and values[0] > values[1]):
        raise argparse.ArgumentTypeError(f"must be finite and >= 0 (a pair LO,HI with LO <= HI), got {value!r}")


def _str_list(text: str) -> list[str]:
    items = [p.strip() for p in str(text).split(",") if p.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"must be one or more comma-separated names, got {text!r}")
    return items


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"must be a JSON object ({exc.msg} at column {exc.colno}), got {text!r}") \
            from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object of U-Net fields, got {text!r}")
    return value


def _with_check(parse: Callable[[str], Any], check: Callable[[Any], None]) -> Callable[[str], Any]:
    parse.check = check  # type: ignore[attr-defined]
    return parse


def _checked_number(kind: type, **limits: Any) -> Callable[[str], Any]:
    """An argtypes parser that can also check a value read from a --config file."""
    parse = argtypes.int_range(**limits) if kind is int else argtypes.float_range(**limits)

    def check(value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise argparse.ArgumentTypeError(f"must be {'an integer' if kind is int else 'a number'}, got {value!r}")
        parse(repr(value))

    return _with_check(parse, check)


def _checked_list(parse: Callable[[str], list]) -> Callable[[str], list]:
    """A comma-separated list parser whose check takes a JSON list (or one item) of a --config file."""

    def check(value: Any) -> None:
        items = value if isinstance(value, list) else [value]
        if any(isinstance(v, (dict, list, bool)) for v in items):
            raise argparse.ArgumentTypeError(f"must be a list of plain values, got {value!r}")
        parse(",".join(map(str, items)))

    return _with_check(parse, check)


def _train_parsers() -> dict[str, Callable[[str], Any]]:
    """TrainConfig field -> parser of its command-line text (with a ``check`` for config values)."""
    from ..nets.precond import SKIPS
    from ..training.precision import PRECISIONS

    nonneg_int = lambda why="": _checked_number(int, lo=0, why=why)  # noqa: E731
    return {
        "tasks": _checked_list(_str_list),
        "sigma_y": _with_check(_sigma_y, _check_sigma_y),
        "uniform_frac": _checked_number(float, lo=0.0, hi=1.0, why="a fraction"),
        "data_split": _checked_list(argtypes.int_list()),
        "eval_split": _checked_list(argtypes.int_list()),
        "image_size": _checked_number(int, lo=8, why="pixels"),
        "unet": _json_object,
        "batch_size": _checked_number(int, lo=1),
        "lr": _checked_number(float, lo=0.0, lo_open=True),
        "warmup_steps": nonneg_int(),
        "lr_decay_steps": nonneg_int("0: constant"),
        "grad_clip": _checked_number(float, lo=0.0, lo_open=True, allow_inf=True, why="inf: no clipping"),
        "weight_decay": _checked_number(float, lo=0.0),
        "ema_halflife_kimg": _checked_number(float, lo=0.0),
        "ema_rampup": _checked_number(float, lo=0.0),
        "steps": _checked_number(int, lo=1),
        "checkpoint_every": _checked_number(int, lo=1, why="steps between checkpoints"),
        "eval_every": nonneg_int("0: never"),
        "eval_images": nonneg_int(),
        "log_every": _checked_number(int, lo=1, why="steps between log lines"),
        "seed": _checked_number(int, lo=0, hi=argtypes.MAX_SEED, why="a random seed"),
        "threads": nonneg_int("0: torch's choice"),
        "precision": _with_check(argtypes.choice(PRECISIONS), lambda v: argtypes.choice(PRECISIONS)(v)),
        "snapshot_every": nonneg_int("0: never"),
        "skip": _with_check(argtypes.choice(SKIPS), lambda v: argtypes.choice(SKIPS)(v)),
        "channels_last": _with_check(_on_off, lambda v: None),
    }


def _on_off(text: str) -> bool:
    """``true``/``false`` (also yes/no, on/off, 1/0) as a bool."""
    value = argtypes.choice(("true", "false", "yes", "no", "on", "off", "1", "0"))(text)
    return value in ("true", "yes", "on", "1")


#: help of every TrainConfig field settable by an option (the default is appended from TrainConfig)
TRAIN_HELP: dict[str, str] = {
    "run_dir": "run folder: config.json, metrics.jsonl, the resumable state (state.*) and the exported EMA model "
               "(model.*); rerunning the command on the same folder resumes it",
    "objective": "what to train: prior (unconditional EDM denoiser), eps (the exact-posterior EPS network) or "
                 "palette (the conditional x_t baseline)",
    "tasks": "comma-separated tasks an eps/palette network learns, one drawn per training image: {tasks}",
    "sigma_y": "measurement noise std on [-1, 1] images: a number >= 0, or LO,HI to draw it uniformly per image",
    "conditioning": "input channels of an eps/palette network: one of {kinds} (default: {cond_default})",
    "uniform_frac": "fraction (0..1) of training noise levels drawn log-uniformly in [0.002, 80] instead of "
                    "EDM's log-normal",
    "data": "training images: an .npz file ([N, H, W, 3] uint8 under 'images' or 'train_images') or a folder of "
            "PNG/JPEG files (required)",
    "data_key": "array of the .npz holding the training images (default: images, else train_images)",
    "data_split": "comma-separated values of the .npz 'split' array to train on, e.g. 0 (default: every image)",
    "eval_key": "array of the .npz holding held-out images for the periodic evaluation (default: split 1 or "
                "test_images when the .npz has them, else no evaluation)",
    "eval_split": "comma-separated 'split' values of the held-out images (default: see --eval-key)",
    "image_size": "side of the square training images in pixels, >= 8; other sizes are centre-cropped and resized",
    "preset": "U-Net size: {presets}",
    "unet": "JSON object of U-Net fields overriding the preset's, e.g. '{{\"base_width\": 64, \"dropout\": 0.1}}'",
    "skip": "skip connection of the network: scalar (EDM's c_skip x) or gaussian (eps only: the operator-aware "
            "S mu* = sd^2 (sd^2 I + Sigma*)^-1 mu*, which passes the measured content of the pivot through instead of "
            "re-synthesising it; a model fine-tuned from a scalar-skip one keeps its weights, not its outputs)",
    "init_from": "model checkpoint to start from (path without extension): a prior to fine-tune, or an eps/palette "
                 "model whose conditioning the new one extends; or a local diffusers UNet2DModel folder (flat, or a "
                 "pipeline folder with unet/ and scheduler/; safetensors weights, offline), fine-tuned into a "
                 "diffusers folder RUN_DIR/model (see finetune --help) (default: a fresh network)",
    "batch_size": "training images per optimiser step, all processes together, >= 1",
    "lr": "AdamW learning rate after the warm-up, > 0",
    "warmup_steps": "steps of linear learning-rate warm-up from 0, >= 0",
    "lr_decay_steps": "decay the learning rate linearly to 0 over the run's last N steps, >= 0 (0: constant after "
                      "the warm-up); it may be added when resuming a run that has not reached step STEPS - N",
    "grad_clip": "clip the gradients' global L2 norm to this, > 0 (inf: no clipping)",
    "weight_decay": "AdamW weight decay, >= 0",
    "ema_halflife_kimg": "half-life of the exponential moving average of the weights, in thousands of images, >= 0",
    "ema_rampup": "EMA ramp-up: the half-life is at most this fraction of the images seen so far, >= 0 "
                  "(0: no ramp-up)",
    "steps": "optimiser steps of the whole run (a resumed run continues up to this), >= 1",
    "checkpoint_every": "save the resumable state and export the model every N steps and at the end, >= 1",
    "eval_every": "held-out evaluation every N steps, >= 0 (0: never)",
    "eval_images": "held-out images per evaluation, >= 0 (0: no evaluation)",
    "log_every": "append loss, learning rate and speed to metrics.jsonl every N steps, >= 1",
    "seed": "random seed of the initial weights, data order, noise and dropout, 0..4294967295",
    "threads": "torch CPU threads, >= 0 (default: torch's choice)",
    "device": "where the network trains: auto (cuda:LOCAL_RANK when CUDA is available, else the CPU), cpu, cuda or "
              "cuda:N",
    "precision": "training precision: bf16 autocast with float32 master weights, or fp32; auto = bf16 where it is "
                 "faster (CUDA with bf16, CPUs with AMX), else fp32 (default auto; benchmarks/train_precision.md)",
    "snapshot_every": "also export the EMA model every N steps to RUN_DIR/snapshots/ (0 = never; default 0)",
    "channels_last": "true: keep the network in channels_last memory format (faster convolutions on some CPUs; "
                     "see benchmarks/train_precision.md), false: torch's default layout",
}
#: TrainConfig fields that are not options (--no-progress sets ``progress``)
NOT_OPTIONS = ("progress", "command")


def _train_fields() -> list[dataclasses.Field]:
    from ..training.loop import TrainConfig

    return [f for f in dataclasses.fields(TrainConfig) if f.name not in NOT_OPTIONS]


def _fmt_default(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    if isinstance(value, dict):
        return json.dumps(value)
    return str(value)


def _train_help(name: str, default: Any) -> str:
    from ..core.conditioning import DEFAULT_KIND, KINDS
    from ..nets import PRESETS
    from ..core.tasks import task_names

    text = TRAIN_HELP.get(name)
    if text is None:  # a new TrainConfig field without help: tests/test_cli_bad_input.py catches this
        return name
    text = text.format(tasks=", ".join(task_names()), kinds=", ".join(KINDS), presets=", ".join(PRESETS),
                       cond_default=f"{DEFAULT_KIND['eps']} for eps, {DEFAULT_KIND['palette']} for palette")
    if "default" not in text.lower():
        text += f" (default {_fmt_default(default)})"
    return text.replace("%", "%%")


def _add_train_flags(p: argparse.ArgumentParser, objective_default: str | None) -> None:
    from ..training.loop import TrainConfig

    defaults = TrainConfig()
    p.add_argument("--config", metavar="FILE.json",
                   help="JSON file holding an object of training settings (these options' names with _ for -); "
                        "options given on the command line override it (default: none)")
    for f in _train_fields():
        default = getattr(defaults, f.name)
        if f.name == "objective" and objective_default:
            default = objective_default
        p.add_argument("--" + f.name.replace("_", "-"), dest=f.name, default=None, metavar=f.name.upper(),
                       help=_train_help(f.name, default))
    p.add_argument("--no-progress", action="store_true", help="do not show the progress bar (default: shown)")
    if objective_default:
        p.set_defaults(objective_default=objective_default)


def _parse_flag(name: str, text: str, default: Any) -> Any:
    """A training option's text -> value, by its parser or its default's type."""
    parse = _train_parsers().get(name)
    if parse is None:
        kind = type(default)
        parse = {bool: lambda t: {"true": True, "false": False}[t.lower()], list: _str_list,
                 dict: _json_object}.get(kind, kind if kind in (int, float) else str)
    try:
        return parse(text)
    except argparse.ArgumentTypeError as exc:
        raise UsageError(f"--{name.replace('_', '-')} {exc}") from None
    except (ValueError, KeyError):
        raise UsageError(f"--{name.replace('_', '-')}: cannot read {text!r} as {type(default).__name__}") from None


def _check_train_values(cfg: Any, from_flags: set[str], config_path: Optional[Path]) -> None:
    """The ranges of every training setting, whether it came from an option or --config."""
    from ..training.loop import TrainConfig

    defaults = TrainConfig()
    parsers = _train_parsers()
    for f in _train_fields():
        value = getattr(cfg, f.name)
        where = f"--{f.name.replace('_', '-')}" if f.name in from_flags else \
            f"config key {f.name!r} in {config_path}"
        if value is None:
            if getattr(defaults, f.name) is not None:
                raise UsageError(f"{where} must be set, got null")
            continue
        if str(f.type).replace(" ", "") in ("str", "Optional[str]", "str|None") and not isinstance(value, str):
            raise UsageError(f"{where} must be a string, got {value!r}")
        check = getattr(parsers.get(f.name), "check", None)
        if check is not None:
            try:
                check(value)
            except argparse.ArgumentTypeError as exc:
                raise UsageError(f"{where} {exc}") from None


def _read_config(path: Path) -> dict:
    if not path.is_file():
        raise UsageError(f"config file {path} does not exist" if not path.exists() else
                         f"config file {path} is not a file; give a JSON file")
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UsageError(f"config file {path} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except UnicodeDecodeError:
        raise UsageError(f"config file {path} is not UTF-8 text; give a JSON file") from None
    if not isinstance(d, dict):
        raise UsageError(f"config file {path} holds a JSON {type(d).__name__}, not an object; write "
                         f'{{"steps": 1000, ...}} with training settings as keys')
    return d


def _train_config(args: argparse.Namespace, argv: Sequence[str]):
    from ..training.loop import TrainConfig

    defaults = TrainConfig()
    config_path = Path(args.config) if args.config else None
    d: dict = _read_config(config_path) if config_path else {}
    from_flags = set()
    for f in _train_fields():
        text = getattr(args, f.name)
        if text is not None:
            d[f.name] = _parse_flag(f.name, text, getattr(defaults, f.name))
            from_flags.add(f.name)
    if getattr(args, "objective_default", None) and "objective" not in d:
        d["objective"] = args.objective_default
    if args.no_progress:
        d["progress"] = False
    d["command"] = "exactpost " + " ".join(shlex.quote(a) for a in argv)
    if not d.get("data"):
        raise UsageError("no training data: pass --data PATH (an .npz file or a folder of PNG/JPEG images)")
    cfg = TrainConfig.from_dict(d)
    _check_train_values(cfg, from_flags, config_path)
    check_output_dir(cfg.run_dir, existing_ok=True, flag="--run-dir", what="run folder")
    return cfg


def cmd_train(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from ..training.loop import train

    cfg = _train_config(args, argv)
    if args.command == "finetune" and not cfg.init_from:
        raise UsageError("finetune needs --init-from PRIOR (a prior's model checkpoint, e.g. runs/prior/model)")
    run = Path(cfg.run_dir)
    existed = run.exists()
    try:
        from ..backbones.layout import is_diffusers_folder  # pure Python (no diffusers import)

        if cfg.init_from and is_diffusers_folder(cfg.init_from):  # a diffusers UNet2DModel folder
            from ..backbones.finetune import finetune_command
            return finetune_command(cfg)
        metrics = train(cfg)
    except BaseException:
        if not existed and run.is_dir() and not any(run.iterdir()):  # failed before writing: leave no trace
            with contextlib.suppress(OSError):
                run.rmdir()
        raise
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun/accelerate, rank 0 reports
        return 0
    try:  # the run's own count: a rerun past --steps trains nothing and keeps its later step
        steps = int(json.loads((run / "model.json").read_text())["steps"])
    except (OSError, ValueError, KeyError, TypeError):
        steps = cfg.steps
    print(f"done: {steps} steps; model in {run / 'model.safetensors'}")
    if metrics:
        print("held-out: " + ", ".join(f"{k} {v:.2f}" for k, v in metrics.items() if k != "step"))
    return 0


#: samples drawn per network batch by ``exactpost sample`` (bounds the activations' memory)
SAMPLE_CHUNK = 64


def cmd_sample(args: argparse.Namespace, argv: Sequence[str]) -> int:
    import torch

    from ..io.images import save_grid
    from ..core.interpolants import EDM
    from ..core.memory import check_fits
    from ..nets.precond import as_denoiser
    from ..core.samplers import edm_heun
    from ..nets.loading import load_model

    out = check_output_file(args.out)
    model, card = load_model(args.model)
    if model.config.cond_channels:
        raise UsageError(f"{args.model} is a conditional (EPS/Palette) model; sample draws from a prior")
    size = model.config.image_size
    # held at once: the samples in float32, their 8-bit copy and the PNG canvas (6 bytes a value)
    check_fits(args.n * 3 * (size + 1) ** 2 * 6, f"{args.n} samples of 3x{size}x{size} in one PNG",
               "ask for fewer samples (--n)")
    g = torch.Generator().manual_seed(args.seed)
    den = as_denoiser(model, EDM())
    parts, nfe = [], 0
    with torch.no_grad():  # chunks drawn one after the other from the same generator
        for start in range(0, args.n, SAMPLE_CHUNK):
            res = edm_heun(den, (min(SAMPLE_CHUNK, args.n - start), 3, size, size), steps=args.steps, generator=g)
            parts.append(res.x0)
            nfe = res.nfe
    path = save_grid(torch.cat(parts), out)
    print(f"wrote {args.n} samples ({nfe} NFE each) to {path}")
    return 0


def _fmt_int(v) -> str:
    return f"{v:,}" if isinstance(v, int) else "-"


def cmd_models(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from ..inference import zoo

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
                   seed=args.seed, out=args.out, sigma_y=args.sigma_y, progress=not args.no_progress,
                   sampler=args.sampler)
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
                       sigma_y=args.sigma_y, seed=args.seed, out=args.out, overwrite=args.overwrite,
                       scheduler=args.scheduler, sampler=args.sampler)
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
    from ..bench import gmm_bench, images_bench

    return {"gmm": gmm_bench.run, "images": images_bench.run}[args.bench](args)


def _sampler_spec(text: str) -> str:
    """``--sampler``: a sampler spec (:mod:`exactpost.core.sampler_spec`) -> its canonical name;
    a bad spec is a one-line usage error."""
    try:
        return parse_spec(text).name
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def method_help() -> str:
    """The help of ``restore --method``: every method by name, from the registries
    (:func:`exactpost.inference.api.methods`: the trained networks, then :mod:`exactpost.baselines`)."""
    from ..inference.api import TRAINED, methods

    baselines = [m for m in methods() if m not in TRAINED]
    return ("eps (the trained EPS network), palette (the trained Palette network), or a zero-shot baseline on "
            f"the model's prior: {', '.join(baselines)}")


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="exactpost", formatter_class=_HelpFormatter,
                 description="Exact posterior sampling (EPS) for linear inverse problems.",
                 epilog="Errors print one line and exit with code 2; a bug prints its traceback and exits 1. "
                        f"--debug or {DEBUG_ENV}=1 shows the traceback of every error.")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help[0].upper() + help[1:] + ".",
                              formatter_class=_HelpFormatter)

    t = command("train", "train a prior, an EPS or a Palette network")
    _add_train_flags(t, None)
    f = command("finetune", "fine-tune a prior into an EPS network (--init-from PRIOR)")
    f.epilog = ("A diffusers model (--init-from a local UNet2DModel folder with its scheduler config, DDPM-style "
                "betas, epsilon/v/sample prediction): its conv_in is widened by the conditioning channels of "
                "--conditioning (A^T y, the certainty map, x_reg), their weights zero-initialised, and an "
                "unconditional model gets a zero-initialised class embedding used as the task embedding (one row "
                "per task); sigma_y has no embedding and reaches the network through x_reg. At step 0 the network "
                "computes what it did before. It trains in its own timesteps and parameterisation (--precision as "
                "for exactpost's networks; --preset, --unet, --image-size, --uniform-frac, --channels-last and "
                "--snapshot-every do not apply) and is saved as a diffusers folder RUN_DIR/model (loadable by "
                "UNet2DModel.from_pretrained) with exactpost.json (command, data, steps, sha256); "
                "exactpost restore --model RUN_DIR/model samples it (--scheduler NAME: with its own diffusers "
                "scheduler). Interrupted runs resume: rerun the same command.")
    _add_train_flags(f, "eps")
    s = command("sample", "unconditional samples from a prior, as a PNG grid")
    s.add_argument("--model", required=True, help="model checkpoint of an unconditional prior: path without "
                                                  "extension, or the .safetensors/.json file (required)")
    s.add_argument("--n", type=argtypes.int_range(1), default=16, help="number of samples, >= 1")
    s.add_argument("--steps", type=argtypes.int_range(1), default=18,
                   help="EDM Heun steps, >= 1; each sample costs 2 steps - 1 network evaluations")
    s.add_argument("--seed", type=argtypes.seed(), default=0, help="random seed, 0..4294967295")
    s.add_argument("--out", default="samples.png", help="output PNG file: the samples tiled in a square grid "
                                                        "(replaced if it exists)")
    m = command("models", "list the bundled models and their cards")
    m.add_argument("--json", action="store_true", help="print the full cards as JSON (default: a table)")
    d = command("demo", "posterior samples of bundled test images for every task (CPU, < 3 min)")
    d.add_argument("--model", default="faces-32", help="bundled model name or an EPS checkpoint path")
    d.add_argument("--tasks", default=None, help="comma-separated task ids (default: all five)")
    d.add_argument("--images", type=argtypes.int_range(1), default=8, help="number of bundled test images, >= 1")
    d.add_argument("--samples", type=argtypes.int_range(2, why="the std and CRPS need two samples"), default=4,
                   help="posterior samples per image, >= 2")
    d.add_argument("--nfe", type=argtypes.int_range(2), default=20, help="network evaluations per sample, >= 2")
    d.add_argument("--sigma-y", type=argtypes.float_range(0.0), default=0.05,
                   help="measurement noise std on [-1, 1] images, >= 0")
    d.add_argument("--sampler", type=_sampler_spec, default=None, metavar="SPEC",
                   help=f"EPS sampler after the 1-NFE posterior mean: {syntax_help()} (default: {DEFAULT_SAMPLER.name})")
    d.add_argument("--seed", type=argtypes.seed(), default=0,
                   help="random seed of the operators, the noise and the samples, 0..4294967295")
    d.add_argument("--out", default="exactpost-demo", help="output folder (files of the same name are replaced)")
    d.add_argument("--threads", type=argtypes.int_range(0), default=0,
                   help="torch CPU threads, >= 0 (default: 0 = torch's choice)")
    d.add_argument("--no-progress", action="store_true", help="do not show the progress bar (default: shown)")
    b = command("bench", "benchmarks (gmm: the Gaussian-mixture protocol with exact posteriors; images: "
                         "test images)")
    bsub = b.add_subparsers(dest="bench", required=True, metavar="BENCH")
    from ..bench import gmm_bench

    gmm_bench.add_arguments(bsub.add_parser("gmm", formatter_class=_HelpFormatter,
                                            help="MCGdiff mixture benchmark: EPS and every baseline against the "
                                                 "exact posterior"))
    from ..bench import images_bench

    images_bench.add_arguments(bsub.add_parser("images", formatter_class=_HelpFormatter,
                                               help="EPS, Palette and every baseline on test images: PSNR, SSIM, "
                                                    "CRPS, MMD, FD, time and cost"))
    r = command("restore", "restore your own image: posterior mean, samples and std as PNGs")
    r.add_argument("input", help="the measurement image (or, with --simulate, a clean image to degrade)")
    r.add_argument("--task", required=True,
                   help="inpaint-random, inpaint-box, sr4, deblur-gauss or deblur-motion (required)")
    r.add_argument("--simulate", action="store_true",
                   help="degrade the clean input with the task's operator first (default: the input is the "
                        "measurement)")
    r.add_argument("--mask", default=None, help="inpainting mask image (white = observed, black = missing; "
                                                "default: none)")
    r.add_argument("--kernel", default=None, help="blur kernel: .npy, .txt/.csv or a grayscale image, entries >= 0 "
                                                  "(default: none)")
    r.add_argument("--model", default="faces-32", help="bundled model name or a checkpoint path")
    r.add_argument("--method", default="eps", help=method_help())
    r.add_argument("--samples", type=argtypes.int_range(2, why="the std needs two samples"), default=4,
                   help="posterior samples, >= 2")
    r.add_argument("--nfe", type=argtypes.int_range(2), default=None,
                   help="network evaluations per sample, >= 2 (default 20 for eps, 100 otherwise)")
    r.add_argument("--sigma-y", type=argtypes.float_range(0.0), default=0.05,
                   help="measurement noise std on [-1, 1] images, >= 0")
    r.add_argument("--seed", type=argtypes.seed(), default=0, help="random seed, 0..4294967295")
    r.add_argument("--sampler", type=_sampler_spec, default=None, metavar="SPEC",
                   help=f"sampler of eps (after its 1-NFE posterior mean) and palette: {syntax_help()} (default: "
                        f"{DEFAULT_SAMPLER.name} for eps, legacy for palette; the baselines have their own "
                        f"samplers)")
    r.add_argument("--scheduler", default=None, metavar="NAME",
                   help="sample eps/palette with a diffusers model's own scheduler instead of exactpost's sampler "
                        "(--model must be a diffusers folder): own (the class in its scheduler_config.json), ddpm, "
                        "ddim, euler, euler-ancestral, dpmsolver or unipc, built from the model's scheduler config; "
                        "--nfe sets the steps (eps: nfe - 1 steps after the 1-NFE mean) (default: exactpost's sampler)")
    r.add_argument("--out", default="exactpost-restore", help="output folder (must be new or empty unless "
                                                              "--overwrite)")
    r.add_argument("--overwrite", action="store_true",
                   help="write into an existing non-empty output folder, replacing files of the same name "
                        "(default: refuse)")
    r.add_argument("--threads", type=argtypes.int_range(0), default=0,
                   help="torch CPU threads, >= 0 (default: 0 = torch's choice)")
    from . import train_encoder as encoder

    encoder.add_arguments(command("train-encoder", "train the small classifier whose features give the encoder "
                                                   "Frechet distance of `bench images`"))
    for p in _all_parsers(ap):
        p.add_argument("--debug", action="store_true", default=False if p is ap else argparse.SUPPRESS,
                       help=f"show the full Python traceback of an error (also: {DEBUG_ENV}=1)")
    return ap


def _all_parsers(ap: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """``ap`` and every (sub)subcommand's parser."""
    out = [ap]
    for action in ap._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sp in dict.fromkeys(action.choices.values()):
                out += _all_parsers(sp)
    return out


def cmd_train_encoder(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from . import train_encoder as encoder

    return encoder.run(args, "exactpost " + " ".join(shlex.quote(a) for a in argv))


def _out_of_memory(exc: BaseException) -> bool:
    """torch's allocation failures (CPU: a RuntimeError "can't allocate memory"; CUDA:
    torch.OutOfMemoryError) and Python's MemoryError."""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    return isinstance(exc, RuntimeError) and ("can't allocate memory" in str(exc) or "out of memory" in str(exc))


def error_line(exc: BaseException) -> str:
    """The one line printed for an expected error (without the ``exactpost: error:`` prefix)."""
    if _out_of_memory(exc):
        return ("out of memory: " + (" ".join(str(exc).split())[:160] or exc.__class__.__name__) +
                "; ask for less at once (fewer samples or images, a smaller --batch-size or image size)")
    if isinstance(exc, OSError) and not str(exc).startswith("cannot "):
        what = exc.strerror or " ".join(str(exc).split()) or exc.__class__.__name__
        where = f": {exc.filename}" if exc.filename else ""
        if getattr(exc, "filename2", None):
            where += f" -> {exc.filename2}"
        return f"{what}{where}"
    text = " ".join(str(exc).split())
    return text or exc.__class__.__name__


#: expected failures: one line and exit code 2 (anything else is a bug)
EXPECTED = (UsageError, ValueError, OSError, MemoryError, DataError, CheckpointError, argparse.ArgumentTypeError)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")
    try:
        ap = build_parser()
        try:
            args = ap.parse_args(argv)
        except SystemExit as exc:  # --help, or argparse's own exits
            return int(exc.code or 0) if not isinstance(exc.code, str) else 2
        debug = debug or bool(getattr(args, "debug", False))
        handlers = {"train": cmd_train, "finetune": cmd_train, "sample": cmd_sample, "models": cmd_models,
                    "demo": cmd_demo, "restore": cmd_restore,
                    "bench": cmd_bench, "train-encoder": cmd_train_encoder}
        return handlers[args.command](args, argv)
    except TrainingStopped as exc:
        print(f"exactpost: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("exactpost: interrupted (a training run resumes from its last checkpoint when rerun)", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the one place that turns failures into exit codes
        expected = isinstance(exc, EXPECTED) or _out_of_memory(exc)
        if debug or not expected:
            traceback.print_exc()
        if not expected:
            print(f"exactpost: internal error: {exc.__class__.__name__}: {error_line(exc)[:300]}. This is a bug "
                  f"in exactpost: please report it with the command line and the traceback above.", file=sys.stderr)
            return 1
        print(f"exactpost: error: {error_line(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
