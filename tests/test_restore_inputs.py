"""Inputs of ``exactpost restore``: images, low-resolution measurements, masks, kernels and
the output folder. Every refusal is an InputError with a one-line message."""

import os

import numpy as np
import pytest
import torch
from PIL import Image

from exactpost.operators import AveragePoolSR, FFTBlur, Inpainting
from exactpost.app.restore_inputs import (
    InputError,
    check_output_dir,
    load_npy_finite,
    read_image,
    read_kernel,
    read_lowres,
    read_mask,
)
from exactpost.io.images import to_float, to_uint8


def refused(fn, *args, match: str, **kwargs) -> str:
    """Call fn, expect an InputError whose message is one non-empty line matching ``match``."""
    with pytest.raises(InputError, match=match) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert msg and "\n" not in msg and "\r" not in msg, msg
    assert isinstance(info.value, ValueError)
    return msg


def rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def save(array: np.ndarray, path, **kw):
    Image.fromarray(array).save(path, **kw)
    return path


def test_input_error_collapses_line_breaks():
    assert str(InputError("a\nb  c\r\nd")) == "a b c d"


# --------------------------------------------------------------------------- images


def test_png_of_the_right_size_round_trips_exactly(tmp_path):
    u8 = rgb(32, 32)
    x, notices = read_image(save(u8, tmp_path / "in.png"), 32)
    assert notices == []
    assert x.shape == (1, 3, 32, 32) and x.dtype == torch.float32
    want = to_float(torch.from_numpy(u8).permute(2, 0, 1)[None])
    torch.testing.assert_close(x, want, rtol=0, atol=1e-7)
    assert torch.equal(to_uint8(x)[0].permute(1, 2, 0), torch.from_numpy(u8))


def test_other_sizes_are_centre_cropped_and_resized_with_a_notice(tmp_path):
    u8 = rgb(64, 80, seed=1)  # 80 wide, 64 high
    x, notices = read_image(save(u8, tmp_path / "wide.png"), 32)
    assert x.shape == (1, 3, 32, 32)
    assert len(notices) == 1
    assert "wide.png is 80x64" in notices[0]
    assert "centre-cropped to 64x64" in notices[0] and "resized to 32x32" in notices[0]
    # 64 -> 32 is an exact 2x2 block average of the centre crop (columns 8..71)
    crop = u8[:, 8:72].astype(np.float64)
    blocks = crop.reshape(32, 2, 32, 2, 3).mean(axis=(1, 3))
    want = torch.from_numpy(blocks / 127.5 - 1).permute(2, 0, 1)[None].float()
    torch.testing.assert_close(x, want, rtol=0, atol=1e-6)


def test_tall_and_non_integer_resizes(tmp_path):
    x, notices = read_image(save(rgb(100, 45, seed=2), tmp_path / "tall.png"), 32)
    assert x.shape == (1, 3, 32, 32) and float(x.abs().max()) <= 1
    assert "tall.png is 45x100" in notices[0] and "centre-cropped to 45x45" in notices[0]
    assert "antialiased bilinear" in notices[0]
    # square but larger: resize only, no crop mentioned
    _, notices = read_image(save(rgb(64, 64), tmp_path / "big.png"), 32)
    assert "cropped" not in notices[0] and "resized to 32x32 (2x2 block average)" in notices[0]
    # square but smaller: upsampled
    x, notices = read_image(save(rgb(16, 16), tmp_path / "small.png"), 32)
    assert x.shape == (1, 3, 32, 32) and "resized to 32x32" in notices[0]


