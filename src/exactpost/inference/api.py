"""The one-call public API: load a model, restore a measurement.

>>> import torch, exactpost
>>> model = exactpost.load("faces-32")                       # a bundled name, or a checkpoint path
>>> x0 = model.demo_images()[:1]                              # [1, 3, 32, 32] in [-1, 1]
>>> m = exactpost.Measurement.simulate("sr4", x0, sigma_y=0.05, generator=torch.Generator().manual_seed(0))
>>> res = model.restore(m, samples=2, nfe=10, generator=torch.Generator().manual_seed(1))
>>> res.mean.shape, res.samples.shape, res.std.shape, res.nfe
(torch.Size([1, 3, 32, 32]), torch.Size([2, 1, 3, 32, 32]), torch.Size([1, 3, 32, 32]), 10)

A measurement is y with its operator A and noise level sigma_y (:class:`Measurement`); a
tensor y with a task name (for the tasks whose operator the name fixes: ``sr4``,
``deblur-gauss``) or an operator plus ``sigma_y`` works too. ``method`` chooses EPS (the
default), Palette or any zero-shot baseline on the model's prior (:data:`METHODS`). Cards,
task-embedding rows and conditioning channels stay inside: :class:`Model` reads them from
the checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch

from . import zoo
from ..io.images import to_float
from ..operators.base import LinearOperator
from .restoration import Restoration, eps_restore, palette_restore
from ..core.tasks import Measurement, get_task, make_operator, task_names

#: the methods a model restores with: its trained networks, then the zero-shot baselines on its prior
TRAINED = ("eps", "palette")


def methods() -> list[str]:
    """Every ``method`` :meth:`Model.restore` takes: eps, palette, then every baseline."""
    from ..baselines import METHODS

    return list(TRAINED) + [m for m in METHODS if m not in TRAINED]


def _as_measurement(y: Union[Measurement, torch.Tensor], task_or_operator: Union[str, LinearOperator, None],
                    sigma_y: Optional[float], task: Optional[str],
                    image_shape: Optional[tuple[int, ...]]) -> Measurement:
    """A :class:`Measurement` from what :meth:`Model.restore` was given (one-line errors)."""
    if isinstance(y, Measurement):
        if task_or_operator is not None:
            raise ValueError("a Measurement carries its operator: do not pass task_or_operator too")
        if sigma_y is not None and float(sigma_y) != y.sigma_y:
            raise ValueError(f"the Measurement says sigma_y = {y.sigma_y}, the call {sigma_y}: give one")
        return y if task is None else Measurement(y.op, y.y, y.sigma_y, task)
    if sigma_y is None:
        raise ValueError("pass sigma_y (the measurement noise std on [-1, 1] images), or a Measurement")
    if isinstance(task_or_operator, LinearOperator):
        return Measurement(task_or_operator, y, float(sigma_y), task)
    if isinstance(task_or_operator, str):
        spec = get_task(task_or_operator)
        op = make_operator(spec.name, y.shape[0], image_shape, generator=torch.Generator().manual_seed(0))
        if op.batch_size is not None:
            raise ValueError(f"{spec.name} draws its operator per image (a mask or kernel): pass the operator "
                             f"(exactpost.core.tasks.make_operator, or your own) with task={spec.name!r}")
        return Measurement(op, y, float(sigma_y), spec.name)
    raise ValueError(f"task_or_operator must be a task id ({', '.join(task_names())}) or a LinearOperator")


class Model:
    """A bundled model family (prior, EPS, Palette checkpoints side by side) or one checkpoint.

    Networks load lazily on first use; ``restore`` runs any of :func:`methods` that the
    checkpoints present support (EPS and Palette need their trained networks, the baselines
    the prior)."""

    def __init__(self, entries: dict[str, zoo.ModelEntry], name: str):
        self.name = name
        self.entries = entries
        self._nets: dict[str, torch.nn.Module] = {}

    def __repr__(self) -> str:
        return f"Model({self.name!r}, networks: {', '.join(self.entries)})"

    @property
    def image_shape(self) -> tuple[int, int, int]:
        cfg = next(iter(self.entries.values())).card["model"]["unet"]
        return (int(cfg.get("in_channels", 3)), int(cfg["image_size"]), int(cfg["image_size"]))

    def entry(self, kind: str) -> zoo.ModelEntry:
        """The checkpoint of the ``kind`` network (prior, eps or palette): path and card."""
        if kind not in self.entries:
            raise ValueError(f"{self.name} has no {kind} network (it has: {', '.join(self.entries)})")
        return self.entries[kind]

    def network(self, kind: str) -> torch.nn.Module:
        """The ``kind`` network (prior, eps or palette), loaded once, in eval mode with its
        parameters frozen (restoring never needs their gradients; DPS and PiGDM backpropagate
        to the input only)."""
        if kind not in self._nets:
            net = zoo.load(self.entry(kind)).eval()
            for p in net.parameters():
                p.requires_grad_(False)
            self._nets[kind] = net
        return self._nets[kind]

    def demo_images(self) -> torch.Tensor:
        """The bundled test images of this family as float [N, C, H, W] in [-1, 1]."""
        return to_float(torch.from_numpy(zoo.demo_images(self.name)).permute(0, 3, 1, 2).contiguous())

    @torch.no_grad()
    def restore(self, y: Union[Measurement, torch.Tensor], task_or_operator: Union[str, LinearOperator, None] = None,
                *, sigma_y: Optional[float] = None, task: Optional[str] = None, samples: int = 4,
                nfe: Optional[int] = None, method: str = "eps", generator: Optional[torch.Generator] = None,
                sampler: Any = None, settings: Optional[dict] = None, scheduler: Any = None,
                on_sample: Optional[Callable[[int], None]] = None) -> Restoration:
        """Posterior mean, ``samples`` posterior samples and the per-pixel std for y.

        Args:
            y: a :class:`Measurement`, or the measurement tensor [B, *op.out_shape].
            task_or_operator: with a tensor y, a task id whose operator the name fixes
                (sr4, deblur-gauss) or the operator itself.
            sigma_y: the noise std (with a tensor y).
            task: the task embedding a trained network uses with an operator of your own.
            samples: posterior samples per image (0: the mean only, for EPS and Palette).
            nfe: network evaluations per sample (default: 20 for EPS, 100 otherwise).
            method: ``eps``, ``palette`` or a baseline (:func:`methods`).
            generator: all randomness.
            sampler: the sampler spec of eps/palette (:mod:`exactpost.core.sampler_spec`; None: theirs).
            settings: a baseline's settings (e.g. tuned step sizes; :func:`exactpost.baselines.run_method`).
            scheduler: a diffusers scheduler object sampling eps/palette on a diffusers backbone.
            on_sample: called with i after each posterior sample of eps/palette (progress bars).
        Returns:
            :class:`~exactpost.inference.restoration.Restoration`: ``mean``, ``samples`` [M, B, ...],
            ``std``, ``nfe`` (per sample), ``seconds``.
        """
        if method not in methods():
            raise ValueError(f"unknown method {method!r}; choose one of {', '.join(methods())}")
        m = _as_measurement(y, task_or_operator, sigma_y, task,
                            None if isinstance(y, Measurement) else self.image_shape)
        nfe = (20 if method == "eps" else 100) if nfe is None else int(nfe)
        if method in TRAINED and m.task is None:
            raise ValueError(f"the {method} network embeds the task: pass task= (one of {', '.join(task_names())})")
        kind = method if method in TRAINED else "prior"
        return restore_measurement(method, self.network(kind), self.entry(kind).card, m.op, m.y, m.sigma_y, m.task,
                                   n_samples=samples, nfe=nfe, generator=generator, settings=settings,
                                   sampler=sampler, scheduler=scheduler, on_sample=on_sample)


def restore_measurement(method: str, net: torch.nn.Module, card: dict, op: LinearOperator, y: torch.Tensor,
                        sigma_y: float, task: Optional[str], *, n_samples: int = 4, nfe: int = 20,
                        generator: Optional[torch.Generator] = None, settings: Optional[dict] = None,
                        sampler: Any = None, scheduler: Any = None,
                        on_sample: Optional[Callable[[int], None]] = None) -> Restoration:
    """The one dispatcher under :meth:`Model.restore`, for a network already in hand: ``eps``
    and ``palette`` take their trained network and card; every zero-shot baseline of
    :mod:`exactpost.baselines` takes the prior network (``card`` unused) and optional
    ``settings`` (e.g. tuned step sizes; an error for the trained methods). Returns a
    :class:`~exactpost.inference.restoration.Restoration` (mean, samples [M, B, ...], std, NFE).
    ``sampler``: the sampler spec of ``eps``/``palette`` (:mod:`exactpost.core.sampler_spec`; None:
    their defaults; an error for the baselines). ``scheduler``: a diffusers scheduler object
    that samples ``eps``/``palette`` on a diffusers backbone instead
    (:func:`exactpost.backbones.scheduler_restore.scheduler_restore`)."""
    g = generator
    if scheduler is not None:
        if sampler is not None:
            raise ValueError("give a sampler spec or a diffusers scheduler, not both")
        if settings:
            raise ValueError(f"{method} takes no baseline settings (got {sorted(settings)})")
        from ..backbones.scheduler_restore import scheduler_restore

        return scheduler_restore(method, net, card, scheduler, op, y, sigma_y, task, n_samples=n_samples, nfe=nfe,
                                 generator=g)
    if sampler is not None and method not in TRAINED:
        raise ValueError(f"{method} has its own sampler; a sampler spec applies to eps and palette only")
    if settings and method in TRAINED:
        raise ValueError(f"{method} takes no baseline settings (got {sorted(settings)})")
    if method == "eps":
        return eps_restore(net, card, op, y, sigma_y, task, n_samples=n_samples, nfe=nfe, generator=g, sampler=sampler,
                           on_sample=on_sample)
    if method == "palette":
        return palette_restore(net, card, op, y, sigma_y, task, n_samples=n_samples, nfe=nfe, generator=g,
                               sampler=sampler, on_sample=on_sample)
    from .baselines_restore import baseline_restore

    return baseline_restore(method, net, op, y, sigma_y, n_samples=n_samples, nfe=nfe, generator=g, task=task,
                            settings=settings)


def load(name_or_path: Union[str, Path]) -> Model:
    """A bundled model by name (``exactpost models`` lists them; every network of the family)
    or one checkpoint by path (``path/to/model`` or ``path/to/model.safetensors``)."""
    text = str(name_or_path)
    if text in zoo.model_names():
        entries = {}
        for kind in zoo.KINDS:  # a checkpoint pair or a diffusers folder per kind
            try:
                entries[kind] = zoo.find_model(text, kind)
            except zoo.ModelNotFound:
                pass
        return Model(entries, text)
    entry = zoo.find_model(text, "eps")  # a path: its own card says what it is
    kind = entry.card.get("objective", {}).get("kind", "prior") if isinstance(entry.card.get("objective"), dict) \
        else "prior"
    return Model({kind: zoo.ModelEntry(entry.name, kind, entry.path, entry.card)}, entry.name)
