"""Where the QM calls of a labelling step run: one small interface over several engines.

An executor takes a labelling step's tasks, pairs (ASE ``Atoms``, path of the FitSNAP JSON file to
write), runs each as :func:`~fitsnap_uq.active.oracles.label_task` (the oracle's call; the labelled file
written atomically where the call ran) and yields ``(task index, worker, Outcome)`` as the calls
complete, so that the caller journals each result when it arrives (:meth:`Loop.label_batch
<fitsnap_uq.active.loop.Loop.label_batch>`). ``worker`` is the MPI rank that made the call (``mpi``),
else None. Nothing is retried here (the oracle retries a failed calculation itself, see
:class:`~fitsnap_uq.active.oracles.ASEOracle`).

``[oracle] executor`` of ``fitsnap-uq al``:

* ``serial``: in this process, in task order (the default without mpirun).
* ``mpi``: the ranks of ``mpirun -np N fitsnap-uq al`` (the default with several ranks): round-robin
  over the ranks (:func:`~fitsnap_uq.active.oracles.label_many`); the outcomes come when the whole step
  is done, but each rank writes its files as its calls complete, so a kill loses no finished call (the
  rerun journals its file). One rank: as ``serial``.
* ``processes``: a local pool of ``workers`` processes (:class:`concurrent.futures.ProcessPoolExecutor`,
  started fresh with ``spawn``, each killed when this process dies); the oracle must pickle (the
  built-in ones and ``module:factory`` do).
* ``dask``: a Dask cluster through ``dask.distributed.Client.get_executor()``, a
  :class:`concurrent.futures.Executor`: the scheduler at ``scheduler`` (``tcp://host:8786``), or a
  local cluster of ``workers`` single-threaded processes. An extra: ``pip install "fitsnap-uq[dask]"``.
  The workers write the labelled files, so they must see the work folder (a shared file system, as
  MPI ranks do).

Any other :class:`concurrent.futures.Executor` plugs in through :class:`FuturesExecutor`.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import importlib.util
import os
import pickle
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

from fitsnap_uq.active.oracles import ASEOracle, Outcome, label_many, label_task
from fitsnap_uq.errors import InputError
from fitsnap_uq.parallel import sleeping_bcast

EXECUTORS = ("serial", "mpi", "processes", "dask")
"""The executors by name (``[oracle] executor``; ``auto``: ``mpi`` under mpirun with several ranks, else
``serial``)."""

DASK_MISSING = ("executor = dask needs dask.distributed, which is not installed: pip install "
                "'fitsnap-uq[dask]' (or use serial, mpi or processes)")

Task = tuple[Any, "str | Path"]
"""One labelling task: (ASE ``Atoms``, path of the labelled FitSNAP JSON file to write)."""


class LabelExecutor(Protocol):
    """Runs a labelling step's QM calls somewhere (see the module docstring)."""

    name: str

    def label(self, tasks: Sequence[Task]) -> Iterator[tuple[int, int | None, Outcome]]:
        """Run every task; yield (index into ``tasks``, MPI rank or None, outcome) as each completes."""
        ...

    def close(self) -> None:
        """Free the workers (a later :meth:`label` starts them again)."""
        ...


def die_with_parent() -> None:
    """In a child process: on Linux, be killed when the parent dies, so that the fit or QM worker of a
    loop killed with ``kill -9`` does not go on writing into the folder the rerun works in."""
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: a rerun overwrites the orphan's files (atomically)
        pass


class SerialExecutor:
    """Every call in this process, in task order."""

    name = "serial"

    def __init__(self, oracle: ASEOracle) -> None:
        self.oracle = oracle

    def label(self, tasks: Sequence[Task]) -> Iterator[tuple[int, int | None, Outcome]]:
        for i, (atoms, path) in enumerate(tasks):
            yield i, None, label_task(path, self.oracle, atoms, catch=False)

    def close(self) -> None:
        pass


class FuturesExecutor:
    """The calls submitted to a :class:`concurrent.futures.Executor`, outcomes in completion order.

    Args:
        oracle: sent with every call (it must pickle for process pools).
        open_pool: makes the executor when the first step needs it; registers on the given
            :class:`contextlib.ExitStack` whatever must be shut down with it.
        name: for messages.
    """

    def __init__(self, oracle: ASEOracle, open_pool: Callable[[contextlib.ExitStack], cf.Executor],
                 name: str) -> None:
        self.oracle = oracle
        self.open_pool = open_pool
        self.name = name
        self._stack: contextlib.ExitStack | None = None
        self._pool: cf.Executor | None = None

    def label(self, tasks: Sequence[Task]) -> Iterator[tuple[int, int | None, Outcome]]:
        if self._pool is None:
            self._stack = contextlib.ExitStack()
            self._pool = self.open_pool(self._stack)
        futures = {self._pool.submit(label_task, str(path), self.oracle, atoms, False): i
                   for i, (atoms, path) in enumerate(tasks)}
        try:
            for future in cf.as_completed(futures):
                yield futures[future], None, future.result()
        finally:  # the caller stopped early (an error): calls not started are dropped
            for future in futures:
                future.cancel()

    def close(self) -> None:
        if self._stack is not None:
            self._stack.close()
        self._stack = self._pool = None


