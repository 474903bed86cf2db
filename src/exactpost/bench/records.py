"""The record log behind the resumable benchmarks (``exactpost bench gmm`` / ``images``).

``<PREFIX>.cache/cells.jsonl`` holds a header line ``{"header": {...}}`` (the settings that
the numbers depend on), then one JSON record per finished cell, each appended and fsynced
at once, so a run killed at any moment keeps every finished cell; a line torn by the kill is
ignored; a later record of a key replaces an earlier one. Opening a log whose header differs
from the current settings is refused with a one-line message naming what changed (its old
value), unless ``fresh``, which discards it (and calls ``on_clear`` for the files that go
with it).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Callable

from ..io.images import save_text


def json_safe(x: Any) -> Any:
    """``x`` with non-finite floats replaced by None (strict JSON), recursively."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    return x


def header_difference(old: Any, new: dict[str, Any]) -> str:
    """What differs between a log's first line ``old`` and the header line ``new``, as
    "name was <old value>, ..." ("another format" when ``old`` is not a header line)."""
    was = old.get("header") if isinstance(old, dict) else None
    was = was if isinstance(was, dict) else {}
    diff = [f"{k} was {was.get(k)}" for k, v in new["header"].items() if was.get(k) != v]
    return ", ".join(diff) or "another format"


def read_header(directory: Path) -> Any:
    """The parsed first line of ``directory/cells.jsonl`` (None when missing or unreadable)."""
    try:
        with open(Path(directory) / "cells.jsonl", encoding="utf-8") as f:
            return json.loads(f.readline())
    except (OSError, json.JSONDecodeError):
        return None


class RecordLog:
    """``directory/cells.jsonl`` (module docstring); ``records`` maps key -> record."""

    def __init__(self, directory: Path, header: dict[str, Any], fresh: bool,
                 on_clear: Callable[[], None] = lambda: None):
        self.dir = Path(directory)
        self.path = self.dir / "cells.jsonl"
        self.header = json.loads(json.dumps(json_safe(dict(header=header))))
        self.records: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            lines = self.path.read_text().splitlines()
            try:
                old = json.loads(lines[0]) if lines else None
            except json.JSONDecodeError:
                old = None
            if old != self.header:
                if not fresh:
                    raise ValueError(f"{self.path} holds cells measured with other settings "
                                     f"({header_difference(old, self.header)}); rerun with those, another --out, "
                                     f"or --fresh to discard them")
                on_clear()
                self.path.unlink()
            else:
                for line in lines[1:]:
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError:
                        continue  # a line torn by a kill
                    if isinstance(rec, dict) and "key" in rec:
                        self.records[rec["key"]] = rec
        if not self.path.exists():
            self.dir.mkdir(parents=True, exist_ok=True)
            save_text(self.path, json.dumps(self.header) + "\n")

    def append(self, rec: dict[str, Any]) -> None:
        """Append ``rec`` (needs a ``key``; non-finite floats stored as null) and fsync."""
        rec = json.loads(json.dumps(json_safe(rec)))
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.records[rec["key"]] = rec
