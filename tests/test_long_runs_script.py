"""scripts/long_runs.sh: the three runs of a family chain (prior -> EPS and Palette from that
prior, equal steps), a rerun skips finished runs without touching their states (and reports
their own step) or their models (a final run, its state removed), and an unknown family is a
one-line exit 2. Runs the real script for 2 steps on synthetic data in a scratch directory
(the bundled faces prior initialises the CIFAR prior, as in the repo)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "long_runs.sh"


def _env(**env: str) -> dict:
    exe = Path(sys.executable).parent / "exactpost"  # the console script of this environment
    assert exe.exists(), f"{exe} missing: install the package (make install)"
    return dict(os.environ, EXACTPOST=str(exe), OMP_NUM_THREADS="1", **env)


def _run(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=cwd, env=_env(**env), capture_output=True, text=True,
                          timeout=600)


def _cifar_like(tmp_path: Path) -> tuple[Path, Path]:
    """(data folder with a synthetic cifar10_32.npz, work folder whose models/faces-32 is the repo's)."""
    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    data.mkdir()
    np.savez(data / "cifar10_32.npz", train_images=rng.integers(0, 256, (80, 32, 32, 3), dtype=np.uint8),
             test_images=rng.integers(0, 256, (70, 32, 32, 3), dtype=np.uint8))
    work = tmp_path / "work"
    (work / "models").mkdir(parents=True)
    (work / "models" / "faces-32").symlink_to(ROOT / "models" / "faces-32")
    return data, work


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_cifar_chain_runs_prior_eps_palette_and_a_rerun_skips_them(tmp_path):
    data, work = _cifar_like(tmp_path)
    done = _run(["cifar"], work, STEPS="2", DATA_DIR=str(data))
    assert done.returncode == 0, done.stderr
    runs = {kind: work / "runs" / f"cifar32-{kind}" for kind in ("prior", "eps-long", "palette-long")}
    cards = {kind: json.loads((run / "model.json").read_text()) for kind, run in runs.items()}
    prior_sha = cards["prior"]["sha256"]
    assert cards["prior"]["objective"]["kind"] == "prior" and cards["prior"]["init_from"] == "models/faces-32/prior"
    for kind, objective in (("eps-long", "eps"), ("palette-long", "palette")):
        card = cards[kind]
        assert card["objective"]["kind"] == objective and card["steps"] == cards["prior"]["steps"] == 2
        assert card["init_from"] == "runs/cifar32-prior/model" and card["prior_card_sha256"] == prior_sha
        assert card["images_seen"] == 128 and card["precision"] == "fp32" and card["channels_last"] is True
        bundled = json.loads((ROOT / "models" / "cifar10-32" / f"{objective}.json").read_text())
        assert card["objective"]["conditioning"] == bundled["objective"]["conditioning"]  # the same network inputs
        assert card["config"]["sigma_y"] == bundled["config"]["sigma_y"] and card["config"]["lr"] == bundled["config"]["lr"]

    states = {kind: _sha(run / "state.safetensors") for kind, run in runs.items()}
    again = _run(["cifar"], work, STEPS="1", DATA_DIR=str(data))  # a lower target: nothing to train
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("done: 2 steps;") == 3, again.stdout  # each run's own step, not the target
    assert {kind: _sha(run / "state.safetensors") for kind, run in runs.items()} == states

    # the prior is final: its state is removed (as in the repo), its model stays for EPS and Palette
    for name in ("state.json", "state.safetensors"):
        (runs["prior"] / name).unlink()
    model = _sha(runs["prior"] / "model.safetensors")
    final = _run(["cifar"], work, STEPS="2", DATA_DIR=str(data))
    assert final.returncode == 0, final.stderr
    assert "runs/cifar32-prior is final" in final.stderr and final.stdout.count("done: 2 steps;") == 2, final
    assert _sha(runs["prior"] / "model.safetensors") == model and not (runs["prior"] / "state.json").exists()


def test_sigterm_to_the_chain_saves_the_running_job_and_ends_it(tmp_path):
    """SIGTERM to the script reaches the training job (which saves the step it is on) and the
    chain stops there with exit 143: no fine-tuning starts after a stopped prior."""
    data, work = _cifar_like(tmp_path)
    chain = subprocess.Popen(["bash", str(SCRIPT), "cifar"], cwd=work, env=_env(STEPS="100000", DATA_DIR=str(data)),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = work / "runs" / "cifar32-prior" / "metrics.jsonl"
    deadline = time.monotonic() + 300
    try:
        while not metrics.exists():  # opened when the training loop starts
            assert chain.poll() is None, chain.communicate()
            assert time.monotonic() < deadline, "the prior did not start within 300 s"
            time.sleep(0.05)
        chain.send_signal(signal.SIGTERM)
        _, err = chain.communicate(timeout=300)
    finally:
        if chain.poll() is None:
            chain.kill()
            chain.wait()
    assert chain.returncode == 143, err
    assert "stopped by SIGTERM at step" in err and "state saved" in err
    state = json.loads((work / "runs" / "cifar32-prior" / "state.json").read_text())
    assert state["train_state"]["step"] >= 1
    assert not (work / "runs" / "cifar32-eps-long").exists()


def test_an_unknown_family_is_one_line_and_exit_2(tmp_path):
    bad = _run(["imagenet"], tmp_path)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "long_runs.sh: unknown family 'imagenet'; use faces or cifar"]