class MPIExecutor:
    """The calls spread over the ranks of ``comm`` (rank 0 drives; the others :meth:`serve`)."""

    name = "mpi"

    def __init__(self, oracle: ASEOracle, comm: Any) -> None:
        self.oracle = oracle
        self.comm = comm

    def label(self, tasks: Sequence[Task]) -> Iterator[tuple[int, int | None, Outcome]]:
        tasks = list(tasks)
        sleeping_bcast(self.comm, ("label", tasks), root=0)
        for i, (rank, outcome) in enumerate(label_many(tasks, self.oracle, self.comm)):
            yield i, rank, outcome

    def serve(self) -> Any:
        """On a rank other than 0: label this rank's share of every step rank 0 sends, until rank 0
        calls :meth:`stop`; returns what it sent then."""
        while True:
            kind, payload = sleeping_bcast(self.comm, None, root=0)
            if kind == "label":
                label_many(payload, self.oracle, self.comm)
            elif kind == "stop":
                return payload

    def stop(self, payload: Any) -> None:
        """On rank 0: end the other ranks' :meth:`serve` with ``payload``."""
        sleeping_bcast(self.comm, ("stop", payload), root=0)

    def close(self) -> None:
        pass


def process_pool(workers: int) -> Callable[[contextlib.ExitStack], cf.Executor]:
    """``open_pool`` of a local pool of ``workers`` fresh (spawned) processes that die with this one."""
    def open_pool(stack: contextlib.ExitStack) -> cf.Executor:
        import multiprocessing

        pool = cf.ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                      initializer=die_with_parent)
        stack.callback(pool.shutdown, wait=True, cancel_futures=True)
        return pool

    return open_pool


def dask_pool(workers: int, scheduler: str = "") -> Callable[[contextlib.ExitStack], cf.Executor]:
    """``open_pool`` of a Dask cluster: a client of the scheduler at ``scheduler``, or of a local cluster
    of ``workers`` single-threaded processes (closed with the executor)."""
    def open_pool(stack: contextlib.ExitStack) -> cf.Executor:
        import logging

        from distributed import Client, LocalCluster

        if scheduler:
            try:
                client = Client(scheduler, timeout="20s")
            except (OSError, TimeoutError) as exc:
                raise InputError(f"cannot reach the Dask scheduler {scheduler!r}: {exc}", section="oracle",
                                 key="dask_scheduler") from None
        else:
            cluster = stack.enter_context(LocalCluster(n_workers=workers, threads_per_worker=1,
                                                       processes=True, dashboard_address=None,
                                                       silence_logs=logging.ERROR))
            client = Client(cluster)
        stack.callback(client.close)
        pool = client.get_executor()
        stack.callback(pool.shutdown, wait=True)
        return pool

    return open_pool


def dask_available() -> bool:
    """Whether ``dask.distributed`` can be imported."""
    return importlib.util.find_spec("distributed") is not None


def make_executor(kind: str, oracle: ASEOracle, comm: Any | None = None, workers: int = 0,
                  scheduler: str = "") -> LabelExecutor:
    """The executor named ``kind`` (``auto`` or one of :data:`EXECUTORS`).

    Args:
        kind: see the module docstring.
        oracle: the QM oracle.
        comm: the mpi4py communicator of the run (None: one process).
        workers: processes of ``processes`` and of a local Dask cluster (0: the CPU count).
        scheduler: a Dask scheduler's address (empty: a local cluster).

    Raises:
        InputError: an unknown kind, a kind other than ``mpi`` under mpirun with several ranks, dask not
            installed, or an oracle that cannot be sent to worker processes.
    """
    size = 1 if comm is None else int(comm.Get_size())
    if kind == "auto":
        kind = "mpi" if size > 1 else "serial"
    if kind not in EXECUTORS:
        raise InputError(f"unknown executor {kind!r}; known: auto, {', '.join(EXECUTORS)}")
    if size > 1 and kind != "mpi":
        raise InputError(f"executor = {kind} under mpirun with {size} ranks: use executor = mpi, or run "
                         "without mpirun")
    if kind == "serial" or (kind == "mpi" and size == 1):
        return SerialExecutor(oracle)
    if kind == "mpi":
        return MPIExecutor(oracle, comm)
    n = workers or os.cpu_count() or 1
    if kind == "processes":
        try:
            pickle.dumps(oracle)
        except Exception as exc:
            raise InputError(f"executor = processes: the oracle {oracle.name!r} cannot be sent to worker "
                             f"processes ({type(exc).__name__}: {exc}); name it as module:factory, or use "
                             "executor = serial") from None
        return FuturesExecutor(oracle, process_pool(n), f"processes ({n} workers)")
    if not dask_available():
        raise InputError(DASK_MISSING)
    where = scheduler or f"a local cluster of {n} workers"
    return FuturesExecutor(oracle, dask_pool(n, scheduler), f"dask ({where})")
