"""Shared helpers of the network tests (imported by test_unet.py and test_precond.py)."""

from __future__ import annotations

import torch

from exactpost.nets import UNetConfig

TINY = UNetConfig(image_size=32, base_width=16, channel_mults=(1, 2), num_res_blocks=1, attn_resolutions=(16,),
                  attn_head_channels=16)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def perturb(model: torch.nn.Module, seed: int = 1, scale: float = 0.1) -> torch.nn.Module:
    """Add noise to every parameter, so zero-initialised layers no longer hide anything."""
    g = gen(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return model
