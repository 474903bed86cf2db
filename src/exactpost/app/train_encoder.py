"""``exactpost train-encoder``: train (or resume) the feature encoder of the image
benchmarks' Frechet distance (:func:`exactpost.training.encoder.train_encoder`)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from ..io.images import DataError, load_images, parse_split
from . import argtypes


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



def run(args: Any, command: str) -> int:
    """``exactpost train-encoder``: train (or resume) and report accuracies; errors in the
    inputs raise DataError/CheckpointError/ValueError (the CLI prints one line, exits 2)."""
    from ..training.encoder import load_labels, train_encoder  # here: building the CLI's parser needs no model code

    if args.threads:
        torch.set_num_threads(args.threads)
    split = parse_split(args.data_split)
    images = load_images(args.data, args.data_key, split, args.image_size)
    labels = load_labels(args.data, args.labels, split)
    if len(labels) != len(images):
        raise DataError(f"{args.data}: {len(images)} images but {len(labels)} labels in {args.labels!r}")
    eval_images = eval_labels = None
    if args.eval_key or args.eval_split:
        eval_split = parse_split(args.eval_split)
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
                                                eval_split=parse_split(args.eval_split))))
    m = card["metrics"]
    extra = f", held-out accuracy {m['eval_accuracy']:.3f} on {m['eval_images']} images" if "eval_accuracy" in m else ""
    print(f"encoder {args.out}: {len(card['classes'])} classes, train accuracy {m['train_accuracy']:.3f}{extra} "
          f"({time.time() - t0:.0f} s this call)")
    return 0
