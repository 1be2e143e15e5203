"""Small file helpers shared by every layer: atomic writes and JSON of numpy values (stdlib + numpy only).

A crash (or a full disk, or a second process) must never leave half a file where a good one was:
:func:`atomic_write` writes a temp file in the destination's folder, flushes it to disk and renames it
over the destination in one step (``os.replace``). The file it creates has the permissions of a file
created the ordinary way (``0o666 & ~umask``, e.g. 0644 under umask 022), not the 0600 of
:func:`tempfile.mkstemp`.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

__all__ = ["atomic_path", "atomic_write", "current_umask", "json_default", "unwritable_reason"]


def current_umask() -> int:
    """The process' umask (read from ``/proc`` where possible, so it is never changed, even briefly)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, mode: int | None = None) -> Iterator[Path]:
    """Yield the path of a temp file beside ``path``; on success give it ``mode`` and rename it to ``path``.

    For writers that want a file name rather than a file object (a compiler, :func:`shutil.copyfile`).
    ``mode`` defaults to ``0o666 & ~umask``. On an exception the temp file is removed and ``path`` is
    left as it was. The caller writes (and, if it matters, syncs) the temp file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~current_umask() if mode is None else mode)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write(path: str | os.PathLike, content: bytes | str | Callable[[IO[bytes]], Any],
                 mode: int | None = None) -> Path:
    """Write ``content`` to ``path`` atomically: temp file in the same folder, fsync, ``os.replace``.

    Args:
        path: destination; its folder is created if missing.
        content: the bytes (or text, written as UTF-8) of the file, or a function that writes into the
            binary file object it is given (e.g. ``lambda fh: np.savez(fh, **arrays)``).
        mode: permission bits of the file (default ``0o666 & ~umask``, as for a normally created file).

    Returns the path written.
    """
    path = Path(path)
    with atomic_path(path, mode) as tmp, open(tmp, "wb") as fh:
        if callable(content):
            content(fh)
        else:
            fh.write(content.encode("utf-8") if isinstance(content, str) else content)
        fh.flush()
        os.fsync(fh.fileno())
    return path


def unwritable_reason(path: str | os.PathLike) -> str | None:
    """Why a file cannot be written at ``path`` (None when it can), found without writing ``path``.

    The nearest existing folder above ``path`` (missing folders are created by :func:`atomic_path`) is
    probed by creating and removing a temp file in it: unlike :func:`os.access` this also answers
    for read-only mounts, immutable folders and root.
    """
    path = Path(path)
    if path.is_dir():
        return f"{path} is a folder, not a file"
    folder = next((p for p in path.absolute().parents if p.exists()), Path("/"))
    if not folder.is_dir():
        return f"{folder} is a file, not a folder"
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        return f"folder {folder} is not writable ({exc.strerror or exc})"
    return None


def json_default(obj: Any) -> Any:
    """``json.dumps(..., default=json_default)``: numpy scalars and arrays as Python numbers and lists."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")
