"""The project's feature encoder for a Frechet distance: a small image classifier.

Inception FID needs weights we may not download, so the image benchmarks report an
*encoder Frechet distance* (named as such, never "FID"): the Frechet distance
(:func:`exactpost.core.metrics.frechet_distance`) between Gaussians fitted to the penultimate
features of a small CNN that this project trains on the same data set's labels (CIFAR-10
classes for ``cifar10-32``, CelebA identities for ``faces-32``) and ships beside the models
as ``models/<family>/encoder.safetensors`` + ``encoder.json``
(:func:`exactpost.inference.zoo.find_encoder` finds it; :mod:`exactpost.training.encoder`
trains it).

Architecture (``EncoderConfig``): three stages of two 3x3 convolutions (BatchNorm, SiLU)
with widths ``channels``, 2x average pooling between stages, global average pooling to the
feature vector f(x) in R^F (F = ``channels[-1]``), and a linear classifier head. Inputs are
images [N, 3, H, W] in [-1, 1]; ``features`` returns [N, F] (eval mode: BatchNorm uses its
running statistics, so an image's features do not depend on its batch).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..io.checkpoint import CheckpointError, load_checkpoint

KIND = "encoder"


@dataclass(frozen=True)
class EncoderConfig:
    """Architecture of :class:`Encoder`."""

    num_classes: int
    image_size: int = 32
    channels: tuple[int, ...] = (32, 64, 128)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "EncoderConfig":
        return EncoderConfig(num_classes=int(d["num_classes"]), image_size=int(d["image_size"]),
                             channels=tuple(int(c) for c in d["channels"]))


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.SiLU())


class Encoder(nn.Module):
    """Small CNN classifier; ``features(x)`` [N, F] is what the Frechet distance compares."""

    def __init__(self, config: EncoderConfig, name: str = "encoder"):
        super().__init__()
        self.config, self.name = config, name
        layers: list[nn.Module] = []
        c_prev = 3
        for i, c in enumerate(config.channels):
            if i:
                layers.append(nn.AvgPool2d(2))
            layers += [_block(c_prev, c), _block(c, c)]
            c_prev = c
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(c_prev, config.num_classes)

    @property
    def feature_dim(self) -> int:
        return self.config.channels[-1]

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features with gradients, [N, F]."""
        return self.body(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits [N, num_classes] for images [N, 3, H, W] in [-1, 1]."""
        return self.head(self.embed(x))

    @torch.no_grad()
    def features(self, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Features [N, F] (float32, no gradients, eval mode) of images [N, 3, H, W] in
        [-1, 1] (clamped, as saved images would be)."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"images must be [N, 3, H, W], got {tuple(x.shape)}")
        was = self.training
        self.eval()
        out = torch.cat([self.embed(x[i:i + batch_size].float().clamp(-1, 1)) for i in range(0, len(x), batch_size)])
        self.train(was)
        return out


# --- loading ----------------------------------------------------------------------------------
def load_encoder(path: str | Path) -> Encoder:
    """Load an encoder checkpoint (``<path>.safetensors`` + ``.json``; digest checked, never
    unpickled). Raises CheckpointError (one line) for anything that is not an encoder."""
    tensors, card = load_checkpoint(path)
    if card.get("kind") != KIND or "architecture" not in card:
        raise CheckpointError(f"{path} is not an exactpost encoder checkpoint (kind={card.get('kind')!r})")
    model = Encoder(EncoderConfig.from_dict(card["architecture"]), name=str(card.get("name", Path(path).name)))
    weights = {k[len("weights."):]: v for k, v in tensors.items() if k.startswith("weights.")}
    if not weights:
        raise CheckpointError(f"{path} is an unfinished encoder training state (step {card.get('steps_done')}); "
                              "finish training first")
    model.load_state_dict(weights)
    model.eval()
    model.card = card  # type: ignore[attr-defined]
    return model
