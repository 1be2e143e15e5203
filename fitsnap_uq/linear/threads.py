"""How many BLAS threads the numerical core uses (threadpoolctl); numpy/threadpoolctl only.

The fits factor many small matrices: the blocked QR of :mod:`fitsnap_uq.linear.bayes` (blocks of
~16k rows by p + 1 columns, then p x p factors), the evidence iterations and the K cross-validation
refits. OpenBLAS splits each call over all its threads; when the cores are busy (another job, or
other MPI ranks on the node) every call then waits for descheduled threads: one 1147 x 32 QR took
285 ms instead of 0.74 ms with one thread, the Ta example's fit 168 s instead of 7 s. So:

* a computation whose matrices have fewer than :data:`PARALLEL_MIN_COLS` columns runs with ONE BLAS
  thread (tall-skinny factorizations of a few hundred columns gain little from threads even on idle
  cores, and lose orders of magnitude on busy ones);
* a larger one uses the thread budget: the cores this process may run on (its CPU affinity), divided
  by the processes that compute on the same node at once, as set by the caller with
  :func:`set_budget` (the FitSNAP adapter passes cores // MPI ranks on the node);
* the environment variable ``FITSNAP_UQ_BLAS_THREADS`` overrides the budget: a number N (large
  computations use N threads, small ones still one), or ``none`` to leave BLAS's threads alone
  (the behaviour before the limits: every call uses OpenBLAS's default, all cores).

Passes over row blocks whose products are small but many (the variance fits' Newton passes, the
model-error curvature) run their blocks with ONE BLAS thread each, spread over the thread budget as
Python threads (:func:`map_row_chunks`; numpy releases the GIL in its products): no OpenBLAS thread
waits for a descheduled sibling on busy cores, and an idle machine still uses its cores. Those passes
sum per-thread partial results in a fixed order; with another thread budget their sums may differ in
the last bits.

Limits change no result: the same LAPACK routines run on the same data (tested to 1e-10).
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

ENV = "FITSNAP_UQ_BLAS_THREADS"
"""Environment variable: BLAS threads of large computations (a number), or ``none`` for no limits."""

PARALLEL_MIN_COLS = 256
"""Matrices with fewer columns than this are factored / multiplied with one BLAS thread."""

PARALLEL_MIN_FLOPS = 2e8
"""Passes over row blocks of fewer floating-point operations than this run in one thread."""

_budget: int | None = None
_state = threading.local()
_controller: Any = None
_controller_key = -1

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS reports it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def set_budget(threads: int | None) -> None:
    """Threads of large computations in this process (None: all :func:`available_cores`)."""
    global _budget
    _budget = None if threads is None else max(1, int(threads))


def budget() -> int | None:
    """Threads a large computation may use now; None: leave BLAS's threads alone (``ENV=none``).

    Raises:
        ValueError: ``FITSNAP_UQ_BLAS_THREADS`` is neither a positive integer nor ``none``.
    """
    text = os.environ.get(ENV, "").strip().lower()
    if text in ("none", "off"):
        return None
    if text:
        if not text.isdigit() or int(text) < 1:
            raise ValueError(f"{ENV}={os.environ[ENV]!r}: give a positive number of threads or 'none'")
        return int(text)
    return _budget if _budget is not None else available_cores()


def threads_for(cols: int) -> int | None:
    """BLAS threads for a computation on matrices of ``cols`` columns (None: no limit)."""
    n = budget()
    if n is None:
        return None
    return n if cols >= PARALLEL_MIN_COLS else 1


def _get_controller() -> Any:
    """A cached threadpoolctl controller (building one scans the loaded libraries: ~1 ms), rebuilt
    when modules were imported since (they may have loaded another BLAS)."""
    global _controller, _controller_key
    if _controller is None or _controller_key != len(sys.modules):
        from threadpoolctl import ThreadpoolController

        _controller = ThreadpoolController()
        _controller_key = len(sys.modules)
    return _controller


@contextlib.contextmanager
def blas_threads(cols: int) -> Iterator[int | None]:
    """Run the block with :func:`threads_for` ``(cols)`` BLAS threads; yields that number.

    Nested blocks that ask for the limit already in force cost nothing.
    """
    n = threads_for(cols)
    current = getattr(_state, "limit", None)
    if n is None or n == current:
        yield n
        return
    with _get_controller().limit(limits=n, user_api="blas"):
        _state.limit = n
        try:
            yield n
        finally:
            _state.limit = current


def limited(cols: Callable[..., int]) -> Callable[[F], F]:
    """Decorator: run the function under :func:`blas_threads` ``(cols(*args, **kwargs))``."""

    def wrap(func: F) -> F:
        @functools.wraps(func)
        def inner(*args: Any, **kwargs: Any) -> Any:
            with blas_threads(cols(*args, **kwargs)):
                return func(*args, **kwargs)

        return inner  # type: ignore[return-value]

    return wrap


def pass_workers(flops: float) -> int:
    """Python threads for a pass over row blocks of about ``flops`` operations: the thread budget for a
    large pass, one for a small pass or with ``FITSNAP_UQ_BLAS_THREADS=none``."""
    n = budget()
    return 1 if n is None or flops < PARALLEL_MIN_FLOPS else n


def map_row_chunks(fn: Callable[[int, int], T], n: int, block_rows: int, workers: int) -> list[T]:
    """``[fn(lo, hi), ...]`` over ``workers`` contiguous chunks of ``range(n)`` whose bounds are
    multiples of ``block_rows`` (so each chunk holds whole blocks), on that many threads, in order.

    ``fn`` should run its products with one BLAS thread (call this inside ``blas_threads(1)``: the
    limit applies to every thread of the process)."""
    blocks = -(-n // block_rows)
    workers = max(1, min(workers, blocks))
    edges = [min(n, (blocks * i // workers) * block_rows) for i in range(workers + 1)]
    if workers == 1:
        return [fn(0, n)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(fn, lo, hi) for lo, hi in zip(edges[:-1], edges[1:])]
        return [f.result() for f in futures]
