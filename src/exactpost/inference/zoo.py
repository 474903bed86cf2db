"""The bundled models: where they live, what they are, how to load them.

Layout (``models/`` at the repository root, or the folder in ``$EXACTPOST_MODELS``)::

    models/<name>/prior.safetensors   + prior.json     unconditional denoiser (EDM precond)
    models/<name>/eps.safetensors     + eps.json       EPS posterior network (all five tasks)
    models/<name>/palette.safetensors + palette.json   Palette baseline (same tasks)
    models/<name>/demo_images.npz                      a few test-split images, uint8 [N, H, W, C]
    models/<name>/<kind>/                              or a diffusers UNet2DModel folder instead
                                                       (:mod:`exactpost.backbones`; also as a path)

Each ``.json`` is the model card written by the training loop (architecture, objective,
data, command, steps, images seen, wall time, hardware, sha256 of the weights) plus the
evaluation numbers added by ``benchmarks/model_quality.py``. Loading goes through
:func:`exactpost.nets.load_model`: safetensors only, digest checked, never
unpickled.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

KINDS = ("prior", "eps", "palette")
DEFAULT_MODEL = "faces-32"
ENV_VAR = "EXACTPOST_MODELS"


class ModelNotFound(ValueError):
    """An unknown model name or kind, or a missing models folder (one-line message)."""


def models_dir() -> Path:
    """The bundled models' folder: ``$EXACTPOST_MODELS`` if set, else ``<repo>/models``."""
    env = os.environ.get(ENV_VAR)
    return Path(env) if env else Path(__file__).resolve().parents[3] / "models"


@dataclass(frozen=True)
class ModelEntry:
    """One bundled checkpoint: ``models/<name>/<kind>.safetensors`` and its card."""

    name: str
    kind: str
    path: Path  # without extension (the checkpoint prefix load_model takes)
    card: dict[str, Any]

    @property
    def params(self) -> int | None:
        return self.card.get("params")

    @property
    def steps(self) -> int | None:
        return self.card.get("steps")


def _read_card(path: Path) -> dict[str, Any]:
    import json

    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelNotFound(f"{path}: unreadable model card ({exc.__class__.__name__}); restore it from git") from None


def _diffusers_folder(path: Path) -> bool:
    from ..backbones.layout import is_diffusers_folder  # pure Python: the core never imports diffusers

    return is_diffusers_folder(path)


def _diffusers_card(path: Path) -> dict[str, Any]:
    """exactpost's card of a diffusers folder (a prior's, made on the spot, if it has none)."""
    from ..backbones.layout import BackboneError, CARD_NAME, resolve_folder

    try:
        lay = resolve_folder(path)
    except BackboneError as exc:
        raise ModelNotFound(str(exc)) from None
    if lay.card is None:
        from ..backbones.diffusers_unet import file_sha256

        return {"objective": {"kind": "prior"}, "source": str(path), "sha256": file_sha256(lay.weights)}
    return _read_card(lay.root / CARD_NAME)


def model_names(root: Path | None = None) -> list[str]:
    """Names of the bundled models (folders holding at least one checkpoint), sorted."""
    root = models_dir() if root is None else root
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir()
                  if p.is_dir() and any((p / f"{k}.json").is_file() or _diffusers_folder(p / k) for k in KINDS))


def list_models(root: Path | None = None) -> list[ModelEntry]:
    """Every bundled checkpoint with its card, ordered by model name then kind."""
    root = models_dir() if root is None else root
    out = []
    for name in model_names(root):
        for kind in KINDS:
            card_path = root / name / f"{kind}.json"
            if card_path.is_file():
                out.append(ModelEntry(name, kind, root / name / kind, _read_card(card_path)))
    return out


def find_model(name: str, kind: str = "eps", root: Path | None = None) -> ModelEntry:
    """The entry for bundled model ``name`` and ``kind``; or a checkpoint path given as
    ``name`` (``path/to/x`` or ``path/to/x.safetensors``), for users' own models."""
    root = models_dir() if root is None else root
    if kind not in KINDS:
        raise ModelNotFound(f"unknown model kind {kind!r}; choose one of {', '.join(KINDS)}")
    if _diffusers_folder(Path(name)):  # a user's diffusers UNet2DModel folder (exactpost.backbones)
        return ModelEntry(Path(name).name, kind, Path(name), _diffusers_card(Path(name)))
    as_path = Path(name)
    if as_path.suffix in (".safetensors", ".json") or as_path.parent != Path("."):
        prefix = as_path.with_suffix("") if as_path.suffix in (".safetensors", ".json") else as_path
        card = prefix.with_suffix(".json")
        if not card.is_file():
            raise ModelNotFound(f"model checkpoint {prefix}.json not found; give a bundled name "
                                f"({', '.join(model_names(root)) or 'none installed'}) or an existing checkpoint")
        return ModelEntry(prefix.name, kind, prefix, _read_card(card))
    names = model_names(root)
    if name not in names:
        raise ModelNotFound(f"unknown model {name!r}; bundled models: {', '.join(names) or 'none (models/ is missing)'}"
                            " (see `exactpost models`)")
    card = root / name / f"{kind}.json"
    if _diffusers_folder(root / name / kind):  # models/<name>/<kind>/ holding a diffusers folder
        return ModelEntry(name, kind, root / name / kind, _diffusers_card(root / name / kind))
    if not card.is_file():
        have = [k for k in KINDS if (root / name / f"{k}.json").is_file()]
        raise ModelNotFound(f"model {name!r} has no {kind} network (it has: {', '.join(have)})")
    return ModelEntry(name, kind, root / name / kind, _read_card(card))


def is_diffusers(entry: ModelEntry) -> bool:
    """Whether ``entry`` is a diffusers UNet2DModel folder (pure Python, no diffusers import)."""
    return _diffusers_folder(entry.path)


def load(entry: ModelEntry) -> torch.nn.Module:
    """The network of ``entry`` (an :class:`~exactpost.nets.EDMPrecond`, eval mode)."""
    if _diffusers_folder(entry.path):
        from ..backbones.diffusers_unet import load_backbone

        return load_backbone(entry.path)[0]
    from ..nets.loading import load_model

    model, _ = load_model(entry.path)
    return model


def demo_images(name: str, root: Path | None = None) -> np.ndarray:
    """The test-split images bundled with model ``name`` for the demo, uint8 [N, H, W, C]."""
    root = models_dir() if root is None else root
    path = root / name / "demo_images.npz"
    if not path.is_file():
        raise ModelNotFound(f"model {name!r} has no demo images ({path} missing); pass --images with a folder or .npz")
    with np.load(path, allow_pickle=False) as z:
        return z["images"]


def find_encoder(family_or_path: str | Path) -> Any:
    """The encoder of a bundled model family (``models/<family>/encoder``) or at a
    checkpoint path; None when there is none."""
    from ..nets.encoder import KIND, load_encoder

    p = Path(family_or_path)
    for candidate in (p, p / KIND, models_dir() / str(family_or_path) / KIND):
        if Path(str(candidate) + ".json").exists():
            return load_encoder(candidate)
    return None
