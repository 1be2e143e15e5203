"""MPI ranks that wait sleep instead of spinning; the BLAS thread budget of a rank.

Our solvers run on FitSNAP's head rank while the other ranks wait; the active-learning loop's
helper ranks wait while rank 0 fits and runs MD. MPICH's blocking calls (``Barrier``, ``bcast``) poll:
a waiting rank burns a core the solving rank (and its BLAS threads) could use. Here a waiting rank
posts a non-blocking barrier and tests it with a short, growing sleep (0.1 ms up to 20 ms): it
wakes at most 50 times a second and is at most 20 ms late.

``FITSNAP_UQ_MPI_WAIT=block`` restores MPI's own blocking wait (the behaviour before; for
measurements). mpi4py is never imported here: the functions take the communicator.
"""

from __future__ import annotations

import os
import time
from typing import Any

from fitsnap_uq.linear import threads

WAIT_ENV = "FITSNAP_UQ_MPI_WAIT"
"""``poll`` (default: sleep between tests) or ``block`` (MPI's blocking calls)."""

FIRST_SLEEP = 1e-4
LONGEST_SLEEP = 0.02


def _size(comm: Any | None) -> int:
    return 1 if comm is None else int(comm.Get_size())


def sleeping_barrier(comm: Any | None) -> None:
    """``comm.Barrier()``, waiting in ``time.sleep`` between tests of an ``Ibarrier`` (no spinning)."""
    if _size(comm) == 1:
        return
    if os.environ.get(WAIT_ENV, "poll").strip().lower() == "block":
        comm.Barrier()
        return
    request = comm.Ibarrier()
    pause = FIRST_SLEEP
    while not request.Test():
        time.sleep(pause)
        pause = min(2.0 * pause, LONGEST_SLEEP)


def sleeping_bcast(comm: Any, obj: Any, root: int = 0) -> Any:
    """``comm.bcast(obj, root)``, every rank first waiting in :func:`sleeping_barrier` (the ranks that
    wait for the root sleep there; the root, usually last, passes at once). Every rank must call it."""
    sleeping_barrier(comm)
    return comm.bcast(obj, root=root)


def rank_thread_budget(ranks_on_node: int) -> int:
    """BLAS threads of a rank: the cores this process may use divided by the ranks on its node."""
    return max(1, threads.available_cores() // max(1, int(ranks_on_node)))
