"""Loading a trained network from its checkpoint: the card names the architecture, the
safetensors file holds the weights (the EMA copy when present). Nothing is unpickled; the
weights' sha256 is checked against the card (:mod:`exactpost.io.checkpoint`)."""

from __future__ import annotations

import os
from typing import Optional

from ..io.checkpoint import CheckpointError, load_checkpoint
from .precond import EDMPrecond

__all__ = ["load_model"]


def load_model(path: str | os.PathLike, expect: Optional[dict] = None) -> tuple[EDMPrecond, dict]:
    """Load an exported model checkpoint (``model.safetensors`` + ``model.json``, or any pair
    written by :func:`exactpost.training.loop.export_model`): returns the EDMPrecond (eval mode) and its card."""
    tensors, card = load_checkpoint(path, expect=expect)
    if not isinstance(card.get("model"), dict):
        raise CheckpointError(f"{path}: card has no 'model' architecture entry (a JSON object); not an exactpost model")
    # a foreign card can hold any JSON under "model" (a string, a list, null fields): every
    # failure to read it is this file's fault, reported in one line, never a traceback
    try:
        model = EDMPrecond.from_dict(card["model"])
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        msg = str(exc).splitlines()[0][:200] if str(exc) else exc.__class__.__name__
        raise CheckpointError(f"{path}: the card's 'model' entry is not an exactpost architecture ({msg})") from None
    try:
        model.load_state_dict({k[len("ema."):]: v for k, v in tensors.items() if k.startswith("ema.")}
                              or tensors, strict=True)
    except (RuntimeError, KeyError, ValueError) as exc:
        msg = str(exc).splitlines()[0][:200]
        raise CheckpointError(f"{path}: weights do not fit the architecture in its card ({msg})") from None
    return model.eval(), card
