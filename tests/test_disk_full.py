"""A disk that fills while outputs are written: ``exactpost restore`` and a training
checkpoint end with one line naming the file and the cause (exit code 2), leave the previous
outputs / checkpoint exactly as they were and no temporary file; the interrupted training
run then resumes to the weights of an uninterrupted one, bit for bit.

The full disk is simulated at the one place every atomic write goes through
(:func:`exactpost.io.atomic._open_for_writing`): the file being written gets the bytes that
still fit, then ``OSError(ENOSPC)``, and so does every later write. Where this process may
mount a file system (root in a container), one test also fills a real 128 kB tmpfs.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from exactpost.io import atomic
from exactpost.app import cli
from exactpost.inference import zoo
from exactpost.io.checkpoint import load_checkpoint
from fs_helpers import snapshot
from zoo_helpers import make_tiny_models

UNET = json.dumps({"base_width": 8, "channel_mults": [1, 2], "attn_resolutions": [], "num_res_blocks": 1})


class FullDisk:
    """A disk with ``budget`` bytes left, or one that fills up during the ``fail_at``-th
    file (1-based) whose temporary name starts with ``.{name}.``: that file gets half of
    what it writes, then ENOSPC, and every write after it fails too."""

    def __init__(self, budget: int | None = None, name: str | None = None, fail_at: int | None = None):
        self.left = budget
        self.name, self.fail_at, self.seen = name, fail_at, 0
        self.failed: list[str] = []
        self.half_of_next = False

    def open(self, fd: int):
        path = os.readlink(f"/proc/self/fd/{fd}")
        if self.name is not None and Path(path).name.startswith(f".{self.name}."):
            self.seen += 1
            if self.seen == self.fail_at:
                self.left = 0 if self.left is None else self.left
                self.half_of_next = True
        return _Limited(os.fdopen(fd, "wb"), self, path)


class _Limited:
    def __init__(self, f, disk: FullDisk, path: str):
        self.f, self.disk, self.path = f, disk, path
        self.half = getattr(disk, "half_of_next", False)
        disk.half_of_next = False

    def write(self, data) -> int:
        data = bytes(data)
        left = self.disk.left
        if self.half:
            self.half = False
            self.f.write(data[: len(data) // 2])
            self.disk.left = 0
            self._fail()
        if left is not None and len(data) > left:
            self.f.write(data[:left])
            self.disk.left = 0
            self._fail()
        if left is not None:
            self.disk.left = left - len(data)
        return self.f.write(data)

    def _fail(self):
        self.disk.failed.append(self.path)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):  # flush, fileno, close, tell, seek ...
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


pytestmark = pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="names files through /proc/self/fd")


def one_line(rc: int, err: str) -> str:
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("exactpost: error: ") and "Traceback" not in err, \
        (rc, err)
    return lines[0]


# --- restore ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("inputs")
    make_tiny_models(root / "models")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / "photo.png")
    return root


def restore_args(inputs: Path, out: Path, seed: int) -> list[str]:
    return ["restore", str(inputs / "photo.png"), "--task", "sr4", "--simulate", "--model", "tiny-32", "--samples",
            "3", "--nfe", "2", "--seed", str(seed), "--out", str(out), "--overwrite"]


@pytest.mark.parametrize("left", ["none", "half of one output set", "all but 100 bytes of one output set"])
def test_restore_on_a_full_disk_keeps_the_previous_outputs(inputs, tmp_path, monkeypatch, capsys, left):
    monkeypatch.setenv(zoo.ENV_VAR, str(inputs / "models"))
    out = tmp_path / "out"
    assert cli.main(restore_args(inputs, out, seed=0)) == 0  # the previous outputs
    size = sum(p.stat().st_size for p in out.iterdir())
    before = snapshot(tmp_path)
    budget = {"none": 0, "half of one output set": size // 2, "all but 100 bytes of one output set": size - 100}[left]
    disk = FullDisk(budget)
    monkeypatch.setattr(atomic, "_open_for_writing", disk.open)
    capsys.readouterr()
    rc = cli.main(restore_args(inputs, out, seed=1))
    line = one_line(rc, capsys.readouterr().err)
    assert disk.failed, "the simulated disk was never full"
    assert f"cannot write {out}/" in line and "No space left on device" in line and f"{out} is unchanged" in line
    assert snapshot(tmp_path) == before  # every old file as it was; no temporary file or folder


def test_restore_into_a_new_folder_on_a_full_disk_creates_nothing(inputs, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(zoo.ENV_VAR, str(inputs / "models"))
    monkeypatch.setattr(atomic, "_open_for_writing", FullDisk(5000).open)
    rc = cli.main(restore_args(inputs, tmp_path / "new" / "out", seed=0))
    assert "No space left on device" in one_line(rc, capsys.readouterr().err)
    assert snapshot(tmp_path) == {"new": "dir"}  # the parent folder was made; nothing is in it


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A real 128 kB tmpfs (skipped where this process may not mount one)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=128k", "tmpfs", str(mnt)], capture_output=True,
                             timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        pytest.skip("cannot run mount here")
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({res.stderr.decode().strip()[:80]})")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True, timeout=30)


def test_restore_on_a_real_full_file_system(inputs, tiny_tmpfs, monkeypatch, capsys):
    """No simulation: the kernel says ENOSPC (in write, fsync or close)."""
    monkeypatch.setenv(zoo.ENV_VAR, str(inputs / "models"))
    out = tiny_tmpfs / "out"
    assert cli.main(restore_args(inputs, out, seed=0)) == 0
    size = sum(p.stat().st_size for p in out.iterdir())
    stat = os.statvfs(tiny_tmpfs)
    free = stat.f_bavail * stat.f_frsize
    (tiny_tmpfs / "filler").write_bytes(b"\0" * max(0, free - size // 2))  # leaves less than one output set
    before = snapshot(tiny_tmpfs)
    capsys.readouterr()
    rc = cli.main(restore_args(inputs, out, seed=1))
    line = one_line(rc, capsys.readouterr().err)
    assert "No space left on device" in line and f"cannot write {out}" in line
    assert snapshot(tiny_tmpfs) == before


# --- a training checkpoint ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "tiny.npz"
    np.savez(path, images=np.random.default_rng(0).integers(0, 256, (16, 8, 8, 3), dtype=np.uint8))
    return path


def train_args(data: Path, run: Path) -> list[str]:
    return ["train", "--data", str(data), "--image-size", "8", "--preset", "tiny", "--unet", UNET, "--objective", "eps",
            "--batch-size", "4", "--steps", "6", "--checkpoint-every", "2", "--log-every", "1", "--eval-every", "0",
            "--warmup-steps", "2", "--lr", "1e-3", "--threads", "1", "--precision", "fp32", "--no-progress",
            "--run-dir", str(run)]


def weights(run: Path) -> dict[str, torch.Tensor]:
    out = {f"model/{k}": v for k, v in load_file(str(run / "model.safetensors")).items()}
    out.update({f"state/{k}": v for k, v in load_file(str(run / "state.safetensors")).items()
                if k.startswith(("model.", "ema.", "optim."))})
    return out


@pytest.mark.parametrize("name, at, step_kept", [
    ("state.safetensors", 2, 2),  # the second state write (step 4) fails half-way: state stays at step 2
    ("state.json", 2, 2),  # its card fails: the new weights were never renamed in
    ("model.safetensors", 2, 4),  # the state at step 4 was saved; the model export fails
])
def test_a_checkpoint_on_a_full_disk_keeps_the_previous_one_and_resumes_exactly(data, tmp_path, monkeypatch, capsys,
                                                                                name, at, step_kept):
    full, victim = tmp_path / "full", tmp_path / "victim"
    assert cli.main(train_args(data, full)) == 0
    disk = FullDisk(name=name, fail_at=at)
    with monkeypatch.context() as m:
        m.setattr(atomic, "_open_for_writing", disk.open)
        capsys.readouterr()
        rc = cli.main(train_args(data, victim))
    line = one_line(rc, capsys.readouterr().err)
    assert disk.failed and Path(disk.failed[0]).name.startswith(f".{name}.")
    assert f"cannot write {victim / name}: No space left on device" in line
    assert "the previous checkpoint is unchanged" in line
    assert not [p.name for p in victim.iterdir() if p.name.endswith(".tmp")]  # temporary files removed
    tensors, card = load_checkpoint(victim / "state")  # the previous checkpoint loads (sha256 checked)
    assert card["train_state"]["step"] == step_kept
    load_checkpoint(victim / "model")

    assert cli.main(train_args(data, victim)) == 0  # the same command, with space again: resumes
    assert json.loads((victim / "state.json").read_text())["train_state"]["step"] == 6
    a, b = weights(full), weights(victim)
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert set(a) == set(b) and len(a) > 50 and not differ, differ[:3]
