"""What an EPS or Palette network is told about the measurement: one conditioning path for
training, inference, the demo, ``restore`` and the benchmarks.

An EPS network denoises the pivot mu* under the noise covariance
Sigma* = sigma_y^2 (rho I + A^T A)^{-1} (see :mod:`exactpost.core.posterior`), so it must be given
what determines Sigma* -- the operator -- in a form it can use. The channels below are
computed once per measurement, at data scale (never scaled by the network's c_in), and
concatenated to the network input. A *kind* names the network's first input and the
channels after it; kinds are lists of parts, and a kind whose parts extend another's can be
grown from it with zero-initialised weights (:func:`extends`):

* ``aty``  (3 channels): A^T y, the back-projected measurement;
* ``mask`` (1 channel) : the certainty map diag(A^T A) ~ mean_c A^T A 1 (the inpainting
  mask; 1/16 everywhere for 4x average-pooling SR; sum(k)^2 = 1 for a normalised blur);
* ``xreg`` (3 channels): the regularised back-projection

      x_reg = (rho0 I + A^T A)^{-1} A^T y,   rho0 = sigma_y^2 / sigma_data^2,

  the posterior mean of x0 under the isotropic Gaussian prior N(0, sigma_data^2 I): a Wiener
  deconvolution for blur (so it carries the kernel), a full-scale upsampling for SR (where
  A^T y is 16x too small), the masked image for inpainting; sigma_y = 0 gives A^+ y. It uses
  the operator's exact Tikhonov solve (``regularized_pinv``; conjugate gradients for an
  operator given only A and A^T).

Kinds: ``pivot``, ``pivot+aty``, ``pivot+aty+mask`` (the bundled models before x_reg),
``pivot+aty+mask+xreg`` (the default for new EPS models); ``xt+aty``, ``xt+aty+mask``,
``xt+aty+mask+xreg`` (Palette: x_t in place of the pivot, the same channels, so the two
differ only in the pivot).

Task embeddings: :func:`task_embedding_index` is the one place that maps a task id to the
row of a network's task embedding; training writes the map into the card
(``objective.task_ids``) and inference reads it back with :func:`card_task_index`.
"""

from __future__ import annotations

from typing import Mapping, Optional, Union

import torch

from ..operators.base import LinearOperator
from .tasks import task_names

#: channels of each conditioning part
PART_CHANNELS = {"aty": 3, "mask": 1, "xreg": 3}
#: every conditioning kind: the network's first input, then its parts in channel order
KINDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "pivot": ("pivot", ()),
    "pivot+aty": ("pivot", ("aty",)),
    "pivot+aty+mask": ("pivot", ("aty", "mask")),
    "pivot+aty+mask+xreg": ("pivot", ("aty", "mask", "xreg")),
    "xt+aty": ("xt", ("aty",)),
    "xt+aty+mask": ("xt", ("aty", "mask")),
    "xt+aty+mask+xreg": ("xt", ("aty", "mask", "xreg")),
}
#: the kind a new model of each objective gets
DEFAULT_KIND = {"prior": "pivot", "eps": "pivot+aty+mask+xreg", "palette": "xt+aty+mask+xreg"}
#: data standard deviation of images in [-1, 1] (EDM's sigma_data; the scale of x_reg's prior)
SIGMA_DATA = 0.5


def check_kind(kind: str) -> str:
    """``kind`` if it is known, else a one-line ValueError naming the known kinds."""
    if kind not in KINDS:
        raise ValueError(f"unknown conditioning {kind!r}; choose one of {', '.join(KINDS)}")
    return kind


def channels(kind: str) -> int:
    """Number of conditioning channels of ``kind`` (for 3-channel images)."""
    return sum(PART_CHANNELS[p] for p in KINDS[check_kind(kind)][1])


def uses_pivot(kind: str) -> bool:
    """Whether the network's first input is the pivot mu* (EPS) rather than x_t (Palette)."""
    return KINDS[check_kind(kind)][0] == "pivot"