def test_grayscale_and_alpha_are_converted(tmp_path):
    g = np.random.default_rng(3).integers(0, 256, size=(32, 32), dtype=np.uint8)
    x, notices = read_image(save(g, tmp_path / "gray.png"), 32)
    assert x.shape == (1, 3, 32, 32) and any("grayscale" in n for n in notices)
    for c in range(3):
        torch.testing.assert_close(x[0, c], torch.from_numpy(g / 127.5 - 1).float(), rtol=0, atol=1e-7)
    rgba = np.concatenate([rgb(32, 32, seed=4), np.full((32, 32, 1), 255, np.uint8)], axis=2)
    rgba[0, 0] = (0, 0, 0, 0)  # fully transparent black -> white
    x, notices = read_image(save(rgba, tmp_path / "alpha.png"), 32)
    assert any("transparent" in n for n in notices)
    assert x[0, :, 0, 0].tolist() == [1.0, 1.0, 1.0]
    torch.testing.assert_close(x[0, :, 1:, 1:], to_float(torch.from_numpy(rgba[1:, 1:, :3]).permute(2, 0, 1)))
    # one channel requested from a colour image: luma, with a notice
    x, notices = read_image(tmp_path / "alpha.png", 32, channels=1)
    assert x.shape == (1, 1, 32, 32) and any("grayscale" in n for n in notices)


def test_sixteen_bit_png_is_scaled(tmp_path):
    a = np.zeros((32, 32), dtype=np.uint16)
    a[0, 0], a[0, 1] = 65535, 32768
    x, _ = read_image(save(a, tmp_path / "deep.png"), 32)
    assert x[0, :, 0, 0].tolist() == [1.0, 1.0, 1.0] and float(x[0, 0, 1, 1]) == -1.0
    assert float(x[0, 0, 0, 1]) == pytest.approx(2 * 32768 / 65535 - 1, abs=1e-6)


