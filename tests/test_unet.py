"""The U-Net backbone: shapes, conditioning inputs, zero-initialised paths, gradients,
growing a trained network without changing its outputs, config round trips."""

from __future__ import annotations

import json

import pytest
import torch

from exactpost.nets import (
    PRESETS,
    UNet,
    UNetConfig,
    add_condition_channels,
    count_parameters,
    expand_unet,
    preset,
)

from nets_helpers import TINY, gen, perturb  # noqa: E402


@pytest.mark.parametrize("size,mults,attn", [(32, (1, 2, 2), (8,)), (64, (1, 2, 2, 2), (16, 8))])
def test_output_shape_and_fresh_output_is_zero(size, mults, attn):
    cfg = TINY.replace(image_size=size, channel_mults=mults, attn_resolutions=attn)
    net = UNet(cfg, generator=gen())
    x = torch.randn(2, 3, size, size, generator=gen(1))
    out = net(x, torch.tensor([0.1, -0.3]))
    assert out.shape == (2, 3, size, size)
    # conv_out is zero-initialised: a fresh network outputs exactly 0 (EDM then starts at c_skip x)
    assert torch.equal(out, torch.zeros_like(out))
    out = perturb(net)(x, torch.tensor([0.1, -0.3]))
    assert out.shape == (2, 3, size, size) and out.abs().max() > 0 and torch.isfinite(out).all()


def test_cond_channels_out_channels_and_input_check():
    cfg = TINY.replace(cond_channels=4, out_channels=2)
    net = perturb(UNet(cfg, generator=gen()))
    x = torch.randn(3, 7, 32, 32, generator=gen(2))
    out = net(x, 0.5)  # a float c_noise broadcasts to the batch
    assert out.shape == (3, 2, 32, 32)
    x2 = x.clone()
    x2[:, 3:] += 1.0  # the conditioning channels are used
    assert not torch.allclose(net(x2, 0.5), out)
    with pytest.raises(ValueError, match="cond_channels"):
        net(x[:, :3], 0.5)
    with pytest.raises(ValueError, match="c_noise"):
        net(x, torch.zeros(2))


def test_same_generator_same_weights_and_no_global_rng_use():
    before = torch.get_rng_state()
    a, b = UNet(TINY, generator=gen(5)), UNet(TINY, generator=gen(5))
    assert torch.equal(torch.get_rng_state(), before)  # construction with a generator leaves global RNG alone
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    c = UNet(TINY, generator=gen(6))
    assert not torch.equal(a.conv_in.weight, c.conv_in.weight)


def test_task_and_sigma_y_embeddings_change_output():
    cfg = TINY.replace(num_tasks=5, sigma_y_embedding=True)
    net = UNet(cfg, generator=gen())
    x = torch.randn(2, 3, 32, 32, generator=gen(3))
    c = torch.zeros(2)
    perturb(net.conv_out)  # backbone output non-zero, but task/sigma_y paths still zero
    base = net(x, c, task_id=0, sigma_y=0.05)
    # zero-initialised task table and sigma_y projection: no effect yet
    assert torch.equal(net(x, c, task_id=3, sigma_y=0.05), base)
    assert torch.equal(net(x, c, task_id=0, sigma_y=0.5), base)
    perturb(net)
    base = net(x, c, task_id=0, sigma_y=0.05)
    assert (net(x, c, task_id=3, sigma_y=0.05) - base).abs().max() > 1e-4
    assert (net(x, c, task_id=0, sigma_y=0.5) - base).abs().max() > 1e-4
    per_sample = net(x, c, task_id=torch.tensor([0, 3]), sigma_y=torch.tensor([0.05, 0.5]))
    assert torch.allclose(per_sample[1], net(x, c, task_id=3, sigma_y=0.5)[1], atol=1e-6)
    with pytest.raises(ValueError, match="task_id"):
        net(x, c, sigma_y=0.05)
    with pytest.raises(ValueError, match="task_id must lie"):
        net(x, c, task_id=5, sigma_y=0.05)
    with pytest.raises(ValueError, match="sigma_y"):
        net(x, c, task_id=0)
    with pytest.raises(ValueError, match="sigma_y must be finite"):
        net(x, c, task_id=0, sigma_y=-0.1)
    plain = UNet(TINY, generator=gen())
    with pytest.raises(ValueError, match="no task embedding"):
        plain(x, c, task_id=0)
    with pytest.raises(ValueError, match="no sigma_y embedding"):
        plain(x, c, sigma_y=0.1)


def test_noise_level_changes_output_fourier_and_positional():
    for kind in ("positional", "fourier"):
        net = perturb(UNet(TINY.replace(embedding_type=kind), generator=gen()))
        x = torch.randn(2, 3, 32, 32, generator=gen(4))
        assert (net(x, -1.0) - net(x, 1.0)).abs().max() > 1e-4


