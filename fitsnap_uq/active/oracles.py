"""QM oracles behind one small interface on ASE calculators, and labelling of FitSNAP JSON files.

An oracle takes an ASE ``Atoms`` and returns its energy (eV), forces (eV/A) and, for periodic cells
where the calculator has it, stress. Any ASE calculator works (VASP, Quantum ESPRESSO, ...):
``ASEOracle(lambda: Vasp(...))``. Built in by name (:func:`oracle_from_name`): ``xtb``/``gfn1``,
``gfn2`` (tblite xTB, real QM that runs on a laptop), ``emt`` (ASE's EMT, for quick tests with Cu,
Ag, Au, Ni, Pd, Pt, Al).
A failed calculation is retried (``retries``) and then reported as failed, not raised.

Under ``mpirun -np N`` (mpi4py's COMM_WORLD, or any communicator passed in), :func:`label_folder` and
:func:`label_many` spread the QM calls over the ranks (round-robin by default, or dynamically through an
atomic counter) and gather the outcome to every rank; each rank writes the files it labelled (atomically,
so a shared file system is assumed). A rank whose calls are done waits for the others asleep
(:func:`fitsnap_uq.parallel.sleeping_barrier`), not spinning in MPI, so it leaves its core to the
ranks still computing. On one rank they behave exactly as a plain loop. The active-learning loop reaches
these and the other engines (a process pool, Dask) through :mod:`fitsnap_uq.active.executors`.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fitsnap_uq.compat import load_mpi_library
from fitsnap_uq.errors import InputError
from fitsnap_uq.fitsnap_json import atoms_record, write_record
from fitsnap_uq.parallel import sleeping_barrier, sleeping_bcast


@dataclass
class LabelResult:
    """Outcome of one labelling: the labelled atoms (None if it failed) and the error text."""

    atoms: Any | None
    error: str | None = None
    attempts: int = 1


class ASEOracle:
    """An oracle over an ASE calculator.

    Args:
        make_calculator: returns a fresh calculator (called for every configuration, so state of
            one calculation never leaks into the next).
        name: recorded in the labelled files.
        retries: extra attempts after a failure.
    """

    def __init__(self, make_calculator: Callable[[], Any], name: str = "ase", retries: int = 1) -> None:
        self.make_calculator = make_calculator
        self.name = name
        self.retries = int(retries)

    def label(self, atoms: Any) -> LabelResult:
        """Energy, forces (and stress for periodic cells) of ``atoms``; never raises."""
        from ase.calculators.singlepoint import SinglePointCalculator

        error = None
        for attempt in range(1, self.retries + 2):
            work = atoms.copy()
            load_mpi_library()  # a LAMMPS-based calculator (ASE's LAMMPSlib) needs the MPI library
            work.calc = self.make_calculator()
            try:
                energy = float(work.get_potential_energy())
                forces = np.asarray(work.get_forces())
                stress = None
                if work.pbc.all():
                    try:
                        stress = np.asarray(work.get_stress(voigt=True))
                    except Exception:  # calculators without stress: energies and forces only
                        stress = None
                if not (np.isfinite(energy) and np.all(np.isfinite(forces))):
                    raise ValueError("non-finite energy or forces")
            except Exception as exc:  # a QM code can fail in many ways; record and retry
                error = f"{type(exc).__name__}: {exc}"
                continue
            out = atoms.copy()
            out.calc = SinglePointCalculator(out, energy=energy, forces=forces, stress=stress)
            return LabelResult(out, None, attempt)
        return LabelResult(None, error, self.retries + 1)


def oracle_from_name(name: str, electronic_temperature: float = 3000.0, max_iterations: int = 500,
                     retries: int = 1) -> ASEOracle:
    """A built-in oracle: ``xtb``/``gfn1`` (GFN1-xTB), ``gfn2`` (GFN2-xTB) via tblite, or ``emt``; or any
    ASE calculator as ``module:factory`` (e.g. ``ase.calculators.emt:EMT``, or a function of the
    user's own module on the Python path that returns a configured calculator), called with no
    arguments for every configuration.

    ``xtb`` means GFN1-xTB: for transition metals such as Ta and W, GFN2-xTB's SCF does not converge
    here even with smearing, GFN1-xTB does (0.3 s for 16 Ta atoms). ``electronic_temperature`` (K) is
    the Fermi smearing of the xTB SCF; metals need a few thousand K to converge.
    """
    key = name.lower()
    if key in ("xtb", "gfn1", "gfn1-xtb"):
        method = "GFN1-xTB"
    elif key in ("gfn2", "gfn2-xtb"):
        method = "GFN2-xTB"
    elif key == "emt":
        from ase.calculators.emt import EMT

        return ASEOracle(EMT, name="EMT", retries=retries)
    elif ":" in name:
        return ASEOracle(calculator_factory(name), name=name, retries=retries)
    else:
        raise InputError(f"unknown oracle {name!r}; built in: xtb (= gfn1), gfn1, gfn2, emt, or any "
                         "ASE calculator as module:factory (e.g. ase.calculators.emt:EMT)")

    return ASEOracle(TBLiteFactory(method, electronic_temperature, max_iterations),
                     name=f"{method} (tblite, {electronic_temperature:g} K)", retries=retries)


@dataclass(frozen=True)
class TBLiteFactory:
    """Makes tblite's ASE calculator; a plain picklable object (not a closure), so an oracle over it
    can be sent to worker processes (:mod:`fitsnap_uq.active.executors`).

    Attributes:
        method: ``GFN1-xTB`` or ``GFN2-xTB``.
        electronic_temperature: Fermi smearing of the SCF (K).
        max_iterations: SCF iterations.
    """

    method: str
    electronic_temperature: float = 3000.0
    max_iterations: int = 500

    def __call__(self) -> Any:
        from tblite.ase import TBLite

        return TBLite(method=self.method, electronic_temperature=self.electronic_temperature,
                      max_iterations=self.max_iterations, verbosity=0)


def calculator_factory(spec: str) -> Callable[[], Any]:
    """The callable named by ``module:attribute`` (an ASE calculator class or a function returning one);
    InputError naming the spec when it cannot be imported."""
    import importlib

    module, _, attr = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise InputError(f"oracle {spec!r}: cannot import {attr!r} from {module!r} ({exc})") from None
    if not callable(factory):
        raise InputError(f"oracle {spec!r}: {attr!r} is not callable")
    return factory


def read_fitsnap_json(path: str | Path) -> tuple[dict[str, Any], Any]:
    """A FitSNAP JSON file's record and its configuration as ASE ``Atoms``."""
    from ase import Atoms

    text = Path(path).read_text()
    if not text.lstrip().startswith("{"):
        text = text.split("\n", 1)[1]
    record = json.loads(text)
    data = record["Dataset"]["Data"][0]
    atoms = Atoms(data["AtomTypes"], positions=data["Positions"], cell=data["Lattice"], pbc=True)
    return record, atoms


def is_labelled(record: dict[str, Any]) -> bool:
    """False for frames written by the MD hook and not labelled since."""
    return bool(record["Dataset"].get("fitsnap_uq", {}).get("labelled", True))


def label_json_file(path: str | Path, oracle: ASEOracle) -> LabelResult:
    """Replace an unlabelled FitSNAP JSON file's placeholders by the oracle's values (atomically)."""
    record, atoms = read_fitsnap_json(path)
    result = oracle.label(atoms)
    if result.atoms is None:
        return result
    meta = dict(record["Dataset"].get("fitsnap_uq", {}))
    meta.update({"labelled": True, "oracle": oracle.name})
    new = atoms_record(result.atoms, label=f"labelled by {oracle.name}")
    new["Dataset"]["fitsnap_uq"] = meta
    write_record(new, path)
    return result


MPI_LAUNCHER_ENV = ("PMI_RANK", "PMI_SIZE", "PMIX_RANK", "OMPI_COMM_WORLD_SIZE", "MPI_LOCALNRANKS")
"""Environment variables that MPI launchers (MPICH/Hydra, PMIx, Open MPI) set in the processes they start."""


def world_comm() -> Any | None:
    """mpi4py's COMM_WORLD when this process is one of several MPI ranks, else None.

    mpi4py is imported only when a launcher's variables are set (or it is imported already), so a plain
    serial run never initializes MPI.
    """
    if "mpi4py.MPI" not in sys.modules and not any(k in os.environ for k in MPI_LAUNCHER_ENV):
        return None
    try:
        from mpi4py import MPI
    except ImportError:
        return None
    return MPI.COMM_WORLD if MPI.COMM_WORLD.Get_size() > 1 else None


def _size(comm: Any | None) -> int:
    return 1 if comm is None else int(comm.Get_size())


@contextmanager
def ase_serial(active: bool = True) -> Iterator[None]:
    """Make ASE's file I/O serial on this rank while the block runs.

    ``ase.io.read``/``write`` are MPI-aware: under mpirun they read or write on rank 0 and broadcast over
    COMM_WORLD, which hangs or crosses other messages when ranks work on different configurations (a
    calculator writing its input files, rank 0 writing flagged frames alone). ``active=False``: no-op.
    """
    if not active:
        yield
        return
    import ase.parallel

    old = ase.parallel.world
    ase.parallel.world = ase.parallel.DummyMPI()
    try:
        yield
    finally:
        ase.parallel.world = old


class _Counter:
    """A shared task counter on rank 0 (MPI one-sided atomic fetch-and-add), for dynamic scheduling."""

    def __init__(self, comm: Any) -> None:
        from mpi4py import MPI

        self.MPI = MPI
        self.win = MPI.Win.Allocate(8 if comm.Get_rank() == 0 else 0, 8, comm=comm)
        if comm.Get_rank() == 0:
            self.win.Lock(0, MPI.LOCK_EXCLUSIVE)
            self.win.Put(np.zeros(1, dtype=np.int64), 0)
            self.win.Unlock(0)
        sleeping_barrier(comm)

    def next(self) -> int:
        got, one = np.empty(1, dtype=np.int64), np.ones(1, dtype=np.int64)
        self.win.Lock(0, self.MPI.LOCK_SHARED)
        self.win.Fetch_and_op(one, got, 0, 0, self.MPI.SUM)
        self.win.Unlock(0)
        return int(got[0])

    def free(self) -> None:
        self.win.Free()


def distribute(n: int, work: Callable[[int], Any], comm: Any | None = None, schedule: str = "round_robin"
               ) -> list[tuple[int, Any]]:
    """Run ``work(i)`` for i in 0..n-1 spread over the ranks of ``comm``; every rank gets all results.

    Args:
        n: number of tasks.
        work: runs task i on the calling rank; returns a picklable result. Should not raise (an
            exception on one rank leaves the others waiting); :func:`label_many` catches them.
        comm: mpi4py communicator (None: run all tasks here, in order).
        schedule: ``round_robin`` (task i on rank i mod size: deterministic) or ``dynamic`` (each rank
            takes the next task when it is free: balances calls of very different cost).

    Returns:
        (n,) pairs (rank that ran task i, result), in task order, on every rank.
    """
    if schedule not in ("round_robin", "dynamic"):
        raise ValueError(f"unknown schedule {schedule!r}; known: round_robin, dynamic")
    if _size(comm) == 1:
        return [(0, work(i)) for i in range(n)]
    rank, size = comm.Get_rank(), comm.Get_size()
    local: list[tuple[int, Any]] = []
    if schedule == "round_robin":
        local = [(i, work(i)) for i in range(rank, n, size)]
    else:
        counter = _Counter(comm)
        try:
            while (i := counter.next()) < n:
                local.append((i, work(i)))
        finally:
            sleeping_barrier(comm)
            counter.free()
    # The ranks done first wait for the others asleep, not spinning in MPI's collective (a QM call
    # takes seconds to minutes; a spinning rank would take a core from the ranks still computing).
    sleeping_barrier(comm)
    gathered = comm.allgather(local)
    out: list[tuple[int, Any] | None] = [None] * n
    for r, part in enumerate(gathered):
        for i, result in part:
            out[i] = (r, result)
    missing = [i for i, v in enumerate(out) if v is None]
    if missing:
        raise RuntimeError(f"tasks {missing} were run by no rank")
    return out  # type: ignore[return-value]


@dataclass
class Outcome:
    """What one labelling task produced (picklable, gathered across ranks)."""

    path: str
    ok: bool
    error: str | None
    attempts: int
    energy: float | None = None


def label_task(path: str | Path, oracle: ASEOracle, atoms: Any | None = None, catch: bool = True
                ) -> Outcome:
    """Label one file (``atoms`` given: write a new record; else fill the file's placeholders): the unit
    of work of every executor (:mod:`fitsnap_uq.active.executors`), run where the call runs (an MPI
    rank, a worker process, a Dask worker), which writes the file atomically and returns a small
    picklable :class:`Outcome`. ``catch``: an exception other than the oracle's (a bad file, a full
    disk) becomes a failed outcome (needed under MPI, where one rank raising would leave the others
    waiting); else it is raised."""
    try:
        if atoms is None:
            result = label_json_file(path, oracle)
        else:
            result = oracle.label(atoms)
            if result.atoms is not None:
                write_record(atoms_record(result.atoms, label=f"labelled by {oracle.name}"), path)
    except Exception as exc:
        if not catch:
            raise
        return Outcome(str(path), False, f"{type(exc).__name__}: {exc}", 0)
    energy = float(result.atoms.get_potential_energy()) if result.atoms is not None else None
    return Outcome(str(path), result.atoms is not None, result.error, result.attempts, energy)


def label_many(tasks: Sequence[tuple[Any | None, str | Path]], oracle: ASEOracle, comm: Any | None = None,
               schedule: str = "round_robin") -> list[tuple[int, Outcome]]:
    """Label a list of (atoms or None, path) over the ranks of ``comm``; outcomes on every rank.

    With atoms, the labelled configuration is written to path as a new FitSNAP JSON file; with None, the
    unlabelled FitSNAP JSON file at path is labelled in place (:func:`label_json_file`). Every rank must
    call this with the same tasks. On one rank an error other than a failed QM call (a bad file) is
    raised as before; on several it is reported as a failed outcome.
    Returns (rank that made the call, :class:`Outcome`) in task order.
    """
    parallel = _size(comm) > 1
    with ase_serial(parallel):
        return distribute(len(tasks), lambda i: label_task(tasks[i][1], oracle, tasks[i][0], parallel),
                          comm, schedule)


def label_folder(folder: str | Path, oracle: ASEOracle, comm: Any | None = None,
                 schedule: str = "round_robin") -> dict[str, Any]:
    """Label every unlabelled FitSNAP JSON file below ``folder``.

    Args:
        folder: searched recursively for ``*.json`` (files in sorted order).
        oracle: the QM oracle.
        comm: mpi4py communicator to spread the calls over (default: COMM_WORLD when run as several
            MPI ranks, see :func:`world_comm`; one rank: a plain loop). Every rank must call this.
        schedule: ``round_robin`` or ``dynamic`` (see :func:`distribute`).

    Returns:
        ``labelled``, ``failed``, ``skipped`` (already labelled): lists of paths; ``errors``: path ->
        error text of each failed call; ``ranks``: path -> rank that made the call. The same on every
        rank. A failed call is retried by the oracle and then reported here, never raised.
    """
    comm = world_comm() if comm is None else comm
    todo: list[str] = []
    skipped: list[str] = []
    if _size(comm) == 1 or comm.Get_rank() == 0:
        for path in sorted(Path(folder).rglob("*.json")):
            record, _ = read_fitsnap_json(path)
            (skipped if is_labelled(record) else todo).append(str(path))
    if _size(comm) > 1:
        todo, skipped = sleeping_bcast(comm, (todo, skipped), root=0)
    done: dict[str, Any] = {"labelled": [], "failed": [], "skipped": skipped, "errors": {}, "ranks": {}}
    for rank, outcome in label_many([(None, p) for p in todo], oracle, comm, schedule):
        done["labelled" if outcome.ok else "failed"].append(outcome.path)
        done["ranks"][outcome.path] = rank
        if not outcome.ok:
            done["errors"][outcome.path] = outcome.error
    return done


def main(argv: list[str] | None = None) -> int:
    """``[mpirun -np N] python -m fitsnap_uq.active.oracles FOLDER [--oracle NAME] [--schedule S]``:
    label every unlabelled FitSNAP JSON file below FOLDER; rank 0 prints the outcome as JSON."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m fitsnap_uq.active.oracles",
                                 description="Label the unlabelled FitSNAP JSON files of a folder "
                                             "(spread over the MPI ranks under mpirun).")
    ap.add_argument("folder")
    ap.add_argument("--oracle", default="xtb", help="xtb (= gfn1), gfn1, gfn2 or emt")
    ap.add_argument("--electronic-temperature", type=float, default=3000.0)
    ap.add_argument("--retries", type=int, default=1)
    ap.add_argument("--schedule", default="round_robin", choices=["round_robin", "dynamic"])
    args = ap.parse_args(argv)
    if not Path(args.folder).is_dir():
        print(f"error: folder not found: {args.folder}", file=sys.stderr)
        return 2
    oracle = oracle_from_name(args.oracle, electronic_temperature=args.electronic_temperature,
                              retries=args.retries)
    comm = world_comm()
    done = label_folder(args.folder, oracle, comm, args.schedule)
    if comm is None or comm.Get_rank() == 0:
        print(json.dumps({"ranks_used": _size(comm), **done}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