def test_bad_image_files_are_refused(tmp_path):
    refused(read_image, tmp_path / "nope.png", 32, match="does not exist")
    refused(read_image, tmp_path, 32, match="is a directory")
    (tmp_path / "junk.png").write_bytes(b"this is not an image\n" * 10)
    refused(read_image, tmp_path / "junk.png", 32, match="cannot read image")
    full = (save(rgb(64, 64), tmp_path / "full.png")).read_bytes()
    (tmp_path / "cut.png").write_bytes(full[: len(full) // 2])
    refused(read_image, tmp_path / "cut.png", 32, match="cannot read image")
    nan = np.zeros((32, 32), dtype=np.float32)
    nan[3, 3] = np.nan
    Image.fromarray(nan, mode="F").save(tmp_path / "nan.tiff")
    refused(read_image, tmp_path / "nan.tiff", 32, match="NaN or Inf")
    Image.fromarray(np.full((32, 32), 7.0, np.float32), mode="F").save(tmp_path / "hot.tiff")
    refused(read_image, tmp_path / "hot.tiff", 32, match=r"values in \[0, 1\]")
    refused(read_image, tmp_path / "full.png", 0, match="positive integer")
    refused(read_image, tmp_path / "full.png", 32, channels=2, match="1 or 3")


def test_float_image_in_unit_range_is_read(tmp_path):
    f = np.linspace(0, 1, 32 * 32, dtype=np.float32).reshape(32, 32)
    Image.fromarray(f, mode="F").save(tmp_path / "f.tiff")
    x, _ = read_image(tmp_path / "f.tiff", 32, channels=1)
    torch.testing.assert_close(x[0, 0], torch.from_numpy(2 * f.astype(np.float64) - 1).float())


# --------------------------------------------------------------------------- low resolution


def test_lowres_of_the_right_size_round_trips(tmp_path):
    u8 = rgb(8, 8, seed=5)
    y, notices = read_lowres(save(u8, tmp_path / "low.png"), 32, 4)
    assert y.shape == (1, 3, 8, 8) and notices == []
    torch.testing.assert_close(y, to_float(torch.from_numpy(u8).permute(2, 0, 1)[None]), rtol=0, atol=1e-7)


def test_full_size_image_as_lowres_is_average_pooled(tmp_path):
    save(rgb(32, 32, seed=6), tmp_path / "full.png")
    y, notices = read_lowres(tmp_path / "full.png", 32, 4)
    assert y.shape == (1, 3, 8, 8)
    assert len(notices) == 1 and "expected 8x8" in notices[0] and "4x4 block average" in notices[0]
    x, _ = read_image(tmp_path / "full.png", 32)
    torch.testing.assert_close(y, AveragePoolSR(4, (3, 32, 32)).A(x), rtol=0, atol=1e-6)


def test_lowres_checks_the_factor(tmp_path):
    save(rgb(8, 8), tmp_path / "low.png")
    refused(read_lowres, tmp_path / "low.png", 30, 4, match="not a multiple")
    refused(read_lowres, tmp_path / "missing.png", 32, 4, match="does not exist")


# --------------------------------------------------------------------------- masks


def test_mask_is_thresholded_at_half(tmp_path):
    m = np.full((32, 32), 255, np.uint8)
    m[:10] = 0
    m[10, 0], m[10, 1] = 127, 128
    mask = read_mask(save(m, tmp_path / "mask.png"), 32)
    assert mask.shape == (1, 1, 32, 32) and mask.dtype == torch.float32
    want = torch.from_numpy((m >= 128).astype(np.float32))
    assert torch.equal(mask[0, 0], want)
    assert mask[0, 0, 10, 0] == 0 and mask[0, 0, 10, 1] == 1
    # an RGB mask and a .npy mask read the same
    assert torch.equal(read_mask(save(np.repeat(m[..., None], 3, 2), tmp_path / "rgb.png"), 32), mask)
    np.save(tmp_path / "mask.npy", m >= 128)
    assert torch.equal(read_mask(tmp_path / "mask.npy", 32), mask)
    op = Inpainting(mask[0, 0], channels=3)
    assert op.in_shape == (3, 32, 32)


def test_bad_masks_are_refused(tmp_path):
    msg = refused(read_mask, save(np.full((16, 32), 255, np.uint8), tmp_path / "small.png"), 32,
                  match="must be 32x32")
    assert "32x16" in msg
    refused(read_mask, save(np.zeros((32, 32), np.uint8), tmp_path / "black.png"), 32,
            match="no pixel as observed")
    refused(read_mask, tmp_path / "none.png", 32, match="does not exist")
    np.save(tmp_path / "three.npy", np.ones((1, 32, 32)))
    refused(read_mask, tmp_path / "three.npy", 32, match="2-D")
    np.save(tmp_path / "big.npy", np.full((32, 32), 255.0))
    refused(read_mask, tmp_path / "big.npy", 32, match="values in")
    bad = np.ones((32, 32))
    bad[0, 0] = np.inf
    np.save(tmp_path / "inf.npy", bad)
    refused(read_mask, tmp_path / "inf.npy", 32, match="NaN or Inf")


# --------------------------------------------------------------------------- kernels


def test_npy_kernel_is_normalised(tmp_path):
    k = np.array([[0, 1, 0], [1, 4, 1], [0, 1, 0]], dtype=np.float32)
    np.save(tmp_path / "k.npy", k)
    got = read_kernel(tmp_path / "k.npy", image_size=32)
    assert got.dtype == torch.float64 and got.shape == (3, 3)
    torch.testing.assert_close(got, torch.from_numpy(k / 8.0).double(), rtol=0, atol=1e-15)
    assert float(got.sum()) == pytest.approx(1.0, abs=1e-15)
    FFTBlur(got, (3, 32, 32))  # the operator accepts it


def test_text_image_and_even_kernels(tmp_path):
    (tmp_path / "k.txt").write_text("# a box blur\n1 1\n1 1\n\n")
    torch.testing.assert_close(read_kernel(tmp_path / "k.txt"), torch.full((2, 2), 0.25, dtype=torch.float64))
    (tmp_path / "k.csv").write_text("0.5, 1.5, 0\n0,2,0\n")
    torch.testing.assert_close(read_kernel(tmp_path / "k.csv"),
                               torch.tensor([[0.5, 1.5, 0], [0, 2, 0]], dtype=torch.float64) / 4)
    img = np.zeros((5, 5), np.uint8)
    img[2, 1:4] = 255
    torch.testing.assert_close(read_kernel(save(img, tmp_path / "k.png")),
                               torch.from_numpy(img / 765.0))
    FFTBlur(read_kernel(tmp_path / "k.txt"), (3, 8, 8))  # even sizes are fine for FFTBlur
    np.save(tmp_path / "huge.npy", np.full((2, 2), 1e308))
    torch.testing.assert_close(read_kernel(tmp_path / "huge.npy"), torch.full((2, 2), 0.25, dtype=torch.float64))


def test_bad_kernels_are_refused(tmp_path):
    np.save(tmp_path / "neg.npy", np.array([[0.5, -0.1], [0.3, 0.3]]))
    refused(read_kernel, tmp_path / "neg.npy", match="negative")
    np.save(tmp_path / "zero.npy", np.zeros((3, 3)))
    refused(read_kernel, tmp_path / "zero.npy", match="all zeros")
    np.save(tmp_path / "nan.npy", np.array([[1.0, np.nan]]))
    refused(read_kernel, tmp_path / "nan.npy", match="NaN or Inf")
    (tmp_path / "nan.txt").write_text("1 nan\n1 1\n")
    refused(read_kernel, tmp_path / "nan.txt", match="NaN or Inf")
    np.save(tmp_path / "flat.npy", np.ones(5))
    refused(read_kernel, tmp_path / "flat.npy", match="2-D")
    np.save(tmp_path / "cube.npy", np.ones((2, 2, 2)))
    refused(read_kernel, tmp_path / "cube.npy", match="2-D")
    np.save(tmp_path / "cplx.npy", np.ones((2, 2), dtype=complex))
    refused(read_kernel, tmp_path / "cplx.npy", match="complex")
    np.save(tmp_path / "obj.npy", np.array([[{"a": 1}]], dtype=object))
    refused(read_kernel, tmp_path / "obj.npy", match="cannot read kernel")
    (tmp_path / "bad.npy").write_bytes(b"garbage")
    refused(read_kernel, tmp_path / "bad.npy", match="cannot read kernel")
    (tmp_path / "ragged.txt").write_text("1 2 3\n4 5\n")
    refused(read_kernel, tmp_path / "ragged.txt", match="different lengths")
    (tmp_path / "words.csv").write_text("1,2\nfoo,bar\n")
    refused(read_kernel, tmp_path / "words.csv", match="line 2")
    (tmp_path / "empty.txt").write_text("# nothing\n")
    refused(read_kernel, tmp_path / "empty.txt", match="no numbers")
    (tmp_path / "k.mat").write_bytes(b"\x00")
    refused(read_kernel, tmp_path / "k.mat", match="unsupported suffix")
    refused(read_kernel, tmp_path / "absent.npy", match="does not exist")
    np.save(tmp_path / "wide.npy", np.ones((3, 40)))
    refused(read_kernel, tmp_path / "wide.npy", image_size=32, match="larger than the 32x32 image")
    refused(read_kernel, tmp_path / "wide.npy", image_size=(2, 64), match="larger than the 2x64 image")
    assert read_kernel(tmp_path / "wide.npy", image_size=(8, 64)).shape == (3, 40)


def test_load_npy_finite(tmp_path):
    np.save(tmp_path / "a.npy", np.arange(6, dtype=np.int16).reshape(2, 3))
    a = load_npy_finite(tmp_path / "a.npy")
    assert a.dtype == np.float64 and a.tolist() == [[0, 1, 2], [3, 4, 5]]
    np.save(tmp_path / "e.npy", np.zeros((0, 3)))
    refused(load_npy_finite, tmp_path / "e.npy", match="empty")
    np.savez(tmp_path / "z.npy", a=np.ones(2))  # savez appends .npz
    refused(load_npy_finite, tmp_path / "z.npy.npz", match="several arrays")


# --------------------------------------------------------------------------- output folder


def test_output_dir_checks_without_creating(tmp_path):
    new = tmp_path / "out" / "run1"
    assert check_output_dir(new) == new and not new.exists() and not (tmp_path / "out").exists()
    (tmp_path / "empty").mkdir()
    assert check_output_dir(tmp_path / "empty") == tmp_path / "empty"
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "old.png").write_bytes(b"x")
    refused(check_output_dir, tmp_path / "full", match="not empty")
    assert check_output_dir(tmp_path / "full", overwrite=True) == tmp_path / "full"
    assert (tmp_path / "full" / "old.png").exists()  # checking deletes nothing
    (tmp_path / "file").write_text("x")
    refused(check_output_dir, tmp_path / "file", match="is a file")
    refused(check_output_dir, tmp_path / "file" / "sub", match="is a file")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root can write anywhere")
def test_output_dir_needs_write_permission(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        refused(check_output_dir, locked / "out", match="no write permission")
    finally:
        locked.chmod(0o700)
