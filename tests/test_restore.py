"""`exactpost restore` end to end on a tiny random model folder, and every input error."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from exactpost.inference import zoo
from exactpost.app.cli import main
from zoo_helpers import make_tiny_models, write_restore_inputs


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("restore")
    make_tiny_models(root / "models")
    return write_restore_inputs(root)


@pytest.fixture
def env(files, monkeypatch):
    monkeypatch.setenv(zoo.ENV_VAR, str(files / "models"))
    return files


def run(env, tmp_path, *argv):
    out = tmp_path / "out"
    rc = main(["restore", "--model", "tiny-32", "--samples", "2", "--nfe", "4", "--out", str(out),
               *[str(a) for a in argv]])  # argv last: its options override these defaults
    return rc, out


def test_simulate_mode_writes_every_output_and_scores(env, tmp_path, capsys):
    rc, out = run(env, tmp_path, env / "photo.png", "--task", "inpaint-random", "--simulate")
    assert rc == 0
    names = {p.name for p in out.iterdir()}
    assert names == {"mean.png", "std.png", "sample_0.png", "sample_1.png", "samples.png", "measurement.png",
                     "truth.png", "restore.json"}
    info = json.loads((out / "restore.json").read_text())
    assert info["mode"] == "simulate" and info["nfe_sample"] == 4 and np.isfinite(info["scores"]["psnr_mean"])
    assert np.asarray(Image.open(out / "mean.png")).shape == (32, 32, 3)
    printed = capsys.readouterr().out
    assert "is 48x40" in printed and "centre-cropped" in printed  # the resize notice


@pytest.mark.parametrize("argv", [
    ["low.png", "--task", "sr4"],
    ["photo.png", "--task", "inpaint-box", "--mask", "mask.png"],
    ["photo.png", "--task", "deblur-motion", "--kernel", "kernel.npy"],
])
def test_measurement_mode_for_each_family(env, tmp_path, argv):
    rc, out = run(env, tmp_path, env / argv[0], *[env / a if a.endswith((".png", ".npy")) else a for a in argv[1:]])
    assert rc == 0
    info = json.loads((out / "restore.json").read_text())
    assert info["mode"] == "measurement" and "scores" not in info
    assert np.asarray(Image.open(out / "samples.png")).shape == (32, 2 * 33 - 1, 3)


def test_observed_pixels_of_a_measurement_are_what_the_mask_keeps(env, tmp_path):
    """In measurement mode the image outside the mask never enters: two inputs that differ
    only in masked-out pixels give identical restorations."""
    img = np.asarray(Image.open(env / "photo.png").crop((8, 4, 40, 36)))
    other = img.copy()
    other[4:20, 6:22] = 255 - other[4:20, 6:22]
    Image.fromarray(img).save(tmp_path / "a.png")
    Image.fromarray(other).save(tmp_path / "b.png")
    outs = []
    for name in ("a", "b"):
        rc = main(["restore", str(tmp_path / f"{name}.png"), "--task", "inpaint-box", "--mask", str(env / "mask.png"),
                   "--model", "tiny-32", "--samples", "2", "--nfe", "4", "--out", str(tmp_path / f"o{name}")])
        assert rc == 0
        outs.append(np.asarray(Image.open(tmp_path / f"o{name}" / "samples.png")))
    assert np.array_equal(outs[0], outs[1])


@pytest.mark.parametrize("argv, needle", [
    (["missing.png", "--task", "sr4", "--simulate"], "missing.png"),
    (["garbage.png", "--task", "sr4", "--simulate"], "garbage.png"),
    (["photo.png", "--task", "inpaint-box", "--mask", "mask16.png"], "16x16"),
    (["photo.png", "--task", "inpaint-box", "--mask", "black.png"], "mask"),
    (["photo.png", "--task", "inpaint-box"], "needs --mask"),
    (["photo.png", "--task", "paint-it-black", "--simulate"], "unknown task"),
    (["photo.png", "--task", "deblur-gauss", "--kernel", "negative.npy"], "negative"),
    (["photo.png", "--task", "deblur-gauss", "--kernel", "zeros.npy"], "zero"),
    (["photo.png", "--task", "deblur-gauss", "--kernel", "nan.npy"], "finite"),
    (["photo.png", "--task", "deblur-gauss"], "needs --kernel"),
    (["photo.png", "--task", "sr4", "--simulate", "--method", "magic"], "unknown method"),
    (["photo.png", "--task", "sr4", "--simulate", "--samples", "1"], "--samples must be >= 2"),
    (["photo.png", "--task", "sr4", "--simulate", "--sigma-y", "nan"], "--sigma-y"),
    (["photo.png", "--task", "sr4", "--simulate", "--sampler", "rk4"], "unknown solver 'rk4'"),
    (["photo.png", "--task", "sr4", "--simulate", "--sampler", "heun:karras:rho=x"], "rho must be a number"),
    (["photo.png", "--task", "sr4", "--simulate", "--sampler", "euler", "--method", "ddnm"], "--sampler drives eps"),
])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(env, tmp_path, capsys, argv, needle):
    argv = [str(env / a) if a.endswith((".png", ".npy")) else a for a in argv]
    rc, out = run(env, tmp_path, *argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert err.startswith("exactpost: error:") and "\n" not in err and needle.lower() in err.lower(), err
    assert not out.exists()


def test_unknown_model_and_busy_output_folder(env, tmp_path, capsys):
    out = tmp_path / "o"
    rc = main(["restore", str(env / "photo.png"), "--task", "sr4", "--simulate", "--model", "faces-1024", "--out", str(out)])
    assert rc == 2 and "unknown model 'faces-1024'" in capsys.readouterr().err and not out.exists()
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    rc = main(["restore", str(env / "photo.png"), "--task", "sr4", "--simulate", "--model", "tiny-32", "--out", str(out)])
    assert rc == 2 and "--overwrite" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert main(["restore", str(env / "photo.png"), "--task", "sr4", "--simulate", "--model", "tiny-32", "--samples",
                 "2", "--nfe", "3", "--out", str(out), "--overwrite"]) == 0
    assert (out / "keep.txt").read_text() == "mine" and (out / "mean.png").exists()


@pytest.mark.parametrize("method", ["palette", "zero-shot-pivot", "ddnm", "pigdm", "dps"])
def test_every_method_restores_through_the_same_command(env, tmp_path, method):
    rc, out = run(env, tmp_path, env / "photo.png", "--task", "inpaint-random", "--simulate", "--method", method)
    assert rc == 0
    info = json.loads((out / "restore.json").read_text())
    assert info["method"] == method and info["model_kind"] == ("palette" if method == "palette" else "prior")
    assert 1 <= info["nfe_sample"] <= 4 and np.isfinite(info["scores"]["crps"])


def test_restore_measurement_passes_baseline_settings_and_refuses_them_for_trained_methods(env):
    import torch

    from exactpost.inference.api import restore_measurement
    from exactpost.core.tasks import make_operator, simulate

    prior = zoo.find_model("tiny-32", "prior")
    net = zoo.load(prior)
    op = make_operator("sr4", 1, (3, 32, 32), generator=0)
    y = simulate(op, torch.zeros(1, 3, 32, 32), 0.05, generator=0)

    def ddnm(**settings):
        return restore_measurement("ddnm", net, prior.card, op, y, 0.05, "sr4", n_samples=1, nfe=4,
                                   generator=torch.Generator().manual_seed(0), **settings)

    default, same, other = ddnm(), ddnm(settings={"eta": 0.85}), ddnm(settings={"eta": 0.1})
    assert torch.equal(default.samples, same.samples)  # 0.85 is DDNM's reference eta
    assert not torch.equal(default.samples, other.samples) and other.settings["tuned"] == {"eta": 0.1}
    eps = zoo.find_model("tiny-32", "eps")
    with pytest.raises(ValueError, match="no baseline settings"):
        restore_measurement("eps", zoo.load(eps), eps.card, op, y, 0.05, "sr4", settings={"eta": 0.1})


@pytest.mark.parametrize("method, spec, want, nfe", [  # --nfe 4
    ("eps", None, "dpmpp2m:loglinear:smin=0.03", 4),  # the measured default: mean + 3 levels
    ("eps", "legacy", "heun:karras:rho=7:smin=0.002", 4),  # mean + Heun with 2 levels (3 NFE)
    ("eps", "euler:loglinear:smin=0.05", "euler:loglinear:smin=0.05", 4),
    ("palette", None, "heun:karras:rho=7:smin=0.002", 3),  # Palette keeps EDM Heun: 2 levels, one NFE unused
    ("palette", "dpmpp2m", "dpmpp2m:karras:rho=7:smin=0.002", 4),
])
def test_sampler_option_picks_the_sampler_and_records_it(env, tmp_path, method, spec, want, nfe):
    extra = ["--sampler", spec] if spec else []
    rc, out = run(env, tmp_path, env / "photo.png", "--task", "sr4", "--simulate", "--method", method, *extra)
    assert rc == 0
    info = json.loads((out / "restore.json").read_text())
    assert info["sampler"]["sampler"] == want and info["nfe_sample"] == nfe
