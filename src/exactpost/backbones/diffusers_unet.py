"""A diffusers ``UNet2DModel`` as exactpost's denoiser, in the model's own noise schedule.

The wrapper has the interface of :class:`exactpost.nets.EDMPrecond`::

    model(x, sigma, cond=None, task_id=None, sigma_y=None) -> x0_hat     x = x0 + sigma e

so :func:`exactpost.nets.as_denoiser` (any interpolant), :func:`exactpost.nets.as_eps_network`
(the EPS posterior denoiser), :mod:`exactpost.inference.restoration`, every sampler and every baseline
take it unchanged. One call, with a = sqrt(abar) = 1 / sqrt(1 + sigma^2):

    x_vp  = a x                                   the model's own input scale
    t     = t(sigma)                              its timestep, log-sigma interpolated
                                                  (:class:`~exactpost.backbones.vp_schedule.VPSchedule`)
    out   = unet(concat(x_vp, cond), t, class_labels = task_id)
    x0_hat = x - sigma out                        epsilon prediction
           = a^2 x - a sigma out                  v prediction (v = a e - a sigma x0)
           = out                                  sample prediction

The conversion uses the true sigma, so a network that returns the true noise e denoises
exactly (tested). A learned-variance network (``out_channels = 2 x image channels``, as in
improved-diffusion; scheduler ``variance_type`` learned/learned_range) is used through the
first half of its output, the mean; the variance half is ignored, as exactpost's samplers
choose their own noise. ``cond`` channels (EPS / Palette conditioning of
:mod:`exactpost.core.conditioning`) go unscaled into the extra input channels of a widened
``conv_in`` (:mod:`exactpost.backbones.widen`); the task id goes in as the class label of a
zero-initialised class embedding. At inference, when cond and the task are the same on every
call (one restoration), both are folded into the network once
(:mod:`exactpost.backbones.constant_inputs`: conv_in's conditioning part and the task
embedding precomputed), so a step costs what the unconditional network's step costs. sigma_y has no embedding: it reaches the network through
the conditioning channels (x_reg uses rho0 = sigma_y^2 / sigma_data^2).

Loading (:func:`load_backbone`) is offline only: ``HF_HUB_OFFLINE=1`` (unless already set),
``local_files_only=True``, ``use_safetensors=True``; diffusers is imported here, lazily,
never by exactpost's core.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from ..nets.precond import _sigma_vector
from .constant_inputs import ConstantInputCache
from .layout import BackboneError, CARD_NAME, FolderLayout, read_json, resolve_folder
from .vp_schedule import VPSchedule, check_scheduler_config

LEARNED_VARIANCE = ("learned", "learned_range")
#: the card entry naming the backbone
BACKBONE = "diffusers-unet2d"


def import_diffusers() -> Any:
    """The diffusers module, imported offline (sets ``HF_HUB_OFFLINE=1`` and
    ``HF_HUB_DISABLE_TELEMETRY=1`` unless the user set them); a one-line error without it."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    try:
        import diffusers
    except ImportError:
        raise BackboneError("diffusers backbones need the optional extra: pip install 'exactpost[diffusers]'") from None
    return diffusers


@dataclass(frozen=True)
class BackboneConfig:
    """What exactpost needs to know about a wrapped UNet2DModel (the fields restoration
    reads from :class:`~exactpost.nets.UNetConfig` have the same names).

    Attributes:
        image_size: H = W of the images.
        image_channels: channels of x (3 for RGB).
        cond_channels: extra input channels for the conditioning (0 for a prior).
        num_tasks: rows of the class embedding used as the task embedding (0: none).
        prediction_type: ``epsilon``, ``v_prediction`` or ``sample``.
        learned_variance: whether the output has a variance half (ignored).
        sigma_y_embedding: always False (module docstring).
    """

    image_size: int
    image_channels: int
    cond_channels: int
    num_tasks: int
    prediction_type: str
    learned_variance: bool
    sigma_y_embedding: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _image_size(unet: nn.Module) -> int:
    size = unet.config.sample_size
    if isinstance(size, (list, tuple)):
        if len(size) != 2 or size[0] != size[1]:
            raise BackboneError(f"exactpost works on square images; this UNet2DModel has sample_size {list(size)}")
        size = size[0]
    if not isinstance(size, int) or size < 1:
        raise BackboneError(f"the UNet2DModel config has no usable sample_size ({size!r})")
    return size


