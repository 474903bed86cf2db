"""The parts of the diffusers adapter that need no diffusers: the discrete VP schedule and
its sigma <-> timestep maps (dense float64 closed forms), the scheduler-config checks, the
folder-layout errors, and that exactpost's core imports and runs with diffusers absent."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap

import pytest
import torch

from exactpost.backbones.layout import BackboneError, is_diffusers_folder, resolve_folder
from exactpost.backbones.vp_schedule import VPSchedule, check_scheduler_config


def linear_abar(T: int = 1000, b0: float = 1e-4, b1: float = 0.02) -> torch.Tensor:
    return torch.cumprod(1 - torch.linspace(b0, b1, T, dtype=torch.float64), 0)


def test_sigma_table_and_integer_timesteps_are_exact():
    abar = linear_abar()
    sch = VPSchedule(abar)
    want = ((1 - abar) / abar).sqrt()
    torch.testing.assert_close(sch.sigmas, want, rtol=1e-15, atol=0)
    k = torch.tensor([0, 1, 17, 500, 998, 999])
    torch.testing.assert_close(sch.timestep(want[k]), k.to(torch.float64), rtol=0, atol=1e-9)


def test_timestep_is_log_sigma_linear_between_neighbours_and_clamped():
    sch = VPSchedule(linear_abar())
    lo, hi = sch.sigmas[10], sch.sigmas[11]
    for w in (0.0, 0.25, 0.5, 0.9):
        s = torch.exp((1 - w) * lo.log() + w * hi.log())
        assert abs(float(sch.timestep(s)) - (10 + w)) < 1e-9
    torch.testing.assert_close(sch.sigma_of_timestep(torch.tensor(10.25, dtype=torch.float64)),
                               torch.exp(0.75 * lo.log() + 0.25 * hi.log()), rtol=1e-13, atol=0)
    assert float(sch.timestep(torch.tensor(1e-4))) == 0.0  # below sigma_0 ~ 0.01
    assert float(sch.timestep(torch.tensor(1e4))) == 999.0  # above sigma_999 ~ 157
    s = torch.logspace(-1.9, 2.1, 101, dtype=torch.float64)
    torch.testing.assert_close(sch.sigma_of_timestep(sch.timestep(s)), s, rtol=1e-12, atol=0)
    assert bool((sch.timestep(s)[1:] > sch.timestep(s)[:-1]).all())


def test_the_one_sigma_timestep_equals_the_tensor_map():
    sch = VPSchedule(linear_abar())
    s = torch.cat([torch.logspace(-4, 4, 997, dtype=torch.float64), sch.sigmas[[0, 1, 500, 998, 999]]])
    want = sch.timestep(s)
    got = torch.tensor([sch.timestep_float(float(v)) for v in s], dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)
    assert sch.timestep_float(1e-4) == 0.0 and sch.timestep_float(1e4) == 999.0


def test_zero_terminal_snr_stays_finite_and_bad_tables_are_refused():
    abar = linear_abar()
    abar[-1] = 0.0
    assert math.isfinite(VPSchedule(abar).sigma_max)
    with pytest.raises(BackboneError, match="strictly decreasing"):
        VPSchedule(torch.tensor([0.9, 0.9, 0.5], dtype=torch.float64))
    with pytest.raises(BackboneError, match=r"\(0, 1\]"):
        VPSchedule(torch.tensor([1.5, 0.5]))


@pytest.mark.parametrize("config,needle", [
    ({"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000}, "not a DDPM-style"),
    ({"_class_name": "ScoreSdeVeScheduler"}, "not a DDPM-style"),
    ({"_class_name": "EDMEulerScheduler"}, "not a DDPM-style"),
    ({"_class_name": "EulerDiscreteScheduler", "beta_schedule": "linear", "timestep_type": "continuous"}, "continuous"),
    ({"_class_name": "DDPMScheduler", "beta_schedule": "linear", "prediction_type": "flow_prediction"}, "prediction_type"),
    ({"_class_name": "DDPMScheduler", "beta_schedule": None, "trained_betas": None}, "beta_schedule"),
])
def test_non_ddpm_schedulers_get_a_one_line_error(config, needle):
    with pytest.raises(BackboneError, match=needle) as info:
        check_scheduler_config(config)
    assert "\n" not in str(info.value)


def test_prediction_types_pass():
    for pred in ("epsilon", "v_prediction", "sample"):
        cfg = {"_class_name": "DDIMScheduler", "beta_schedule": "linear", "prediction_type": pred}
        assert check_scheduler_config(cfg) == pred


def _fake_folder(root, weights=("diffusion_pytorch_model.safetensors",), scheduler=True, pipeline=False):
    unet_dir = root / "unet" if pipeline else root
    unet_dir.mkdir(parents=True)
    (unet_dir / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel"}))
    for w in weights:
        (unet_dir / w).write_bytes(b"x")
    if scheduler:
        where = root / "scheduler" if pipeline else root
        where.mkdir(exist_ok=True)
        (where / "scheduler_config.json").write_text("{}")
    return root


def test_layouts_are_found(tmp_path):
    flat = resolve_folder(_fake_folder(tmp_path / "flat"))
    assert flat.layout == "flat" and flat.unet_dir == tmp_path / "flat" and flat.card is None
    pipe = resolve_folder(_fake_folder(tmp_path / "pipe", pipeline=True))
    assert pipe.layout == "pipeline" and pipe.unet_dir == tmp_path / "pipe" / "unet"
    assert pipe.scheduler_config == tmp_path / "pipe" / "scheduler" / "scheduler_config.json"
    assert is_diffusers_folder(tmp_path / "flat") and is_diffusers_folder(tmp_path / "pipe")
    assert not is_diffusers_folder(tmp_path / "nothing") and not is_diffusers_folder(tmp_path)


def test_layout_errors_are_one_line_and_say_what_to_do(tmp_path):
    cases = [
        ("google/ddpm-cifar10-32", "never downloads"),
        (str(tmp_path / "missing"), "does not exist"),
        (str(_fake_folder(tmp_path / "bin", weights=("diffusion_pytorch_model.bin",))), "save_pretrained"),
        (str(_fake_folder(tmp_path / "nosched", scheduler=False)), "scheduler config"),
        (str(_fake_folder(tmp_path / "noweights", weights=())), "no diffusion_pytorch_model.safetensors"),
        (str(tmp_path), "not a diffusers UNet2DModel folder"),
    ]
    for path, needle in cases:
        with pytest.raises(BackboneError, match=needle) as info:
            resolve_folder(path)
        assert "\n" not in str(info.value), path
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL"}))
    with pytest.raises(BackboneError, match="AutoencoderKL"):
        resolve_folder(tmp_path / "vae")


BLOCKER = textwrap.dedent("""
    import sys
    ATTEMPTS = []
    class Refuse:
        def find_spec(self, name, path=None, target=None):
            if name == "diffusers" or name.startswith("diffusers."):
                ATTEMPTS.append(name)
                raise ModuleNotFoundError("No module named 'diffusers' (blocked by the test)")
            return None
    sys.meta_path.insert(0, Refuse())
