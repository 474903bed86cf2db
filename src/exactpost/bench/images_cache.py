"""The image benchmark's resumable cache: finished cells, the batches of an unfinished cell,
the first samples kept for the FD.

The header holds what every cell depends on (images, samples, batch, seed, sigma_y, ...);
each cell's record holds its own ``depends`` (the weights of the network it ran on, its tuned
settings or sampler: :meth:`~exactpost.bench.images_setup.Setup.depends`), so a new EPS model
recomputes the EPS cells only. A cache written under the earlier whole-run header (protocol 1,
every model's sha256 in the header) is converted in place on opening: each record gets the
dependencies that header implied for it, so nothing already measured is lost."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from ..io.atomic import write_atomic
from .records import RecordLog, header_difference, read_header

#: (method, task, models, tuned, sampler) -> the cell's dependencies (images_setup.cell_depends)
DependsOf = Callable[[str, Optional[str], dict, dict, dict], dict]


# --- cache ------------------------------------------------------------------------------
class Cache:
    """``PREFIX.cache/``: ``cells.jsonl`` (a header line with the fingerprint, then one JSON
    record per finished cell or bare timing, appended and fsynced; a torn last line is
    ignored; a later record of a key replaces an earlier one),
    ``partial/<key>@<digest of its depends>/batch_<b>.npz`` (finished batches of an unfinished
    cell, never mixed across models or settings) and ``firsts/<key>.npy`` (each cell's first
    samples, float32 [N, C, H, W], for recomputing FD). ``depends_of``
    (images_setup.cell_depends) converts a protocol-1 cache on opening (:func:`convert_legacy`)."""

    def __init__(self, prefix: str, header: dict[str, Any], fresh: bool, depends_of: Optional[DependsOf] = None):
        self.dir = Path(prefix + ".cache")
        self.partial_dir = self.dir / "partial"
        self.firsts_dir = self.dir / "firsts"
        self._depends_of = depends_of
        if depends_of is not None and not fresh:
            convert_legacy(self.dir, header, depends_of)
        self.log = RecordLog(self.dir, header, fresh, on_clear=self.clear)
        self.path, self.records = self.log.path, self.log.records

    def valid(self, key: str, depends: dict[str, Any]) -> bool:
        """Whether the finished cell ``key`` is cached with these dependencies."""
        rec = self.records.get(key)
        return rec is not None and _same(rec.get("depends"), depends)

    def clear(self) -> None:
        for d in (self.partial_dir, self.firsts_dir):
            if d.is_dir():
                shutil.rmtree(d)

    def _partial_path(self, key: str, b: int, depends: dict[str, Any]) -> Path:
        return self.partial_dir / f"{key}@{depends_digest(depends)}" / f"batch_{b:05d}.npz"

    def load_partial(self, key: str, b: int, depends: dict[str, Any]) -> Optional[dict[str, Any]]:
        path = self._partial_path(key, b, depends)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                info = json.loads(str(z["info"]))
                mean = torch.from_numpy(z["mean"]) if bool(z["has_mean"]) else None
                return dict(samples=torch.from_numpy(z["samples"]), mean=mean, info=info)
        except Exception:  # noqa: BLE001 - a damaged batch file is recomputed
            return None

    def save_partial(self, key: str, b: int, depends: dict[str, Any], part: dict[str, Any]) -> None:
        mean = part["mean"]
        arrays = dict(samples=part["samples"].numpy(), has_mean=np.array(mean is not None),
                      mean=(mean.numpy() if mean is not None else np.zeros(0, np.float32)),
                      info=np.array(json.dumps(part["info"])))
        write_atomic(self._partial_path(key, b, depends), lambda f: np.savez(f, **arrays))

    def firsts_path(self, key: str) -> Path:
        return self.firsts_dir / f"{key}.npy"

    def load_firsts(self, key: str) -> Optional[torch.Tensor]:
        path = self.firsts_path(key)
        return torch.from_numpy(np.load(path, allow_pickle=False)) if path.is_file() else None

    def merge_from(self, prefix: str) -> int:
        """Fold in the finished cells of ``prefix.cache/`` (same header, else ValueError naming
        what differs); keys this cache holds keep their own records. Returns how many came in."""
        src_dir = Path(prefix + ".cache")
        if self._depends_of is not None:
            convert_legacy(src_dir, self.log.header["header"], self._depends_of)
        old = read_header(src_dir)
        if old != self.log.header:
            raise ValueError(f"--merge {prefix}: its cells were measured with other settings "
                             f"({header_difference(old, self.log.header)}); merge only runs of the same models, "
                             f"images, samples, batch, seed and sigma_y")
        other = RecordLog(src_dir, self.log.header["header"], fresh=False)
        added = 0
        for key, rec in other.records.items():
            if key in self.records:
                continue
            src = src_dir / "firsts" / f"{key}.npy"
            if src.is_file():
                data = src.read_bytes()
                write_atomic(self.firsts_path(key), lambda f: f.write(data))
            self.add(rec)
            added += 1
        return added

    def add(self, rec: dict[str, Any], firsts: Optional[torch.Tensor] = None) -> None:
        if firsts is not None:
            arr = firsts.detach().float().numpy()
            write_atomic(self.firsts_path(rec["key"]), lambda f: np.save(f, arr, allow_pickle=False))
        self.log.append(rec)
        if self.partial_dir.is_dir():
            for part in self.partial_dir.glob(f"{rec['key']}@*"):
                shutil.rmtree(part)


def _same(a: Any, b: Any) -> bool:
    """Equality of two JSON values as stored (tuples and lists alike)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def depends_digest(depends: dict[str, Any]) -> str:
    """A short, stable name for a dependencies dict (first 12 hex digits of its sha256)."""
    return hashlib.sha256(json.dumps(depends, sort_keys=True).encode()).hexdigest()[:12]


