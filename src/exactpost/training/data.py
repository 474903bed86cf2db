"""Training images: loading (``.npz`` arrays or folders of PNG/JPEG), resizing, batching.

Images are kept as uint8 [N, 3, H, W] and converted per batch to float in [-1, 1]
(x = u8 / 127.5 - 1) with random horizontal flips drawn from an explicit generator.

Supported sources (``load_images``):

* an ``.npz`` file: the array under ``key`` (default: ``images``, else ``train_images``),
  [N, H, W, 3] or [N, 3, H, W] uint8; if the file has a ``split`` array, ``split=`` keeps only
  those rows (``../shared/data/faces64.npz``: 0 train, 1 val, 2 test);
* a folder of ``.png`` / ``.jpg`` / ``.jpeg`` files (sorted by name; RGB; all the same size
  after the optional centre crop to a square).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class DataError(ValueError):
    """A data source that cannot be used; the message says why and what to do."""


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


class BatchStream:
    """Endless shuffled batches of one dataset, reproducible and resumable.

    Each epoch is a permutation drawn from ``generator``; ``state()`` / ``load_state()``
    capture the generator, the current permutation and the position, so a resumed run sees
    exactly the batches the uninterrupted run would have seen. Under torch.distributed every
    process holds the same stream and the training loop keeps its own share of each batch."""

    def __init__(self, images_u8: torch.Tensor, batch_size: int, generator: torch.Generator,
                 flip: bool = True):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if len(images_u8) < batch_size:
            raise DataError(f"{len(images_u8)} images are fewer than one batch of {batch_size}")
        self.images, self.batch_size, self.generator = images_u8, batch_size, generator
        self.flip = flip
        self.perm = torch.randperm(len(images_u8), generator=generator)
        self.pos = 0

    def next(self) -> torch.Tensor:
        """The next batch: float [B, 3, H, W] in [-1, 1]."""
        if self.pos + self.batch_size > len(self.perm):
            self.perm = torch.randperm(len(self.images), generator=self.generator)
            self.pos = 0
        idx = self.perm[self.pos: self.pos + self.batch_size]
        self.pos += self.batch_size
        x = to_float(self.images[idx])
        if self.flip:
            f = torch.rand(self.batch_size, generator=self.generator) < 0.5
            x[f] = x[f].flip(-1)
        return x

    def state(self) -> dict:
        return {"perm": self.perm.clone(), "pos": self.pos, "generator": self.generator.get_state()}

    def load_state(self, state: dict) -> None:
        self.perm, self.pos = state["perm"].clone(), int(state["pos"])
        self.generator.set_state(state["generator"])