class DiffusersUNetDenoiser(nn.Module):
    """D(x, sigma, cond, task_id) -> x0_hat around a diffusers ``UNet2DModel`` (module docstring).

    Args:
        unet: the diffusers UNet2DModel (DDPM-style timesteps; not a Fourier/VE one).
        schedule: the discrete VP schedule it was trained with.
        prediction_type: ``epsilon``, ``v_prediction`` or ``sample``.
        image_channels: channels of x (default: out_channels, halved for learned variance).
        learned_variance: the output's second half is a variance (ignored).
        num_tasks: use the class embedding as a task embedding with this many rows (0: no).
        class_label: for a class-conditional prior (class embedding, num_tasks = 0), the class
            every call uses.
    """

    def __init__(self, unet: nn.Module, schedule: VPSchedule, prediction_type: str = "epsilon", *,
                 image_channels: Optional[int] = None, learned_variance: bool = False, num_tasks: int = 0,
                 class_label: Optional[int] = None):
        super().__init__()
        cfg = unet.config
        if cfg.time_embedding_type == "fourier":
            raise BackboneError("this UNet2DModel takes Fourier (score-SDE, variance-exploding) noise levels, not DDPM "
                                "timesteps; exactpost wraps DDPM-style models")
        if prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise BackboneError(f"unknown prediction_type {prediction_type!r}; use epsilon, v_prediction or sample")
        out = int(cfg.out_channels)
        if learned_variance and out % 2:
            raise BackboneError(f"a learned-variance model needs an even out_channels, got {out}")
        c = int(image_channels) if image_channels is not None else (out // 2 if learned_variance else out)
        if out != (2 * c if learned_variance else c):
            raise BackboneError(f"out_channels {out} does not fit {c} image channels"
                                f"{' with a learned variance' if learned_variance else ''}")
        if int(cfg.in_channels) < c:
            raise BackboneError(f"in_channels {cfg.in_channels} is fewer than the {c} image channels")
        has_classes = getattr(unet, "class_embedding", None) is not None
        if num_tasks and (not has_classes or cfg.class_embed_type is not None or cfg.num_class_embeds != num_tasks):
            raise BackboneError(f"num_tasks={num_tasks} needs a class embedding with {num_tasks} rows")
        if has_classes and not num_tasks and class_label is None:
            raise BackboneError("this UNet2DModel is class-conditional: pass class_label (the class to sample); exactpost "
                                "fine-tunes unconditional models only")
        self.unet, self.schedule = unet, schedule
        self._config = BackboneConfig(_image_size(unet), c, int(cfg.in_channels) - c, int(num_tasks),
                                      prediction_type, bool(learned_variance))
        self.class_label = class_label
        #: inference with the same cond / task on every call (a restoration) folds them into the
        #: network once (:mod:`~exactpost.backbones.constant_inputs`); False: concatenate each call
        self.fold_constant_inputs = True
        self._constant_inputs = ConstantInputCache()

    @property
    def config(self) -> BackboneConfig:
        return self._config

    def to_dict(self) -> dict[str, Any]:
        """The card's ``backbone`` entry."""
        return {"backbone": BACKBONE, **self._config.to_dict(),
                "task_embedding": "class_embedding" if self._config.num_tasks else None,
                "num_train_timesteps": self.schedule.num_train_timesteps}

    # --- the pieces ---------------------------------------------------------------------
    def _check(self, x: torch.Tensor, cond: Optional[torch.Tensor]) -> None:
        c, k = self._config.image_channels, self._config.cond_channels
        if x.dim() != 4 or x.shape[1] != c:
            raise ValueError(f"x must have shape [B, {c}, H, W], got {tuple(x.shape)}")
        if k == 0 and cond is not None:
            raise ValueError("cond given but the network has no conditioning channels")
        if k and (cond is None or tuple(cond.shape) != (x.shape[0], k) + tuple(x.shape[2:])):
            got = None if cond is None else tuple(cond.shape)
            raise ValueError(f"the network expects cond [B, {k}, H, W] = {[x.shape[0], k, *x.shape[2:]]}, got {got}")

    def _labels(self, task_id: Any, batch: int, device: torch.device) -> Optional[torch.Tensor]:
        if self._config.num_tasks:
            if task_id is None:
                raise ValueError("this network embeds the task: pass task_id")
            return torch.as_tensor(task_id, dtype=torch.long, device=device).expand(batch)
        if self.class_label is not None:
            return torch.full((batch,), int(self.class_label), dtype=torch.long, device=device)
        return None

    def prediction(self, x: torch.Tensor, sigma: Any, cond: Optional[torch.Tensor] = None,
                   task_id: Any = None) -> torch.Tensor:
        """The network's raw output (mean half) in its own parameterisation, [B, C, H, W]
        in x's dtype, for x = x0 + sigma e (sigma float or [B], > 0)."""
        self._check(x, cond)
        dtype = self.unet.conv_in.weight.dtype  # not unet.dtype: diffusers walks every module for it
        learned = self.unet.config.time_embedding_type == "learned"
        sf = _uniform_sigma(sigma, x.shape[0])
        if sf is not None:  # one noise level for the batch (a sampler step): Python floats, few tensor ops
            inp = (x * (1.0 / math.sqrt(1.0 + sf * sf))).to(dtype)
            tf = self.schedule.timestep_float(sf)
            t = torch.full((x.shape[0],), round(tf) if learned else tf, device=x.device,
                           dtype=torch.long if learned else torch.float32)
        else:
            s = _sigma_vector(sigma, x.shape[0], x)
            a = (1.0 / (1.0 + s**2).sqrt()).to(x.dtype).reshape(-1, 1, 1, 1)
            inp = (a * x).to(dtype)
            t = self.schedule.timestep(s.cpu())  # the sigma table lives on the CPU
            t = (t.round().long() if learned else t.to(torch.float32)).to(x.device)
        labels = self._labels(task_id, x.shape[0], x.device)
        fast = (self._constant_inputs.get(self.unet, self._config.image_channels, x, cond, labels)
                if self.fold_constant_inputs else None)
        if fast is not None:  # cond and labels folded in once (constant_inputs): x alone goes in
            out = fast(inp, t, return_dict=False)[0]
        else:
            if cond is not None:
                inp = torch.cat([inp, cond.to(dtype)], dim=1)
            out = self.unet(inp, t, class_labels=labels, return_dict=False)[0]
        return out[:, : self._config.image_channels].to(x.dtype)

    def to_x0(self, out: torch.Tensor, x: torch.Tensor, sigma: Any) -> torch.Tensor:
        """x0_hat from the network output ``out`` at x = x0 + sigma e (module docstring)."""
        kind = self._config.prediction_type
        if kind == "sample":
            return out
        sf = _uniform_sigma(sigma, x.shape[0])
        if sf is not None and kind == "epsilon":
            return torch.sub(x, out, alpha=sf)
        s = _sigma_vector(sigma, x.shape[0], x)
        sv = s.to(x.dtype).reshape(-1, 1, 1, 1)
        if kind == "epsilon":
            return x - sv * out
        a2 = (1.0 / (1.0 + s**2)).to(x.dtype).reshape(-1, 1, 1, 1)
        return a2 * x - a2.sqrt() * sv * out

    def target(self, x0: torch.Tensor, x: torch.Tensor, sigma: Any) -> torch.Tensor:
        """What a perfect network outputs for clean x0 and input x = x0 + sigma e (training
        target in the model's own parameterisation): e = (x - x0)/sigma, v = a e - a sigma x0,
        or x0; :meth:`to_x0` inverts it."""
        s = _sigma_vector(sigma, x.shape[0], x)
        kind = self._config.prediction_type
        if kind == "sample":
            return x0
        sv = s.to(x.dtype).reshape(-1, 1, 1, 1)
        e = (x - x0) / sv
        if kind == "epsilon":
            return e
        a = (1.0 / (1.0 + s**2).sqrt()).to(x.dtype).reshape(-1, 1, 1, 1)
        return a * e - a * sv * x0

    def forward(self, x: torch.Tensor, sigma: Any, cond: Optional[torch.Tensor] = None, task_id: Any = None,
                sigma_y: Any = None) -> torch.Tensor:
        """x0_hat [B, C, H, W] for x = x0 + sigma e (sigma float or [B]); ``sigma_y`` is
        accepted for the EDMPrecond interface and not used (module docstring)."""
        sf = _uniform_sigma(sigma, x.shape[0])  # parsed once for both halves
        sigma = sf if sf is not None else sigma
        return self.to_x0(self.prediction(x, sigma, cond, task_id), x, sigma)


def _uniform_sigma(sigma: Any, batch: int) -> Optional[float]:
    """sigma as one Python float when it is a number or a tensor of 1 or ``batch`` equal
    values, else None; ValueError (as :func:`~exactpost.nets.precond._sigma_vector`) for a
    value that is not finite and > 0."""
    if isinstance(sigma, (int, float)):
        values = [float(sigma)]
    elif isinstance(sigma, torch.Tensor) and sigma.numel() in (1, batch) and sigma.dim() <= 1:
        values = sigma.detach().reshape(-1).tolist()
    else:
        return None
    if not all(math.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"sigma must be finite and > 0, got {values}; use sigma_min > 0 for the last step")
    return values[0] if all(v == values[0] for v in values) else None


# --- loading ------------------------------------------------------------------------------
def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes (read in 1 MiB blocks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def schedule_from_config(config: dict[str, Any]) -> VPSchedule:
    """The :class:`VPSchedule` of a scheduler config, its betas computed by diffusers'
    own scheduler class (the model's exact training schedule)."""
    diffusers = import_diffusers()
    check_scheduler_config(config)
    cls = getattr(diffusers, str(config["_class_name"]), None) or diffusers.DDPMScheduler
    try:
        sched = cls.from_config(config)
    except (ValueError, TypeError, NotImplementedError) as exc:
        raise BackboneError(f"diffusers cannot build the scheduler ({str(exc).splitlines()[0][:160]})") from None
    abar = getattr(sched, "alphas_cumprod", None)
    if abar is None:
        abar = diffusers.DDPMScheduler.from_config(config).alphas_cumprod
    return VPSchedule(abar)


def _load_unet(diffusers: Any, lay: FolderLayout) -> nn.Module:
    try:
        return diffusers.UNet2DModel.from_pretrained(str(lay.unet_dir), local_files_only=True, use_safetensors=True)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as exc:
        raise BackboneError(f"{lay.unet_dir}: diffusers cannot load this UNet2DModel "
                            f"({' '.join(str(exc).split())[:200]})") from None


def load_backbone(path: str | os.PathLike, *, class_label: Optional[int] = None
                  ) -> tuple[DiffusersUNetDenoiser, dict[str, Any]]:
    """Load a local diffusers folder (either layout, :mod:`~exactpost.backbones.layout`) as a
    :class:`DiffusersUNetDenoiser` (eval mode) and its card: exactpost's card for a model
    fine-tuned here (weights checked against its sha256), else a prior's card made on the
    spot (``objective.kind`` = prior, the weights' sha256, the folder)."""
    lay = resolve_folder(path)
    card = read_json(lay.card, "exactpost card") if lay.card is not None else {}
    digest = file_sha256(lay.weights)
    if card.get("sha256") and card["sha256"] != digest:
        raise BackboneError(f"{lay.weights} fails its sha256 check against {CARD_NAME} (card {str(card['sha256'])[:12]}..., "
                            f"file {digest[:12]}...): the weights were changed or damaged")
    sched_cfg = read_json(lay.scheduler_config, "scheduler config")
    pred = check_scheduler_config(sched_cfg, str(lay.scheduler_config))
    diffusers = import_diffusers()
    schedule = schedule_from_config(sched_cfg)
    unet = _load_unet(diffusers, lay)
    info = card.get("backbone") if isinstance(card.get("backbone"), dict) else {}
    image_channels = info.get("image_channels", None if info else int(unet.config.in_channels))
    learned = sched_cfg.get("variance_type") in LEARNED_VARIANCE or (
        image_channels is not None and int(unet.config.out_channels) == 2 * int(image_channels))
    num_tasks = int(unet.config.num_class_embeds or 0) if info.get("task_embedding") == "class_embedding" else 0
    model = DiffusersUNetDenoiser(unet, schedule, pred, image_channels=image_channels, learned_variance=learned,
                                  num_tasks=num_tasks, class_label=class_label).eval()
    if not card:
        card = {"objective": {"kind": "prior"}, "backbone": model.to_dict(), "source": str(lay.root),
                "layout": lay.layout}
    card = {**card, "sha256": digest}
    return model, card
