"""EPS / Palette fine-tuning of a diffusers UNet2DModel, saved as a diffusers folder.

``exactpost finetune --init-from <diffusers folder> --objective eps --data ...`` lands here
(:func:`finetune_diffusers` takes the same :class:`~exactpost.training.loop.TrainConfig`).

1. The model is loaded offline (:func:`~exactpost.backbones.diffusers_unet.load_backbone`)
   and grown with zero-initialised inputs (:mod:`~exactpost.backbones.widen`): ``conv_in``
   gets the conditioning channels of the objective's kind (:mod:`exactpost.core.conditioning`,
   e.g. ``pivot+aty+mask+xreg``: A^T y, the certainty map and x_reg), and an unconditional
   model gets a class embedding used as the task embedding (row = the task's registry
   position, :func:`exactpost.core.conditioning.task_embedding_index`). sigma_y is not embedded;
   it reaches the network through x_reg. At step 0 the network computes what it did before.
2. Batches are simulated by exactpost's objective (:func:`~exactpost.training.objectives.make_batch`:
   operators, measurements, the pivot mu* for EPS or x~ for Palette, the conditioning), with
   noise levels drawn the model's own way: a uniform integer timestep k, sigma = sigma_k.
3. The loss is the model's own parameterisation (DDPM's L_simple): the mean squared error
   between its output (the mean half) and the target a perfect network would return for
   (x0, input, sigma) -- epsilon (input - x0) / sigma, v, or x0
   (:meth:`~exactpost.backbones.diffusers_unet.DiffusersUNetDenoiser.target`).
4. AdamW with warm-up, gradient clipping and an EMA (exactpost's); ``--precision`` as in
   exactpost's trainer (bf16 autocast with float32 master weights, or fp32; ``auto`` = bf16
   where it is faster, :mod:`exactpost.training.precision`); the card records which. The EMA weights
   are saved as a flat diffusers folder ``RUN_DIR/model/`` (``config.json``,
   ``diffusion_pytorch_model.safetensors``: loadable by plain ``UNet2DModel.from_pretrained``),
   the model's ``scheduler_config.json``, and exactpost's card ``exactpost.json`` (command,
   data, steps, the weights' sha256, the objective with its task ids). The folder is written
   beside the target and swapped in, so a crash leaves the old folder or the new one.

5. Resuming, as exactpost's own trainer: every ``--checkpoint-every`` steps, at the end and on
   SIGTERM/SIGINT the whole training state (weights, EMA, AdamW, the data order, the noise
   and global generators, the step) is written atomically to ``RUN_DIR/state.safetensors`` +
   ``state.json`` (:func:`~exactpost.io.checkpoint.save_checkpoint`) and the EMA model is
   exported to ``RUN_DIR/model/``. Rerunning the same command on the same run folder continues
   from the last checkpoint and ends with the same weights as an uninterrupted run (tested bit
   for bit); a rerun that changes what the run learns (objective, tasks, data, batch size,
   seed, ``--init-from`` or its weights) is refused in one line.

Not supported on this path (one-line errors or stated here): several processes,
``--channels-last``, ``--snapshot-every``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from ..io.atomic import write_atomic
from ..core.conditioning import extends
from ..core.tasks import task_names
from ..io.checkpoint import save_checkpoint
from ..io.images import load_images
from ..training.loop import (RunState, TrainConfig, _eval_images, _hardware, _on_cpu, evaluate, learning_rate,
                             resolve_device)
from ..training.precision import autocast_for, resolve_precision
from ..training.stop import StopRequests, TrainingStopped
from ..training.objectives import Batch, Objective, make_batch
from .diffusers_unet import DiffusersUNetDenoiser, file_sha256, load_backbone
from .layout import CARD_NAME, WEIGHTS_NAME, BackboneError, read_json, resolve_folder
from .widen import add_task_embedding, widen_conv_in

CARD_FORMAT = "exactpost-diffusers/1"


class TimestepNoise:
    """Training noise levels of a DDPM model: k uniform on {0, ..., T-1}, sigma = sigma_k."""

    def __init__(self, sigmas: torch.Tensor):
        self._sigmas = sigmas.to(torch.float32)

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """[n] noise levels (float32)."""
        return self._sigmas[torch.randint(len(self._sigmas), (n,), generator=generator)]

    def to_dict(self) -> dict[str, Any]:
        return {"timesteps": "uniform", "num_train_timesteps": len(self._sigmas)}


def grow_for(model: DiffusersUNetDenoiser, card: dict, objective: Objective) -> DiffusersUNetDenoiser:
    """``model`` grown for ``objective`` with zero-initialised inputs (module docstring): from
    a prior, or from a model of the same objective whose conditioning kind ``objective``'s
    extends. BackboneError otherwise."""
    old = card.get("objective") if isinstance(card.get("objective"), dict) else {}
    old_kind = old.get("kind")
    if old_kind not in (None, "prior"):
        if old_kind != objective.kind or not extends(objective.conditioning, str(old.get("conditioning"))):
            raise BackboneError(f"--init-from is a {old_kind} model with conditioning {old.get('conditioning')}; it can "
                                f"start a {objective.kind} run only with a conditioning that extends it")
    cfg = model.config
    unet = widen_conv_in(model.unet, objective.cond_channels - cfg.cond_channels)
    num_tasks = cfg.num_tasks
    if objective.kind != "prior" and not num_tasks:
        num_tasks = len(task_names())
        add_task_embedding(unet, num_tasks)
    return DiffusersUNetDenoiser(unet, model.schedule, cfg.prediction_type, image_channels=cfg.image_channels,
                                 learned_variance=cfg.learned_variance, num_tasks=num_tasks)


def loss_on_batch(model: DiffusersUNetDenoiser, batch: Batch) -> torch.Tensor:
    """Mean squared error of the network's output against its own-parameterisation target."""
    task = batch.task_id if model.config.num_tasks else None
    out = model.prediction(batch.inp, batch.sigma, batch.cond, task)
    return ((out - model.target(batch.x0, batch.inp, batch.sigma)) ** 2).mean()


