"""The task registry: task id -> measurement operator, noise level and defaults.

Images are ``[B, C, H, W]`` in [-1, 1]; ``sigma_y = 0.05`` on that scale for every task.

========================  =====================================================================
task id                   operator (``make_operator``)
========================  =====================================================================
``inpaint-random``        :class:`Inpainting`, per sample: exactly round(0.7 H W) pixels missing,
                          the same pixels in every channel
``inpaint-box``           :class:`Inpainting`, per sample: one square hole of side min(H, W) // 2
                          (16 at 32x32, 32 at 64x64), uniformly placed fully inside the image
``sr4``                   :class:`AveragePoolSR` with factor 4 (shared)
``deblur-gauss``          :class:`FFTBlur`, shared Gaussian kernel (std 1.0 px, 9x9 at 32x32;
                          std 1.5 px, 13x13 at 64x64)
``deblur-motion``         :class:`FFTBlur`, one random-walk motion kernel per sample
                          (intensity 0.5; 9x9 at 32x32, 13x13 at 64x64)
========================  =====================================================================

Other image sizes: with n = min(H, W), the Gaussian std is 1.0 * 1.5 ** log2(n / 32) (1.0 at
32, 1.5 at 64, x1.5 per doubling) and every blur kernel has the odd size 2 * ceil(4 std) + 1
(9 at 32, 13 at 64), capped at the largest odd size <= n. Motion kernels use the same size.

Masks, boxes and kernels are drawn from a ``torch.Generator`` (or an int seed), so the same
seed gives the same operators.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch

from .batching import per_sample
from ..operators import (
    AveragePoolSR,
    FFTBlur,
    Inpainting,
    LinearOperator,
    box_mask,
    gaussian_kernel,
    motion_kernels,
    random_mask,
)
from ..operators._common import check_positive_int, check_shape_tuple, generator_device

Seed = Union[torch.Generator, int, None]


@dataclass(frozen=True)
class TaskSpec:
    """One task: its id, description, family, sigma_y and the family's parameters
    (``None`` where they do not apply)."""

    name: str
    description: str
    family: str  # "inpainting" | "superres" | "blur"
    sigma_y: float = 0.05
    random_per_sample: bool = False  # True: make_operator draws one operator per sample
    missing_fraction: float | None = None  # inpaint-random
    box_fraction: float | None = None  # inpaint-box: side = int(box_fraction * min(H, W))
    factor: int | None = None  # super-resolution
    kernel: str | None = None  # "gaussian" | "motion"
    kernel_std_32: float | None = None  # Gaussian std (px) at 32x32; x1.5 per doubling
    motion_intensity: float | None = None

    def blur_std(self, image_size: int) -> float:
        """Reference blur width (px) at image size n: 1.0 * 1.5 ** log2(n / 32) for the
        defaults (1.0 at 32, 1.5 at 64)."""
        base = self.kernel_std_32 if self.kernel_std_32 is not None else 1.0
        return base * 1.5 ** math.log2(image_size / 32)

    def kernel_size(self, image_size: int) -> int:
        """Odd kernel size 2 * ceil(4 std) + 1 (9 at 32, 13 at 64), at most image_size."""
        size = 2 * math.ceil(4 * self.blur_std(image_size) - 1e-9) + 1
        largest = image_size if image_size % 2 else image_size - 1
        return max(1, min(size, largest))

    def box_side(self, image_size: int) -> int:
        """Side of the box hole: int(box_fraction * image_size), at least 1."""
        return max(1, int((self.box_fraction or 0.5) * image_size))


TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in (
        TaskSpec("inpaint-random", "random inpainting: 70% of pixels missing, same in every "
                 "channel, a new mask per image", "inpainting", random_per_sample=True,
                 missing_fraction=0.7),
        TaskSpec("inpaint-box", "box inpainting: one square hole of side H/2 at a random "
                 "position inside the image, per image", "inpainting", random_per_sample=True,
                 box_fraction=0.5),
        TaskSpec("sr4", "4x super-resolution by 4x4 average pooling", "superres", factor=4),
        TaskSpec("deblur-gauss", "Gaussian deblurring, circular (std 1.0 px 9x9 at 32x32, "
                 "1.5 px 13x13 at 64x64)", "blur", kernel="gaussian", kernel_std_32=1.0),
        TaskSpec("deblur-motion", "motion deblurring, circular, a random-walk motion kernel "
                 "per image (intensity 0.5; 9x9 at 32x32, 13x13 at 64x64)", "blur",
                 random_per_sample=True, kernel="motion", kernel_std_32=1.0,
                 motion_intensity=0.5),
    )
}


def task_names() -> list[str]:
    """The registered task ids, in registry order."""
    return list(TASKS)


def get_task(task: Union[str, TaskSpec]) -> TaskSpec:
    """The :class:`TaskSpec` of a task id (a TaskSpec is returned unchanged)."""
    if isinstance(task, TaskSpec):
        return task
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; known tasks: {', '.join(TASKS)}")
    return TASKS[task]


def _generator(generator: Seed) -> torch.Generator | None:
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, int) and not isinstance(generator, bool):
        return torch.Generator().manual_seed(generator)
    raise ValueError(f"generator must be a torch.Generator, an int seed or None, got {generator!r}")


def make_operator(
    task: Union[str, TaskSpec],
    batch_size: int,
    image_shape: Sequence[int] = (3, 32, 32),
    generator: Seed = None,
    device: torch.device | str | None = None,
) -> LinearOperator:
    """Build the operator of ``task`` for images of shape ``image_shape = (C, H, W)``.

    Random tasks (``inpaint-random``, ``inpaint-box``, ``deblur-motion``) draw one mask or
    kernel per sample from ``generator`` (a ``torch.Generator``, an int seed, or None for
    torch's global generator) and return a per-sample operator with ``batch_size = B``;
    fixed tasks (``sr4``, ``deblur-gauss``) return a shared operator (``batch_size=None``)
    that accepts any batch size. Parameters are stored on ``device`` (default: CPU / the
    generator's device); operators cast them to the input's dtype on the fly.
    """
    spec = get_task(task)
    b = check_positive_int(batch_size, "batch_size")
    c, h, w = check_shape_tuple(image_shape, "image_shape (C, H, W)", ndim=3)
    gen = _generator(generator)
    dev = torch.device(device) if device is not None else generator_device(gen)
    n = min(h, w)
    if spec.family == "inpainting":
        if spec.missing_fraction is not None:
            mask = random_mask((h, w), spec.missing_fraction, b, gen, dev)
        else:
            mask = box_mask((h, w), spec.box_side(n), b, gen, dev)
        return Inpainting(mask, channels=c)
    if spec.family == "superres":
        return AveragePoolSR(spec.factor or 4, (c, h, w))
    if spec.family == "blur":
        size = spec.kernel_size(n)
        if spec.kernel == "gaussian":
            kernel = gaussian_kernel(size, spec.blur_std(n), device=dev)
        elif spec.kernel == "motion":
            intensity = 0.5 if spec.motion_intensity is None else spec.motion_intensity
            kernel = motion_kernels(b, size, intensity, gen, device=dev)
        else:
            raise ValueError(f"task {spec.name!r} has unknown kernel {spec.kernel!r}; "
                             f"use 'gaussian' or 'motion'")
        return FFTBlur(kernel, (c, h, w))
    raise ValueError(f"task {spec.name!r} has unknown family {spec.family!r}; "
                     f"use 'inpainting', 'superres' or 'blur'")


def simulate(
    operator: LinearOperator,
    x0: torch.Tensor,
    sigma_y: Union[float, torch.Tensor],
    generator: Seed = None,
) -> torch.Tensor:
    """Measurements ``y = A x0 + sigma_y n``, n ~ N(0, I) drawn from ``generator``.

    ``sigma_y`` is a float >= 0 or a tensor of shape [B] (one per sample); sigma_y = 0 gives
    ``A x0`` exactly (the noise is still drawn, so the generator advances the same way).

    Inpainting: unobserved entries (rows of A that are zero) get no noise, i.e.
    ``y = mask * (x0 + sigma_y n)``; they carry no information about x0 either way (A^T y and
    the pivot ignore them), and this keeps y in the range of A (y == A y).
    """
    if not isinstance(x0, torch.Tensor):
        raise ValueError(f"x0 must be a torch.Tensor, got {type(x0).__name__}")
    if x0.is_floating_point() and not bool(torch.isfinite(x0).all()):
        raise ValueError("x0 contains NaN or Inf; clean or clamp the images before simulating")
    ax = operator.A(x0)
    s = torch.as_tensor(sigma_y, dtype=ax.dtype, device=ax.device)
    if s.dim() > 1 or (s.dim() == 1 and s.shape[0] != ax.shape[0]):
        raise ValueError(f"sigma_y must be a float or have shape [{ax.shape[0]}], got shape "
                         f"{tuple(s.shape)}")
    if not bool(torch.isfinite(s).all()) or bool((s < 0).any()):
        raise ValueError(f"sigma_y must be finite and >= 0, got {sigma_y!r}")
    gen = _generator(generator)
    noise = torch.randn(ax.shape, generator=gen, dtype=ax.dtype,
                        device=generator_device(gen)).to(ax.device)
    if isinstance(operator, Inpainting):
        noise = operator.A(noise)
    return ax + per_sample(s, ax.dim()) * noise


@dataclass(frozen=True)
class Measurement:
    """y = A x0 + sigma_y n, with what produced it: the measurement and its noise level travel
    together (:meth:`simulate` makes one; :meth:`exactpost.Model.restore` takes one).

    Attributes:
        op: the operator A (shared, or per sample with y's batch).
        y: the measurement, [B, *op.out_shape].
        sigma_y: the noise standard deviation (>= 0; 0 = noiseless), on the [-1, 1] scale.
        task: the task id the operator belongs to (its task embedding for trained networks),
            or None for an operator of your own.
    """

    op: LinearOperator
    y: torch.Tensor
    sigma_y: float
    task: Optional[str] = None

    def __post_init__(self) -> None:
        if not isinstance(self.op, LinearOperator):
            raise ValueError(f"op must be an exactpost LinearOperator, got {type(self.op).__name__}")
        self.op.check_y(self.y)
        if not float(self.sigma_y) >= 0:
            raise ValueError(f"sigma_y must be >= 0, got {self.sigma_y}")
        if self.task is not None:
            get_task(self.task)

    @classmethod
    def simulate(cls, task: str, x0: torch.Tensor, sigma_y: float = 0.05,
                 generator: Optional[torch.Generator] = None) -> "Measurement":
        """Degrade clean images x0 [B, C, H, W] (in [-1, 1]) with task's operator (drawn from
        ``generator`` for the random tasks) and noise sigma_y."""
        op = make_operator(task, x0.shape[0], tuple(x0.shape[1:]), generator=generator)
        return cls(op, simulate(op, x0, sigma_y, generator=generator), float(sigma_y), task)
