"""The three training objectives, one loss function each, sharing noise levels and weights.

With x0 a batch of clean images, sigma drawn per sample and e ~ N(0, I), x~ = x0 + sigma e:

* ``prior``   (denoising score matching):  L = w(sigma) || D(x~, sigma) - x0 ||^2
* ``eps``     (EPS, PAPER.md):  draw an operator A per sample (one task or a mix), y = A x0 +
  sigma_y n, the pivot mu* = x~ + A^+_rho (y - A x~) (rho = sigma_y^2/sigma^2), then
  L = w(sigma) || D(mu*, sigma, cond(y)) - x0 ||^2.  mu* | x0 ~ N(x0, Sigma*) exactly with
  Sigma* <= sigma^2 I, so sigma is a safe preconditioning level.
* ``palette`` (trained conditional baseline): the same, with x~ in place of mu*.

w(sigma) = (sigma^2 + sd^2) / (sigma sd)^2 is EDM's weight. Noise levels: EDM's log-normal
ln sigma ~ N(-1.2, 1.2^2), except a fraction ``uniform_frac`` of each batch drawn
log-uniformly on [sigma_min, sigma_max] so that the high levels a sampler starts from (and
where the 1-NFE posterior mean is queried) are trained too (DESIGN.md: +0.9 dB measured).

Conditioning channels (computed once per measurement, at data scale, not scaled by c_in):

* ``pivot``           : none (the pivot, the task embedding and sigma_y only);
* ``pivot+aty``       : A^T y (3 channels);
* ``pivot+aty+mask``  : A^T y and the certainty map diag(A^T A) ~ mean_c A^T A 1
  (1 channel: the inpainting mask, 1/16 for 4x SR, sum(k)^2 = 1 for blur) -- the default;
* ``xt+aty`` / ``xt+aty+mask`` : Palette's input: x~ in place of the pivot (the default for
  Palette is ``xt+aty+mask``, the same channels as EPS, so the two differ only in the pivot).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import torch

from ..nets.precond import EDMPrecond
from ..operators.base import LinearOperator
from ..posterior import pivot_from_sigma
from ..tasks import make_operator, simulate, task_names

OBJECTIVES = ("prior", "eps", "palette")
CONDITIONINGS = {"pivot": 0, "pivot+aty": 3, "pivot+aty+mask": 4, "xt+aty": 3, "xt+aty+mask": 4}
DEFAULT_CONDITIONING = {"prior": "pivot", "eps": "pivot+aty+mask", "palette": "xt+aty+mask"}


@dataclass
class NoiseLevels:
    """Training noise levels: log-normal (EDM) plus a log-uniform fraction."""

    p_mean: float = -1.2
    p_std: float = 1.2
    uniform_frac: float = 0.2
    sigma_min: float = 0.002
    sigma_max: float = 80.0

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """[n] noise levels (float32)."""
        normal = torch.exp(self.p_mean + self.p_std * torch.randn(n, generator=generator))
        lo, hi = math.log(self.sigma_min), math.log(self.sigma_max)
        uniform = torch.exp(lo + (hi - lo) * torch.rand(n, generator=generator))
        pick = torch.rand(n, generator=generator) < self.uniform_frac
        return torch.where(pick, uniform, normal)


@dataclass
class Objective:
    """What to train.

    Attributes:
        kind: ``prior``, ``eps`` or ``palette``.
        tasks: task ids drawn uniformly per sample (eps/palette).
        sigma_y: a fixed measurement noise, or (lo, hi) drawn uniformly per sample.
        conditioning: one of :data:`CONDITIONINGS` (default per kind).
        noise: training noise levels.
    """

    kind: str = "prior"
    tasks: Sequence[str] = field(default_factory=task_names)
    sigma_y: float | tuple[float, float] = 0.05
    conditioning: str | None = None
    noise: NoiseLevels = field(default_factory=NoiseLevels)

    def __post_init__(self) -> None:
        if self.kind not in OBJECTIVES:
            raise ValueError(f"unknown objective {self.kind!r}; choose one of {', '.join(OBJECTIVES)}")
        if self.conditioning is None:
            self.conditioning = DEFAULT_CONDITIONING[self.kind]
        if self.conditioning not in CONDITIONINGS:
            raise ValueError(f"unknown conditioning {self.conditioning!r}; choose one of {', '.join(CONDITIONINGS)}")
        if self.kind == "prior" and self.conditioning != "pivot":
            raise ValueError("the prior objective takes no conditioning")
        if self.kind == "palette" and not self.conditioning.startswith("xt"):
            raise ValueError("palette conditions on x_t: use conditioning 'xt+aty' or 'xt+aty+mask'")
        if self.kind == "eps" and not self.conditioning.startswith("pivot"):
            raise ValueError(f"eps conditions on the pivot: use one of pivot, pivot+aty, pivot+aty+mask "
                             f"(got {self.conditioning!r}; x_t inputs are the palette objective)")
        self.tasks = list(self.tasks)
        known = task_names()
        for t in self.tasks:
            if t not in known:
                raise ValueError(f"unknown task {t!r}; known tasks: {', '.join(known)}")
        if not self.tasks:
            raise ValueError("give at least one task")
        lo, hi = self.sigma_y_range
        if not (0 <= lo <= hi) or not math.isfinite(hi):
            raise ValueError(f"sigma_y must be >= 0 (or a range lo <= hi), got {self.sigma_y}")

    @property
    def sigma_y_range(self) -> tuple[float, float]:
        s = self.sigma_y
        return (float(s[0]), float(s[1])) if isinstance(s, (tuple, list)) else (float(s), float(s))

    @property
    def cond_channels(self) -> int:
        return CONDITIONINGS[self.conditioning]

    @property
    def uses_pivot(self) -> bool:
        return self.conditioning.startswith("pivot")

    def task_index(self, task: str) -> int:
        """The id fed to the task embedding: the position in the full registry."""
        return task_names().index(task)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "tasks": list(self.tasks), "sigma_y": self.sigma_y,
                "conditioning": self.conditioning, "noise": vars(self.noise)}


def conditioning(kind: str, op: LinearOperator, y: torch.Tensor) -> torch.Tensor | None:
    """The conditioning channels of ``kind`` (see the module docstring), [B, c, H, W]."""
    n = CONDITIONINGS[kind]
    if n == 0:
        return None
    aty = op.At(y)
    if n == 3:
        return aty
    ones = torch.ones((y.shape[0],) + tuple(op.in_shape), dtype=y.dtype, device=y.device)
    certainty = op.At(op.A(ones)).mean(1, keepdim=True)
    return torch.cat([aty, certainty], dim=1)


@dataclass
class Batch:
    """One simulated training batch: network input, conditioning, targets."""

    x0: torch.Tensor
    sigma: torch.Tensor
    inp: torch.Tensor
    cond: torch.Tensor | None
    task_id: torch.Tensor | None
    sigma_y: torch.Tensor | None


def make_batch(objective: Objective, x0: torch.Tensor, generator: torch.Generator) -> Batch:
    """Draw noise levels, noise, operators and measurements for ``x0`` [B, C, H, W]."""
    B = x0.shape[0]
    sigma = objective.noise.sample(B, generator).to(x0.dtype)
    e = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
    x_tilde = x0 + sigma.reshape(-1, 1, 1, 1) * e
    if objective.kind == "prior":
        return Batch(x0, sigma, x_tilde, None, None, None)
    lo, hi = objective.sigma_y_range
    sigma_y = (lo + (hi - lo) * torch.rand(B, generator=generator)).to(x0.dtype)
    which = torch.randint(len(objective.tasks), (B,), generator=generator)
    inp = torch.empty_like(x0)
    cond = torch.empty((B, objective.cond_channels) + tuple(x0.shape[2:]), dtype=x0.dtype) \
        if objective.cond_channels else None
    task_id = torch.empty(B, dtype=torch.long)
    for k, task in enumerate(objective.tasks):
        rows = (which == k).nonzero().flatten()
        if len(rows) == 0:
            continue
        op = make_operator(task, len(rows), tuple(x0.shape[1:]), generator=generator)
        y = simulate(op, x0[rows], sigma_y[rows], generator=generator)
        inp[rows] = (pivot_from_sigma(x_tilde[rows], sigma[rows], y, op, sigma_y[rows])
                     if objective.uses_pivot else x_tilde[rows])
        if cond is not None:
            cond[rows] = conditioning(objective.conditioning, op, y)
        task_id[rows] = objective.task_index(task)
    return Batch(x0, sigma, inp, cond, task_id, sigma_y)


def loss_on_batch(model: EDMPrecond, batch: Batch) -> torch.Tensor:
    """Mean over the batch of w(sigma) * mean-over-pixels (D - x0)^2 (a scalar)."""
    D = model(batch.inp, batch.sigma, cond=batch.cond, task_id=batch.task_id, sigma_y=batch.sigma_y)
    per_sample = ((D - batch.x0) ** 2).flatten(1).mean(1)
    return (model.loss_weight(batch.sigma) * per_sample).mean()
