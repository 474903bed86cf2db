"""A tiny bundled-models folder for tests of the zoo, the demo and restore (seconds, no training)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from exactpost.nets import EDMPrecond, UNet
from exactpost.training.checkpoint import save_checkpoint
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
