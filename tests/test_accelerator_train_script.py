"""scripts/accelerator_train.py: the lossless data packing, the timed phases, one CPU smoke
run through both phases on synthetic data, and the reversible slimming of the git index."""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "accelerator_train.py"


@pytest.fixture(scope="module")
def acc():
    spec = importlib.util.spec_from_file_location("accelerator_train", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def _smooth_images(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:32, 0:32]
    base = 128 + 60 * np.sin(xx[None, None] / rng.uniform(3, 9, (n, 3, 1, 1)) + yy[None, None] / 7.0)
    return np.clip(base + rng.normal(0, 4, base.shape), 0, 255).astype(np.uint8)


def test_packing_is_lossless_and_smaller_on_smooth_images(acc):
    rng = np.random.default_rng(1)
    noise = rng.integers(0, 256, (5, 3, 32, 32), dtype=np.uint8)
    edges = np.zeros((2, 3, 32, 32), np.uint8)
    edges[:, :, :, 16:] = 255  # a hard edge: MED's min/max branches
    edges[1, :, 10:, :] = 7
    smooth = _smooth_images(20)
    for images in (noise, edges, smooth, np.full((1, 1, 4, 5), 255, np.uint8)):
        blob = acc.encode_images(images)
        np.testing.assert_array_equal(acc.decode_images(blob, images.shape), images)
    assert len(acc.encode_images(smooth)) < 0.8 * smooth.size  # the predictor earns its keep
    with pytest.raises(ValueError, match="uint8"):
        acc.encode_images(smooth.astype(np.float32))


def test_unpacked_data_is_checked_against_the_manifest(acc, tmp_path):
    sets = {"faces32": {"train": _smooth_images(12, 2), "eval": _smooth_images(4, 3)}}
    manifest = acc.pack(sets, tmp_path / "packed")
    npz = acc.unpack_data(tmp_path / "packed", tmp_path / "work", ("faces32",))["faces32"]
    with np.load(npz) as z:
        np.testing.assert_array_equal(z["images"], sets["faces32"]["train"].transpose(0, 2, 3, 1))
        np.testing.assert_array_equal(z["test_images"], sets["faces32"]["eval"].transpose(0, 2, 3, 1))
    manifest["faces32"]["train"]["sha256"] = "0" * 64
    (tmp_path / "packed" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SystemExit, match="sha256"):
        acc.unpack_data(tmp_path / "packed", tmp_path / "work2", ("faces32",))


def test_a_phase_stops_its_jobs_at_the_time_and_kills_the_stubborn(acc, tmp_path):
    obeys = "import signal, sys, time; signal.signal(signal.SIGTERM, lambda *a: sys.exit(7)); time.sleep(60)"
    ignores = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
    quick = "pass"
    res = acc.run_phase({"obeys": ["-c", obeys], "ignores": ["-c", ignores], "quick": ["-c", quick]},
                        seconds=1.5, logs=tmp_path / "logs", grace=1.5, launcher=(sys.executable,))
    assert res["obeys"]["returncode"] == 7
    assert res["ignores"]["returncode"] == -9
    assert res["quick"]["returncode"] == 0
    assert 2.5 < res["ignores"]["seconds"] < 30


def test_smoke_run_trains_both_phases_and_brings_back_loadable_models(acc, tmp_path):
    sets = {"faces32": {"train": _smooth_images(16, 4), "eval": _smooth_images(4, 5)}}
    acc.pack(sets, tmp_path / "packed")
    out = tmp_path / "out"
    args = argparse.Namespace(
        out=str(out), packed=str(tmp_path / "packed"), work=str(tmp_path / "work"), device="cpu", batch=8,
        prior_seconds=600.0, finetune_seconds=600.0, families=["faces32"], smoke=True, steps=2,
        preflight=True)
    summary = acc.run(args)
    assert set(summary["phases"]) == {"preflight", "prior", "finetune"}
    assert {r["returncode"] for phase in summary["phases"].values() for r in phase.values()} == {0}
    assert sorted(p.name for p in out.iterdir()) == ["cards_logs.tar.gz", "faces32-eps.safetensors",
                                                     "faces32-palette.safetensors", "faces32-prior.safetensors"]
    done = acc.unpack_results(out, tmp_path / "runs")
    assert [d.name for d in done] == ["accel-faces32-eps", "accel-faces32-palette", "accel-faces32-prior"]
    for d in done:
        card = json.loads((d / "model.json").read_text())
        assert card["steps"] == 2 and card["images_seen"] == 16 and card["precision"] == "fp32"
        assert card["command"].startswith("exactpost ") and "--batch-size 8" in card["command"]
    eps = json.loads((tmp_path / "runs" / "accel-faces32-eps" / "model.json").read_text())
    assert eps["objective"]["kind"] == "eps" and eps["config"]["init_from"].endswith("faces32-prior/model")
    assert json.loads((tmp_path / "runs" / "accel-summary.json").read_text())["families"] == ["faces32"]


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True).stdout


def test_slim_untracks_the_big_folders_and_unslim_restores_the_index(acc, tmp_path):
    root = tmp_path / "repo"
    (root / "runs" / "a").mkdir(parents=True)
    (root / "src").mkdir()
    (root / "runs" / "a" / "state.bin").write_bytes(b"x" * 5000)
    (root / "src" / "code.py").write_text("print(1)\n")
    _git(root, "init", "-q")
    _git(root, "add", ".")
    _git(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "init")
    exclude = root / ".git" / "info" / "exclude"
    before_exclude = exclude.read_text() if exclude.is_file() else ""
    full = acc.travel_bytes(root, carry=())
    assert full >= 5000 + 9
    assert acc.slim(root) == full - 5000  # what travels no longer holds runs/
    assert (root / "runs" / "a" / "state.bin").is_file()  # only the index changed
    assert acc.slim(root) == full - 5000  # twice is harmless
    acc.unslim(root)
    assert _git(root, "status", "--porcelain") == ""
    assert exclude.read_text() == before_exclude
    assert acc.travel_bytes(root, carry=()) == full
