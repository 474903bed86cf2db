"""Training the feature encoder (:mod:`exactpost.nets.encoder`) on a data set's labels.

:func:`train_encoder`: AdamW, linear warm-up then cosine decay, cross-entropy, random
horizontal flips and +-2 pixel translations (reflect padding); resumable from its checkpoint
(model, optimiser, step and the data generator are saved atomically every
``checkpoint_every`` steps). ``exactpost train-encoder`` (:mod:`exactpost.app.train_encoder`)
runs it from the command line.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..io.checkpoint import CheckpointError, load_checkpoint, pack_state, save_checkpoint, unpack_state
from ..io.images import DataError, to_float
from ..nets.encoder import KIND, Encoder, EncoderConfig, load_encoder


def load_labels(path: str | Path, key: str, split: Sequence[int] | int | None = None) -> np.ndarray:
    """Integer labels [N] from an .npz (``key``), selected by its ``split`` array like
    :func:`exactpost.io.images.load_images`; any label values, remapped later."""
    p = Path(path)
    if p.suffix != ".npz" or not p.exists():
        raise DataError(f"labels need an existing .npz file, got {p}")
    with np.load(p, allow_pickle=False) as z:
        if key not in z.files:
            raise DataError(f"{p} has no label array {key!r}; it has {list(z.files)}")
        labels = z[key]
        if split is not None:
            if "split" not in z.files:
                raise DataError(f"{p} has no 'split' array, so split={split} cannot be applied")
            labels = labels[np.isin(z["split"], np.atleast_1d(np.asarray(split)))]
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{p}:{key} must be a 1-D integer array, got {labels.dtype} {labels.shape}")
    return labels


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random horizontal flips and integer translations of up to 2 pixels (reflect pad)."""
    n, _, h, w = x.shape
    flip = torch.rand(n, generator=g) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    pad = F.pad(x, (2, 2, 2, 2), mode="reflect")
    dx, dy = torch.randint(0, 5, (2,), generator=g).tolist()  # one shift per batch: cheap, still varied
    return pad[:, :, dy:dy + h, dx:dx + w]


def _hardware() -> str:
    return f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads), torch {torch.__version__}, {platform.machine()}"


def learning_rate(step: int, steps: int, lr: float, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``steps``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    return 0.5 * lr * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


@torch.no_grad()
def accuracy(model: Encoder, images_u8: torch.Tensor, labels: torch.Tensor, batch_size: int = 500) -> float:
    """Top-1 accuracy of ``model`` on uint8 images [N, 3, H, W] with class indices [N]."""
    model.eval()
    right = sum(int((model(to_float(images_u8[i:i + batch_size])).argmax(1) == labels[i:i + batch_size]).sum())
                for i in range(0, len(images_u8), batch_size))
    model.train()
    return right / len(images_u8)


def train_encoder(images_u8: torch.Tensor, labels: Sequence[int] | np.ndarray, run_path: str | Path, *,
                  steps: int = 3000, batch_size: int = 128, lr: float = 2e-3, warmup: int = 100,
                  weight_decay: float = 5e-4, channels: tuple[int, ...] = (32, 64, 128), seed: int = 0,
                  checkpoint_every: int = 250, card: Optional[dict[str, Any]] = None,
                  eval_images: Optional[torch.Tensor] = None, eval_labels: Optional[Sequence[int]] = None,
                  progress: bool = True) -> tuple[Encoder, dict[str, Any]]:
    """Train an :class:`Encoder` on uint8 images [N, 3, H, W] with integer labels [N].

    Labels are remapped to 0..C-1 (sorted unique values; the map is stored in the card).
    The checkpoint at ``run_path`` (``.safetensors`` + ``.json``) holds the training state
    and is rewritten atomically every ``checkpoint_every`` steps and at the end; if it
    exists with the same settings the run resumes from it (a finished run returns at once).
    Returns the model and its card (``train_accuracy`` on up to 5000 training images and
    ``eval_accuracy`` on the held-out images if given).
    """
    from tqdm.auto import tqdm

    labels = np.asarray(labels)
    if len(labels) != len(images_u8):
        raise ValueError(f"{len(images_u8)} images but {len(labels)} labels")
    classes = np.unique(labels)
    if len(classes) < 2:
        raise ValueError("an encoder needs at least two classes to learn features")
    y = torch.from_numpy(np.searchsorted(classes, labels)).long()
    config = EncoderConfig(num_classes=len(classes), image_size=int(images_u8.shape[-1]), channels=tuple(channels))
    settings = dict(steps=steps, batch_size=batch_size, lr=lr, warmup=warmup, weight_decay=weight_decay, seed=seed,
                    n_train=len(images_u8))
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():  # the initial weights come from the seed without touching global state
        torch.manual_seed(seed)
        model = Encoder(config)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    step, wall_before = 0, 0.0
    t_start = time.time()
    base = dict(card or {}, kind=KIND, architecture=config.to_dict(), classes=[int(c) for c in classes],
                training=settings)
    if Path(str(run_path) + ".json").exists():
        tensors, old = load_checkpoint(run_path)
        if [old.get("architecture"), old.get("training")] != json.loads(json.dumps([config.to_dict(), settings])):
            raise CheckpointError(f"{run_path} holds an encoder trained with other settings; use another output path")
        if old.get("steps_done", 0) >= steps and "metrics" in old:
            return load_encoder(run_path), old
        step = unpack_state(tensors, old, model=model, optimizer=opt, rng={"data": gen},
                            restore_global_rng=False)["step"]
        wall_before = float(old.get("wall_time_s", 0.0))

    def timing() -> dict[str, Any]:
        return dict(wall_time_s=round(wall_before + time.time() - t_start, 1), hardware=_hardware())

    bar = tqdm(total=steps, initial=step, desc="train encoder", disable=not progress, unit="step")
    model.train()
    while step < steps:
        idx = torch.randint(0, len(images_u8), (batch_size,), generator=gen)
        x = _augment(to_float(images_u8[idx]), gen)
        for group in opt.param_groups:
            group["lr"] = learning_rate(step, steps, lr, warmup)
        loss = F.cross_entropy(model(x), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if step % checkpoint_every == 0 and step < steps:  # resumable training state
            tensors, part = pack_state(model=model, optimizer=opt, step=step, rng={"data": gen},
                                       capture_global_rng=False)
            save_checkpoint(run_path, tensors, dict(base, steps_done=step, **timing(), **part))
    bar.close()
    metrics: dict[str, Any] = dict(train_accuracy=accuracy(model, images_u8[:5000], y[:5000]))
    if eval_images is not None and eval_labels is not None:
        ev = np.asarray(eval_labels)
        known = np.isin(ev, classes)
        metrics["eval_accuracy"] = accuracy(model, eval_images[torch.from_numpy(known)],
                                            torch.from_numpy(np.searchsorted(classes, ev[known])).long())
        metrics["eval_images"] = int(known.sum())
    # the finished checkpoint: weights only (what ships), no optimiser state
    final = dict(base, steps_done=step, metrics=metrics, params=sum(p.numel() for p in model.parameters()), **timing())
    save_checkpoint(run_path, {f"weights.{k}": v for k, v in model.state_dict().items()}, final)
    model.eval()
    return model, final
