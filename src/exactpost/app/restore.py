"""``exactpost restore``: restore a user's own image with posterior samples.

Two modes:

- ``simulate=True``: the input is a clean image; it is degraded with the task's operator
  (``--mask``/``--kernel`` replace the task's random mask/kernel) and noise sigma_y, then
  restored, and PSNR/SSIM against the clean image are reported;
- otherwise the input *is* the measurement: a low-resolution image for ``sr4`` (the 4x4
  average pooling of the model's resolution), an image plus a mask PNG for ``inpaint-*``
  (1 = observed; pixels under the mask's black part are ignored), a blurred image plus a
  kernel file for ``deblur-*`` (centre at entry (kh // 2, kw // 2); circular boundary).

Every input is read and checked before anything is written (a bad input writes
nothing); images of another size are centre-cropped and resized to the model's resolution
with a notice. Outputs (each written atomically): ``mean.png``, ``std.png``,
``sample_<i>.png``, ``samples.png`` (all samples in one row), ``measurement.png``
(``truth.png`` when simulating) and ``restore.json`` with the settings, notices, NFE and
timings. They are written into a temporary folder beside ``out`` and moved into it only
when all are written (:func:`exactpost.io.atomic.staged_folder`), so a disk that fills or a
write that fails leaves ``out`` as it was and no temporary file behind.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Optional

import torch

from ..inference import zoo
from ..inference.api import TRAINED, Measurement, load, methods
from ..io.atomic import staged_folder
from ..io.images import save_grid, save_text
from ..core.memory import check_fits
from ..core.metrics import restoration_scores
from ..operators import AveragePoolSR, FFTBlur, Inpainting, LinearOperator
from ..core.sampler_spec import parse_spec
from .restore_inputs import InputError, check_output_dir, read_image, read_kernel, read_lowres, read_mask
from ..core.tasks import TASKS, make_operator, simulate, task_names
from .visualize import STD_WHITE, measurement_image, std_image



def _operator_for_measurement(task: str, size: int, mask: Optional[str], kernel: Optional[str],
                              image: Optional[str]) -> tuple[LinearOperator, Optional[torch.Tensor], list[str]]:
    """The operator of ``task`` at ``size`` built from the user's files, and the measurement
    y read from ``image`` (None when ``image`` is None); plus notices."""
    family = TASKS[task].family
    if family == "inpainting":
        if mask is None:
            raise InputError(f"task {task} needs --mask MASK.png (white = observed pixel, black = missing)")
        op: LinearOperator = Inpainting(read_mask(mask, size)[0, 0], channels=3)
    elif family == "blur":
        if kernel is None:
            raise InputError(f"task {task} needs --kernel FILE (.npy, .txt/.csv or a grayscale image)")
        op = FFTBlur(read_kernel(kernel, size).to(torch.float32), (3, size, size))
    elif family == "superres":
        op = AveragePoolSR(TASKS[task].factor, (3, size, size))
    else:
        raise InputError(f"task {task} ({family}) cannot take a measurement file yet; use --simulate")
    if image is None:
        return op, None, []
    if family == "superres":  # the measurement is the low-resolution image itself
        return (op, *read_lowres(image, size, op.factor))
    y, notices = read_image(image, size)  # blur: the blurred image is y
    if family == "inpainting":  # drop the pixels the mask says are missing
        y = op.A(y)
    return op, y, notices


def run_restore(image: str, task: str, *, model: str = zoo.DEFAULT_MODEL, method: str = "eps",
                simulate_input: bool = False, mask: Optional[str] = None, kernel: Optional[str] = None,
                n_samples: int = 4, nfe: Optional[int] = None, sigma_y: float = 0.05, seed: int = 0,
                out: str = "exactpost-restore", overwrite: bool = False,
                scheduler: Optional[str] = None, sampler: Optional[str] = None) -> dict[str, Any]:
    """Restore ``image`` (see the module docstring); returns the JSON written to
    ``restore.json``. Raises :class:`InputError`/``ValueError`` (one line) before writing
    anything when an input is wrong. ``scheduler``: sample eps/palette with a diffusers
    model's own scheduler (:mod:`exactpost.backbones.scheduler_restore`; ``--model`` must be
    a diffusers folder); None: exactpost's samplers. ``sampler``: exactpost's sampler spec
    for eps/palette (:mod:`exactpost.core.sampler_spec`; None: eps :data:`~exactpost.core.sampler_spec.DEFAULT`,
    palette the legacy EDM Heun)."""
    t0 = time.perf_counter()
    if task not in TASKS:
        raise InputError(f"unknown task {task!r}; choose one of {', '.join(task_names())}")
    if method not in methods():
        raise InputError(f"unknown method {method!r}; choose one of {', '.join(methods())}")
    if n_samples < 2:
        raise InputError(f"--samples must be >= 2 (the std needs two samples), got {n_samples}")
    if not (math.isfinite(sigma_y) and sigma_y >= 0):
        raise InputError(f"--sigma-y must be a finite number >= 0, got {sigma_y}")
    nfe = nfe if nfe is not None else (20 if method == "eps" else 100)
    if nfe < 2:
        raise InputError(f"--nfe must be >= 2, got {nfe}")
    if scheduler is not None:
        from ..backbones.scheduler_restore import check_scheduler_name  # pure Python (no diffusers import)

        check_scheduler_name(scheduler)
        if method not in TRAINED:
            raise InputError(f"--scheduler drives eps and palette; {method} has its own sampler (drop --scheduler)")
    if sampler is not None:
        sampler = parse_spec(sampler).name  # a bad spec: one line, before any work
        if method not in TRAINED:
            raise InputError(f"--sampler drives eps and palette; {method} has its own sampler (drop --sampler)")
        if scheduler is not None:
            raise InputError("give --sampler (exactpost's sampler) or --scheduler (a diffusers scheduler), not both")
    out_dir = check_output_dir(out, overwrite=overwrite)
    kind = method if method in TRAINED else "prior"
    restorer = load(model)
    entry = restorer.entry(kind)
    sched = None
    if scheduler is not None:
        if not zoo.is_diffusers(entry):
            raise InputError(f"--scheduler drives a diffusers model's own scheduler; {model} is not a diffusers folder "
                             f"(drop --scheduler to use exactpost's sampler)")
        from ..backbones.scheduler_restore import load_scheduler

        sched = load_scheduler(entry.path, scheduler)
    size = restorer.network(kind).config.image_size
    g = torch.Generator().manual_seed(seed)
    truth = None
    if simulate_input:
        truth, notices = read_image(image, size)
        if mask is not None or kernel is not None:
            op, _, _ = _operator_for_measurement(task, size, mask, kernel, None)
        else:
            op = make_operator(task, 1, (3, size, size), generator=g)
        y = simulate(op, truth, sigma_y, generator=g)
    else:
        op, y, notices = _operator_for_measurement(task, size, mask, kernel, image)
    assert y is not None
    # held at once: the samples (a list and their stack) in float32, 8 bytes a value at least
    check_fits(n_samples * 3 * size * size * 8, f"{n_samples} samples of 3x{size}x{size}",
               "ask for fewer samples (--samples)")
    res = restorer.restore(Measurement(op, y, sigma_y, task), method=method, samples=n_samples, nfe=nfe, generator=g,
                           scheduler=sched, sampler=sampler)
    info: dict[str, Any] = dict(
        input=str(image), task=task, mode="simulate" if simulate_input else "measurement", mask=mask, kernel=kernel,
        model=entry.name, model_kind=kind, model_sha256=entry.card.get("sha256"), method=method,
        n_samples=n_samples, nfe_requested=nfe, nfe_mean=res.nfe_mean, nfe_sample=res.nfe_sample,
        sigma_y=sigma_y, seed=seed, image_size=size, sampler=res.settings, std_white=STD_WHITE, notices=notices,
    )
    if scheduler is not None:
        info["scheduler"] = scheduler
    if truth is not None:
        info["scores"] = restoration_scores(truth, res.mean, res.samples)
    # every input is valid: only now write, all files or none (a full disk leaves out_dir as it was)
    with staged_folder(out_dir) as stage:
        save_grid(res.mean, stage / "mean.png", ncol=1)
        save_grid(std_image(res.std), stage / "std.png", ncol=1)
        for i in range(res.samples.shape[0]):
            save_grid(res.samples[i], stage / f"sample_{i}.png", ncol=1)
        save_grid(res.samples[:, 0], stage / "samples.png", ncol=res.samples.shape[0])
        save_grid(measurement_image(op, y).clamp(-1, 1), stage / "measurement.png", ncol=1)
        if truth is not None:
            save_grid(truth, stage / "truth.png", ncol=1)
        info["seconds"] = time.perf_counter() - t0
        save_text(stage / "restore.json", json.dumps(info, indent=2) + "\n")
    return info
