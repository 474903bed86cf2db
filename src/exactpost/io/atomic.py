"""Atomic file writes: fill a temporary file in the target folder, fsync it, rename it over
the target. A crash or kill at any moment leaves either the old file or the new one.

The temporary file gets the permissions an ordinary ``open(path, "w")`` would give
(0o666 minus the umask, e.g. 0o644), not :func:`tempfile.mkstemp`'s private 0o600, so a
checkpoint or table written here is as readable as any other file the user writes.

Write failures (disk full, permission lost, file too large) raise :class:`WriteError`, an
``OSError`` whose one-line message names the file that was meant to be written and the
cause; the temporary file is removed first and the old file (if any) is untouched.

:func:`staged_folder` extends this to a set of files: they are written into a temporary
folder beside the target folder and moved into it by renames (which need no free space)
only when every file has been written, so a failure half-way leaves the previous outputs
exactly as they were.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, Optional


class WriteError(OSError):
    """A file could not be written; ``str()`` is one line: the target path, the cause and
    what was kept. ``path`` is the intended target, ``errno``/``strerror`` the cause's."""

    def __init__(self, path: str | os.PathLike, cause: BaseException, kept: str = "the previous file is unchanged"):
        code = getattr(cause, "errno", None) or errno.EIO
        reason = getattr(cause, "strerror", None) or " ".join(str(cause).split()) or cause.__class__.__name__
        super().__init__(code, reason)
        self.path = Path(path)
        self.kept = kept

    def __str__(self) -> str:
        hint = "; free some disk space" if self.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) else ""
        return f"cannot write {self.path}: {self.strerror} ({self.kept}{hint})"


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


def _open_for_writing(fd: int) -> BinaryIO:
    """The binary file object every write of this module goes through (one place to
    observe or simulate write failures)."""
    return os.fdopen(fd, "wb")


def write_temp(directory: str | os.PathLike, name: str, write: Callable[[BinaryIO], None]) -> Path:
    """Fill a new temporary file ``directory/.name.XXXX.tmp`` with ``write(f)``, flush and
    fsync it; returns its path. On any failure the temporary file is removed and the
    exception propagates (an ``OSError`` as :class:`WriteError` naming ``directory/name``)."""
    target = Path(directory) / name
    try:
        fd, tmp = temp_file(directory, name)
    except OSError as exc:
        raise WriteError(target, exc) from exc
    try:
        with _open_for_writing(fd) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, OSError) and not isinstance(exc, WriteError):
            raise WriteError(target, exc) from exc
        raise
    return tmp


def fsync_dir(directory: str | os.PathLike) -> None:
    """fsync a folder so that renames in it survive a power cut (best effort)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Create ``path`` atomically: ``write(f)`` fills a temporary file in the same folder,
    which is flushed, fsynced and renamed over ``path`` (a crash leaves the old file).

    Raises :class:`WriteError` (one line, naming ``path``) when the folder cannot be created
    or the file cannot be written; no temporary file is left behind."""
    p = Path(path)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WriteError(p, exc, kept="nothing was written") from exc
    tmp = write_temp(p.parent, p.name, write)
    try:
        os.replace(tmp, p)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise WriteError(p, exc) from exc
    return p


@contextlib.contextmanager
def staged_folder(target: str | os.PathLike) -> Iterator[Path]:
    """Write a set of files into ``target`` all or nothing (as far as a file system allows).

    Yields a new empty folder ``.<target name>.XXXX.tmp`` (inside ``target`` when it exists,
    else beside it); write every output into it. When the block ends normally a new
    ``target`` is this folder renamed (the whole set appears at once); into an existing
    ``target`` each file is renamed (files of the same name are replaced, other files are
    kept). The temporary folder is then gone. When the block raises, the temporary folder is deleted and
    ``target`` is left exactly as it was; an ``OSError`` from a write in the block is
    re-raised as :class:`WriteError` naming the file's path in ``target``.

    Renames need no free space, so a full disk can only fail the block, never the move."""
    out = Path(target)
    parent = out.parent
    existed = out.is_dir()
    try:  # inside an existing target (its parent may be read-only), else beside it
        if not existed:
            parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(dir=out if existed else parent, prefix=f".{out.name}.", suffix=".tmp"))
    except OSError as exc:
        raise WriteError(out, exc, kept="nothing was written") from exc
    try:
        try:
            yield stage
        except OSError as exc:
            where: Optional[Path] = getattr(exc, "path", None) or (Path(exc.filename) if exc.filename else None)
            if where is not None and stage in where.parents:
                where = out / where.relative_to(stage)
            raise WriteError(where or out, exc, kept=f"{out} is unchanged") from exc
        try:
            if not existed:
                os.rename(stage, out)  # the whole set appears at once
                fsync_dir(parent)
                return
            for item in sorted(stage.iterdir()):
                os.replace(item, out / item.name)
            fsync_dir(out)
        except OSError as exc:
            raise WriteError(out, exc, kept="some files may be missing; rerun the command") from exc
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)