def save_folder(dest: Path, model: DiffusersUNetDenoiser, scheduler_config: dict, card: dict) -> dict:
    """Write ``dest`` as a flat diffusers folder with exactpost's card (module docstring);
    returns the card as written (with the weights' sha256)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp"))
    try:
        model.unet.save_pretrained(str(tmp), safe_serialization=True)
        write_atomic(tmp / "scheduler_config.json", lambda f: f.write(json.dumps(scheduler_config, indent=2).encode()))
        card = {**card, "sha256": file_sha256(tmp / WEIGHTS_NAME), "weights_file": WEIGHTS_NAME,
                "weights_bytes": (tmp / WEIGHTS_NAME).stat().st_size}
        write_atomic(tmp / CARD_NAME, lambda f: f.write((json.dumps(card, indent=1) + "\n").encode()))
        for p in tmp.iterdir():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
        old = None
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
            os.replace(dest, old)
        os.replace(tmp, dest)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return card


def finetune_diffusers(cfg: TrainConfig) -> dict[str, Any]:
    """Fine-tune the diffusers model in ``cfg.init_from`` as configured, or resume the run in
    ``cfg.run_dir`` from its last checkpoint (module docstring); returns {"model": folder,
    "card": card, "metrics": last held-out metrics}."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise BackboneError("fine-tuning a diffusers model runs in one process; launch it without accelerate/torchrun")
    if cfg.skip != "scalar":
        raise BackboneError(f"--skip {cfg.skip} is for exactpost's own U-Net; a diffusers backbone keeps its scalar skip")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    start, start_card = load_backbone(str(cfg.init_from))
    sched_cfg = read_json(resolve_folder(str(cfg.init_from)).scheduler_config, "scheduler config")
    sy = tuple(cfg.sigma_y) if isinstance(cfg.sigma_y, (list, tuple)) else float(cfg.sigma_y)
    objective = Objective(cfg.objective, cfg.tasks, sy, cfg.conditioning, TimestepNoise(start.schedule.sigmas))
    model = grow_for(start, start_card, objective).to(device)
    images = load_images(cfg.data, cfg.data_key, cfg.data_split, model.config.image_size)
    eval_images = _eval_images(dataclasses.replace(cfg, image_size=model.config.image_size), images)
    run = Path(cfg.run_dir)
    run.mkdir(parents=True, exist_ok=True)
    obj = objective.to_dict()
    obj["noise"] = objective.noise.to_dict()
    card_base = {
        "format": CARD_FORMAT, "backbone": model.to_dict(), "objective": obj,
        "data": dict(path=str(cfg.data), key=cfg.data_key, split=cfg.data_split, images=len(images),
                     image_size=model.config.image_size),
        "init_from": str(cfg.init_from), "init_sha256": start_card.get("sha256"),
        "params": sum(p.numel() for p in model.parameters()), "precision": resolve_precision(cfg.precision, device),
        "hardware": _hardware(1, device),
    }
    with torch.random.fork_rng(devices=[]), StopRequests() as stop:
        torch.manual_seed(cfg.seed + 3)  # dropout, if the model has any (a resumed run restores its state)
        history = _loop(cfg, model, objective, images, eval_images, run, device, card_base, sched_cfg, stop)
    return {"model": str(run / "model"), "card": history["card"], "metrics": history["card"]["metrics"]}


