"""`exactpost demo` and `exactpost models` end to end on a tiny random model folder."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from exactpost.inference import zoo
from exactpost.app.cli import main
from exactpost.io.images import LABEL_HEIGHT
from exactpost.core.tasks import task_names
from zoo_helpers import make_tiny_models


def test_demo_writes_one_panel_per_task_and_results(models_env, tmp_path, capsys):
    out = tmp_path / "demo"
    rc = main(["demo", "--model", "tiny-32", "--images", "3", "--samples", "2", "--nfe", "8", "--out", str(out),
               "--no-progress"])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert [r["task"] for r in res["tasks"]] == task_names()
    for r in res["tasks"]:
        assert r["nfe_mean"] == 1 and r["nfe_sample"] == 8  # the shared mean + 7 for the sampler
        for k in ("psnr_mean", "ssim_mean", "psnr_sample", "ssim_sample", "crps", "seconds_per_image"):
            assert np.isfinite(r[k])
        img = np.asarray(Image.open(out / r["image"]))
        # a 14 px label strip over 3 rows (images) x (truth, measurement, mean, 2 samples, std) columns
        # of 32 px images enlarged 4x (128 px), 2 px gaps
        assert img.shape == (LABEL_HEIGHT + 3 * 130 - 2, 6 * 130 - 2, 3)
        for col in range(6):  # every column has its label: dark text pixels in the strip above it
            assert (img[:LABEL_HEIGHT, col * 130: col * 130 + 128] < 100).any(), col
        assert (img[LABEL_HEIGHT:LABEL_HEIGHT + 128, 128:130] == 255).all()  # the white gap between columns
        block = img[LABEL_HEIGHT:LABEL_HEIGHT + 128, :128]  # truth of image 0: each pixel a 4x4 block
        assert (block == block[::4, ::4].repeat(4, 0).repeat(4, 1)).all()
    md = (out / "results.md").read_text()
    assert "| sr4 |" in md and "Total wall time" in md
    printed = capsys.readouterr().out
    assert "| inpaint-box |" in printed and str(out.resolve()) in printed


def test_demo_nfe_counts_the_shared_mean(models_env, tmp_path):
    """nfe = 20: the mean (1) + the default sampler (DPM-Solver++(2M), 19 levels, 19 NFE) -> 20
    per sample; the legacy EDM Heun never spends more than asked (2 N - 1)."""
    import torch

    from exactpost.app.demo import run_demo
    from exactpost.inference.restoration import eps_restore
    from exactpost.core.sampler_spec import DEFAULT
    from exactpost.core.tasks import make_operator, simulate

    res = run_demo("tiny-32", tasks=["sr4"], n_images=1, n_samples=2, nfe=20, out=tmp_path / "d", progress=False)
    assert res["tasks"][0]["nfe_sample"] == 20
    assert res["settings"]["sampler"]["sampler"] == DEFAULT.name and res["settings"]["sampler"]["levels"] == 19
    odd = run_demo("tiny-32", tasks=["sr4"], n_images=1, n_samples=2, nfe=7, out=tmp_path / "e", progress=False)
    assert odd["tasks"][0]["nfe_sample"] == 7
    eps = zoo.find_model("tiny-32", "eps")
    op = make_operator("sr4", 1, (3, 32, 32), generator=torch.Generator().manual_seed(0))
    y = simulate(op, torch.zeros(1, 3, 32, 32), 0.05, generator=torch.Generator().manual_seed(1))
    legacy = eps_restore(zoo.load(eps), eps.card, op, y, 0.05, "sr4", n_samples=1, nfe=7, sampler="legacy")
    assert legacy.nfe_sample == 6 and legacy.settings["heun_steps"] == 3  # never more than asked


def test_demo_sampler_option_is_used_and_written_down(models_env, tmp_path, capsys):
    rc = main(["demo", "--model", "tiny-32", "--tasks", "sr4", "--images", "1", "--samples", "2", "--nfe", "5",
               "--sampler", "legacy", "--out", str(tmp_path / "d"), "--no-progress"])
    assert rc == 0
    res = json.loads((tmp_path / "d" / "results.json").read_text())
    assert res["settings"]["sampler"]["sampler"] == "heun:karras:rho=7:smin=0.002"
    assert res["tasks"][0]["nfe_sample"] == 4  # the mean + Heun with 2 levels (3 NFE): never more than asked
    assert "sampler heun:karras:rho=7:smin=0.002 from the 1-NFE posterior mean" in (tmp_path / "d" / "results.md").read_text()


def test_demo_is_reproducible_and_tasks_are_independent(models_env, tmp_path):
    from exactpost.app.demo import run_demo

    a = run_demo("tiny-32", n_images=2, n_samples=2, nfe=3, seed=5, out=tmp_path / "a", progress=False)
    b = run_demo("tiny-32", tasks=["deblur-gauss"], n_images=2, n_samples=2, nfe=3, seed=5, out=tmp_path / "b",
                 progress=False)
    c = run_demo("tiny-32", tasks=["deblur-gauss"], n_images=2, n_samples=2, nfe=3, seed=6, out=tmp_path / "c",
                 progress=False)
    row_a = next(r for r in a["tasks"] if r["task"] == "deblur-gauss")
    assert row_a["crps"] == b["tasks"][0]["crps"] and row_a["psnr_sample"] == b["tasks"][0]["psnr_sample"]
    assert c["tasks"][0]["crps"] != b["tasks"][0]["crps"]


@pytest.mark.parametrize("argv, needle", [
    (["--model", "no-such-model"], "unknown model 'no-such-model'"),
    (["--model", "tiny-32", "--tasks", "inpaint-everything"], "unknown task"),
    (["--model", "tiny-32", "--samples", "1"], "--samples must be >= 2"),
    (["--model", "tiny-32", "--nfe", "1"], "--nfe must be >= 2"),
    (["--model", "tiny-32", "--images", "99"], "only 6 demo images"),
    (["--model", "tiny-32", "--sampler", "dpmpp2m:cosine"], "'cosine' is neither a schedule"),
    (["--model", "tiny-32", "--sampler", "heun:smin=-1"], "sampler spec"),
])
def test_demo_bad_options_exit_2_with_one_line_and_write_nothing(models_env, tmp_path, capsys, argv, needle):
    out = tmp_path / "never"
    rc = main(["demo", *argv, "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and needle in err and "\n" not in err and err.startswith("exactpost: error:")
    assert not out.exists()


def test_models_lists_every_checkpoint(models_env, capsys):
    assert main(["models"]) == 0
    text = capsys.readouterr().out
    for kind in ("prior", "eps", "palette"):
        assert f"tiny-32      {kind}" in text
    assert main(["models", "--json"]) == 0
    cards = json.loads(capsys.readouterr().out)
    assert {(c["name"], c["kind"]) for c in cards} == {("tiny-32", k) for k in zoo.KINDS}
    assert all(len(c["card"]["sha256"]) == 64 for c in cards)


def test_find_model_messages(models_env, tmp_path):
    with pytest.raises(zoo.ModelNotFound, match="bundled models: tiny-32"):
        zoo.find_model("faces-99")
    with pytest.raises(zoo.ModelNotFound, match="unknown model kind"):
        zoo.find_model("tiny-32", "gan")
    make_tiny_models(tmp_path, name="only-prior", kinds=("prior",))
    with pytest.raises(zoo.ModelNotFound, match="has no eps network"):
        zoo.find_model("only-prior", "eps", root=tmp_path)
    entry = zoo.find_model(str(models_env / "tiny-32" / "eps.safetensors"))  # a path works too
    assert entry.card["objective"]["kind"] == "eps"
    with pytest.raises(zoo.ModelNotFound, match="not found"):
        zoo.find_model(str(tmp_path / "missing" / "eps"))


def test_eps_restore_refuses_a_palette_card(models_env):
    import torch

    from exactpost.inference.restoration import eps_restore, palette_restore
    from exactpost.core.tasks import make_operator, simulate

    pal = zoo.find_model("tiny-32", "palette")
    x0 = torch.zeros(1, 3, 32, 32)
    op = make_operator("sr4", 1, (3, 32, 32), generator=torch.Generator().manual_seed(0))
    y = simulate(op, x0, 0.05, generator=torch.Generator().manual_seed(1))
    with pytest.raises(ValueError, match="needs an EPS network"):
        eps_restore(zoo.load(pal), pal.card, op, y, 0.05, "sr4")
    res = palette_restore(zoo.load(pal), pal.card, op, y, 0.05, "sr4", n_samples=3, nfe=5,
                          generator=torch.Generator().manual_seed(2))
    assert res.samples.shape == (3, 1, 3, 32, 32) and res.nfe_sample == 5 and torch.isfinite(res.std).all()
    with pytest.raises(ValueError, match="trained for tasks"):
        palette_restore(zoo.load(pal), pal.card, op, y, 0.05, "denoise")


def test_eps_warm_start_begins_at_the_mean_with_sigma_start_noise(models_env):
    import torch

    from exactpost.inference.restoration import eps_restore
    from exactpost.core.tasks import make_operator, simulate

    eps = zoo.find_model("tiny-32", "eps")
    net = zoo.load(eps)
    x0 = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3)) * 2 - 1
    op = make_operator("inpaint-random", 2, (3, 32, 32), generator=torch.Generator().manual_seed(0))
    y = simulate(op, x0, 0.05, generator=torch.Generator().manual_seed(1))

    def run(**kw):
        return eps_restore(net, eps.card, op, y, 0.05, "inpaint-random", n_samples=2, nfe=8,
                           generator=torch.Generator().manual_seed(5), **kw)

    cold, same = run(), run(sigma_start=80.0)
    assert torch.equal(cold.samples, same.samples)  # sigma_start = sigma_max is the default sampler
    warm = run(sigma_start=0.01)
    assert warm.settings["sigma_start"] == 0.01 and warm.nfe_sample == cold.nfe_sample == 8
    # from sigma 0.01 the EDM denoiser nearly returns its input: samples stay at the mean,
    # unlike the cold start's samples from sigma 80
    assert (warm.samples - warm.mean).abs().max() < 0.1 < (cold.samples - cold.mean).abs().max()
    with pytest.raises(ValueError, match="sigma_start"):
        run(sigma_start=100.0)


def test_labelled_grid_needs_no_matplotlib(tmp_path, monkeypatch):
    """The demo's enlarged, labelled PNGs need Pillow only (matplotlib is an optional extra)."""
    import sys

    import torch

    from exactpost.io.images import save_grid

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # any import of it now fails
    imgs = torch.linspace(-1, 1, 2 * 3 * 4 * 4).reshape(2, 3, 4, 4)
    path = save_grid(imgs, tmp_path / "g.png", ncol=2, scale=3, labels=["a", "b"])
    img = np.asarray(Image.open(path))
    assert img.shape == (LABEL_HEIGHT + 12, 2 * 12 + 1, 3)
    with pytest.raises(ValueError, match="labels"):
        save_grid(imgs, tmp_path / "h.png", ncol=2, labels=["only one"])