""")


def test_core_imports_without_diffusers_and_loading_says_how_to_install(tmp_path):
    """With diffusers blocked, every core module imports without even trying to import it,
    and loading a diffusers folder fails with one line saying how to install the extra."""
    _fake_folder(tmp_path / "m")
    (tmp_path / "m" / "scheduler_config.json").write_text(json.dumps({"_class_name": "DDPMScheduler",
                                                                      "beta_schedule": "linear"}))
    code = BLOCKER + textwrap.dedent(f"""
        import importlib
        for m in ["exactpost", "exactpost.app.cli", "exactpost.core.posterior", "exactpost.core.samplers", "exactpost.inference.restoration",
                  "exactpost.app.restore", "exactpost.inference.zoo", "exactpost.training.loop", "exactpost.baselines",
                  "exactpost.bench.images_bench", "exactpost.app.demo", "exactpost.backbones",
                  "exactpost.backbones.finetune"]:
            importlib.import_module(m)
        assert "diffusers" not in sys.modules and not ATTEMPTS, ATTEMPTS  # not even tried
        from exactpost.backbones import load_backbone, BackboneError
        for path in [{str(tmp_path)!r}, {str(tmp_path / "m")!r}]:
            try:
                load_backbone(path)
            except BackboneError as exc:
                print("ERR", exc)
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("ERR") for line in lines), res.stdout
    assert "not a diffusers UNet2DModel folder" in lines[0]  # checked before any import
    assert "pip install 'exactpost[diffusers]'" in lines[1]
