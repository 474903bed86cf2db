"""Constant inputs folded into a diffusers UNet2DModel once (exactpost.backbones.constant_inputs).

* the folded network (conv_in's conditioning part and the task embedding precomputed) returns
  what the concatenated input returns (float64: to rounding; centred inputs too), per-sample
  task ids included;
* the cache is rebuilt when the conditioning is changed in place, is another tensor, the task
  changes or the folded weights change (an EMA update, an optimiser step); it is never used
  with gradients enabled or in training mode, and a deep copy starts empty.
"""

from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("diffusers")

from backbone_helpers import SCHEDULER, tiny_unet  # noqa: E402
from exactpost.backbones import DiffusersUNetDenoiser, add_task_embedding, widen_conv_in  # noqa: E402
from exactpost.backbones.constant_inputs import specialise  # noqa: E402
from exactpost.backbones.diffusers_unet import schedule_from_config  # noqa: E402


def grown(center: bool = False, seed: int = 0) -> DiffusersUNetDenoiser:
    unet = tiny_unet(center_input_sample=center, seed=seed).double()
    widen_conv_in(unet, 4)
    add_task_embedding(unet, 5)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # the new inputs matter (as after fine-tuning)
        unet.conv_in.weight[:, 3:] = 0.3 * torch.randn(unet.conv_in.weight[:, 3:].shape, generator=g, dtype=torch.float64)
        unet.class_embedding.weight.normal_(0, 0.5, generator=g)
    return DiffusersUNetDenoiser(unet, schedule_from_config(SCHEDULER), num_tasks=5, image_channels=3).eval()


def both(model, x, sigma, cond, tid):
    with torch.no_grad():
        model.fold_constant_inputs = False
        slow = model(x, sigma, cond=cond, task_id=tid)
        model.fold_constant_inputs = True
        fast = model(x, sigma, cond=cond, task_id=tid)
    return slow, fast


@pytest.mark.parametrize("center", [False, True])
def test_folded_network_equals_the_concatenated_input(center):
    model = grown(center)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 3, 8, 8, generator=g, dtype=torch.float64)
    cond = torch.randn(3, 4, 8, 8, generator=g, dtype=torch.float64)
    for sigma, tid in ((0.3, torch.tensor(2)), (torch.tensor([0.1, 5.0, 60.0], dtype=torch.float64),
                                                torch.tensor([0, 4, 1]))):
        slow, fast = both(model, x, sigma, cond, tid)
        torch.testing.assert_close(fast, slow, rtol=0, atol=1e-12)
        assert float((slow - x).abs().max()) > 1e-3  # the network does something
    assert model._constant_inputs._net is not None  # the folded path was taken
    # specialise alone: the same output as the plain call, with no class labels and 3 channels in
    t = torch.tensor([10.0, 300.0, 900.0])
    with torch.no_grad():
        ref = model.unet(torch.cat([x, cond], 1), t, class_labels=torch.tensor([1, 1, 3])).sample
        out = specialise(model.unet, 3, cond, torch.tensor([1, 1, 3]))(x, t).sample
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)


def test_the_cache_follows_inputs_and_weights():
    model = grown()
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 3, 8, 8, generator=g, dtype=torch.float64)
    cond = torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64)
    tid = torch.tensor(1)

    def check():
        slow, fast = both(model, x, 2.0, cond, tid)
        torch.testing.assert_close(fast, slow, rtol=0, atol=1e-12)
        return model._constant_inputs._net

    first = check()
    assert check() is first  # reused while nothing changed
    cond.mul_(-2.0)  # in place: same object, new version
    assert check() is not first
    cond = cond.clone()  # another tensor with the same values
    second = check()
    tid = torch.tensor(3)
    assert check() is not second
    third = check()
    with torch.no_grad():  # as an EMA update or an optimiser step does
        model.unet.conv_in.weight.mul_(0.5)
    assert check() is not third
    fourth = check()
    with torch.no_grad():
        model.unet.class_embedding.weight.add_(1.0)
    assert check() is not fourth
    fifth = check()
    # a block swapped for one that feeds the raw input to a skip connection: no folding
    # (can_specialise is read only when the cache key, which holds the blocks' ids, changes)
    block = model.unet.down_blocks[0]
    swapped = copy.deepcopy(block)
    swapped.skip_conv = torch.nn.Identity()
    model.unet.down_blocks[0] = swapped
    with torch.no_grad():
        assert model._constant_inputs.get(model.unet, 3, x, cond, model._labels(tid, 2, x.device)) is None
    model.unet.down_blocks[0] = block
    assert check() is fifth  # the original blocks again: the fold cached for them is valid
    # a deep copy (e.g. the EMA's) starts empty; training mode and gradients use the plain path
    assert copy.deepcopy(model)._constant_inputs._net is None
    model._constant_inputs.clear()
    model.train()
    with torch.no_grad():
        model(x, 2.0, cond=cond, task_id=tid)
    model.eval()
    model(x, 2.0, cond=cond, task_id=tid)
    assert model._constant_inputs._net is None
