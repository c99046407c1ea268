"""Atomic writes: a file or a directory appears whole or not at all, whatever kills the process.

Everything textgen writes that another run or command reads back (checkpoints, encoded data, logs
rewritten on resume, reports, figures) goes through here: it is written beside its place under a
hidden temporary name, flushed to disk, then renamed over the old one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def atomic_write(path: Path, content: str | bytes | Callable[[BinaryIO], object]) -> None:
    """Write ``path`` from ``content``: text (UTF-8), bytes, or a function that writes to the open binary file.

    The temporary file is ``.NAME.<random>.tmp`` beside ``path``, so two writers never share one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(content):
                content(f)
            else:
                f.write(content.encode("utf-8") if isinstance(content, str) else content)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; the result is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_dir(path: Path, fill: Callable[[Path], None]) -> None:
    """Fill a fresh directory with ``fill`` and swap it in at ``path`` (the old one kept until then).

    A directory cannot be renamed over another, so the old one moves to ``.NAME.old`` first; a crash
    between the two renames leaves that copy, which ``resolve_checkpoint`` reads (and ``discard_leftovers``
    removes once ``path`` is whole again)."""
    parent = path.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp, old = parent / f".{path.name}.tmp", parent / f".{path.name}.old"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        fill(tmp)
        for f in tmp.iterdir():
            fsync(f)
        fsync(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
    os.replace(tmp, path)
    fsync(parent)
    shutil.rmtree(old, ignore_errors=True)


def discard_leftovers(path: Path) -> None:
    """Remove the temporary and old copies that a crashed save left beside ``path``, once ``path`` is whole.

    (While ``path`` is missing its ``.NAME.old`` is the only copy, and is kept.)
    """
    if path.is_dir():
        for leftover in (path.parent / f".{path.name}.tmp", path.parent / f".{path.name}.old"):
            shutil.rmtree(leftover, ignore_errors=True)


def fsync(p: Path) -> None:
    """Flush a file's or a directory's entry to disk."""
    fd = os.open(p, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def discard_temporary_files(folder: Path) -> None:
    """Remove the temporary files (``.NAME.<random>.tmp``) that writes killed mid-way left in ``folder`` and below."""
    for leftover in folder.rglob(".*.tmp"):
        if leftover.is_file():
            leftover.unlink()
