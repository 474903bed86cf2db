"""Where the parts of a local diffusers UNet2DModel folder are (pure Python: no torch, no
diffusers, so the core can ask "is this a diffusers folder?" for free).

Two layouts are accepted, both local only:

* the pipeline layout ``DIR/unet/{config.json, diffusion_pytorch_model.safetensors}`` with
  ``DIR/scheduler/scheduler_config.json`` (what ``DDPMPipeline.save_pretrained`` writes);
* the flat layout ``DIR/{config.json, diffusion_pytorch_model.safetensors,
  scheduler_config.json}`` (e.g. the DDPM CIFAR-10 32x32 model), which is also what
  exactpost's fine-tuning writes, plus exactpost's card ``DIR/exactpost.json``.

Weights are read from safetensors only: a folder holding only a pickled
``diffusion_pytorch_model.bin`` gets a one-line error saying how to convert it once.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

#: exactpost's card inside a diffusers folder (command, data, steps, sha256, objective)
CARD_NAME = "exactpost.json"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
SHARDED_INDEX = WEIGHTS_NAME + ".index.json"
PICKLED_NAME = "diffusion_pytorch_model.bin"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


class BackboneError(ValueError):
    """A diffusers folder that cannot be used; the one-line message says why and what to do."""


@dataclass(frozen=True)
class FolderLayout:
    """The files of one diffusers UNet2DModel folder.

    Attributes:
        root: the folder given by the user.
        unet_dir: the folder ``UNet2DModel.from_pretrained`` loads (``root`` or ``root/unet``).
        scheduler_config: the scheduler's JSON config.
        weights: the safetensors file (or the index of a sharded one).
        card: exactpost's card if the folder has one (a fine-tuned model), else None.
        layout: ``"flat"`` or ``"pipeline"``.
    """

    root: Path
    unet_dir: Path
    scheduler_config: Path
    weights: Path
    card: Optional[Path]
    layout: str


def is_diffusers_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder that looks like a diffusers model (``config.json`` or
    ``unet/config.json`` inside); nothing is validated or imported."""
    p = Path(path)
    return p.is_dir() and ((p / "config.json").is_file() or (p / "unet" / "config.json").is_file())


def _not_local(path: str) -> BackboneError:
    if _HUB_ID.match(path):
        return BackboneError(
            f"{path!r} is not a local folder; exactpost never downloads models: fetch it once yourself "
            f"(e.g. `hf download {path} --local-dir DIR`) and pass DIR")
    return BackboneError(f"diffusers model folder {path} does not exist")


def read_json(path: Path, what: str) -> dict[str, Any]:
    """A JSON object from ``path`` (one-line BackboneError if unreadable or not an object)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BackboneError(f"{path}: unreadable {what} ({exc.__class__.__name__})") from None
    if not isinstance(data, dict):
        raise BackboneError(f"{path}: the {what} is not a JSON object")
    return data


def _weights(unet_dir: Path) -> Path:
    for name in (WEIGHTS_NAME, SHARDED_INDEX):
        if (unet_dir / name).is_file():
            return unet_dir / name
    if (unet_dir / PICKLED_NAME).is_file():
        folder = str(unet_dir)
        raise BackboneError(
            f"{unet_dir} has only pickled weights ({PICKLED_NAME}); exactpost loads safetensors only. Convert them once "
            f"with a diffusers you trust: python -c \"from diffusers import UNet2DModel; "
            f"UNet2DModel.from_pretrained('{folder}', use_safetensors=False).save_pretrained('{folder}')\"")
    raise BackboneError(f"{unet_dir} has no {WEIGHTS_NAME}; it is not a saved UNet2DModel")


def resolve_folder(path: str | os.PathLike) -> FolderLayout:
    """The :class:`FolderLayout` of a local diffusers folder, checked (module docstring);
    BackboneError (one line) for a hub id, a missing folder, a file, another model class,
    pickled-only weights or a missing scheduler config."""
    text = str(path)
    p = Path(path).expanduser()
    if not p.exists():
        raise _not_local(text)
    if not p.is_dir():
        raise BackboneError(f"{text} is a file; give the folder holding config.json (or unet/config.json)")
    if (p / "unet" / "config.json").is_file():
        unet_dir, layout = p / "unet", "pipeline"
        candidates = [p / "scheduler" / "scheduler_config.json", p / "scheduler_config.json"]
    elif (p / "config.json").is_file():
        unet_dir, layout = p, "flat"
        candidates = [p / "scheduler_config.json", p / "scheduler" / "scheduler_config.json"]
    else:
        raise BackboneError(f"{text} is not a diffusers UNet2DModel folder (no config.json nor unet/config.json)")
    cls = read_json(unet_dir / "config.json", "model config").get("_class_name", "UNet2DModel")
    if cls != "UNet2DModel":
        raise BackboneError(f"{unet_dir / 'config.json'} describes a {cls}; exactpost wraps UNet2DModel backbones only")
    weights = _weights(unet_dir)
    sched = next((c for c in candidates if c.is_file()), None)
    if sched is None:
        raise BackboneError(f"{text} has no scheduler config ({candidates[0].relative_to(p)}); exactpost needs the "
                            f"noise schedule the model was trained with")
    card = p / CARD_NAME if (p / CARD_NAME).is_file() else None
    return FolderLayout(p, unet_dir, sched, weights, card, layout)
