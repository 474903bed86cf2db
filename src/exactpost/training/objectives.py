"""The three training objectives, one loss function each, sharing noise levels and weights.

With x0 a batch of clean images, sigma drawn per sample and e ~ N(0, I), x~ = x0 + sigma e:

* ``prior``   (denoising score matching):  L = w(sigma) || D(x~, sigma) - x0 ||^2
* ``eps``     (EPS, PAPER.md):  draw an operator A per sample (one task or a mix), y = A x0 +
  sigma_y n, the pivot mu* = x~ + A^+_rho (y - A x~) (rho = sigma_y^2/sigma^2), then
  L = w(sigma) || D(mu*, sigma, cond(y)) - x0 ||^2.  mu* | x0 ~ N(x0, Sigma*) exactly with
  Sigma* <= sigma^2 I, so sigma is a safe preconditioning level.
* ``palette`` (trained conditional baseline): the same, with x~ in place of mu*.

An EPS network with the Gaussian skip (``EDMPrecond(skip="gaussian")``) is trained on the same
batches with S mu* computed alongside (``make_batch(..., gaussian_skip=True)``).

w(sigma) = (sigma^2 + sd^2) / (sigma sd)^2 is EDM's weight. Noise levels: EDM's log-normal
ln sigma ~ N(-1.2, 1.2^2), except a fraction ``uniform_frac`` of each batch drawn
log-uniformly on [sigma_min, sigma_max] so that the high levels a sampler starts from (and
where the 1-NFE posterior mean is queried) are trained too (DESIGN.md: +0.9 dB measured).

Conditioning channels: :mod:`exactpost.core.conditioning` (one path for training and inference);
new EPS models get ``pivot+aty+mask+xreg`` (A^T y, the certainty map and the regularised
back-projection x_reg), new Palette models ``xt+aty+mask+xreg``.

Precision: the batch is simulated (operators, pivots, conditioning) in float32 whatever the
training precision; only the network's forward/backward may run under bf16 autocast.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import torch

from ..core import conditioning as conditioning_
from ..nets.precond import EDMPrecond
from ..core.posterior import pivot_from_sigma
from ..core.skip import gaussian_skip as skip_of
from ..core.tasks import make_operator, simulate, task_names

OBJECTIVES = ("prior", "eps", "palette")


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
        conditioning: a kind of :data:`exactpost.core.conditioning.KINDS` (default per objective).
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
            self.conditioning = conditioning_.DEFAULT_KIND[self.kind]
        conditioning_.check_kind(self.conditioning)
        pivots = [k for k in conditioning_.KINDS if conditioning_.uses_pivot(k)]
        if self.kind == "prior" and self.conditioning != "pivot":
            raise ValueError("the prior objective takes no conditioning")
        if self.kind == "palette" and conditioning_.uses_pivot(self.conditioning):
            xts = [k for k in conditioning_.KINDS if k not in pivots]
            raise ValueError(f"palette conditions on x_t: use one of {', '.join(xts)}")
        if self.kind == "eps" and not conditioning_.uses_pivot(self.conditioning):
            raise ValueError(f"eps conditions on the pivot: use one of {', '.join(pivots)} "
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
        return conditioning_.channels(self.conditioning)

    @property
    def uses_pivot(self) -> bool:
        return conditioning_.uses_pivot(self.conditioning)

    def to_dict(self) -> dict:
        """The card's ``objective`` entry; ``task_ids`` is what inference reads back."""
        out = {"kind": self.kind, "tasks": list(self.tasks), "sigma_y": self.sigma_y,
               "conditioning": self.conditioning, "noise": vars(self.noise)}
        if self.kind != "prior":
            out["task_ids"] = conditioning_.task_id_map(self.tasks)
        return out


@dataclass
class Batch:
    """One simulated training batch: network input, conditioning, targets."""

    x0: torch.Tensor
    sigma: torch.Tensor
    inp: torch.Tensor
    cond: torch.Tensor | None
    task_id: torch.Tensor | None
    sigma_y: torch.Tensor | None
    skip: torch.Tensor | None = None  # S inp, for a Gaussian-skip network (nets.precond)


def make_batch(objective: Objective, x0: torch.Tensor, generator: torch.Generator,
               gaussian_skip: bool = False) -> Batch:
    """Draw noise levels, noise, operators and measurements for ``x0`` [B, C, H, W].

    ``gaussian_skip`` (an EPS objective): also compute the Gaussian skip S mu* of each pivot
    (:func:`exactpost.core.skip.gaussian_skip`, no random draws: the batch is otherwise the
    same)."""
    if gaussian_skip and objective.kind != "eps":
        raise ValueError(f"the Gaussian skip needs an eps objective (its input is the pivot), not {objective.kind}")
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
    skip = torch.empty_like(x0) if gaussian_skip else None
    for k, task in enumerate(objective.tasks):
        rows = (which == k).nonzero().flatten()
        if len(rows) == 0:
            continue
        op = make_operator(task, len(rows), tuple(x0.shape[1:]), generator=generator)
        y = simulate(op, x0[rows], sigma_y[rows], generator=generator)
        inp[rows] = (pivot_from_sigma(x_tilde[rows], sigma[rows], y, op, sigma_y[rows])
                     if objective.uses_pivot else x_tilde[rows])
        if cond is not None:
            cond[rows] = conditioning_.build_conditioning(objective.conditioning, op, y, sigma_y[rows])
        task_id[rows] = conditioning_.task_embedding_index(task)
        if skip is not None:
            skip[rows] = skip_of(inp[rows], sigma[rows], op, sigma_y[rows])
    return Batch(x0, sigma, inp, cond, task_id, sigma_y, skip)


def loss_on_batch(model: EDMPrecond, batch: Batch) -> torch.Tensor:
    """Mean over the batch of w(sigma) * mean-over-pixels (D - x0)^2 (a scalar)."""
    D = model(batch.inp, batch.sigma, cond=batch.cond, task_id=batch.task_id, sigma_y=batch.sigma_y, skip=batch.skip)
    per_sample = ((D - batch.x0) ** 2).flatten(1).mean(1)
    return (model.loss_weight(batch.sigma) * per_sample).mean()
