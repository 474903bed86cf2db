"""Training data: .npz and image folders, resizing, batching, resumable order."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from exactpost.io.images import DataError, load_images, parse_split, resize_uint8, to_float, to_uint8
from exactpost.training.data import BatchStream


def test_npz_with_split_and_key(tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (10, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", images=imgs, split=np.array([0] * 6 + [1] * 4, dtype=np.uint8))
    out = load_images(tmp_path / "d.npz", split=[1])
    assert out.shape == (4, 3, 8, 8) and out.dtype == torch.uint8
    assert torch.equal(out, torch.from_numpy(imgs[6:]).permute(0, 3, 1, 2))
    np.savez(tmp_path / "c.npz", train_images=imgs, test_images=imgs[:2])
    assert load_images(tmp_path / "c.npz").shape[0] == 10
    assert load_images(tmp_path / "c.npz", key="test_images").shape[0] == 2
    with pytest.raises(DataError, match="no array 'nope'"):
        load_images(tmp_path / "c.npz", key="nope")
    with pytest.raises(DataError, match="no 'split' array"):
        load_images(tmp_path / "c.npz", split=[0])


def test_parse_split_reads_command_line_selections():
    assert parse_split(None) is None
    assert parse_split("2") == [2] and parse_split("0, 1,") == [0, 1]
    with pytest.raises(DataError, match="comma-separated integers, got 'val'"):
        parse_split("val")


def test_folder_of_images_centre_cropped(tmp_path):
    rng = np.random.default_rng(1)
    arrays = [rng.integers(0, 256, (8, 12, 3), dtype=np.uint8) for _ in range(3)]
    for i, a in enumerate(arrays):
        Image.fromarray(a).save(tmp_path / f"{i}.png")
    (tmp_path / "notes.txt").write_text("ignored")
    out = load_images(tmp_path)
    assert out.shape == (3, 3, 8, 8)
    assert torch.equal(out[1], torch.from_numpy(arrays[1][:, 2:10]).permute(2, 0, 1))  # centre 8x8


def test_resize_is_exact_box_average_for_integer_factors():
    x = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    out = resize_uint8(x, 4)
    ref = x.float().reshape(2, 3, 4, 2, 4, 2).mean((3, 5)).round().to(torch.uint8)
    assert torch.equal(out, ref)
    assert resize_uint8(x, 6).shape == (2, 3, 6, 6)


def test_float_conversion_round_trip():
    u = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16).expand(1, 3, 16, 16)
    f = to_float(u)
    assert float(f.min()) == -1.0 and float(f.max()) == 1.0
    assert torch.equal(to_uint8(f), u)


def test_batch_stream_is_reproducible_and_resumable():
    imgs = torch.randint(0, 256, (10, 3, 4, 4), dtype=torch.uint8)
    a = BatchStream(imgs, 4, torch.Generator().manual_seed(0))
    first = [a.next() for _ in range(2)]
    state = a.state()
    rest = [a.next() for _ in range(4)]  # crosses an epoch boundary
    b = BatchStream(imgs, 4, torch.Generator().manual_seed(99))
    b.load_state(state)
    for x, y in zip(rest, [b.next() for _ in range(4)]):
        assert torch.equal(x, y)
    c = BatchStream(imgs, 4, torch.Generator().manual_seed(0))
    assert torch.equal(first[0], c.next())
    assert all(float(x.abs().max()) <= 1.0 for x in rest)


@pytest.mark.parametrize("flip", [True, False])
def test_random_horizontal_flips(flip):
    imgs = torch.randint(0, 256, (6, 3, 4, 4), dtype=torch.uint8)
    stream = BatchStream(imgs, 3, torch.Generator().manual_seed(0), flip=flip)
    originals = {to_float(im).numpy().tobytes() for im in imgs}
    mirrored = {to_float(im).flip(-1).numpy().tobytes() for im in imgs}
    seen_mirror = False
    for _ in range(10):
        for x in stream.next():
            key = x.numpy().tobytes()
            assert key in originals or key in mirrored
            seen_mirror |= key in mirrored and key not in originals
    assert seen_mirror == flip


def test_bad_sources(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_images(tmp_path / "missing.npz")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no .png"):
        load_images(tmp_path / "empty")
    np.savez(tmp_path / "f.npz", images=np.zeros((2, 4, 4, 3), dtype=np.float32))
    with pytest.raises(DataError, match="uint8"):
        load_images(tmp_path / "f.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="cannot read"):
        load_images(tmp_path / "junk.npz")
    with pytest.raises(DataError, match="fewer than one batch"):
        BatchStream(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), 4, torch.Generator())