def extends(new: str, old: str) -> bool:
    """Whether ``new`` keeps ``old``'s first input and channels and only appends parts, so a
    network trained with ``old`` grows into one for ``new`` by zero-initialised input
    weights (its outputs unchanged)."""
    (inp_new, parts_new), (inp_old, parts_old) = KINDS[check_kind(new)], KINDS[check_kind(old)]
    return inp_new == inp_old and parts_new[: len(parts_old)] == parts_old


def regularized_backprojection(op: LinearOperator, y: torch.Tensor, sigma_y: Union[float, torch.Tensor],
                               sigma_data: float = SIGMA_DATA) -> torch.Tensor:
    """x_reg = (rho0 I + A^T A)^{-1} A^T y with rho0 = sigma_y^2 / sigma_data^2 per sample.

    y: [B, *op.out_shape]; sigma_y: a float or [B] (>= 0; 0 gives A^+ y exactly);
    returns [B, *op.in_shape] in y's dtype."""
    sy = torch.as_tensor(sigma_y, dtype=y.dtype, device=y.device)
    if sy.dim() == 0:
        sy = sy.expand(y.shape[0])
    return op.regularized_pinv(y, (sy / sigma_data) ** 2)


def certainty_map(op: LinearOperator, batch: int, dtype: torch.dtype = torch.float32,
                  device: Optional[torch.device] = None) -> torch.Tensor:
    """The certainty map diag(A^T A) approximated by mean_c A^T A 1, [B, 1, H, W]."""
    ones = torch.ones((batch,) + tuple(op.in_shape), dtype=dtype, device=device)
    return op.At(op.A(ones)).mean(1, keepdim=True)


def build_conditioning(kind: str, op: LinearOperator, y: torch.Tensor,
                       sigma_y: Union[float, torch.Tensor]) -> Optional[torch.Tensor]:
    """The conditioning channels of ``kind`` for measurement y [B, *op.out_shape] with noise
    ``sigma_y`` (float or [B]): [B, channels(kind), H, W] (parts in the kind's order), or
    None for a kind without channels. Computed once per measurement."""
    parts = KINDS[check_kind(kind)][1]
    if not parts:
        return None
    out = []
    for part in parts:
        if part == "aty":
            out.append(op.At(y))
        elif part == "mask":
            out.append(certainty_map(op, y.shape[0], y.dtype, y.device))
        else:
            out.append(regularized_backprojection(op, y, sigma_y))
    return torch.cat(out, dim=1)


# --- task embeddings ------------------------------------------------------------------------
def task_embedding_index(task: str) -> int:
    """The task-embedding row of ``task``: its position in the task registry
    (:func:`exactpost.core.tasks.task_names`). Training and inference both call this (inference
    through the map recorded in the card, :func:`card_task_index`)."""
    known = task_names()
    if task not in known:
        raise ValueError(f"unknown task {task!r}; known tasks: {', '.join(known)}")
    return known.index(task)


def task_id_map(tasks: list[str]) -> dict[str, int]:
    """{task: embedding row} for the tasks a model is trained on (recorded in its card)."""
    return {t: task_embedding_index(t) for t in tasks}


def card_task_index(objective: Mapping, task: str) -> int:
    """The embedding row a model was trained with for ``task``, from its card's objective.

    Cards written since the map was recorded carry ``task_ids``; older ones were trained with
    the registry position (every exactpost training loop has used it), so that is the row
    for them. ValueError if the model was not trained for ``task``."""
    tasks = list(objective.get("tasks", []))
    if task not in tasks:
        raise ValueError(f"this model was trained for tasks {', '.join(tasks)}; {task!r} is not one of them")
    ids = objective.get("task_ids")
    if isinstance(ids, Mapping) and task in ids:
        return int(ids[task])
    return task_embedding_index(task)
