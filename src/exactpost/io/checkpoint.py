"""Checkpoints: ``<name>.safetensors`` (all tensors) + ``<name>.json`` (the card).

Nothing is ever unpickled: weights are read with safetensors, everything else is JSON.

Card
    A JSON object holding whatever the caller passes (architecture config, training
    hyper-parameters, metrics) plus the reserved keys written by :func:`save_checkpoint`:
    ``format_version`` (int), ``sha256`` (hex digest of the weights file's bytes),
    ``weights_bytes`` (its size), ``weights_file`` (its name) and ``library``.
    :func:`load_checkpoint` verifies the digest before parsing the weights, and compares the
    card against ``expect`` (e.g. ``{"model": precond.to_dict()}``) key by key.

Atomicity
    Both files are first written in full to temporary files in the target directory
    (write, flush, ``os.fsync``), then renamed over the old files with ``os.replace``
    (weights first, then card) and the directory is fsynced. A failure or crash while the
    temporary files are written leaves the previous checkpoint untouched. The pair is two
    files, so a crash in the microseconds between the two renames leaves new weights beside
    the old card: the digest then disagrees and :func:`load_checkpoint` refuses the pair
    loudly (it never loads a mismatched pair silently). Keep the previous checkpoint under
    another name if that window matters. A write that fails (disk full, permission lost)
    raises :class:`~exactpost.io.atomic.WriteError`, an ``OSError`` whose one-line message
    names the file and the cause; its temporary files are removed first.

Training state
    :func:`pack_state` turns model, EMA, optimiser, scheduler state, step counter and RNG
    states into ``(tensors, card_part)``; tensors go in the safetensors file under the
    prefixes ``model.``, ``ema.``, ``optim.state.<i>.<name>``, ``rng.torch``,
    ``rng.gen.<name>``, ``extra.``; everything else (optimiser param_groups, scalar state,
    step, Python/NumPy RNG states) goes in the card under ``"train_state"``.
    :func:`unpack_state` restores all of it exactly, so a resumed run is bit-identical::

        tensors, part = pack_state(model=net, ema=ema, optimizer=opt, step=step,
                                   rng={"data": data_gen})
        save_checkpoint(path, tensors, {"model": net.to_dict(), **part})
        ...
        tensors, card = load_checkpoint(path, expect={"model": net.to_dict()})
        info = unpack_state(tensors, card, model=net, ema=ema, optimizer=opt,
                            rng={"data": data_gen})
        step = info["step"]
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import numpy as np
import torch
from torch import nn

from .atomic import WriteError, fsync_dir, write_temp

__all__ = [
    "CheckpointError",
    "FORMAT_VERSION",
    "checkpoint_paths",
    "save_checkpoint",
    "load_checkpoint",
    "pack_state",
    "unpack_state",
]

#: Version of the card layout written by this module.
FORMAT_VERSION = 1
_REQUIRED = ("format_version", "sha256")
_RESERVED = ("format_version", "sha256", "weights_bytes", "weights_file", "library")
_STATE_KEY = "train_state"
PathLike = Union[str, os.PathLike]


class CheckpointError(ValueError):
    """A checkpoint is missing, damaged, foreign, or does not match what was expected."""


def _one_line(text: Any, limit: int = 200) -> str:
    s = " ".join(str(text).split())
    return s if len(s) <= limit else s[: limit - 3] + "..."


def _safetensors() -> Any:
    """The safetensors.torch module (a dependency of exactpost's checkpoints)."""
    try:
        import safetensors.torch as st
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError("exactpost checkpoints need the safetensors package: pip install safetensors") from None
    return st


def checkpoint_paths(path: PathLike) -> tuple[Path, Path]:
    """(weights, card) paths for a checkpoint base path: ``run/ckpt`` (or ``run/ckpt.json`` /
    ``run/ckpt.safetensors``) -> (``run/ckpt.safetensors``, ``run/ckpt.json``)."""
    p = Path(path)
    if p.suffix in (".safetensors", ".json"):
        p = p.with_suffix("")
    if not p.name:
        raise ValueError(f"checkpoint path {str(path)!r} has no file name; pass e.g. 'runs/model'")
    return p.with_name(p.name + ".safetensors"), p.with_name(p.name + ".json")


# ---------------------------------------------------------------------------------------
# atomic writes
# ---------------------------------------------------------------------------------------


def _write_all(f: Any, data: bytes) -> None:
    """Write ``data`` to the open binary file ``f`` (flushed and fsynced by the caller)."""
    f.write(data)


def _write_temp(directory: Path, name: str, data: bytes) -> Path:
    """Write ``data`` to a new fsynced temporary file in ``directory`` (see
    :func:`exactpost.io.atomic.write_temp`: a failure removes it and raises WriteError)."""
    return write_temp(directory, name, lambda f: _write_all(f, data))


def _prepare_tensors(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU, contiguous, non-aliased copies where needed (safetensors refuses shared storage)."""
    if not isinstance(tensors, Mapping):
        raise ValueError(f"tensors must be a dict of name -> torch.Tensor, got {type(tensors).__name__}")
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for k, v in tensors.items():
        if not isinstance(k, str) or not k:
            raise ValueError(f"tensor names must be non-empty strings, got {k!r}")
        if not isinstance(v, torch.Tensor):
            raise ValueError(f"tensors[{k!r}] is a {type(v).__name__}, not a torch.Tensor; put non-tensors in the card")
        t = v.detach().to("cpu").contiguous()
        storage = t.untyped_storage()
        if storage.data_ptr() in seen or storage.nbytes() != t.numel() * t.element_size():
            t = t.clone()
        if t.numel():
            seen.add(t.untyped_storage().data_ptr())
        out[k] = t
    return out


def save_checkpoint(path: PathLike, tensors: Mapping[str, torch.Tensor], card: Mapping[str, Any]) -> Path:
    """Write ``<path>.safetensors`` and ``<path>.json`` atomically; returns the base path.

    Args:
        path: base path (a trailing ``.json``/``.safetensors`` is ignored); parent
            directories are created.
        tensors: name -> tensor (any device; stored from CPU copies).
        card: JSON-serialisable dict; the reserved keys ``format_version``, ``sha256``,
            ``weights_bytes``, ``weights_file`` and ``library`` are (over)written here.
    """
    from .. import __version__

    st_save = _safetensors().save
    weights_path, card_path = checkpoint_paths(path)
    if not isinstance(card, Mapping):
        raise ValueError(f"card must be a dict, got {type(card).__name__}")
    data = st_save(_prepare_tensors(tensors), metadata={"format": "pt", "exactpost_format_version": str(FORMAT_VERSION)})
    full = {k: v for k, v in card.items() if k not in _RESERVED}
    full.update(format_version=FORMAT_VERSION, sha256=hashlib.sha256(data).hexdigest(), weights_bytes=len(data),
                weights_file=weights_path.name, library=f"exactpost {__version__}")
    try:
        text = json.dumps(full, indent=1)
    except (TypeError, ValueError) as e:
        raise ValueError(f"card is not JSON-serialisable ({_one_line(e)}); store tensors in `tensors`, not in the card") from None

    directory = weights_path.parent
    kept = "the previous checkpoint is unchanged" if card_path.exists() else "no checkpoint was written"
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WriteError(directory, exc, kept=kept) from exc
    tmp_weights = tmp_card = None
    target = weights_path
    try:
        tmp_weights = _write_temp(directory, weights_path.name, data)
        target = card_path
        tmp_card = _write_temp(directory, card_path.name, text.encode("utf-8"))
        target = weights_path
        os.replace(tmp_weights, weights_path)
        tmp_weights = None
        target = card_path
        os.replace(tmp_card, card_path)
        tmp_card = None
    except OSError as exc:  # disk full, permission lost, ...: one line naming the file
        raise WriteError(getattr(exc, "path", target), exc, kept=kept) from exc
    finally:
        for tmp in (tmp_weights, tmp_card):
            if tmp is not None:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
    fsync_dir(directory)
    return weights_path.with_suffix("")


# ---------------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------------


def _normalise(value: Any) -> Any:
    """JSON round trip: tuples -> lists, so expectations compare like stored cards."""
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as e:
        raise ValueError(f"expect must be JSON-serialisable ({_one_line(e)})") from None


def _first_difference(got: Any, want: Any, where: str) -> Optional[tuple[str, Any, Any]]:
    if isinstance(got, dict) and isinstance(want, dict):
        for k in want:
            if k not in got:
                return f"{where}.{k}", "<missing>", want[k]
            d = _first_difference(got[k], want[k], f"{where}.{k}")
            if d:
                return d
        for k in got:
            if k not in want:
                return f"{where}.{k}", got[k], "<absent>"
        return None
    if isinstance(got, list) and isinstance(want, list) and len(got) == len(want):
        for i, (g, w) in enumerate(zip(got, want)):
            d = _first_difference(g, w, f"{where}[{i}]")
            if d:
                return d
        return None
    if type(got) is bool or type(want) is bool:
        return None if (type(got) is type(want) and got == want) else (where, got, want)
    return None if got == want else (where, got, want)


def load_checkpoint(path: PathLike, expect: Optional[Mapping[str, Any]] = None
                    ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read and verify a checkpoint written by :func:`save_checkpoint`.

    Returns ``(tensors, card)`` with CPU tensors. Raises :class:`CheckpointError` (one line,
    naming the file) when either file is missing, the card is not JSON or lacks
    ``format_version``/``sha256``, the weights' size or sha256 differ from the card
    (truncated, modified or foreign file), the weights are not safetensors, or a key of
    ``expect`` differs from the card (the message names the key and both values).
    """
    st_load = _safetensors().load
    weights_path, card_path = checkpoint_paths(path)
    if not card_path.exists() and not weights_path.exists():
        raise CheckpointError(f"no checkpoint at {weights_path.with_suffix('')}: neither {card_path.name} nor {weights_path.name} exists")
    if not card_path.exists():
        raise CheckpointError(f"missing card {card_path}: {weights_path.name} alone is not an exactpost checkpoint (save with save_checkpoint)")
    if not weights_path.exists():
        raise CheckpointError(f"missing weights file {weights_path} next to its card {card_path.name}")
    try:
        card = json.loads(card_path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"card {card_path} is not valid JSON ({_one_line(e)})") from None
    if not isinstance(card, dict):
        raise CheckpointError(f"card {card_path} is JSON but not an object (got {type(card).__name__}); not an exactpost card")
    missing = [k for k in _REQUIRED if k not in card]
    if missing:
        raise CheckpointError(f"card {card_path} lacks required keys {missing}; it was not written by save_checkpoint")
    version = card["format_version"]
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= FORMAT_VERSION:
        raise CheckpointError(f"card {card_path} has format_version {version!r}; this exactpost reads 1..{FORMAT_VERSION} (upgrade exactpost?)")

    data = weights_path.read_bytes()
    size = card.get("weights_bytes")
    if isinstance(size, int) and size != len(data):
        kind = "truncated" if len(data) < size else "has extra bytes"
        raise CheckpointError(f"weights file {weights_path} is {len(data)} bytes but its card says {size} ({kind}; restore it or re-save)")
    digest = hashlib.sha256(data).hexdigest()
    if digest != card["sha256"]:
        raise CheckpointError(
            f"weights file {weights_path} fails its sha256 check (card {str(card['sha256'])[:12]}..., file {digest[:12]}...): "
            "modified, truncated or replaced"
        )
    try:
        tensors = st_load(data)
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(f"weights file {weights_path} is not a readable safetensors file ({_one_line(e)})") from None

    if expect is not None:
        if not isinstance(expect, Mapping):
            raise ValueError(f"expect must be a dict of card fields, got {type(expect).__name__}")
        want = _normalise(dict(expect))
        for key, value in want.items():
            if key not in card:
                raise CheckpointError(f"card {card_path} has no key {key!r} but expect requires {_one_line(repr(value), 120)}")
            diff = _first_difference(card[key], value, key)
            if diff:
                where, got, exp = diff
                raise CheckpointError(
                    f"card {card_path}: {where} is {_one_line(repr(got), 120)} but expected {_one_line(repr(exp), 120)}"
                )
    return tensors, card


# ---------------------------------------------------------------------------------------
# training state
# ---------------------------------------------------------------------------------------

def _encode(obj: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Replace tensors by {"__tensor__": name} (stored in ``tensors`` under ``path``),
    tuples by {"__tuple__": [...]}, dicts with non-string keys by {"__dict__": [[k, v], ...]}."""
    if isinstance(obj, torch.Tensor):
        if path in tensors:
            raise ValueError(f"two state entries map to the tensor name {path!r}; rename a key")
        tensors[path] = obj.detach().clone()
        return {"__tensor__": path}
    if isinstance(obj, Mapping):
        plain = all(isinstance(k, str) and not k.startswith("__") for k in obj)
        if plain:
            return {k: _encode(v, f"{path}.{k}", tensors) for k, v in obj.items()}
        items = []
        for k, v in obj.items():
            if not (k is None or isinstance(k, (str, int, float, bool))):
                raise ValueError(f"cannot store a dict key of type {type(k).__name__} at {path}; use str/int keys")
            items.append([k, _encode(v, f"{path}.{k}", tensors)])
        return {"__dict__": items}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, f"{path}.{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, f"{path}.{i}", tensors) for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, np.generic):
        return obj.item()
    raise ValueError(f"cannot store a {type(obj).__name__} at {path}; convert it to tensors or JSON types")


def _decode(obj: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    """Inverse of :func:`_encode`."""
    if isinstance(obj, dict):
        if len(obj) == 1:
            (tag, val), = obj.items()
            if tag == "__tensor__":
                if val not in tensors:
                    raise CheckpointError(f"training state refers to tensor {val!r}, which the weights file lacks")
                return tensors[val]
            if tag == "__tuple__":
                return tuple(_decode(v, tensors) for v in val)
            if tag == "__dict__":
                return {k: _decode(v, tensors) for k, v in val}
        return {k: _decode(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    return obj


def _state_of(obj: Any, name: str) -> Mapping[str, Any]:
    if not hasattr(obj, "state_dict"):
        raise ValueError(f"{name} must have a state_dict() method (an nn.Module or optimizer), got {type(obj).__name__}")
    return obj.state_dict()


def _pack_module(module: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """nn.Module: flat ``prefix.<param>`` tensors; other objects: the generic encoding."""
    sd = _state_of(module, prefix)
    if isinstance(module, nn.Module):
        extras = {}
        for k, v in sd.items():
            if isinstance(v, torch.Tensor):
                tensors[f"{prefix}.{k}"] = v.detach().clone()
            else:
                extras[k] = v
        return {"__module__": prefix, "extras": _encode(extras, f"{prefix}.__extras__", tensors)}
    return _encode(sd, prefix, tensors)


def _unpack_module(target: Any, entry: Any, prefix: str, tensors: Mapping[str, torch.Tensor]) -> None:
    if isinstance(entry, dict) and entry.get("__module__") == prefix:
        head = prefix + "."
        sd = {k[len(head):]: v for k, v in tensors.items() if k.startswith(head) and not k.startswith(head + "__extras__.")}
        sd.update(_decode(entry.get("extras", {}), tensors))
        if isinstance(target, nn.Module):
            own = target.state_dict()
            missing = sorted(set(own) - set(sd))
            unexpected = sorted(set(sd) - set(own))
            if missing or unexpected:
                raise CheckpointError(
                    f"checkpoint {prefix} weights do not fit the given module: missing {missing[:3]}"
                    f"{'...' if len(missing) > 3 else ''}, unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''}; "
                    "build the module from the checkpoint's card"
                )
            for k, v in sd.items():
                if isinstance(v, torch.Tensor) and isinstance(own[k], torch.Tensor) and v.shape != own[k].shape:
                    raise CheckpointError(
                        f"checkpoint {prefix}.{k} has shape {tuple(v.shape)} but the module expects {tuple(own[k].shape)}; "
                        "build the module from the checkpoint's card"
                    )
    else:
        sd = _decode(entry, tensors)
    target.load_state_dict(sd)


def _u32_hex(values: Any) -> str:
    """A sequence of 32-bit unsigned ints as one big-endian hex string (compact JSON)."""
    return np.asarray(values, dtype=np.uint64).astype(">u4").tobytes().hex()


def _hex_u32(text: str) -> np.ndarray:
    return np.frombuffer(bytes.fromhex(text), dtype=">u4").astype(np.uint32)


def _python_rng_state() -> dict[str, Any]:
    version, internal, gauss = random.getstate()
    return {"version": version, "internal_hex": _u32_hex(internal), "gauss_next": gauss}


def _numpy_rng_state() -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"bit_generator": str(name), "keys_hex": _u32_hex(keys), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}


def pack_state(*, model: Optional[nn.Module] = None, ema: Any = None, optimizer: Optional[torch.optim.Optimizer] = None,
               scheduler_state: Optional[Mapping[str, Any]] = None, step: int = 0,
               rng: Optional[Mapping[str, torch.Generator]] = None, capture_global_rng: bool = True,
               extra: Any = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split a training state into ``(tensors, card_part)`` for :func:`save_checkpoint`.

    Args:
        model: the trained module; its tensors become ``model.<name>``.
        ema: an EMA copy (nn.Module -> ``ema.<name>``) or any object with ``state_dict()``.
        optimizer: e.g. AdamW; state tensors become ``optim.state.<i>.<name>`` (AdamW's
            ``step`` is a 0-d tensor in recent torch and is stored as one); param_groups and
            plain-number state go to the card.
        scheduler_state: a learning-rate scheduler's ``state_dict()`` (JSON types/tensors).
        step: the training step counter.
        rng: named explicit generators (``{"data": g}``); their uint8 states become
            ``rng.gen.<name>``.
        capture_global_rng: also store Python's ``random``, NumPy's legacy global and torch's
            CPU (``rng.torch``) and CUDA (``rng.cuda.<i>``) generator states; torch's global
            generator drives dropout, so exact resume needs it.
        extra: anything else made of JSON types and tensors (``extra.`` prefix).

    Returns:
        ``(tensors, {"train_state": {...}})``: merge the second into your card. The tensors
        are copies (a snapshot: training may go on while they are written).
    """
    tensors: dict[str, torch.Tensor] = {}
    state: dict[str, Any] = {"step": int(step)}
    if model is not None:
        state["model"] = _pack_module(model, "model", tensors)
    if ema is not None:
        state["ema"] = _pack_module(ema, "ema", tensors)
    if optimizer is not None:
        state["optimizer"] = _encode(_state_of(optimizer, "optimizer"), "optim", tensors)
    if scheduler_state is not None:
        state["scheduler"] = _encode(scheduler_state, "sched", tensors)
    gens: dict[str, Any] = {}
    for name, g in (rng or {}).items():
        if not isinstance(g, torch.Generator):
            raise ValueError(f"rng[{name!r}] must be a torch.Generator, got {type(g).__name__}")
        tensors[f"rng.gen.{name}"] = g.get_state()
        gens[name] = {"device": str(g.device)}
    state["generators"] = gens
    if capture_global_rng:
        tensors["rng.torch"] = torch.get_rng_state()
        n_cuda = 0
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            for i, s in enumerate(torch.cuda.get_rng_state_all()):
                tensors[f"rng.cuda.{i}"] = s
            n_cuda = torch.cuda.device_count()
        state["global_rng"] = {"python": _python_rng_state(), "numpy": _numpy_rng_state(), "cuda_devices": n_cuda}
    if extra is not None:
        state["extra"] = _encode(extra, "extra", tensors)
    return tensors, {_STATE_KEY: state}


def unpack_state(tensors: Mapping[str, torch.Tensor], card: Mapping[str, Any], *, model: Optional[nn.Module] = None,
                 ema: Any = None, optimizer: Optional[torch.optim.Optimizer] = None,
                 rng: Optional[Mapping[str, torch.Generator]] = None, restore_global_rng: bool = True) -> dict[str, Any]:
    """Restore, in place, what :func:`pack_state` stored (from :func:`load_checkpoint`'s output).

    Each object passed must have been packed (else :class:`CheckpointError`); model and EMA
    weights must match their module's names and shapes. With ``restore_global_rng`` the
    Python, NumPy and torch global generator states are set back (CUDA states only when the
    same number of CUDA devices is present) -- this is the one place the library sets global
    RNG state, and only because resuming asks for it.

    Returns:
        ``{"step": int, "scheduler_state": dict | None, "extra": Any}``.
    """
    state = card.get(_STATE_KEY) if isinstance(card, Mapping) else None
    if not isinstance(state, dict):
        raise CheckpointError(f"card has no {_STATE_KEY!r} entry; it was not saved with pack_state")
    for name, obj in (("model", model), ("ema", ema), ("optimizer", optimizer)):
        if obj is not None and name not in state:
            raise CheckpointError(f"a {name} was given but the checkpoint holds no {name} state; pass {name}=None")
    if model is not None:
        _unpack_module(model, state["model"], "model", tensors)
    if ema is not None:
        _unpack_module(ema, state["ema"], "ema", tensors)
    if optimizer is not None:
        try:
            optimizer.load_state_dict(_decode(state["optimizer"], tensors))
        except (ValueError, KeyError, RuntimeError) as e:
            raise CheckpointError(f"optimizer state does not fit the given optimizer ({_one_line(e)}); build it as when saving") from None
    for name, g in (rng or {}).items():
        key = f"rng.gen.{name}"
        if key not in tensors:
            raise CheckpointError(f"generator {name!r} was given but the checkpoint holds no state for it (has {sorted(state.get('generators', {}))})")
        g.set_state(tensors[key].to(torch.uint8))
    if restore_global_rng and "global_rng" in state:
        glob = state["global_rng"]
        py = glob["python"]
        random.setstate((py["version"], tuple(int(v) for v in _hex_u32(py["internal_hex"])), py["gauss_next"]))
        npst = glob["numpy"]
        np.random.set_state((npst["bit_generator"], _hex_u32(npst["keys_hex"]), npst["pos"],
                             npst["has_gauss"], npst["cached_gaussian"]))
        torch.set_rng_state(tensors["rng.torch"].to(torch.uint8))
        n_cuda = int(glob.get("cuda_devices", 0))
        if n_cuda and torch.cuda.is_available() and torch.cuda.device_count() == n_cuda:
            torch.cuda.set_rng_state_all([tensors[f"rng.cuda.{i}"] for i in range(n_cuda)])
    sched = state.get("scheduler")
    return {
        "step": int(state.get("step", 0)),
        "scheduler_state": None if sched is None else _decode(sched, tensors),
        "extra": _decode(state["extra"], tensors) if "extra" in state else None,
    }
