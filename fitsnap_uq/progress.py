"""Progress of long steps on stderr: stage lines and progress bars, on MPI rank 0 only.

Every command of ``fitsnap-uq`` reports what it is doing while it works (the descriptors, the solver's
stages, the members of an ensemble, MD replicas, QM calls, the demo's stages):

* **stage lines**, one per stage (``fitsnap-uq fit: descriptors of 363 configurations``), each
  followed by the time it took when that is worth saying;
* **bars** (tqdm) over the items of a step (configurations, folds, members, replicas, MD steps, QM
  calls) when stderr is a terminal. When stderr is not a terminal (a file, a pipe, a batch job's log),
  no bar is drawn (carriage-return redraws would fill the log, which is what tqdm's ``disable=None``
  and pip also avoid); the bar's step is then reported as plain lines instead: at most one every
  :data:`LINE_INTERVAL` seconds while it runs, and one when it ends, with the count and the time taken
  (not for a bar that a terminal would erase at its end, ``leave=False``: its stage line says it).

Only MPI rank 0 reports (the rank comes from :func:`configure`, or from the MPI launcher's environment
variables when no one set it). ``--no-progress`` (a global option of the command line, accepted before or
after the command) turns off the stage lines and the bars; results, warnings and errors are printed
all the same. Everything goes to stderr, so stdout keeps only results.

Pure Python (tqdm): part of the core, with no import side effects; the command line calls
:func:`configure` once.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import IO, Any

LINE_INTERVAL = 30.0
"""Seconds between two plain progress lines of one step when stderr is not a terminal."""

_RANK_ENV = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "MV2_COMM_WORLD_RANK", "SLURM_PROCID")
_settings: dict[str, Any] = {"enabled": True, "rank": None, "stream": None}


def configure(enabled: bool | None = None, rank: int | None = None, stream: IO[str] | None = None) -> None:
    """Set what reports progress (arguments left at None keep their current setting).

    Args:
        enabled: False turns off stage lines and bars (``--no-progress``).
        rank: this process' MPI rank (only rank 0 reports).
        stream: where progress goes (default: ``sys.stderr`` at the time of each report).
    """
    if enabled is not None:
        _settings["enabled"] = bool(enabled)
    if rank is not None:
        _settings["rank"] = int(rank)
    if stream is not None:
        _settings["stream"] = stream


def reset() -> None:
    """Back to the defaults (enabled, rank from the environment, stderr)."""
    _settings.update(enabled=True, rank=None, stream=None)


def rank() -> int:
    """This process' MPI rank: as configured, else from the launcher's environment, else 0."""
    if _settings["rank"] is not None:
        return int(_settings["rank"])
    for name in _RANK_ENV:
        value = os.environ.get(name)
        if value is not None and value.strip().isdigit():
            return int(value)
    return 0


def stream() -> IO[str]:
    """The stream progress goes to."""
    return _settings["stream"] or sys.stderr


def enabled() -> bool:
    """Whether this process reports progress (enabled, and MPI rank 0)."""
    return bool(_settings["enabled"]) and rank() == 0


def is_terminal(out: IO[str] | None = None) -> bool:
    """Whether ``out`` (default: the progress stream) is a terminal, where bars are drawn."""
    out = out or stream()
    try:
        return bool(out.isatty())
    except (AttributeError, ValueError):  # closed or not a real stream
        return False


def stage(message: str, show: bool = True) -> None:
    """One stage line, ``message`` as given (callers prefix their command, ``fitsnap-uq fit: ...``);
    ``show = False`` silences it (a caller's own progress switch)."""
    if show and enabled():
        out = stream()
        print(message, file=out, flush=True)


@contextlib.contextmanager
def timed(message: str, min_seconds: float = 1.0, show: bool = True) -> Iterator[None]:
    """A stage line ``message`` now and, if the stage took at least ``min_seconds``, a line
    ``message: done in X s`` when it ends without an exception."""
    stage(message, show)
    start = time.monotonic()
    yield
    elapsed = time.monotonic() - start
    if elapsed >= min_seconds:
        stage(f"{message}: done in {elapsed:.1f} s", show)


def bar(iterable: Iterable[Any] | None = None, total: int | None = None, desc: str = "",
        unit: str = "it", leave: bool = True, show: bool = True) -> Any:
    """A progress bar over ``iterable`` (or ``total`` manual :meth:`update` steps).

    A tqdm bar on a terminal; plain lines when the stream is not a terminal (see the module
    docstring); a silent stand-in when progress is off, this is not rank 0, or ``show`` is False (a
    caller's own progress switch). All three iterate over
    ``iterable`` and offer ``update(n)``, ``set_postfix_str(text)``, ``close()`` and use as a context
    manager.
    """
    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    if not (show and enabled()):
        return _Silent(iterable)
    out = stream()
    if is_terminal(out):
        from tqdm import tqdm

        sized = all(_size(out))  # a terminal that reports no size: tqdm would draw nothing
        return tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave, file=out,
                    dynamic_ncols=sized, ncols=None if sized else 80, nrows=None if sized else 24)
    return _Lines(iterable, total, desc, unit, out, leave)


def _size(out: IO[str]) -> tuple[int, int]:
    """The terminal's (columns, rows); 0 where it reports none."""
    try:
        return tuple(os.get_terminal_size(out.fileno()))  # type: ignore[return-value]
    except (AttributeError, ValueError, OSError, io.UnsupportedOperation):
        return 0, 0


class _Silent:
    """The bar's interface, reporting nothing."""

    def __init__(self, iterable: Iterable[Any] | None) -> None:
        self.iterable = iterable
        self.n = 0

    def __iter__(self) -> Iterator[Any]:
        for item in self.iterable or ():
            yield item
            self.n += 1

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix_str(self, text: str = "", refresh: bool = True) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> _Silent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Lines(_Silent):
    """The bar's interface as plain lines (stderr is not a terminal): every :data:`LINE_INTERVAL`
    seconds at most, and at the end unless ``leave`` is False."""

    def __init__(self, iterable: Iterable[Any] | None, total: int | None, desc: str, unit: str,
                 out: IO[str], leave: bool = True) -> None:
        super().__init__(iterable)
        self.total, self.desc, self.unit, self.out, self.leave = total, desc, unit, out, leave
        self.postfix = ""
        self.start = self.last = time.monotonic()
        self.closed = False

    def _count(self) -> str:
        return f"{self.n}/{self.total} {self.unit}" if self.total is not None else f"{self.n} {self.unit}"

    def _print(self, what: str) -> None:
        tail = f" ({self.postfix})" if self.postfix else ""
        print(f"{self.desc}: {what}{tail}", file=self.out, flush=True)

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.last >= LINE_INTERVAL and (self.total is None or self.n < self.total):
            self.last = now
            self._print(f"{self._count()}, {now - self.start:.0f} s")

    def __iter__(self) -> Iterator[Any]:
        for item in self.iterable or ():
            yield item
            self.update(1)
        self.close()

    def set_postfix_str(self, text: str = "", refresh: bool = True) -> None:
        self.postfix = text

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.leave:
                self._print(f"{self._count()} done in {time.monotonic() - self.start:.1f} s")
