"""Images in and out: data sets to uint8 tensors, pixel conversions, PNG files.

Images in the library are float tensors in [-1, 1], [B, 3, H, W]; data sets are kept as
uint8 [N, 3, H, W] (x = u8 / 127.5 - 1, :func:`to_float`); files are 8-bit RGB.

Data sets (:func:`load_images`):

* an ``.npz`` file: the array under ``key`` (default: ``images``, else ``train_images``),
  [N, H, W, 3] or [N, 3, H, W] uint8; if the file has a ``split`` array, ``split=`` keeps only
  those rows (``../shared/data/faces64.npz``: 0 train, 1 val, 2 test);
* a folder of ``.png`` / ``.jpg`` / ``.jpeg`` files (sorted by name; RGB; all the same size
  after the optional centre crop to a square).

PNG files are written atomically (temp file, fsync, rename: :mod:`exactpost.io.atomic`).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .atomic import write_atomic

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class DataError(ValueError):
    """A data source that cannot be used; the message says why and what to do."""


def parse_split(text: str | None) -> list[int] | None:
    """A command line's split selection: ``'0'`` -> ``[0]``, ``'1,2'`` -> ``[1, 2]``, None -> None
    (every image); anything but comma-separated integers raises :class:`DataError`."""
    if text is None:
        return None
    try:
        return [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise DataError(f"split must be comma-separated integers, got {text!r}") from None


def _npz_images(path: Path, key: str | None, split: Sequence[int] | int | None) -> np.ndarray:
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - any failure to parse is a user-data problem
        raise DataError(f"cannot read {path} as an .npz array file ({exc.__class__.__name__})") from None
    with archive:
        names = list(archive.files)
        if key is None:
            key = next((k for k in ("images", "train_images") if k in names), None)
            if key is None:
                raise DataError(f"{path} has no 'images' or 'train_images' array; pass a key (arrays: {names})")
        if key not in names:
            raise DataError(f"{path} has no array {key!r}; it has {names}")
        images = archive[key]
        if split is not None:
            if "split" not in names:
                raise DataError(f"{path} has no 'split' array, so split={split} cannot be applied")
            wanted = np.atleast_1d(np.asarray(split))
            rows = np.isin(archive["split"], wanted)
            if len(rows) != len(images):
                raise DataError(f"{path}: 'split' has {len(rows)} entries but {key!r} has {len(images)} images")
            images = images[rows]
    return images


def _folder_images(path: Path) -> np.ndarray:
    from PIL import Image

    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"{path} holds no .png/.jpg/.jpeg files")
    arrays = []
    for f in files:
        try:
            with Image.open(f) as im:
                im = im.convert("RGB")
                side = min(im.size)
                left, top = (im.size[0] - side) // 2, (im.size[1] - side) // 2
                arrays.append(np.asarray(im.crop((left, top, left + side, top + side))))
        except Exception as exc:  # noqa: BLE001
            raise DataError(f"cannot read image {f} ({exc.__class__.__name__}: {exc})") from None
    sizes = {a.shape for a in arrays}
    if len(sizes) > 1:
        raise DataError(f"images in {path} have different sizes {sorted(sizes)}; give image_size to resize them")
    return np.stack(arrays)


def to_nchw_uint8(images: np.ndarray, source: str = "images") -> torch.Tensor:
    """[N, H, W, 3] or [N, 3, H, W] uint8 -> torch uint8 [N, 3, H, W]."""
    if images.dtype != np.uint8:
        raise DataError(f"{source} must be uint8 images, got dtype {images.dtype}")
    if images.ndim != 4:
        raise DataError(f"{source} must be a 4-d array [N, H, W, 3], got shape {images.shape}")
    if images.shape[-1] == 3:
        images = images.transpose(0, 3, 1, 2)
    if images.shape[1] != 3:
        raise DataError(f"{source} must have 3 colour channels, got shape {images.shape}")
    return torch.from_numpy(np.ascontiguousarray(images))


def resize_uint8(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize uint8 [N, 3, H, W] square images to size x size: exact box averaging when H
    is a multiple of ``size`` (64 -> 32 averages 2x2 blocks), antialiased bilinear
    otherwise; rounded back to uint8."""
    H, W = images.shape[-2:]
    if H != W:
        raise DataError(f"images must be square to resize, got {H}x{W}")
    if H == size:
        return images
    out = []
    for chunk in images.split(1024):
        x = chunk.float()
        if H % size == 0:
            x = F.avg_pool2d(x, H // size)
        else:
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out.append(x.round().clamp(0, 255).to(torch.uint8))
    return torch.cat(out)


def load_images(path: str | Path, key: str | None = None, split: Sequence[int] | int | None = None,
                image_size: int | None = None) -> torch.Tensor:
    """Load training images as uint8 [N, 3, H, W] (see the module docstring)."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"data path {p} does not exist")
    if p.is_dir():
        images = _folder_images(p)
    elif p.suffix == ".npz":
        images = _npz_images(p, key, split)
    else:
        raise DataError(f"{p} is neither a folder of images nor an .npz file")
    out = to_nchw_uint8(images, str(p))
    if len(out) == 0:
        raise DataError(f"no images selected from {p} (split={split})")
    return resize_uint8(out, image_size) if image_size is not None else out


def to_float(images_u8: torch.Tensor) -> torch.Tensor:
    """uint8 in [0, 255] -> float32 in [-1, 1]."""
    return images_u8.float() / 127.5 - 1.0


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float in [-1, 1] -> uint8 (clamped, rounded)."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def tile(images: torch.Tensor, ncol: int | None = None, pad: int = 1, scale: int = 1) -> np.ndarray:
    """[B, 3, H, W] in [-1, 1] -> one uint8 [rows*(S+pad)-pad, cols*(S'+pad)-pad, 3] mosaic, each
    image enlarged ``scale`` times by pixel repetition (nearest neighbour: S = scale H, S' = scale W)."""
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be [B, 1 or 3, H, W], got {tuple(images.shape)}")
    if int(scale) < 1:
        raise ValueError(f"scale must be an integer >= 1, got {scale}")
    B, C = images.shape[:2]
    ncol = ncol or math.ceil(math.sqrt(B))
    nrow = math.ceil(B / ncol)
    u8 = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    if scale > 1:
        u8 = u8.repeat_interleave(int(scale), dim=2).repeat_interleave(int(scale), dim=3)
    H, W = u8.shape[-2:]
    if C == 1:
        u8 = u8.expand(B, 3, H, W)
    canvas = np.full((nrow * (H + pad) - pad, ncol * (W + pad) - pad, 3), 255, dtype=np.uint8)
    for i in range(B):
        r, c = divmod(i, ncol)
        canvas[r * (H + pad): r * (H + pad) + H, c * (W + pad): c * (W + pad) + W] = u8[i].permute(1, 2, 0).numpy()
    return canvas


#: height in pixels of the label strip :func:`label_columns` adds above a mosaic
LABEL_HEIGHT = 14


def label_columns(canvas: np.ndarray, labels: Sequence[str], column_width: int, pad: int) -> np.ndarray:
    """``canvas`` (a :func:`tile` mosaic, uint8 [H, W, 3]) with a white strip of
    :data:`LABEL_HEIGHT` pixels on top holding ``labels[j]`` (black, Pillow's built-in font)
    centred over column j; columns are ``column_width`` pixels apart plus ``pad``."""
    from PIL import Image, ImageDraw, ImageFont

    strip = Image.new("RGB", (canvas.shape[1], LABEL_HEIGHT), (255, 255, 255))
    draw = ImageDraw.Draw(strip)
    font = ImageFont.load_default()
    for j, text in enumerate(labels):
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        x = j * (column_width + pad) + (column_width - (right - left)) // 2 - left
        draw.text((x, (LABEL_HEIGHT - (bottom - top)) // 2 - top), text, fill=(0, 0, 0), font=font)
    return np.concatenate([np.asarray(strip, dtype=np.uint8), canvas], axis=0)


def save_png(array: np.ndarray, path: str | os.PathLike) -> Path:
    """Write a uint8 [H, W, 3] array as PNG, atomically (temp file, fsync, rename)."""
    from PIL import Image

    return write_atomic(path, lambda f: Image.fromarray(array).save(f, format="PNG"))


def save_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return write_atomic(path, lambda f: f.write(text.encode("utf-8")))


def save_grid(images: torch.Tensor, path: str | os.PathLike, ncol: int | None = None, *, scale: int = 1,
              labels: Sequence[str] | None = None) -> Path:
    """Tile a batch in [-1, 1] into one PNG (:func:`tile`), each image enlarged ``scale``
    times (nearest neighbour); ``labels`` (one per column) are written above the columns."""
    pad = max(1, int(scale) // 2)
    canvas = tile(images, ncol, pad=pad, scale=scale)
    if labels is not None:
        ncol = ncol or math.ceil(math.sqrt(images.shape[0]))
        if len(labels) != ncol:
            raise ValueError(f"{len(labels)} labels for {ncol} columns")
        canvas = label_columns(canvas, labels, images.shape[-1] * int(scale), pad)
    return save_png(canvas, path)
