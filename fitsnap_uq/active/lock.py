"""One process per work folder: an exclusive ``fcntl`` lock on ``<folder>/.lock`` (standard library).

The operating system drops the lock when its process ends, however it ends (``kill -9`` included), so the
lock of a dead process is taken over by the next run without any stale-file handling. The holder writes
its process id into the file, for the message a second run prints. A second run that finds the folder
locked changes nothing in it (it only opens the existing lock file for reading and locking).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType


class FolderBusy(RuntimeError):
    """Another live process holds the folder's lock."""


class FolderLock:
    """``with FolderLock(folder, what):`` holds the folder's lock for the block (or raises FolderBusy).

    Args:
        folder: the folder to lock (its ``.lock`` file is created when missing).
        what: the command, for the message (e.g. ``fitsnap-uq al``).
    """

    def __init__(self, folder: str | os.PathLike, what: str = "fitsnap-uq") -> None:
        self.path = Path(folder) / ".lock"
        self.what = what
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock (not blocking); :class:`FolderBusy` naming the holder's pid when it is held."""
        flags = os.O_RDWR if self.path.exists() else os.O_RDWR | os.O_CREAT
        fd = os.open(self.path, flags, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise FolderBusy(f"{self.path.parent}: another {self.what} (pid {holder}) is running on this "
                             "folder; wait for it to finish or stop it, then rerun (it resumes)") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Drop the lock (the file stays: removing it would race with a run taking it)."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> FolderLock:
        self.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()
