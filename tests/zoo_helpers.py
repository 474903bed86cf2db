"""A tiny bundled-models folder for tests of the zoo, the demo and restore (seconds, no training)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from exactpost.nets import EDMPrecond, UNet
from exactpost.io.checkpoint import save_checkpoint
from exactpost.training.objectives import Objective
from nets_helpers import TINY, gen, perturb


def make_tiny_models(root: Path, name: str = "tiny-32", kinds=("prior", "eps", "palette"), n_images: int = 6) -> Path:
    """Write ``root/name/{kind}.safetensors|json`` (random tiny networks with real cards) and
    ``demo_images.npz`` (random uint8 images); returns ``root``."""
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    for i, kind in enumerate(kinds):
        obj = Objective(kind=kind)
        extra = {} if kind == "prior" else dict(cond_channels=obj.cond_channels, num_tasks=len(obj.tasks),
                                                sigma_y_embedding=True)
        net = perturb(EDMPrecond(UNet.from_config(dataclasses.replace(TINY, **extra), generator=gen(i))), seed=i,
                      scale=0.02)
        tensors = {f"ema.{k}": v.detach().clone().contiguous() for k, v in net.state_dict().items()}
        card = {"model": net.to_dict(), "objective": dataclasses.asdict(obj), "steps": 3, "images_seen": 12,
                "params": sum(p.numel() for p in net.parameters()), "wall_time_s": 1.0,
                "data": {"path": "synthetic.npz", "split": [0]}, "command": "test fixture"}
        save_checkpoint(folder / kind, tensors, card)
    rng = np.random.default_rng(0)
    np.savez(folder / "demo_images.npz", images=rng.integers(0, 256, (n_images, 32, 32, 3), dtype=np.uint8))
    return root


def write_restore_inputs(root: Path) -> Path:
    """Inputs for ``exactpost restore`` tests in ``root``: ``photo.png`` (48x40 RGB),
    ``low.png`` (8x8), ``mask.png`` (32x32, a black box), ``mask16.png``, ``black.png`` (an
    all-missing mask), kernels ``kernel.npy`` (3x3 binomial), ``negative.npy``, ``zeros.npy``,
    ``nan.npy``, and ``garbage.png`` (not an image). Returns ``root``."""
    from PIL import Image

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(root / "photo.png")
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / "low.png")
    mask = np.full((32, 32), 255, np.uint8)
    mask[4:20, 6:22] = 0
    Image.fromarray(mask).save(root / "mask.png")
    Image.fromarray(mask[:16, :16]).save(root / "mask16.png")
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(root / "black.png")
    np.save(root / "kernel.npy", np.outer([1, 2, 1], [1, 2, 1]).astype(float))
    np.save(root / "negative.npy", np.array([[0.5, -0.1], [0.3, 0.3]]))
    np.save(root / "zeros.npy", np.zeros((3, 3)))
    np.save(root / "nan.npy", np.array([[1.0, np.nan], [1.0, 1.0]]))
    (root / "garbage.png").write_bytes(b"this is not a png")
    return root
