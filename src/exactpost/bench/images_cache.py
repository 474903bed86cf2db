"""The image benchmark's resumable cache: finished cells, the batches of an unfinished cell,
the first samples kept for the FD."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from ..io.atomic import write_atomic
from .records import RecordLog, header_difference, read_header


# --- cache ------------------------------------------------------------------------------
class Cache:
    """``PREFIX.cache/``: ``cells.jsonl`` (a header line with the fingerprint, then one JSON
    record per finished cell or bare timing, appended and fsynced; a torn last line is
    ignored; a later record of a key replaces an earlier one), ``partial/<key>/batch_<b>.npz``
    (finished batches of an unfinished cell) and ``firsts/<key>.npy`` (each cell's first
    samples, float32 [N, C, H, W], for recomputing FD)."""

    def __init__(self, prefix: str, header: dict[str, Any], fresh: bool):
        self.dir = Path(prefix + ".cache")
        self.partial_dir = self.dir / "partial"
        self.firsts_dir = self.dir / "firsts"
        self.log = RecordLog(self.dir, header, fresh, on_clear=self.clear)
        self.path, self.records = self.log.path, self.log.records

    def clear(self) -> None:
        for d in (self.partial_dir, self.firsts_dir):
            if d.is_dir():
                shutil.rmtree(d)

    def _partial_path(self, key: str, b: int) -> Path:
        return self.partial_dir / key / f"batch_{b:05d}.npz"

    def load_partial(self, key: str, b: int) -> Optional[dict[str, Any]]:
        path = self._partial_path(key, b)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                info = json.loads(str(z["info"]))
                mean = torch.from_numpy(z["mean"]) if bool(z["has_mean"]) else None
                return dict(samples=torch.from_numpy(z["samples"]), mean=mean, info=info)
        except Exception:  # noqa: BLE001 - a damaged batch file is recomputed
            return None

    def save_partial(self, key: str, b: int, part: dict[str, Any]) -> None:
        mean = part["mean"]
        arrays = dict(samples=part["samples"].numpy(), has_mean=np.array(mean is not None),
                      mean=(mean.numpy() if mean is not None else np.zeros(0, np.float32)),
                      info=np.array(json.dumps(part["info"])))
        write_atomic(self._partial_path(key, b), lambda f: np.savez(f, **arrays))

    def firsts_path(self, key: str) -> Path:
        return self.firsts_dir / f"{key}.npy"

    def load_firsts(self, key: str) -> Optional[torch.Tensor]:
        path = self.firsts_path(key)
        return torch.from_numpy(np.load(path, allow_pickle=False)) if path.is_file() else None

    def merge_from(self, prefix: str) -> int:
        """Fold in the finished cells of ``prefix.cache/`` (same header, else ValueError naming
        what differs); keys this cache holds keep their own records. Returns how many came in."""
        src_dir = Path(prefix + ".cache")
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
        part = self.partial_dir / rec["key"]
        if part.is_dir():
            shutil.rmtree(part)
