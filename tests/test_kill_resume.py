"""A real kill: ``exactpost train`` started as a process, killed with SIGKILL at three
different moments, then rerun with the same command, ends with exactly (``torch.equal``) the
weights, EMA and optimiser state of an uninterrupted run of the same command.

The three moments:

* ``before the first checkpoint``: training has begun (a step is logged) but no state is on
  disk yet, so the rerun starts over;
* ``at a random moment``: a random delay (drawn from a seeded generator) after the first
  checkpoint;
* ``during a checkpoint write``: while a temporary checkpoint file exists, i.e. between the
  first byte of a checkpoint and its rename; the half-written temporary file stays behind.

So that every moment comes before the run ends on a busy machine, the killed runs use a slow
disk: a ``sitecustomize`` module in their ``PYTHONPATH`` makes every ``os.fsync`` take 0.5 s
longer (the command and the code are unchanged), so each checkpoint takes seconds. The
reruns and the uninterrupted run use the ordinary disk. A tiny eps network (8x8 images, widths 8/16, dropout, fp32) on 16
synthetic images keeps every process to a few seconds.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import exactpost
from exactpost.training.loop import TrainConfig

SRC = str(Path(exactpost.__file__).resolve().parents[1])
STEPS, EVERY = 24, 4
UNET = {"base_width": 8, "channel_mults": [1, 2], "attn_resolutions": [], "num_res_blocks": 1, "dropout": 0.1}
SLOW_FSYNC = '''import os, time
_delay = float(os.environ.get("EXACTPOST_TEST_FSYNC_DELAY") or 0)
if _delay > 0:
    _fsync = os.fsync
    def fsync(fd):
        time.sleep(_delay)
        _fsync(fd)
    os.fsync = fsync
'''
#: a guard against a hang only: every wait ends on progress, and nice-19 processes behind busy
#: training jobs were measured to need > 300 s to start four Python processes and log a step
PATIENCE = 1800
MOMENTS = ("before the first checkpoint", "at a random moment", "during a checkpoint write")

pytestmark = pytest.mark.skipif(os.name != "posix", reason="SIGKILL")


def command(data: Path, run: Path) -> list[str]:
    args = ["train", "--data", str(data), "--image-size", "8", "--preset", "tiny", "--unet", json.dumps(UNET),
            "--objective", "eps", "--batch-size", "4", "--steps", str(STEPS), "--checkpoint-every", str(EVERY),
            "--log-every", "1", "--eval-every", "0", "--warmup-steps", "2", "--lr", "1e-3", "--threads", "1",
            "--no-progress", "--run-dir", str(run)]
    if "precision" in TrainConfig.__dataclass_fields__:
        args[-3:-3] = ["--precision", "fp32"]
    return [sys.executable, "-m", "exactpost.app.cli", *args]


def environment(slow_disk: Path | None = None) -> dict:
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", OMP_NUM_THREADS="1")
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "EXACTPOST_TEST_FSYNC_DELAY"):
        env.pop(k, None)
    path = [SRC] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    if slow_disk is not None:
        path.insert(0, str(slow_disk))
        env["EXACTPOST_TEST_FSYNC_DELAY"] = "0.5"
    env["PYTHONPATH"] = os.pathsep.join(path)
    return env


def state_step(run: Path) -> int:
    try:
        return int(json.loads((run / "state.json").read_text())["train_state"]["step"])
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return 0


def logged_steps(run: Path) -> list[int]:
    try:
        lines = (run / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return []
    steps = []
    for line in lines:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:  # a line cut by the kill
            continue
        if "loss" in rec:
            steps.append(rec["step"])
    return steps


def temp_files(run: Path) -> list[str]:
    try:
        return [p.name for p in run.iterdir() if p.name.endswith(".tmp")]
    except FileNotFoundError:
        return []


def weights(run: Path) -> dict[str, torch.Tensor]:
    out = {f"model/{k}": v for k, v in load_file(str(run / "model.safetensors")).items()}
    out.update({f"state/{k}": v for k, v in load_file(str(run / "state.safetensors")).items()
                if k.startswith(("model.", "ema.", "optim.", "rng."))})
    return out


def test_sigkill_at_three_moments_then_the_same_command_gives_the_uninterrupted_weights(tmp_path):
    data = tmp_path / "tiny.npz"
    np.savez(data, images=np.random.default_rng(0).integers(0, 256, (16, 8, 8, 3), dtype=np.uint8))
    slow = tmp_path / "slow_disk"
    slow.mkdir()
    (slow / "sitecustomize.py").write_text(SLOW_FSYNC)
    full = tmp_path / "full"
    runs = {m: tmp_path / f"killed_{i}" for i, m in enumerate(MOMENTS)}
    delay = random.Random(20).uniform(0.0, 3.0)  # the random moment: this long after the first checkpoint
    first_checkpoint: list[float] = []

    def random_moment() -> bool:
        if not first_checkpoint and state_step(runs[MOMENTS[1]]) >= EVERY:
            first_checkpoint.append(time.monotonic())
        return bool(first_checkpoint) and time.monotonic() - first_checkpoint[0] >= delay

    ready = {
        MOMENTS[0]: lambda: len(logged_steps(runs[MOMENTS[0]])) >= 1,
        MOMENTS[1]: random_moment,
        MOMENTS[2]: lambda: state_step(runs[MOMENTS[2]]) >= EVERY and bool(temp_files(runs[MOMENTS[2]])),
    }
    uninterrupted = subprocess.Popen(command(data, full), env=environment(), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
    victims = {m: subprocess.Popen(command(data, runs[m]), env=environment(slow), stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL) for m in MOMENTS}
    seen: dict[str, dict] = {}
    deadline = time.monotonic() + PATIENCE
    try:
        while len(seen) < len(MOMENTS):
            for m, victim in victims.items():
                if m in seen:
                    continue
                if ready[m]():
                    tmp = temp_files(runs[m])
                    victim.send_signal(signal.SIGKILL)
                    assert victim.wait(timeout=60) == -signal.SIGKILL
                    seen[m] = dict(step=state_step(runs[m]), temporary=tmp, logged=logged_steps(runs[m])[-1:])
                else:
                    assert victim.poll() is None, f"{m}: the run ended (rc {victim.returncode}) before the kill"
            assert time.monotonic() < deadline, f"not every moment came within {PATIENCE} s: killed {sorted(seen)}"
            time.sleep(0.002)
    finally:
        for victim in victims.values():
            if victim.poll() is None:
                victim.kill()
                victim.wait()

    assert seen[MOMENTS[0]]["step"] == 0, seen  # before any state was on disk
    assert EVERY <= seen[MOMENTS[1]]["step"] < STEPS, seen
    assert EVERY <= seen[MOMENTS[2]]["step"] < STEPS and seen[MOMENTS[2]]["temporary"], seen
    assert temp_files(runs[MOMENTS[2]]), "the kill during a write leaves its temporary file behind"

    reruns = {m: subprocess.Popen(command(data, runs[m]), env=environment(), stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True) for m in MOMENTS}
    for m, rerun in reruns.items():
        _, err = rerun.communicate(timeout=PATIENCE)
        assert rerun.returncode == 0, f"{m}: the rerun failed: {err}"
    _, err = uninterrupted.communicate(timeout=PATIENCE)
    assert uninterrupted.returncode == 0, err

    a = weights(full)
    assert state_step(full) == STEPS and len(a) > 50
    for m in MOMENTS:
        run = runs[m]
        assert state_step(run) == STEPS, m
        logged = logged_steps(run)
        if seen[m]["step"]:  # it resumed from the checkpoint (the log restarts there), not from step 1
            assert logged.count(1) == 1 and logged.count(seen[m]["step"] + 1) >= 1, (m, logged)
        b = weights(run)
        differ = [k for k in a if not torch.equal(a[k], b[k])]
        assert set(a) == set(b) and not differ, f"{m}: {len(differ)} tensors differ, e.g. {differ[:3]}"
