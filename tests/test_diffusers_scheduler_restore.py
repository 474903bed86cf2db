"""``exactpost restore --model <diffusers folder> --scheduler NAME`` (exactpost.backbones.scheduler_restore).

* a tiny random UNet2DModel saved to a temporary folder, fine-tuned 2 EPS / Palette steps from
  the CLI, restores from the CLI with each scheduler name: outputs written, restore.json says
  which scheduler sampled and that each sample cost --nfe network evaluations; the same seed
  gives the same samples, and DDIM's samples are not exactpost's default sampler's;
* the scheduler really drives the steps: the network is called once per scheduler step;
* bad requests are one line and exit 2: --scheduler with a model that is not a diffusers
  folder, with a zero-shot baseline, an unknown name, a folder whose own scheduler is not
  one exactpost drives.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

from backbone_helpers import save_flat, tiny_unet  # noqa: E402
from exactpost.backbones import load_backbone  # noqa: E402
from exactpost.backbones.scheduler_restore import (SCHEDULER_NAMES, check_scheduler_name, load_scheduler,  # noqa: E402
                                                   scheduler_restore)
from exactpost.app.cli import main  # noqa: E402
from exactpost.core.tasks import make_operator, simulate  # noqa: E402


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("sched")
    rng = np.random.default_rng(0)
    np.savez(root / "data.npz", images=rng.integers(0, 256, (8, 16, 16, 3), dtype=np.uint8))
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / "photo.png")
    save_flat(root / "prior", tiny_unet(size=16))
    for objective in ("eps", "palette"):
        rc = main(["finetune", "--init-from", str(root / "prior"), "--objective", objective, "--data",
                   str(root / "data.npz"), "--run-dir", str(root / f"run-{objective}"), "--steps", "2",
                   "--batch-size", "4", "--warmup-steps", "1", "--lr", "1e-3", "--no-progress"])
        assert rc == 0
    return root


def restore(env, out, *extra: str) -> int:
    return main(["restore", str(env / "photo.png"), "--task", "sr4", "--simulate", "--samples", "2",
                 "--out", str(env / out), *extra])


@pytest.mark.parametrize("name", list(SCHEDULER_NAMES))
def test_every_scheduler_restores_from_the_cli(env, capsys, name):
    model = str(env / "run-eps" / "model")
    assert restore(env, f"eps-{name}", "--model", model, "--scheduler", name, "--nfe", "4") == 0, \
        capsys.readouterr().err
    out = env / f"eps-{name}"
    for f in ("mean.png", "std.png", "sample_0.png", "sample_1.png", "truth.png", "restore.json"):
        assert (out / f).is_file(), f
    info = json.loads((out / "restore.json").read_text())
    expect = SCHEDULER_NAMES[name] or "DDPMScheduler"  # the folder's own scheduler is a DDPMScheduler
    assert info["scheduler"] == name and info["sampler"]["scheduler"] == expect
    assert info["nfe_mean"] == 1 and info["nfe_sample"] == 4 and info["sampler"]["steps"] == 3
    assert np.isfinite(info["scores"]["psnr_mean"])


def test_palette_and_determinism(env, capsys):
    model = str(env / "run-palette" / "model")
    assert restore(env, "pal-a", "--model", model, "--method", "palette", "--scheduler", "ddim", "--nfe", "3") == 0
    assert restore(env, "pal-b", "--model", model, "--method", "palette", "--scheduler", "ddim", "--nfe", "3") == 0
    info = json.loads((env / "pal-a" / "restore.json").read_text())
    assert info["nfe_sample"] == 3 and info["sampler"]["scheduler"] == "DDIMScheduler"
    assert (env / "pal-a" / "sample_1.png").read_bytes() == (env / "pal-b" / "sample_1.png").read_bytes()
    # without --scheduler, exactpost's own sampler stays the default
    eps = str(env / "run-eps" / "model")
    assert restore(env, "eps-default", "--model", eps, "--nfe", "4") == 0
    assert restore(env, "eps-ddim-2", "--model", eps, "--nfe", "4", "--scheduler", "ddim") == 0
    default = json.loads((env / "eps-default" / "restore.json").read_text())
    assert "scheduler" not in default and not default["sampler"]["sampler"].startswith("diffusers:")
    assert (env / "eps-default" / "sample_0.png").read_bytes() != (env / "eps-ddim-2" / "sample_0.png").read_bytes()


def test_the_scheduler_drives_one_network_call_per_step(env):
    net, card = load_backbone(env / "run-eps" / "model")
    calls = []
    forward = net.forward
    net.forward = lambda *a, **k: (calls.append(a[1]), forward(*a, **k))[1]
    g = torch.Generator().manual_seed(0)
    op = make_operator("sr4", 1, (3, 16, 16), generator=g)
    y = simulate(op, torch.zeros(1, 3, 16, 16), 0.05, generator=g)
    res = scheduler_restore("eps", net, card, load_scheduler(env / "run-eps" / "model", "euler"), op, y, 0.05, "sr4",
                            n_samples=3, nfe=6, generator=g)
    assert res.samples.shape == (3, 1, 3, 16, 16) and bool(torch.isfinite(res.samples).all())
    assert len(calls) == 1 + 3 * 5  # the mean, then 5 steps a sample
    # Euler's noise levels decrease within a sample: the scheduler's own sigmas reach the network
    levels = [float(torch.as_tensor(s).flatten()[0]) for s in calls[1:6]]
    assert levels == sorted(levels, reverse=True) and levels[0] > 50


def one_line_error(capsys, rc: int, needle: str) -> None:
    err = capsys.readouterr().err
    assert rc == 2 and needle in err and len(err.strip().splitlines()) == 1, err


def test_bad_requests_are_one_line(env, capsys, tmp_path):
    eps = str(env / "run-eps" / "model")
    # an exactpost checkpoint, not a diffusers folder: refused from its card, before loading anything
    (tmp_path / "own").mkdir()
    (tmp_path / "own" / "model.json").write_text(json.dumps({"objective": {"kind": "eps"}}))
    one_line_error(capsys, restore(env, "x1", "--model", str(tmp_path / "own" / "model"), "--scheduler", "ddim"),
                   "not a diffusers folder")
    one_line_error(capsys, restore(env, "x2", "--model", eps, "--scheduler", "heun"), "unknown scheduler")
    one_line_error(capsys, restore(env, "x3", "--model", str(env / "prior"), "--method", "ddnm", "--scheduler",
                                   "ddim"), "eps and palette")
    assert not (env / "x1").exists() and not (env / "x2").exists()
    import shutil

    odd = tmp_path / "odd"
    shutil.copytree(eps, odd)
    cfg = json.loads((odd / "scheduler_config.json").read_text())
    (odd / "scheduler_config.json").write_text(json.dumps({**cfg, "_class_name": "PNDMScheduler"}))
    one_line_error(capsys, restore(env, "x4", "--model", str(odd), "--scheduler", "own"), "not one exactpost drives")
    assert restore(env, "x5", "--model", str(odd), "--scheduler", "ddpm", "--nfe", "3") == 0
    assert check_scheduler_name("DDIMScheduler") == "DDIMScheduler" and check_scheduler_name("DPMSolver") == "dpmsolver"


def test_bench_images_samples_with_the_scheduler(env, capsys, tmp_path):
    import shutil

    fam = tmp_path / "fam"
    shutil.copytree(env / "prior", fam / "prior")
    shutil.copytree(env / "run-eps" / "model", fam / "eps")
    args = ["bench", "images", "--model", str(fam), "--data", str(env / "data.npz"), "--test-key", "images",
            "--images", "2", "--samples", "2", "--tasks", "sr4", "--methods", "eps,ddnm", "--nfe", "4",
            "--tuned", "none", "--no-bare", "--no-progress"]
    assert main(args + ["--scheduler", "ddim", "--out", str(tmp_path / "a")]) == 0, capsys.readouterr().err
    cells = {c["method"]: c for c in json.loads((tmp_path / "a.json").read_text())["cells"]}
    assert cells["eps"]["sampler"]["scheduler"] == "DDIMScheduler" and cells["eps"]["nfe_sample"] == 4
    assert "scheduler" not in cells["ddnm"]["sampler"]  # the baselines keep their own samplers
    # another scheduler: its EPS cell is recomputed (the scheduler is in that cell's depends),
    # the baseline's cell, which no scheduler drives, is reused
    capsys.readouterr()
    assert main(args + ["--scheduler", "euler", "--out", str(tmp_path / "a")]) == 0, capsys.readouterr().err
    assert "1 cells computed, 1 reused" in capsys.readouterr().out
    again = {c["method"]: c for c in json.loads((tmp_path / "a.json").read_text())["cells"]}
    assert again["eps"]["sampler"]["scheduler"] == "EulerDiscreteScheduler"
    assert again["eps"]["depends"]["scheduler"] == "euler" and again["ddnm"]["crps"] == cells["ddnm"]["crps"]
    one_line_error(capsys, main(args[:3] + ["faces-32"] + args[4:] + ["--scheduler", "ddim", "--out",
                                                                     str(tmp_path / "b")]), "not a diffusers folder")
