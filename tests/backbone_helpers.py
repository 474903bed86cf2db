"""Tiny randomly initialised diffusers UNet2DModels saved to temporary folders (no downloads).

Every builder draws its weights under ``torch.random.fork_rng`` with a fixed seed, so the
global RNG of the test process is left as it was."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

SCHEDULER = {"_class_name": "DDPMScheduler", "num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02,
             "beta_schedule": "linear", "prediction_type": "epsilon", "variance_type": "fixed_small",
             "clip_sample": True}


def tiny_unet(size: int = 8, in_channels: int = 3, out_channels: int = 3, seed: int = 0, **kw: Any):
    """A ~45k-parameter UNet2DModel (two levels, one attention level)."""
    from diffusers import UNet2DModel

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        unet = UNet2DModel(sample_size=size, in_channels=in_channels, out_channels=out_channels,
                           block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4, attention_head_dim=4,
                           down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                           up_block_types=("AttnUpBlock2D", "UpBlock2D"), **kw)
        with torch.no_grad():  # diffusers' init leaves some outputs tiny; make every path matter
            unet.conv_out.weight.normal_(0, 0.2)
    return unet.eval()


def save_flat(folder: Path, unet, scheduler: dict | None = None) -> Path:
    """config.json + diffusion_pytorch_model.safetensors + scheduler_config.json in ``folder``."""
    folder = Path(folder)
    unet.save_pretrained(str(folder))
    (folder / "scheduler_config.json").write_text(json.dumps(scheduler or SCHEDULER))
    return folder


def save_pipeline(folder: Path, unet, scheduler: dict | None = None) -> Path:
    """unet/ + scheduler/scheduler_config.json + model_index.json in ``folder``."""
    folder = Path(folder)
    unet.save_pretrained(str(folder / "unet"))
    (folder / "scheduler").mkdir(parents=True, exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler or SCHEDULER))
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "DDPMPipeline",
                                                         "unet": ["diffusers", "UNet2DModel"],
                                                         "scheduler": ["diffusers", "DDPMScheduler"]}))
    return folder
