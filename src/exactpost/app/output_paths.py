"""Checking an output path before any work starts (nothing here writes to disk).

An output folder (``demo --out``, ``restore --out``, ``train --run-dir``) or an output file
(``sample --out``) is refused with :class:`OutputPathError` (a ``ValueError`` whose message
is one line: what is wrong and how to fix it) when:

* the path exists with the wrong kind (a file where a folder is wanted, or a folder where
  a file is wanted);
* the path, or a folder on the way to it, is a dangling symbolic link or a link loop;
* a component on the way to it is a file (``out.png/sub``), so the folder cannot be made;
* the nearest existing folder on the way is not writable by this user;
* an output folder that must be new or empty holds files (unless overwriting is allowed).

The checks are made once, up front, so a command fails in its first second rather than
after minutes of sampling or training. They cannot exclude a race with another process or
a disk that fills later: :mod:`exactpost.io.atomic` handles those when writing.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Sequence


class OutputPathError(ValueError):
    """An output path that cannot be used; the message is one line."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


def _link_problem(p: Path) -> str | None:
    """Why the symbolic link ``p`` cannot be followed (None if it is not a broken link)."""
    if not p.is_symlink():
        return None
    try:
        os.stat(p)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return f"{p} is a symbolic link loop"
        if exc.errno == errno.ENOENT:
            return f"{p} is a symbolic link to {os.readlink(p)}, which does not exist"
        return f"{p} is a symbolic link that cannot be followed ({exc.strerror})"
    return None


def _nearest_existing(p: Path, what: str, flag: str) -> Path:
    """The nearest existing ancestor folder of ``p`` (p itself not included); refuses a file
    or a broken link on the way."""
    anchor = p.parent
    while True:
        problem = _link_problem(anchor)
        if problem:
            raise OutputPathError(f"cannot create {what} {p}: {problem}; fix the link or choose another {flag}")
        if anchor.exists() or anchor == anchor.parent:
            break
        anchor = anchor.parent
    if not anchor.is_dir():
        raise OutputPathError(f"cannot create {what} {p}: {anchor} is a file, not a folder; choose another {flag}")
    return anchor


def _check_writable(folder: Path, p: Path, what: str, flag: str) -> None:
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputPathError(f"cannot write {what} {p}: no write permission in {folder}; choose a folder you can "
                              f"write to ({flag})")


def _usable_name(path: str | os.PathLike, what: str, flag: str, example: str) -> Path:
    """``Path(path)``, refusing an empty path and a broken symbolic link."""
    if not str(path).strip():
        raise OutputPathError(f"{flag} is empty; give {example}")
    p = Path(path)
    problem = _link_problem(p)
    if problem:
        raise OutputPathError(f"{what} {problem}; remove the link or choose another {flag}")
    return p


def check_output_dir(path: str | os.PathLike, *, overwrite: bool = False, existing_ok: bool = False,
                     flag: str = "--out", what: str = "output folder") -> Path:
    """Check that ``path`` can be used as an output folder; returns ``Path(path)``.

    An existing folder must be empty unless ``overwrite`` (files may be replaced) or
    ``existing_ok`` (a run folder that is resumed) is true. ``flag`` names the option in
    the messages."""
    p = _usable_name(path, what, flag, "a folder path")
    if p.exists():
        if not p.is_dir():
            raise OutputPathError(f"{what} {p} exists and is a file, not a folder; choose a folder path ({flag})")
        if not (overwrite or existing_ok) and any(p.iterdir()):
            raise OutputPathError(f"{what} {p} already exists and is not empty; choose a new folder or allow "
                                  f"overwriting (--overwrite)")
        _check_writable(p, p, what, flag)
        return p
    _check_writable(_nearest_existing(p, what, flag), p, what, flag)
    return p


def check_output_file(path: str | os.PathLike, *, suffixes: Sequence[str] = (".png",), flag: str = "--out",
                      what: str = "output file") -> Path:
    """Check that ``path`` can be written as a file (an existing file is replaced); its
    suffix must be one of ``suffixes`` (case-insensitive; empty: any). Returns ``Path(path)``."""
    p = _usable_name(path, what, flag, f"a file path such as samples{suffixes[0] if suffixes else ''}")
    if p.is_dir():
        raise OutputPathError(f"{what} {p} is a folder; give a file path such as "
                              f"{p / ('samples' + (suffixes[0] if suffixes else ''))} ({flag})")
    if suffixes and p.suffix.lower() not in {s.lower() for s in suffixes}:
        raise OutputPathError(f"{what} {p} must end in {' or '.join(suffixes)} (the format written); "
                              f"e.g. {p.with_suffix(suffixes[0]).name}")
    folder = p.parent if p.parent.exists() else _nearest_existing(p, what, flag)
    if not folder.is_dir():
        raise OutputPathError(f"cannot create {what} {p}: {folder} is a file, not a folder; choose another {flag}")
    _check_writable(folder, p, what, flag)
    return p


__all__ = ["OutputPathError", "check_output_dir", "check_output_file"]
