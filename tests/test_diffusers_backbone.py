"""The diffusers UNet2DModel adapter with tiny random models saved to temporary folders:
loading (both layouts, offline, sockets refused), the epsilon / v / sample <-> x0
conversions (exact: a network returning the true noise denoises exactly, in float64), the
timestep interpolation against diffusers' own, learned variance, bad folders, and every
exactpost sampler and baseline running on the wrapped model unchanged."""

from __future__ import annotations

import json
import socket

import pytest
import torch

pytest.importorskip("diffusers")

from backbone_helpers import SCHEDULER, save_flat, save_pipeline, tiny_unet  # noqa: E402
from exactpost.core import samplers as S  # noqa: E402
from exactpost.backbones import BackboneError, DiffusersUNetDenoiser, VPSchedule, load_backbone  # noqa: E402
from exactpost.baselines import METHODS, run_method  # noqa: E402
from exactpost.core.interpolants import EDM, RectifiedFlow, VPCosine, VPLinear  # noqa: E402
from exactpost.nets import as_denoiser, as_eps_network  # noqa: E402
from exactpost.operators import Inpainting, random_mask  # noqa: E402
from exactpost.core.posterior import EPSPosteriorDenoiser, ZeroShotPivotDenoiser  # noqa: E402


def linear_schedule() -> VPSchedule:
    return VPSchedule(torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0))


@pytest.fixture(scope="module")
def flat_folder(tmp_path_factory):
    return save_flat(tmp_path_factory.mktemp("flat"), tiny_unet())


def test_both_layouts_load_offline_and_agree(flat_folder, tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network access attempted during a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    flat, card = load_backbone(flat_folder)
    pipe, _ = load_backbone(save_pipeline(tmp_path / "pipe", tiny_unet()))
    assert isinstance(flat, DiffusersUNetDenoiser) and not flat.training
    assert card["objective"] == {"kind": "prior"} and len(card["sha256"]) == 64 and card["layout"] == "flat"
    assert flat.config.image_size == 8 and flat.config.cond_channels == 0 and flat.config.num_tasks == 0
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([0.05, 1.0, 60.0])
    with torch.no_grad():
        a, b = flat(x, sigma), pipe(x, sigma)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert float(a.abs().mean()) > 1e-3  # a real output, not zeros


class PerfectNet:
    """Replaces the network's forward: checks the input scale and timestep the wrapper sends,
    returns what a perfect network of ``kind`` would (the stored x0 and noise)."""

    def __init__(self, schedule, x0, e, sigma, kind, image_channels=3):
        self.schedule, self.x0, self.e, self.sigma, self.kind, self.c = schedule, x0, e, sigma, kind, image_channels
        self.calls = 0

    def __call__(self, sample, timestep, class_labels=None, return_dict=True):
        a = (1 / (1 + self.sigma**2).sqrt()).reshape(-1, 1, 1, 1)
        torch.testing.assert_close(sample[:, : self.c], a * (self.x0 + self.sigma.reshape(-1, 1, 1, 1) * self.e),
                                   rtol=1e-12, atol=1e-12)
        want_t = self.schedule.timestep(self.sigma).to(torch.float32)
        torch.testing.assert_close(timestep, want_t, rtol=0, atol=0)
        self.calls += 1
        out = {"epsilon": self.e, "v_prediction": a * self.e - a * self.sigma.reshape(-1, 1, 1, 1) * self.x0,
               "sample": self.x0}[self.kind]
        return (out,)


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "sample"])
def test_a_perfect_network_denoises_exactly(kind):
    """float64 network, sigma inside the table, between integer timesteps and outside it on
    both sides (clamped timestep): x0_hat = x0 to rounding, and the training target is what
    the perfect network returns."""
    g = torch.Generator().manual_seed(1)
    sched = linear_schedule()
    sigma = torch.tensor([1e-3, 0.0123, 0.5, 3.7, 80.0, 400.0], dtype=torch.float64)
    x0 = torch.randn(6, 3, 8, 8, generator=g, dtype=torch.float64)
    e = torch.randn(6, 3, 8, 8, generator=g, dtype=torch.float64)
    model = DiffusersUNetDenoiser(tiny_unet().double(), sched, kind)
    fake = PerfectNet(sched, x0, e, sigma, kind)
    model.unet.forward = fake
    x = x0 + sigma.reshape(-1, 1, 1, 1) * e
    torch.testing.assert_close(model(x, sigma), x0, rtol=0, atol=1e-13 * float(sigma.max()))
    assert fake.calls == 1
    perfect = fake(x / (1 + sigma**2).sqrt().reshape(-1, 1, 1, 1), sched.timestep(sigma).float())[0]
    torch.testing.assert_close(model.target(x0, x, sigma), perfect, rtol=1e-12, atol=1e-12)


def test_timestep_interpolation_matches_diffusers_euler():
    """Our sigma -> timestep map is the one diffusers' EulerDiscreteScheduler uses."""
    from diffusers import EulerDiscreteScheduler

    euler = EulerDiscreteScheduler.from_config(SCHEDULER)
    sched = VPSchedule(euler.alphas_cumprod)
    log_sigmas = torch.log(((1 - euler.alphas_cumprod) / euler.alphas_cumprod) ** 0.5).numpy()
    sig = torch.logspace(-1.9, 2.15, 57, dtype=torch.float64)
    theirs = torch.as_tensor(euler._sigma_to_t(sig.numpy(), log_sigmas), dtype=torch.float64)
    torch.testing.assert_close(sched.timestep(sig), theirs, rtol=0, atol=1e-4)


