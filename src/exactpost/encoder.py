"""The project's feature encoder for a Frechet distance: a small image classifier.

Inception FID needs weights we may not download, so the image benchmarks report an
*encoder Frechet distance* (named as such, never "FID"): the Frechet distance
(:func:`exactpost.metrics.frechet_distance`) between Gaussians fitted to the penultimate
features of a small CNN that this project trains on the same data set's labels (CIFAR-10
classes for ``cifar10-32``, CelebA identities for ``faces-32``) and ships beside the models
as ``models/<family>/encoder.safetensors`` + ``encoder.json``.

Architecture (``EncoderConfig``): three stages of two 3x3 convolutions (BatchNorm, SiLU)
with widths ``channels``, 2x average pooling between stages, global average pooling to the
feature vector f(x) in R^F (F = ``channels[-1]``), and a linear classifier head. Inputs are
images [N, 3, H, W] in [-1, 1]; ``features`` returns [N, F] (eval mode: BatchNorm uses its
running statistics, so an image's features do not depend on its batch).

Training (:func:`train_encoder`): AdamW, linear warm-up then cosine decay, cross-entropy,
random horizontal flips and +-2 pixel translations (reflect padding); resumable from its
checkpoint (model, optimiser, step and the data generator are saved atomically every
``checkpoint_every`` steps).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import argtypes
from .io.checkpoint import CheckpointError, load_checkpoint, pack_state, save_checkpoint, unpack_state
from .io.images import DataError, to_float

KIND = "encoder"


@dataclass(frozen=True)
class EncoderConfig:
    """Architecture of :class:`Encoder`."""

    num_classes: int
    image_size: int = 32
    channels: tuple[int, ...] = (32, 64, 128)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "EncoderConfig":
        return EncoderConfig(num_classes=int(d["num_classes"]), image_size=int(d["image_size"]),
                             channels=tuple(int(c) for c in d["channels"]))


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.SiLU())


class Encoder(nn.Module):
    """Small CNN classifier; ``features(x)`` [N, F] is what the Frechet distance compares."""

    def __init__(self, config: EncoderConfig, name: str = "encoder"):
        super().__init__()
        self.config, self.name = config, name
        layers: list[nn.Module] = []
        c_prev = 3
        for i, c in enumerate(config.channels):
            if i:
                layers.append(nn.AvgPool2d(2))
            layers += [_block(c_prev, c), _block(c, c)]
            c_prev = c
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(c_prev, config.num_classes)

    @property
    def feature_dim(self) -> int:
        return self.config.channels[-1]

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features with gradients, [N, F]."""
        return self.body(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits [N, num_classes] for images [N, 3, H, W] in [-1, 1]."""
        return self.head(self.embed(x))

    @torch.no_grad()
    def features(self, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Features [N, F] (float32, no gradients, eval mode) of images [N, 3, H, W] in
        [-1, 1] (clamped, as saved images would be)."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"images must be [N, 3, H, W], got {tuple(x.shape)}")
        was = self.training
        self.eval()
        out = torch.cat([self.embed(x[i:i + batch_size].float().clamp(-1, 1)) for i in range(0, len(x), batch_size)])
        self.train(was)
        return out


# --- data -----------------------------------------------------------------------------------
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


# --- loading ----------------------------------------------------------------------------------
def load_encoder(path: str | Path) -> Encoder:
    """Load an encoder checkpoint (``<path>.safetensors`` + ``.json``; digest checked, never
    unpickled). Raises CheckpointError (one line) for anything that is not an encoder."""
    tensors, card = load_checkpoint(path)
    if card.get("kind") != KIND or "architecture" not in card:
        raise CheckpointError(f"{path} is not an exactpost encoder checkpoint (kind={card.get('kind')!r})")
    model = Encoder(EncoderConfig.from_dict(card["architecture"]), name=str(card.get("name", Path(path).name)))
    weights = {k[len("weights."):]: v for k, v in tensors.items() if k.startswith("weights.")}
    if not weights:
        raise CheckpointError(f"{path} is an unfinished encoder training state (step {card.get('steps_done')}); "
                              "finish training first")
    model.load_state_dict(weights)
    model.eval()
    model.card = card  # type: ignore[attr-defined]
    return model


def find_encoder(family_or_path: str | Path) -> Optional[Encoder]:
    """The encoder of a bundled model family (``models/<family>/encoder``) or at a
    checkpoint path; None when there is none."""
    from . import zoo

    p = Path(family_or_path)
    for candidate in (p, p / KIND, zoo.models_dir() / str(family_or_path) / KIND):
        if Path(str(candidate) + ".json").exists():
            return load_encoder(candidate)
    return None


# --- command line (``exactpost train-encoder``) -----------------------------------------------
def add_arguments(p: Any) -> None:
    """Flags of ``exactpost train-encoder`` (an argparse parser)."""
    p.add_argument("--data", required=True, help=".npz holding images and integer labels (required)")
    p.add_argument("--labels", required=True, help="label array key in the .npz, e.g. train_labels or celeba_identity "
                                                       "(required)")
    p.add_argument("--data-key", default=None, help="image array key (default: images or train_images)")
    p.add_argument("--data-split", default=None, help="values of the .npz 'split' array to train on, comma-separated "
                                                         "(default: every image)")
    p.add_argument("--eval-key", default=None, help="held-out image key for the reported accuracy, e.g. test_images "
                                                        "(default: none)")
    p.add_argument("--eval-labels", default=None, help="held-out label key, e.g. test_labels (default: none)")
    p.add_argument("--eval-split", default=None, help="held-out 'split' values, e.g. 1 for validation (default: none)")
    p.add_argument("--image-size", type=argtypes.int_range(8), default=32,
                   help="side of the square images in pixels, >= 8; others are resized")
    p.add_argument("--channels", default="32,64,128", help="comma-separated channel widths of the three stages")
    p.add_argument("--steps", type=argtypes.int_range(1), default=2000, help="optimiser steps of the whole run, >= 1")
    p.add_argument("--batch-size", type=argtypes.int_range(1), default=128, help="images per step, >= 1")
    p.add_argument("--lr", type=argtypes.float_range(0.0, lo_open=True), default=2e-3, help="Adam learning rate, > 0")
    p.add_argument("--seed", type=argtypes.seed(), default=0, help="random seed, 0..4294967295")
    p.add_argument("--threads", type=argtypes.int_range(0), default=None,
                   help="torch CPU threads, >= 0 (default: torch's choice)")
    p.add_argument("--checkpoint-every", type=argtypes.int_range(1), default=250,
                   help="save the resumable checkpoint every N steps, >= 1")
    p.add_argument("--name", default=None, help="encoder name shown in benchmark tables (default: from --data and --labels)")
    p.add_argument("--out", required=True, help="checkpoint path, e.g. models/<family>/encoder (resumes if present; required)")
    p.add_argument("--no-progress", action="store_true", help="do not show the progress bar (default: shown)")


def _split(text: Optional[str]) -> Optional[list[int]]:
    if text is None:
        return None
    try:
        return [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise DataError(f"split must be comma-separated integers, got {text!r}") from None


def run(args: Any, command: str) -> int:
    """``exactpost train-encoder``: train (or resume) and report accuracies; errors in the
    inputs raise DataError/CheckpointError/ValueError (the CLI prints one line, exits 2)."""
    from .io.images import load_images

    if args.threads:
        torch.set_num_threads(args.threads)
    split = _split(args.data_split)
    images = load_images(args.data, args.data_key, split, args.image_size)
    labels = load_labels(args.data, args.labels, split)
    if len(labels) != len(images):
        raise DataError(f"{args.data}: {len(images)} images but {len(labels)} labels in {args.labels!r}")
    eval_images = eval_labels = None
    if args.eval_key or args.eval_split:
        eval_split = _split(args.eval_split)
        eval_images = load_images(args.data, args.eval_key or args.data_key, eval_split, args.image_size)
        eval_labels = load_labels(args.data, args.eval_labels or args.labels, eval_split)
    name = args.name or f"encoder ({Path(args.data).name}:{args.labels})"
    t0 = time.time()
    _, card = train_encoder(images, labels, args.out, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                            channels=tuple(int(c) for c in args.channels.split(",")), seed=args.seed,
                            checkpoint_every=args.checkpoint_every, eval_images=eval_images, eval_labels=eval_labels,
                            progress=not args.no_progress,
                            card=dict(name=name, command=command,
                                      data=dict(path=str(args.data), key=args.data_key, labels=args.labels, split=split,
                                                eval_key=args.eval_key, eval_labels=args.eval_labels,
                                                eval_split=_split(args.eval_split))))
    m = card["metrics"]
    extra = f", held-out accuracy {m['eval_accuracy']:.3f} on {m['eval_images']} images" if "eval_accuracy" in m else ""
    print(f"encoder {args.out}: {len(card['classes'])} classes, train accuracy {m['train_accuracy']:.3f}{extra} "
          f"({time.time() - t0:.0f} s this call)")
    return 0
