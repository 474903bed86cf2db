"""Atomic file writes: fill a temporary file in the target folder, fsync it, rename it over
the target. A crash or kill at any moment leaves either the old file or the new one.

The temporary file gets the permissions an ordinary ``open(path, "w")`` would give
(0o666 minus the umask, e.g. 0o644), not :func:`tempfile.mkstemp`'s private 0o600, so a
checkpoint or table written here is as readable as any other file the user writes.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable


def _default_mode() -> int:
    """0o666 minus the process umask (read by setting and restoring it)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def temp_file(directory: str | os.PathLike, name: str) -> tuple[int, Path]:
    """A new empty file ``directory/.name.XXXX.tmp`` with the default permissions; (fd, path)."""
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")
    try:
        os.fchmod(fd, _default_mode())
    except (AttributeError, OSError):  # platforms without fchmod keep mkstemp's mode
        pass
    return fd, Path(tmp)


def write_atomic(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Create ``path`` atomically: ``write(f)`` fills a temporary file in the same folder,
    which is flushed, fsynced and renamed over ``path`` (a crash leaves the old file)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_file(p.parent, p.name)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        if tmp.exists():
            tmp.unlink()
        raise
    return p
