"""Reading and writing images (PNG via Pillow), atomically.

Images in the library are float tensors in [-1, 1], [B, 3, H, W]; files are 8-bit RGB.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch

from .atomic import write_atomic  # noqa: F401  (re-exported: callers import it from here)


def tile(images: torch.Tensor, ncol: int | None = None, pad: int = 1) -> np.ndarray:
    """[B, 3, H, W] in [-1, 1] -> one uint8 [rows*(H+pad)-pad, cols*(W+pad)-pad, 3] mosaic."""
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be [B, 1 or 3, H, W], got {tuple(images.shape)}")
    B, C, H, W = images.shape
    ncol = ncol or math.ceil(math.sqrt(B))
    nrow = math.ceil(B / ncol)
    u8 = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    if C == 1:
        u8 = u8.expand(B, 3, H, W)
    canvas = np.full((nrow * (H + pad) - pad, ncol * (W + pad) - pad, 3), 255, dtype=np.uint8)
    for i in range(B):
        r, c = divmod(i, ncol)
        canvas[r * (H + pad): r * (H + pad) + H, c * (W + pad): c * (W + pad) + W] = u8[i].permute(1, 2, 0).numpy()
    return canvas


def save_png(array: np.ndarray, path: str | os.PathLike) -> Path:
    """Write a uint8 [H, W, 3] array as PNG, atomically (temp file, fsync, rename)."""
    from PIL import Image

    return write_atomic(path, lambda f: Image.fromarray(array).save(f, format="PNG"))


def save_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return write_atomic(path, lambda f: f.write(text.encode("utf-8")))


def save_grid(images: torch.Tensor, path: str | os.PathLike, ncol: int | None = None) -> Path:
    """Tile a batch in [-1, 1] into one PNG."""
    return save_png(tile(images, ncol), path)
