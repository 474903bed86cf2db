"""Training batches: endless shuffled, flipped batches of a uint8 data set, resumable.

Data sets are loaded by :func:`exactpost.io.images.load_images`; images are kept as uint8
[N, 3, H, W] and converted per batch to float in [-1, 1] with random horizontal flips drawn
from an explicit generator.
"""

from __future__ import annotations

import torch

from ..io.images import DataError, to_float


class BatchStream:
    """Endless shuffled batches of one dataset, reproducible and resumable.

    Each epoch is a permutation drawn from ``generator``; ``state()`` / ``load_state()``
    capture the generator, the current permutation and the position, so a resumed run sees
    exactly the batches the uninterrupted run would have seen. Under torch.distributed every
    process holds the same stream and the training loop keeps its own share of each batch."""

    def __init__(self, images_u8: torch.Tensor, batch_size: int, generator: torch.Generator,
                 flip: bool = True):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if len(images_u8) < batch_size:
            raise DataError(f"{len(images_u8)} images are fewer than one batch of {batch_size}")
        self.images, self.batch_size, self.generator = images_u8, batch_size, generator
        self.flip = flip
        self.perm = torch.randperm(len(images_u8), generator=generator)
        self.pos = 0

    def next(self) -> torch.Tensor:
        """The next batch: float [B, 3, H, W] in [-1, 1]."""
        if self.pos + self.batch_size > len(self.perm):
            self.perm = torch.randperm(len(self.images), generator=self.generator)
            self.pos = 0
        idx = self.perm[self.pos: self.pos + self.batch_size]
        self.pos += self.batch_size
        x = to_float(self.images[idx])
        if self.flip:
            f = torch.rand(self.batch_size, generator=self.generator) < 0.5
            x[f] = x[f].flip(-1)
        return x

    def state(self) -> dict:
        return {"perm": self.perm.clone(), "pos": self.pos, "generator": self.generator.get_state()}

    def load_state(self, state: dict) -> None:
        self.perm, self.pos = state["perm"].clone(), int(state["pos"])
        self.generator.set_state(state["generator"])