def test_learned_variance_uses_the_mean_half(tmp_path):
    unet = tiny_unet(out_channels=6)
    folder = save_flat(tmp_path / "lv", unet, {**SCHEDULER, "variance_type": "learned_range"})
    model, _ = load_backbone(folder)
    assert model.config.learned_variance and model.config.image_channels == 3
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    sigma = torch.tensor([0.3, 7.0])
    with torch.no_grad():
        got = model(x, sigma)
        a = (1 / (1 + sigma**2).sqrt()).reshape(-1, 1, 1, 1)
        raw = unet(a * x, model.schedule.timestep(sigma).float()).sample
    torch.testing.assert_close(got, x - sigma.reshape(-1, 1, 1, 1) * raw[:, :3], rtol=1e-5, atol=1e-5)
    # 6 output channels without a learned-variance scheduler: detected from the shapes
    model2, _ = load_backbone(save_flat(tmp_path / "lv2", unet))
    assert model2.config.learned_variance


def test_bad_folders_get_one_line_errors(tmp_path):
    unet = tiny_unet()
    cases = {
        "flow": {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000},
        "sde": {"_class_name": "ScoreSdeVeScheduler"},
    }
    for name, cfg in cases.items():
        with pytest.raises(BackboneError, match="not a DDPM-style") as info:
            load_backbone(save_flat(tmp_path / name, unet, cfg))
        assert "\n" not in str(info.value)
    binonly = save_flat(tmp_path / "bin", unet)
    (binonly / "diffusion_pytorch_model.safetensors").rename(binonly / "diffusion_pytorch_model.bin")
    with pytest.raises(BackboneError, match="save_pretrained"):
        load_backbone(binonly)
    with pytest.raises(BackboneError, match="never downloads"):
        load_backbone("google/ddpm-cifar10-32")
    fourier = save_flat(tmp_path / "fourier", tiny_unet(time_embedding_type="fourier"))
    with pytest.raises(BackboneError, match="Fourier"):
        load_backbone(fourier)


def test_class_conditional_prior_needs_a_label(tmp_path):
    folder = save_flat(tmp_path / "cls", tiny_unet(num_class_embeds=4))
    with pytest.raises(BackboneError, match="class_label"):
        load_backbone(folder)
    model, _ = load_backbone(folder, class_label=2)
    with torch.no_grad():
        out = model(torch.zeros(1, 3, 8, 8), 1.0)
    assert out.shape == (1, 3, 8, 8) and bool(torch.isfinite(out).all())


@pytest.fixture(scope="module")
def wrapped(flat_folder):
    model, _ = load_backbone(flat_folder)
    return model


@pytest.mark.parametrize("sampler,interp", [
    (S.edm_heun, EDM()), (S.edm_euler, VPLinear()), (S.ddim, VPLinear()), (S.ddpm, VPCosine()),
    (S.flow_euler, RectifiedFlow()),
])
def test_every_sampler_runs_on_the_wrapped_model(wrapped, sampler, interp):
    den = as_denoiser(wrapped, interp)
    with torch.no_grad():
        out = sampler(den, (2, 3, 8, 8), interpolant=interp, steps=3, generator=torch.Generator().manual_seed(0))
    assert out.x0.shape == (2, 3, 8, 8) and bool(torch.isfinite(out.x0).all()) and out.nfe >= 3


def test_the_wrapped_denoiser_is_the_same_in_every_interpolant(wrapped):
    """x0_hat depends only on (x_t / a, sigma): the interpolant is a coordinate system."""
    x0ish = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    outs = []
    for interp in (EDM(), VPLinear(), VPCosine(), RectifiedFlow()):
        t = float(interp.t_of_sigma(2.5))
        with torch.no_grad():
            outs.append(as_denoiser(wrapped, interp)(float(interp.a(t)) * x0ish, t))
    for o in outs[1:]:
        torch.testing.assert_close(o, outs[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_baseline_runs_on_the_wrapped_model(wrapped, method):
    g = torch.Generator().manual_seed(0)
    op = Inpainting(random_mask((8, 8), 0.5, generator=g), channels=3)
    x = torch.rand(2, 3, 8, 8, generator=g) * 2 - 1
    y = op.A(x) + 0.05 * torch.randn(op.A(x).shape, generator=g)
    spec = METHODS[method]
    with torch.enable_grad() if spec.uses_backprop else torch.no_grad():
        res = run_method(method, as_denoiser(wrapped, EDM()), op, y, 0.05, interpolant=EDM(), nfe=6, generator=g)
    assert res.x0.shape == (2, 3, 8, 8) and bool(torch.isfinite(res.x0).all())


def test_zero_shot_pivot_and_eps_denoisers_take_the_wrapped_model(wrapped):
    g = torch.Generator().manual_seed(0)
    op = Inpainting(random_mask((8, 8), 0.5, generator=g), channels=3)
    y = op.A(torch.zeros(2, 3, 8, 8))
    zs = ZeroShotPivotDenoiser(as_denoiser(wrapped, VPLinear()), op, y, 0.05, VPLinear())
    eps = EPSPosteriorDenoiser(as_eps_network(wrapped), op, y, 0.05, EDM(), cond=None)
    with torch.no_grad():
        assert bool(torch.isfinite(zs(torch.randn(2, 3, 8, 8, generator=g), 0.5)).all())
        assert eps.posterior_mean(80.0, g).shape == (2, 3, 8, 8)
