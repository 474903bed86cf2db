"""Grow a diffusers UNet2DModel's inputs for EPS / Palette without changing what it computes.

* :func:`widen_conv_in` adds ``extra`` input channels to ``conv_in`` whose weights are zero:
  conv_in'(concat(x, c)) = W x + 0 c + b = conv_in(x) for every c, so at step 0 the widened
  network's output equals the original's (tested), and the new weights learn from the first
  step (their gradient is not zero).
* :func:`add_task_embedding` gives an unconditional UNet2DModel a class embedding
  (``nn.Embedding(num_tasks, time_embed_dim)``, zero-initialised) used as the task embedding:
  diffusers adds it to the timestep embedding, so zero rows change nothing.

Both update the model's config (``in_channels``, ``num_class_embeds``), so the grown network
saves and reloads with plain ``UNet2DModel.from_pretrained``.
"""

from __future__ import annotations

import torch
from torch import nn

from .layout import BackboneError


def widen_conv_in(unet: nn.Module, extra: int) -> nn.Module:
    """``unet`` (modified in place and returned) with ``extra`` zero-initialised input channels
    appended after the existing ones."""
    if extra < 0:
        raise ValueError(f"extra channels must be >= 0, got {extra}")
    if extra == 0:
        return unet
    if any(hasattr(block, "skip_conv") for block in unet.down_blocks):
        raise BackboneError("this UNet2DModel feeds its raw input to skip blocks (score-SDE style); its inputs "
                            "cannot be widened for conditioning")
    old: nn.Conv2d = unet.conv_in
    new = nn.Conv2d(old.in_channels + extra, old.out_channels, kernel_size=old.kernel_size, stride=old.stride,
                    padding=old.padding, dilation=old.dilation, groups=old.groups, bias=old.bias is not None,
                    padding_mode=old.padding_mode, device=old.weight.device, dtype=old.weight.dtype)
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, : old.in_channels].copy_(old.weight)
        if old.bias is not None:
            new.bias.copy_(old.bias)
    unet.conv_in = new
    unet.register_to_config(in_channels=old.in_channels + extra)
    return unet


def add_task_embedding(unet: nn.Module, num_tasks: int) -> nn.Module:
    """``unet`` (modified in place and returned) with a zero-initialised class embedding of
    ``num_tasks`` rows; an unconditional UNet2DModel only (a class-conditional one already
    uses its class embedding for its classes)."""
    if num_tasks < 1:
        raise ValueError(f"num_tasks must be >= 1, got {num_tasks}")
    if getattr(unet, "class_embedding", None) is not None:
        raise BackboneError("this UNet2DModel is class-conditional; exactpost uses the class embedding for the task "
                            "and needs an unconditional model to fine-tune")
    dim = unet.time_embedding.linear_2.out_features
    p = next(unet.parameters())
    emb = nn.Embedding(num_tasks, dim, device=p.device, dtype=p.dtype)
    with torch.no_grad():
        emb.weight.zero_()
    unet.class_embedding = emb
    unet.register_to_config(num_class_embeds=num_tasks, class_embed_type=None)
    return unet
