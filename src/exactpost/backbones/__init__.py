"""Bring your own diffusion model: diffusers ``UNet2DModel`` backbones (optional extra
``pip install 'exactpost[diffusers]'``).

Nothing here imports diffusers at import time; the functions that need it import it when
called (offline). exactpost's core reaches this package only through
:func:`~exactpost.backbones.layout.is_diffusers_folder` (pure Python) and lazy imports.

* :mod:`.layout`: the two folder layouts (pipeline ``unet/`` + ``scheduler/``, or flat), offline
  and safetensors-only checks;
* :mod:`.vp_schedule`: the model's discrete VP schedule, sigma <-> timestep;
* :mod:`.diffusers_unet`: :class:`DiffusersUNetDenoiser` (the EDMPrecond interface, so every
  sampler, baseline and restoration takes it) and :func:`load_backbone`;
* :mod:`.widen`: zero-initialised conditioning channels and task embedding;
* :mod:`.scheduler_sampling`: :func:`scheduler_sample` drives diffusers schedulers with any
  exactpost denoiser (the EPS posterior denoiser included);
* :mod:`.scheduler_restore`: ``exactpost restore --scheduler NAME``: EPS / Palette restoration
  sampled by the model's own diffusers scheduler;
* :mod:`.constant_inputs`: the conditioning channels and task embedding of a restoration folded
  into the network once (a step then costs what the unconditional network's step costs);
* :mod:`.finetune`: EPS / Palette fine-tuning (resumable), saved as a diffusers folder with
  exactpost's card.
"""

from .diffusers_unet import BackboneConfig, DiffusersUNetDenoiser, load_backbone
from .layout import BackboneError, is_diffusers_folder, resolve_folder
from .scheduler_sampling import DRIVABLE, make_scheduler, scheduler_sample
from .vp_schedule import VPSchedule
from .widen import add_task_embedding, widen_conv_in

__all__ = [
    "BackboneConfig", "BackboneError", "DiffusersUNetDenoiser", "DRIVABLE", "VPSchedule", "add_task_embedding",
    "is_diffusers_folder", "load_backbone", "make_scheduler", "resolve_folder", "scheduler_sample", "widen_conv_in",
]