def test_gradients_reach_every_parameter():
    cfg = TINY.replace(cond_channels=2, num_tasks=3, sigma_y_embedding=True, embedding_type="fourier")
    net = UNet(cfg, generator=gen())
    x = torch.randn(3, 5, 32, 32, generator=gen(6), requires_grad=True)
    target = torch.randn(3, 3, 32, 32, generator=gen(7))
    # fresh: the zero conv_out blocks the signal, so only conv_out itself gets a gradient
    (net(x, torch.zeros(3), task_id=torch.arange(3), sigma_y=0.1) * target).sum().backward()
    assert net.conv_out.weight.grad.abs().max() > 0
    assert net.conv_in.weight.grad.abs().max() == 0
    net.zero_grad(set_to_none=True)
    perturb(net)
    x.grad = None
    (net(x, torch.zeros(3), task_id=torch.arange(3), sigma_y=0.1) * target).sum().backward()
    dead = [n for n, p in net.named_parameters() if p.grad is None or p.grad.abs().max() == 0]
    assert dead == []
    assert x.grad.abs().max() > 0


def test_add_condition_channels_preserves_output_exactly():
    old = perturb(UNet(TINY, generator=gen()))
    new = add_condition_channels(old, 3)
    assert new is not old and old.config.cond_channels == 0 and new.config.cond_channels == 3
    assert new.cond_in is not None and torch.equal(new.cond_in.weight, torch.zeros_like(new.cond_in.weight))
    x = torch.randn(4, 3, 32, 32, generator=gen(7))
    cond = 10 * torch.randn(4, 3, 32, 32, generator=gen(8))
    c = torch.tensor([-1.0, 0.0, 0.5, 1.2])
    ref = old(x, c)
    assert ref.abs().max() > 0
    assert torch.equal(new(torch.cat([x, cond], 1), c), ref)
    # the new channels are live parameters: once they move, the output depends on cond
    perturb(new.cond_in)
    assert not torch.allclose(new(torch.cat([x, cond], 1), c), ref)

    # growing a network that already has conditioning channels (CPU conv sums zeros exactly)
    new2 = add_condition_channels(new, 2)
    extra = torch.randn(4, 2, 32, 32, generator=gen(9))
    assert torch.equal(new2(torch.cat([x, cond, extra], 1), c), new(torch.cat([x, cond], 1), c))
    with pytest.raises(ValueError, match="n >= 1"):
        add_condition_channels(old, 0)


def test_expand_unet_with_tasks_and_sigma_y_preserves_output():
    old = perturb(UNet(TINY.replace(num_tasks=2), generator=gen()))
    new = expand_unet(old, extra_cond_channels=1, num_tasks=5, sigma_y_embedding=True)
    x = torch.randn(2, 3, 32, 32, generator=gen(10))
    cond = torch.randn(2, 1, 32, 32, generator=gen(11))
    tid = torch.tensor([1, 0])
    assert torch.equal(new(torch.cat([x, cond], 1), 0.3, task_id=tid, sigma_y=0.2), old(x, 0.3, task_id=tid))
    assert torch.equal(new.map_task.weight[:2], old.map_task.weight)
    assert torch.equal(new.map_task.weight[2:], torch.zeros(3, new.map_task.weight.shape[1]))
    with pytest.raises(ValueError, match="only grow"):
        expand_unet(old, num_tasks=1)


def test_config_json_round_trip_and_validation():
    cfg = TINY.replace(cond_channels=3, num_tasks=5, sigma_y_embedding=True)
    d = json.loads(json.dumps(cfg.to_dict()))
    again = UNetConfig.from_dict(d)
    assert again == cfg
    a, b = UNet.from_config(d, generator=gen()), UNet(cfg, generator=gen())
    assert all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())
    with pytest.raises(ValueError, match="unknown UNetConfig keys"):
        UNetConfig.from_dict({**d, "widht": 3})
    with pytest.raises(ValueError, match="not divisible"):
        UNetConfig(image_size=36, channel_mults=(1, 2, 2, 2), attn_resolutions=())
    with pytest.raises(ValueError, match="attn_resolutions"):
        UNetConfig(image_size=32, channel_mults=(1, 2), attn_resolutions=(8,))
    assert UNetConfig(in_channels=1, attn_resolutions=()).out_channels == 1
    assert TINY.replace(in_channels=1).out_channels == 1


def test_presets_and_parameter_counts():
    assert set(PRESETS) >= {"tiny", "small", "base"}
    counts = {name: count_parameters(UNet(cfg, generator=gen())) for name, cfg in PRESETS.items() if name != "base"}
    assert 1_000_000 <= counts["tiny"] <= 2_000_000
    assert 5_000_000 <= counts["small"] <= 8_000_000
    cfg64 = preset("tiny", 64)
    assert cfg64.image_size == 64 and cfg64.attn_resolutions == tuple(2 * r for r in PRESETS["tiny"].attn_resolutions)
    # the parameter count does not depend on the image size
    assert count_parameters(UNet(cfg64, generator=gen())) == counts["tiny"]
    net = UNet(TINY, generator=gen())
    net.conv_in.weight.requires_grad_(False)
    assert count_parameters(net, trainable_only=True) == count_parameters(net) - net.conv_in.weight.numel()
