"""Reading and checking the user inputs of ``exactpost restore``: the measured image, an
inpainting mask, a blur kernel and the output folder.

Every problem raises :class:`InputError` (a ``ValueError``) whose message is one line
saying what is wrong and how to fix it, so the CLI can print it as is. Nothing here writes
to disk: :func:`check_output_dir` only checks the folder, and the caller creates it once
every input has been read, so a bad input leaves no trace.

Conventions (those of the rest of the library):

* images are float32 tensors ``[1, C, H, W]`` in [-1, 1], ``x = v / 127.5 - 1`` for 8-bit
  values v (so an 8-bit PNG of the right size reads back exactly as
  ``io.images.to_float`` would convert it); 16-bit images are scaled by 255 / 65535
  first, float images (mode ``F``) must hold values in [0, 1];
* an image of another size is centre-cropped to a square (the same crop as the training
  data loader) and resized with the training data's rule (``io.images.resize_uint8``):
  exact block averaging when the side is a multiple of the target size (for a factor-f
  low-resolution measurement this *is* the f x f average-pooling operator of ``sr4``),
  antialiased bilinear otherwise; done in float64 without rounding to 8 bits. The
  returned notices (not printed here) say what was done;
* EXIF orientation is applied; grayscale images are copied to 3 channels; an alpha channel
  is composited over white (both with a notice);
* masks are ``1 = observed``, ``0 = missing`` (the :class:`~exactpost.operators.Inpainting`
  convention): white pixels (>= 50 % grey) are observed;
* kernels are float64 ``[kh, kw]``, nonnegative, summing to 1, any sizes (odd or even),
  entry ``(kh // 2, kw // 2)`` at the origin (the
  :class:`~exactpost.operators.FFTBlur` centre convention).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from . import output_paths

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
TEXT_SUFFIXES = (".txt", ".csv", ".tsv", ".dat")


class InputError(ValueError):
    """A user input that cannot be used; the message is one line: what is wrong, how to fix
    it (any line breaks in the message are collapsed to spaces)."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{exc.__class__.__name__}: {text}" if text else exc.__class__.__name__


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < 1:
        raise InputError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _existing_file(path: str | os.PathLike, what: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise InputError(f"{what} {p} does not exist; check the path")
    if p.is_dir():
        raise InputError(f"{what} {p} is a directory; give the path of a file")
    return p


# --------------------------------------------------------------------------- images


def _load_pixels(p: Path, channels: int, what: str, alpha: str = "composite") -> tuple[np.ndarray, list[str]]:
    """Decode an image file to float64 ``[C, H, W]`` on the 0..255 scale (C = ``channels``).

    ``alpha="composite"`` puts transparent pixels on white (with a notice); ``"drop"``
    ignores the alpha channel."""
    from PIL import Image, ImageOps

    notices: list[str] = []
    try:
        with Image.open(p) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
    except Exception as exc:  # noqa: BLE001 - any decoding failure is a bad input file
        raise InputError(f"cannot read {what} {p} ({_reason(exc)}); give an image file such "
                         f"as a PNG or JPEG") from None
    mode = im.mode
    name = p.name
    if mode == "F" or mode.startswith("I"):  # high bit depth or float, one channel
        arr = np.asarray(im, dtype=np.float64)
        if mode == "F":
            if not np.isfinite(arr).all():
                raise InputError(f"{what} {p} contains NaN or Inf pixels; save it with finite values "
                                 f"(e.g. as an 8-bit PNG)")
            if arr.min() < 0 or arr.max() > 1:
                raise InputError(f"{what} {p} is a float image with values in [{arr.min():.4g}, "
                                 f"{arr.max():.4g}]; float images must hold values in [0, 1]")
            arr = arr * 255.0
        else:
            if arr.min() < 0 or arr.max() > 65535:
                raise InputError(f"{what} {p} is an integer image with values in [{arr.min():.0f}, "
                                 f"{arr.max():.0f}]; give an 8- or 16-bit image")
            arr = arr * (255.0 / 65535.0)
        arr = arr[None]
        gray = True
    else:
        has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info
        gray = mode in ("1", "L", "LA", "La")
        if has_alpha and alpha == "composite":
            rgba = im.convert("RGBA")
            if np.asarray(rgba)[..., 3].min() < 255:
                notices.append(f"{name} has transparent pixels; composited over white")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            im = Image.alpha_composite(white, rgba)
        target = "L" if gray or channels == 1 else "RGB"
        arr = np.asarray(im.convert(target), dtype=np.float64)
        arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    if channels == 3 and arr.shape[0] == 1:
        if gray:
            notices.append(f"{name} is grayscale; copied to all 3 channels")
        arr = np.repeat(arr, 3, axis=0)
    elif channels == 1 and not gray:
        notices.append(f"{name} is in colour; converted to grayscale (ITU-R 601 luma)")
    if not np.isfinite(arr).all():  # cannot happen for decoded integer pixels; kept as a guard
        raise InputError(f"{what} {p} contains NaN or Inf pixels; save it with finite values")
    return np.ascontiguousarray(arr), notices


def _fit_square(arr: np.ndarray, size: int, name: str, purpose: str = "") -> tuple[np.ndarray, list[str]]:
    """Centre-crop ``[C, H, W]`` to a square and resize it to ``size x size`` (0..255 scale)."""
    _, H, W = arr.shape
    if H == size and W == size:
        return arr, []
    side = min(H, W)
    top, left = (H - side) // 2, (W - side) // 2
    arr = arr[:, top:top + side, left:left + side]
    steps = []
    if side != H or side != W:
        steps.append(f"centre-cropped to {side}x{side}")
    if side != size:
        x = torch.from_numpy(np.ascontiguousarray(arr))[None]
        if side % size == 0:
            x = F.avg_pool2d(x, side // size)
            how = f"{side // size}x{side // size} block average"
        else:
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
            how = "antialiased bilinear"
        arr = x[0].clamp(0, 255).numpy()
        steps.append(f"resized to {size}x{size} ({how})")
    note = f"{name} is {W}x{H} (width x height){purpose}; " + " and ".join(steps)
    return arr, [note]


def _to_tensor(arr: np.ndarray) -> torch.Tensor:
    """0..255 float64 ``[C, H, W]`` -> float32 ``[1, C, H, W]`` in [-1, 1]."""
    return torch.from_numpy(arr / 127.5 - 1.0).clamp(-1, 1).to(torch.float32)[None]


def read_image(path: str | os.PathLike, size: int, channels: int = 3) -> tuple[torch.Tensor, list[str]]:
    """Read a measured (or clean) image: ``([1, C, size, size] float32 in [-1, 1], notices)``.

    Other sizes are centre-cropped to a square and resized to ``size x size`` (see the
    module docstring); each such change adds one line to ``notices``, e.g.
    ``"input.png is 100x80 (width x height); centre-cropped to 80x80 and resized to 32x32
    (antialiased bilinear)"``. ``channels``: 3 (RGB; grayscale is replicated) or 1 (luma).
    Raises :class:`InputError` for a missing, unreadable or non-finite file.
    """
    size = _positive_int(size, "image size")
    if channels not in (1, 3):
        raise InputError(f"channels must be 1 or 3, got {channels!r}")
    p = _existing_file(path, "image")
    arr, notices = _load_pixels(p, channels, "image")
    arr, more = _fit_square(arr, size, p.name)
    return _to_tensor(arr), notices + more


def read_lowres(path: str | os.PathLike, size: int, factor: int,
                channels: int = 3) -> tuple[torch.Tensor, list[str]]:
    """Read a low-resolution super-resolution measurement:
    ``([1, C, size // factor, size // factor] float32 in [-1, 1], notices)``.

    ``size`` is the side of the restored image and must be a multiple of ``factor``. A
    measurement of another size is centre-cropped and resized to ``size // factor`` with a
    notice; in particular a ``size x size`` image is reduced by exact f x f block
    averaging, which is the sr operator itself.
    """
    size = _positive_int(size, "image size")
    factor = _positive_int(factor, "super-resolution factor")
    if size % factor:
        raise InputError(f"image size {size} is not a multiple of the super-resolution factor "
                         f"{factor}; choose a size divisible by {factor}")
    if channels not in (1, 3):
        raise InputError(f"channels must be 1 or 3, got {channels!r}")
    low = size // factor
    p = _existing_file(path, "low-resolution image")
    arr, notices = _load_pixels(p, channels, "low-resolution image")
    purpose = f", not the expected {low}x{low} measurement for {size}x{size} images at factor {factor}"
    arr, more = _fit_square(arr, low, p.name, purpose)
    return _to_tensor(arr), notices + more


# --------------------------------------------------------------------------- arrays


def load_npy_finite(path: str | os.PathLike, what: str = "array") -> np.ndarray:
    """Load a numeric ``.npy`` file (no pickles) as float64; missing file, unreadable
    file, non-numeric, complex, empty or non-finite arrays raise :class:`InputError`."""
    p = _existing_file(path, what)
    try:
        a = np.load(p, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"cannot read {what} {p} as a .npy array ({_reason(exc)}); save it with "
                         f"numpy.save") from None
    if not isinstance(a, np.ndarray):
        raise InputError(f"{what} {p} holds several arrays (.npz); save one array with numpy.save")
    if a.dtype.kind == "c":
        raise InputError(f"{what} {p} is complex ({a.dtype}); give real values")
    if a.dtype.kind not in "biuf":
        raise InputError(f"{what} {p} has non-numeric dtype {a.dtype}; give a numeric array")
    a = a.astype(np.float64)
    if a.size == 0:
        raise InputError(f"{what} {p} is empty (shape {a.shape}); give at least one value")
    if not np.isfinite(a).all():
        raise InputError(f"{what} {p} contains NaN or Inf; all values must be finite")
    return a


def _load_text_matrix(p: Path, what: str) -> np.ndarray:
    """Rows of numbers separated by commas, semicolons or whitespace; '#' starts a comment."""
    try:
        text = p.read_text(encoding="utf-8")
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"cannot read {what} {p} as text ({_reason(exc)}); give a text file of "
                         f"numbers") from None
    rows = []
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip().strip(",;")
        if not line:
            continue
        try:
            rows.append([float(v) for v in re.split(r"[,;\s]+", line)])
        except ValueError:
            raise InputError(f"{what} {p} line {lineno} is not a row of numbers ({line[:40]!r}); "
                             f"write one kernel row per line, numbers separated by spaces or "
                             f"commas") from None
    if not rows:
        raise InputError(f"{what} {p} holds no numbers; write one kernel row per line")
    widths = {len(r) for r in rows}
    if len(widths) > 1:
        raise InputError(f"{what} {p} has rows of different lengths {sorted(widths)}; every row "
                         f"must have the same number of values")
    a = np.asarray(rows, dtype=np.float64)
    if not np.isfinite(a).all():
        raise InputError(f"{what} {p} contains NaN or Inf; all values must be finite")
    return a


# --------------------------------------------------------------------------- masks


def read_mask(path: str | os.PathLike, size: int) -> torch.Tensor:
    """Read an inpainting mask: ``[1, 1, size, size]`` float32 with values in {0, 1},
    1 = observed, 0 = missing.

    An image file is read as grayscale (alpha ignored) and thresholded at 50 %: pixels
    >= 127.5 of 255 (white) are observed. A ``.npy`` file must hold a 2-D array with values
    in [0, 1] (bool or numbers), thresholded at 0.5. Masks are never resized: a mask that
    is not ``size x size`` is refused, and so is a mask with no observed pixel. For
    :class:`~exactpost.operators.Inpainting` pass ``mask[0, 0]`` (shared ``[H, W]``).
    """
    size = _positive_int(size, "image size")
    p = _existing_file(path, "mask")
    if p.suffix.lower() == ".npy":
        a = load_npy_finite(p, "mask")
        if a.ndim != 2:
            raise InputError(f"mask {p} has shape {a.shape}; a .npy mask must be a 2-D [H, W] array")
        if a.min() < 0 or a.max() > 1:
            raise InputError(f"mask {p} has values in [{a.min():.4g}, {a.max():.4g}]; use 1 for "
                             f"observed and 0 for missing pixels")
        observed = a >= 0.5
    else:
        arr, _ = _load_pixels(p, 1, "mask", alpha="drop")
        observed = arr[0] >= 127.5
    H, W = observed.shape
    if (H, W) != (size, size):
        raise InputError(f"mask {p} is {W}x{H} (width x height) but must be {size}x{size}, the "
                         f"image size; masks are not resized (white = observed, black = missing)")
    if not observed.any():
        raise InputError(f"mask {p} marks no pixel as observed (all black); white = observed, "
                         f"black = missing, so the mask may be inverted")
    return torch.from_numpy(observed.astype(np.float32))[None, None]


# --------------------------------------------------------------------------- kernels


def read_kernel(path: str | os.PathLike, image_size: int | Sequence[int] | None = None) -> torch.Tensor:
    """Read a blur kernel: float64 ``[kh, kw]``, nonnegative, normalised to sum 1.

    Formats, by suffix: ``.npy`` (a 2-D array), ``.txt`` / ``.csv`` / ``.tsv`` / ``.dat``
    (one row per line, numbers separated by spaces, commas or semicolons, ``#`` comments),
    or an image (``.png``, ``.jpg``, ...) read as grayscale (0..255). Any sizes are
    accepted, odd or even; the entry ``(kh // 2, kw // 2)`` is the centre of the blur
    (:class:`~exactpost.operators.FFTBlur`). Refused with :class:`InputError`: a missing or
    unreadable file, an unknown suffix, a non-2-D array, NaN/Inf, any negative entry, an
    all-zero kernel, and, when ``image_size`` (n or (H, W)) is given, a kernel larger than
    the image.
    """
    p = _existing_file(path, "kernel")
    suffix = p.suffix.lower()
    if suffix == ".npy":
        k = load_npy_finite(p, "kernel")
    elif suffix in TEXT_SUFFIXES:
        k = _load_text_matrix(p, "kernel")
    elif suffix in IMAGE_SUFFIXES:
        arr, _ = _load_pixels(p, 1, "kernel", alpha="drop")
        k = arr[0]
    else:
        raise InputError(f"kernel {p} has unsupported suffix {p.suffix!r}; give a .npy array, a "
                         f".txt/.csv table of numbers or a grayscale .png")
    if k.ndim != 2:
        raise InputError(f"kernel {p} has shape {k.shape}; a kernel must be a 2-D [kh, kw] array "
                         f"(reshape a 1-D kernel to [1, n] or [n, 1])")
    if (k < 0).any():
        raise InputError(f"kernel {p} has negative entries (min {k.min():.4g}); blur kernels must be "
                         f"nonnegative, so clip them to 0")
    top = k.max()
    if top <= 0:
        raise InputError(f"kernel {p} is all zeros; give a kernel with a positive sum")
    kh, kw = k.shape
    if image_size is not None:
        if isinstance(image_size, (int, np.integer)) and not isinstance(image_size, bool):
            h = w = int(image_size)
        else:
            h, w = (int(s) for s in image_size)
        if kh > h or kw > w:
            raise InputError(f"kernel {p} is {kh}x{kw} (rows x columns), larger than the {h}x{w} "
                             f"image; use a kernel no larger than the image")
    k = k / top  # avoids overflow of the sum for huge entries
    k = k / k.sum()
    return torch.from_numpy(np.ascontiguousarray(k))


# --------------------------------------------------------------------------- output


def check_output_dir(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Check that ``path`` can be used as the output folder, without creating it.

    Refused with :class:`InputError`: an existing file, an existing non-empty folder
    (unless ``overwrite=True``), a dangling or looping symbolic link, a path below an
    existing file, or a folder whose nearest existing ancestor is not writable (see
    :func:`exactpost.app.output_paths.check_output_dir`). Returns ``Path(path)``.
    """
    try:
        return output_paths.check_output_dir(path, overwrite=overwrite)
    except output_paths.OutputPathError as exc:
        raise InputError(str(exc)) from None


__all__ = [
    "InputError",
    "check_output_dir",
    "load_npy_finite",
    "read_image",
    "read_kernel",
    "read_lowres",
    "read_mask",
]