#: the whole-run header's keys that are now each cell's own dependencies
LEGACY_KEYS = ("models", "tuned", "eps_sampler", "scheduler")


def convert_legacy(directory: Path, header: dict[str, Any], depends_of: DependsOf) -> bool:
    """Convert ``directory/cells.jsonl`` written under the protocol-1 whole-run header (every
    model's sha256, the tuned settings and the sampler in the header) to ``header`` when the
    rest of that header equals it: each record gets the dependencies the old header implied
    for its method and task, unfinished batches move to their per-dependencies folders.
    Returns whether it converted (anything else is left for RecordLog to accept or refuse)."""
    directory = Path(directory)
    old = read_header(directory)
    was = old.get("header") if isinstance(old, dict) else None
    if not isinstance(was, dict) or was.get("protocol") != 1 or "models" not in was:
        return False
    shared = {k: v for k, v in was.items() if k not in LEGACY_KEYS and k != "protocol"}
    if shared != {k: v for k, v in json.loads(json.dumps(header)).items() if k != "protocol"}:
        return False
    models, tuned = dict(was.get("models") or {}), dict(was.get("tuned") or {})
    sampler = {k: was[k] for k in ("eps_sampler", "scheduler") if k in was}

    def depends(key: str, rec: dict[str, Any]) -> dict[str, Any]:
        if rec.get("kind") == "bare":
            return depends_of("bare", None, models, tuned, sampler)
        task, method = key.split("__")[:2]
        return depends_of(method, task, models, tuned, sampler)

    lines = (directory / "cells.jsonl").read_text().splitlines()[1:]
    out = [json.dumps({"header": header})]
    for line in lines:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line torn by a kill
        if isinstance(rec, dict) and "key" in rec:
            rec["depends"] = depends(rec["key"], rec)
            out.append(json.dumps(rec))
    partial = directory / "partial"
    if partial.is_dir():
        for d in sorted(p for p in partial.iterdir() if p.is_dir() and "@" not in p.name):
            d.rename(partial / f"{d.name}@{depends_digest(depends(d.name, {}))}")
    text = "\n".join(out) + "\n"
    write_atomic(directory / "cells.jsonl", lambda f: f.write(text.encode()))
    return True