def _loop(cfg: TrainConfig, model: DiffusersUNetDenoiser, objective: Objective, images: torch.Tensor,
          eval_images, run: Path, device: torch.device, card_base: dict, sched_cfg: dict,
          stop: StopRequests) -> dict:
    """Train from step 0, or from the state in ``run/state`` (same command: same problem,
    checked), saving the state and exporting the model every ``checkpoint_every`` steps,
    at the end and when a stop is requested. Returns {"card": the exported model's card}."""
    rs = RunState.start(model, images, cfg)
    ema, opt, noise_gen, stream = rs.ema, rs.opt, rs.noise_gen, rs.stream
    state_path = run / "state"
    step, wall, loss_value = 0, 0.0, math.nan
    evals: list[dict] = []
    resumed = rs.resume(state_path, {"backbone": model.to_dict()}, cfg, model, run / "model" / CARD_NAME)
    if resumed is not None:
        step, extra, saved = resumed
        if saved.get("init_sha256") != card_base["init_sha256"]:
            raise BackboneError(f"{run} was started from weights with sha256 {str(saved.get('init_sha256'))[:12]}..., "
                                f"not {str(card_base['init_sha256'])[:12]}... ({cfg.init_from} changed); resume with "
                                f"the original folder or start a new --run-dir")
        wall, loss_value = float(extra["wall_time"]), float(extra["loss"])
        evals = list(saved.get("eval_history", []))
    (run / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1))

    def export() -> dict:
        card = {**card_base, "steps": step, "images_seen": step * cfg.batch_size, "wall_time_s": round(wall, 1),
                "loss": loss_value, "metrics": evals[-1] if evals else {}, "command": cfg.command,
                "config": cfg.to_dict()}
        return save_folder(run / "model", _on_cpu(ema.module), sched_cfg, card)

    def save_state() -> dict:
        tensors, part = rs.pack(model, step, {"wall_time": wall, "loss": loss_value})
        save_checkpoint(state_path, tensors, {"backbone": model.to_dict(), "config": cfg.to_dict(),
                                              "init_sha256": card_base["init_sha256"], "eval_history": evals, **part})
        return export()

    bar = None
    if cfg.progress:
        from tqdm import tqdm
        bar = tqdm(total=cfg.steps, initial=step, desc=f"finetune {objective.kind} (diffusers)", unit="step",
                   dynamic_ncols=True)
    card = None
    model.train()
    try:
        with (run / "metrics.jsonl").open("a") as log:
            while step < cfg.steps:
                t0 = time.perf_counter()
                for group in opt.param_groups:
                    group["lr"] = learning_rate(cfg, step)
                batch = make_batch(objective, stream.next(), noise_gen)
                batch = Batch(*(None if v is None else v.to(device) for v in
                                (batch.x0, batch.sigma, batch.inp, batch.cond, batch.task_id, batch.sigma_y)))
                with autocast_for(card_base["precision"], device):  # bf16 autocast, float32 master weights
                    loss = loss_on_batch(model, batch)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                opt.step()
                step += 1
                ema.update(model, cfg.batch_size, step * cfg.batch_size)
                wall += time.perf_counter() - t0
                loss_value = float(loss.detach())
                if not math.isfinite(loss_value):
                    raise BackboneError(f"the loss became {loss_value} at step {step}; lower --lr")
                if step % cfg.log_every == 0 or step == cfg.steps:
                    log.write(json.dumps(dict(step=step, loss=loss_value, grad_norm=float(grad_norm),
                                              lr=opt.param_groups[0]["lr"], wall_time_s=round(wall, 2))) + "\n")
                    log.flush()
                if cfg.eval_every and eval_images is not None and (step % cfg.eval_every == 0 or step == cfg.steps):
                    metrics = dict(step=step, **evaluate(_on_cpu(ema.module), objective, eval_images))
                    evals.append(metrics)
                    log.write(json.dumps({"eval": metrics}) + "\n")
                    log.flush()
                    model.train()
                if bar is not None:
                    bar.set_postfix(loss=f"{loss_value:.4f}")
                    bar.update(1)
                saved = step % cfg.checkpoint_every == 0 or step == cfg.steps
                if saved:
                    card = save_state()
                if stop.requested:
                    if not saved:
                        save_state()
                    raise TrainingStopped(f"stopped by {stop.name} at step {step} of {cfg.steps}; state saved in "
                                          f"{state_path}; rerun the same command to resume", stop.signum)
    finally:
        if bar is not None:
            bar.close()
    if card is None:  # nothing left to train (a finished run rerun): the exported model stands
        card = export() if not (run / "model" / CARD_NAME).is_file() else read_json(run / "model" / CARD_NAME,
                                                                                   "exactpost card")
    return {"card": card}


def finetune_command(cfg: TrainConfig) -> int:
    """The CLI's ``finetune --init-from <diffusers folder>``: run and print where the model is."""
    out = finetune_diffusers(cfg)
    print(f"done: {cfg.steps} steps; diffusers folder {out['model']} (UNet2DModel.from_pretrained loads it; "
          f"exactpost restore --model {out['model']} samples with it)")
    if out["metrics"]:
        print("held-out: " + ", ".join(f"{k} {v:.2f}" for k, v in out["metrics"].items() if k != "step"))
    return 0
