"""Growing and fine-tuning a diffusers UNet2DModel into an EPS / Palette network.

* widened conv_in (zero-initialised conditioning channels) and the added task embedding
  leave the output unchanged at step 0, whatever the conditioning values; the new weights
  get a non-zero gradient;
* a few EPS steps from the CLI (``exactpost finetune --init-from <diffusers folder>``) write a
  flat diffusers folder that plain ``UNet2DModel.from_pretrained`` reloads, with exactpost's
  card (command, data, steps, sha256 of the weights); ``exactpost restore --model <folder>
  --simulate`` then runs end to end and writes its outputs; Palette the same way;
* the loss is the model's own parameterisation: zero for a perfect network.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

from backbone_helpers import SCHEDULER, save_flat, tiny_unet  # noqa: E402
from exactpost.backbones import add_task_embedding, load_backbone, widen_conv_in  # noqa: E402
from exactpost.backbones.diffusers_unet import DiffusersUNetDenoiser, file_sha256  # noqa: E402
from exactpost.backbones.finetune import grow_for, loss_on_batch  # noqa: E402
from exactpost.app.cli import main  # noqa: E402
from exactpost.core.conditioning import channels  # noqa: E402
from exactpost.core.tasks import task_names  # noqa: E402
from exactpost.training.objectives import Batch, Objective  # noqa: E402


def test_widened_conv_in_and_task_embedding_leave_outputs_unchanged_at_step_0():
    g = torch.Generator().manual_seed(0)
    unet = tiny_unet()
    x = torch.randn(3, 3, 8, 8, generator=g)
    t = torch.tensor([5.0, 250.5, 990.0])
    with torch.no_grad():
        before = unet(x, t).sample
    widen_conv_in(unet, 7)
    add_task_embedding(unet, 5)
    assert unet.config.in_channels == 10 and unet.config.num_class_embeds == 5
    cond = 10 * torch.randn(3, 7, 8, 8, generator=g)
    with torch.no_grad():
        after = unet(torch.cat([x, cond], 1), t, class_labels=torch.tensor([0, 3, 4])).sample
    torch.testing.assert_close(after, before, rtol=0, atol=1e-5)
    unet(torch.cat([x, cond], 1), t, class_labels=torch.tensor([0, 3, 4])).sample.square().sum().backward()
    assert float(unet.conv_in.weight.grad[:, 3:].abs().sum()) > 0
    assert float(unet.class_embedding.weight.grad.abs().sum()) > 0


def test_grown_wrapper_matches_the_prior_at_step_0():
    prior = DiffusersUNetDenoiser(tiny_unet(), load_schedule())
    objective = Objective("eps", tasks=["sr4", "inpaint-box"])
    grown = grow_for(DiffusersUNetDenoiser(tiny_unet(), load_schedule()), {}, objective)
    assert grown.config.cond_channels == channels("pivot+aty+mask+xreg") == 7
    assert grown.config.num_tasks == len(task_names())
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(grown(x, 2.0, cond=torch.ones(2, 7, 8, 8), task_id=torch.tensor([2, 1])),
                                   prior(x, 2.0), rtol=0, atol=1e-5)


def load_schedule():
    from exactpost.backbones.diffusers_unet import schedule_from_config

    return schedule_from_config(SCHEDULER)


def test_the_loss_is_zero_for_a_perfect_network():
    model = DiffusersUNetDenoiser(tiny_unet().double(), load_schedule(), "v_prediction")
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(4, 3, 8, 8, generator=g, dtype=torch.float64)
    sigma = torch.tensor([0.02, 0.5, 3.0, 70.0], dtype=torch.float64)
    inp = x0 + sigma.reshape(-1, 1, 1, 1) * torch.randn(x0.shape, generator=g, dtype=torch.float64)
    target = model.target(x0, inp, sigma)
    model.unet.forward = lambda sample, timestep, class_labels=None, return_dict=True: (target,)
    batch = Batch(x0, sigma, inp, None, None, None)
    assert float(loss_on_batch(model, batch)) < 1e-24
    model.unet.forward = lambda sample, timestep, class_labels=None, return_dict=True: (target + 0.1,)
    assert abs(float(loss_on_batch(model, batch)) - 0.01) < 1e-12


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("ft")
    rng = np.random.default_rng(0)
    np.savez(root / "data.npz", images=rng.integers(0, 256, (12, 16, 16, 3), dtype=np.uint8))
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / "photo.png")
    save_flat(root / "prior", tiny_unet(size=16))  # restore scores SSIM: >= 11x11
    return root


def finetune(env, objective: str, run: str) -> int:
    return main(["finetune", "--init-from", str(env / "prior"), "--objective", objective, "--data",
                 str(env / "data.npz"), "--run-dir", str(env / run), "--steps", "3", "--batch-size", "4",
                 "--warmup-steps", "1", "--lr", "1e-3", "--log-every", "1", "--no-progress"])


@pytest.mark.parametrize("objective,method", [("eps", "eps"), ("palette", "palette")])
def test_finetune_then_restore_from_the_cli(env, capsys, objective, method):
    from diffusers import UNet2DModel

    assert finetune(env, objective, f"run-{objective}") == 0
    folder = env / f"run-{objective}" / "model"
    assert "diffusers folder" in capsys.readouterr().out
    card = json.loads((folder / "exactpost.json").read_text())
    assert card["sha256"] == file_sha256(folder / "diffusion_pytorch_model.safetensors")
    assert card["steps"] == 3 and card["command"].startswith("exactpost finetune --init-from")
    assert card["data"]["path"].endswith("data.npz") and card["data"]["images"] == 12
    assert card["objective"]["kind"] == objective and card["objective"]["task_ids"]["sr4"] == task_names().index("sr4")
    assert card["init_sha256"] == file_sha256(env / "prior" / "diffusion_pytorch_model.safetensors")
    plain = UNet2DModel.from_pretrained(str(folder), local_files_only=True, use_safetensors=True)
    assert plain.config.in_channels == 3 + 7 and plain.config.num_class_embeds == len(task_names())
    model, _ = load_backbone(folder)
    assert model.config.cond_channels == 7
    # trained: the weights moved away from the prior's (the new inputs included)
    assert float(plain.conv_in.weight.detach()[:, 3:].abs().sum()) > 0
    lines = (env / f"run-{objective}" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3 and all(np.isfinite(json.loads(line)["loss"]) for line in lines)

    out = env / f"restore-{objective}"
    rc = main(["restore", str(env / "photo.png"), "--task", "sr4", "--simulate", "--model", str(folder), "--method",
               method, "--samples", "2", "--nfe", "4", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    for name in ("mean.png", "std.png", "sample_0.png", "sample_1.png", "truth.png", "restore.json"):
        assert (out / name).is_file(), name
    info = json.loads((out / "restore.json").read_text())
    assert info["model_sha256"] == card["sha256"] and info["method"] == method


def test_a_baseline_restores_with_a_pretrained_diffusers_prior(env, capsys):
    out = env / "restore-ddnm"
    rc = main(["restore", str(env / "photo.png"), "--task", "inpaint-random", "--simulate", "--model",
               str(env / "prior"), "--method", "ddnm", "--samples", "2", "--nfe", "4", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    assert (out / "mean.png").is_file()


def test_finetune_errors_are_one_line(env, capsys, tmp_path):
    bad = save_flat(tmp_path / "flow", tiny_unet(), {"_class_name": "FlowMatchEulerDiscreteScheduler"})
    rc = main(["finetune", "--init-from", str(bad), "--data", str(env / "data.npz"), "--run-dir",
               str(tmp_path / "r"), "--steps", "1", "--batch-size", "4", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "not a DDPM-style" in err and len(err.strip().splitlines()) == 1
    cls = save_flat(tmp_path / "cls", tiny_unet(num_class_embeds=3))
    rc = main(["finetune", "--init-from", str(cls), "--data", str(env / "data.npz"), "--run-dir",
               str(tmp_path / "r2"), "--steps", "1", "--batch-size", "4", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "class" in err and len(err.strip().splitlines()) == 1


def test_bench_images_takes_a_family_folder_of_diffusers_models(env, capsys, tmp_path):
    import shutil

    fam = tmp_path / "fam"
    shutil.copytree(env / "prior", fam / "prior")
    assert finetune(env, "eps", "run-bench") == 0
    shutil.copytree(env / "run-bench" / "model", fam / "eps")
    rc = main(["bench", "images", "--model", str(fam), "--data", str(env / "data.npz"), "--test-key", "images",
               "--images", "2", "--samples", "2", "--tasks", "sr4", "--methods", "eps,ddnm", "--nfe", "4",
               "--tuned", "none", "--out", str(tmp_path / "out"), "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    table = (tmp_path / "out.md").read_text()
    assert "eps" in table and "ddnm" in table


def test_finetune_help_explains_the_diffusers_path(capsys):
    assert main(["finetune", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    start = text.rindex("--init-from INIT_FROM")  # the option's entry, not the usage line
    init_help = text[start:text.index("--batch-size", start)]
    assert "diffusers UNet2DModel folder" in init_help
    for needle in ("conv_in is widened", "zero-initialised class embedding used as the task embedding",
                   "sigma_y has no embedding", "UNet2DModel.from_pretrained", "--scheduler", "resume"):
        assert needle in text, needle
