"""exactpost.io.atomic: atomic writes leave ordinary permissions (0o666 minus the umask), not
mkstemp's private 0o600, for tables, PNGs and checkpoints alike; a failed write keeps the old file."""

from __future__ import annotations

import os
import stat

import pytest
import torch

from exactpost.io.atomic import write_atomic
from exactpost.io.checkpoint import checkpoint_paths, save_checkpoint


@pytest.fixture
def umask_027():
    previous = os.umask(0o027)
    yield 0o640
    os.umask(previous)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_files_get_the_umask_mode(tmp_path, umask_027):
    out = write_atomic(tmp_path / "sub" / "table.md", lambda f: f.write(b"| a |\n"))
    assert out.read_bytes() == b"| a |\n" and _mode(out) == umask_027
    save_checkpoint(tmp_path / "ckpt" / "model", {"w": torch.ones(2)}, {"note": "x"})
    for path in checkpoint_paths(tmp_path / "ckpt" / "model"):
        assert _mode(path) == umask_027, path
    assert not [p for p in tmp_path.rglob("*.tmp")]


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = write_atomic(tmp_path / "t.txt", lambda f: f.write(b"old"))

    def broken(f):
        f.write(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_atomic(target, broken)
    assert target.read_bytes() == b"old" and list(tmp_path.iterdir()) == [target]
