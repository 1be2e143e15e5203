"""The on-the-fly active-learning loop: structures -> QM labels -> fit -> MD with the hook -> flagged
frames -> QM labels -> refit, until no frame is flagged, the iterations are done or the QM budget is
spent. ``fitsnap-uq al CONFIG.toml`` (see ``examples/active_learning/``).

Everything lives in the work folder (default: next to the config, ``<config stem>_al``):

* ``data/JSON/<group>/<name>.json``: labelled configurations (FitSNAP JSON), written atomically;
* ``journal.jsonl``: one line per completed QM call (appended and fsynced after its file is written);
* ``testset/``: the loop's QM-labelled test set (``[loop] test_set``: ``md``, frames of an independent MD
  at the hottest condition, run in ``testmd/``; or ``lattice``, rattled cells), ``testset_user/``: the
  user's ``test_files`` labelled by the oracle; every fit is scored on each (QM calls outside the
  training budget, counted and reported apart);
* ``iter<k>/fit``: the FitSNAP input and outputs of fit k; ``iter<k>/md_<T>K``: MD script and flags;
  ``iter<k>/select``: the candidates' descriptors and the choice;
* ``report.md``, ``summary.json`` and ``learning_curve.png``; ``.lock`` (see below).

Elements: any number (``[system] elements`` with ``composition``, the fractions of lattice sites each
takes, assigned at random per structure; or the elements of the user's FitSNAP input). Per-element SNAP
``radelem`` and ``wj`` come from ``[snap]`` (a number, or a list in element order) or from the user's
FitSNAP input.

Starting data (``[start]``): the built-in lattice structures (``[system] initial``; 0 for none), the
configurations of any ASE-readable files (``structures``: extxyz, POSCAR, cif, LAMMPS data...; every
frame, labelled by the oracle), and a FitSNAP project (``fitsnap_input``: its JSON training set is copied
into ``data/JSON`` once and fitted with its own groups, sizes and weights; no QM call). ``test_files``:
ASE-readable structures, labelled by the oracle and scored as a test set of their own.

Exploration (``[md]``): NVT (or NPT at each of ``pressures``, bar) of the MD start structure (``md_data``,
any ASE-readable file, or the lattice in ``md_cells``), or the user's own LAMMPS input ``template``, run
at each temperature (x pressure) with the uncertainty hook. ``md_data`` may list several files (bulk
cells of different sizes, a vacancy, a slab...): every condition is then run from each of them
(``iter<k>/md_<file stem>_<condition>``). In a template the loop fills in
``${temperature}`` (K), ``${pressure}`` (bar), ``${seed}``, ``${steps}``, ``${timestep}`` (ps),
``${data_file}`` (the MD start structure, LAMMPS data, types in element order) and ``${potential}`` (a file
with the pair_style/pair_coeff lines of the fit: use ``include ${potential}``); any other ``${...}`` is
left to LAMMPS. The filled-in script is ``iter<k>/md_<condition>/in.md``.

Selection (``[select]``): ``threshold`` labels the first ``max_flags`` new frames of each MD run above
``flag_above`` (raw eV/A); any strategy of :mod:`fitsnap_uq.active.strategies` instead takes every
evaluated frame as a candidate when the recalibrated ``level`` interval of the force on one of its atoms
is wider than the element's ``tolerance`` (eV/A; none left: the loop stops) and chooses ``batch`` of
them on the fit's posterior (:func:`fitsnap_uq.active.query.choose`; ``iter<k>/select/chosen.json``);
``balance = "runs"`` makes each pick among the MD runs with the fewest labelled frames, ``"cost"`` with
the least QM cost spent (:data:`BALANCES`).
The fits are recalibrated (``[fit] recalibration``, default quantile). A frame that repeats an earlier
one (the shared start structure) is never a candidate twice.

Cell sizes: flagged MD frames are labelled in the MD cell (``md_cells``), the initial structures in
``supercell``. With a QM code that samples the Brillouin zone at the Gamma point only (tblite's
periodic xTB), a metal's energy per atom depends on the cell size: use the same size for both, or
the data mix energy scales.

Resuming: rerunning the same command after a crash (even ``kill -9``) redoes only what is missing, and
gives the same journal, fits and curve as an uninterrupted run. Every fit is frozen to its data: fit k is
on the project's groups, ``Initial`` and ``Flagged0`` .. ``Flagged<k-1>`` only (the journal's ``fit`` key
says which fit first uses each labelled file), whatever later groups a killed run left on disk. A QM
call whose file exists is never repeated (a file written just before a kill is journalled with the same
line an uninterrupted run writes); a call that failed is journalled and not retried; one interrupted
before its file was written is redone (deterministic oracles give the same result). A fit is not
repeated when its ``done.json`` records the same input and the same labelled files (names and sizes);
otherwise it is redone (deterministic, seeded), and then the MD runs and test errors of that iteration
are redone too. A finished MD run (``done.json``) is not repeated; one cut short starts over.

One loop per folder: the run holds an exclusive lock on ``<workdir>/.lock``
(:mod:`fitsnap_uq.active.lock`); a second ``fitsnap-uq al`` on the folder stops with a message naming
the running one and changes nothing. The lock dies with its process, so a killed run's lock is taken
over by the next.

Progress (:mod:`fitsnap_uq.progress`, rank 0): a stage line per labelling step, fit, test and MD run,
and a bar over each step's QM calls.

QM calls run on ``[oracle] executor`` (:mod:`fitsnap_uq.active.executors`): in this process
(``serial``), over MPI ranks (``mpi``), a local process pool (``processes``, ``workers``) or a Dask
cluster (``dask``, ``dask_scheduler``); each call's outcome is journalled when it arrives. Under
``mpirun -np N fitsnap-uq al CONFIG.toml`` the QM calls of each labelling step (initial
structures, test set, flagged frames) are spread over the N ranks (round-robin; each rank writes the
files it labelled, atomically); everything else (fits, MD, test errors, journal, report) runs on rank
0 alone, as in a serial run, while the other ranks wait for the next labelling step (asleep, not
spinning in MPI: :func:`fitsnap_uq.parallel.sleeping_bcast`). So the ranks pay
off where the QM calls dominate (xTB, DFT). With one rank the loop is exactly the serial one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from fitsnap_uq import progress as _progress
from fitsnap_uq.active.executors import (
    DASK_MISSING,
    EXECUTORS,
    MPIExecutor,
    dask_available,
    die_with_parent,
    make_executor,
)
from fitsnap_uq.active.lock import FolderLock
from fitsnap_uq.active.oracles import (
    MPI_LAUNCHER_ENV,
    ASEOracle,
    Outcome,
    ase_serial,
    is_labelled,
    oracle_from_name,
    read_fitsnap_json,
    world_comm,
)
from fitsnap_uq.active.project import read_project
from fitsnap_uq.active.query import QuerySettings, choose
from fitsnap_uq.active.strategies import STRATEGIES, Candidates
from fitsnap_uq.errors import InputError
from fitsnap_uq.fitsnap_json import atoms_record, write_record
from fitsnap_uq.io import atomic_write


@dataclass
class ALConfig:
    """Settings of the loop (the TOML file's tables, with defaults). Paths are relative to ``base`` (the
    config's folder)."""

    element: str = "Ta"
    elements: list[str] = field(default_factory=list)  # default: [element]
    composition: list[float] = field(default_factory=list)  # site fractions; default: equal
    lattice: str = "bcc"
    a: float = 3.31
    supercell: tuple[int, int, int] = (2, 2, 2)
    initial: int = 6
    rattle: float = 0.05
    test_rattle: float | None = None  # A; default 2 x rattle
    strain: float = 0.02
    seed: int = 0
    fitsnap_input: str = ""
    structures: list[str] = field(default_factory=list)
    test_files: list[str] = field(default_factory=list)
    oracle: str = "xtb"
    electronic_temperature: float = 3000.0
    executor: str = "auto"
    workers: int = 0  # processes / local Dask cluster; 0: the CPU count
    dask_scheduler: str = ""
    twojmax: int = 6
    rcutfac: float = 4.67637
    rfac0: float = 0.99363
    radelem: float | list[float] = 0.5
    wj: float | list[float] = 1.0
    zbl: tuple[float, float] = (1.5, 2.0)  # close contacts only: it must not shape normal bonds
    noise_classes: str = "quantity"
    recalibration: str = "quantile"
    strategy: str = "threshold"
    batch: int = 4
    cost_gamma: float = 0.0
    spread: bool = True
    shortlist: int = 3  # spread: K-means among the shortlist x batch best
    spread_cost_gamma: float = 0.0  # spread: each cluster's pick by score / (atoms^3)^gamma
    balance: str = "none"  # runs / cost: each pick from the MD runs with the fewest labels / least cost
    tolerance: float | dict[str, float] = 0.0
    level: float = 0.95
    temperatures: list[float] = field(default_factory=lambda: [800.0, 2000.0])
    pressures: list[float] = field(default_factory=list)  # bar; empty: NVT
    template: str = ""
    md_data: str | list[str] = ""  # one file or several (each MD condition from each)
    md_cells: tuple[int, int, int] = (3, 3, 3)
    md_steps: int = 300
    timestep: float = 0.002
    every: int = 10
    flag_above: float = 0.15
    halt_above: float = 2.0
    max_flags: int = 4
    iterations: int = 4
    qm_budget: int = 40
    test_structures: int = 4
    test_set: str = "md"
    base: str = "."
    source: str = ""  # the config file, for messages

    TABLES: ClassVar[dict[str, tuple[str, ...]]] = {
        "system": ("element", "elements", "composition", "lattice", "a", "supercell", "initial", "rattle",
                   "test_rattle", "strain", "seed"),
        "start": ("fitsnap_input", "structures", "test_files"),
        "oracle": ("oracle", "electronic_temperature", "executor", "workers", "dask_scheduler"),
        "snap": ("twojmax", "rcutfac", "rfac0", "radelem", "wj", "zbl"),
        "fit": ("noise_classes", "recalibration"),
        "select": ("strategy", "batch", "cost_gamma", "spread", "shortlist", "spread_cost_gamma", "balance",
                   "tolerance", "level"),
        "md": ("temperatures", "pressures", "template", "md_data", "md_cells", "md_steps", "timestep",
               "every", "flag_above", "halt_above", "max_flags"),
        "loop": ("iterations", "qm_budget", "test_structures", "test_set")}

    @classmethod
    def read(cls, path: str | Path) -> ALConfig:
        """Read a TOML config; unknown tables or keys, and wrong values, are errors naming them."""
        try:
            import tomllib
        except ImportError:  # Python 3.10
            import tomli as tomllib  # type: ignore[no-redef]
        path = Path(path)
        if not path.is_file():
            raise InputError("active-learning config not found", file=str(path))
        try:
            data = tomllib.loads(path.read_text())
        except Exception as exc:
            raise InputError(f"cannot parse TOML: {exc}", file=str(path)) from None
        tables = cls.TABLES
        values: dict[str, Any] = {}
        for table, content in data.items():
            if table not in tables:
                raise InputError(f"unknown table; known: {', '.join(tables)}", file=str(path),
                                 section=table)
            for key, value in content.items():
                name = "oracle" if (table, key) == ("oracle", "name") else key
                if name not in tables[table]:
                    raise InputError(f"unknown key; [{table}] accepts: {', '.join(tables[table])}",
                                     file=str(path), section=table, key=key)
                values[name] = tuple(value) if isinstance(value, list) and name in (
                    "supercell", "zbl", "md_cells") else value
        cfg = cls(**values, base=str(path.resolve().parent), source=str(path))
        cfg.check()
        return cfg

    def _where(self, key: str) -> dict[str, str | None]:
        table = next((t for t, keys in self.TABLES.items() if key in keys), None)
        return {"file": self.source or None, "section": table, "key": "name" if key == "oracle" else key}

    def path(self, name: str) -> Path:
        """A path of the config (relative to its folder)."""
        return (Path(self.base) / name).resolve()

    def md_files(self) -> list[str]:
        """The MD start structure files (``md_data``; empty: the lattice in ``md_cells``)."""
        if isinstance(self.md_data, str):
            return [self.md_data] if self.md_data else []
        return [str(name) for name in self.md_data]

    def species(self) -> list[str]:
        """The elements of the built-in structures, in type order."""
        return list(self.elements) or [self.element]

    def fractions(self) -> list[float]:
        """Site fractions of :meth:`species` (equal when not given)."""
        n = len(self.species())
        return list(self.composition) or [1.0 / n] * n

    def per_element(self, key: str, n: int) -> list[float]:
        """``radelem`` or ``wj`` for n elements (a number applies to all)."""
        value = getattr(self, key)
        values = [float(value)] * n if isinstance(value, (int, float)) else [float(v) for v in value]
        if len(values) != n:
            raise InputError(f"{len(values)} values for {n} elements", **self._where(key))
        return values

    def check(self) -> None:
        """Refuse values the loop cannot run, naming the file, table and key."""
        from ase.data import atomic_numbers

        for el in self.species():
            if el not in atomic_numbers:
                raise InputError(f"unknown element {el!r}", **self._where("elements" if self.elements
                                                                            else "element"))
        if self.composition and (len(self.composition) != len(self.species()) or
                                 min(self.composition) < 0 or abs(sum(self.composition) - 1) > 1e-6):
            raise InputError("one non-negative fraction per element, summing to 1",
                             **self._where("composition"))
        if not self.fitsnap_input:
            self.per_element("radelem", len(self.species()))
            self.per_element("wj", len(self.species()))
        if not isinstance(self.md_data, str) and not (
                isinstance(self.md_data, (list, tuple)) and all(isinstance(x, str) for x in self.md_data)):
            raise InputError("a file name or a list of file names", **self._where("md_data"))
        files = {"fitsnap_input": [self.fitsnap_input] if self.fitsnap_input else [],
                 "structures": self.structures, "test_files": self.test_files,
                 "template": [self.template] if self.template else [],
                 "md_data": self.md_files()}
        for key, names in files.items():
            for name in names:
                if not self.path(name).is_file():
                    raise InputError(f"file not found: {self.path(name)}", **self._where(key))
        for key in ("initial", "test_structures"):
            if getattr(self, key) < 0:
                raise InputError("must be at least 0", **self._where(key))
        if self.twojmax < 0 or self.twojmax % 2:
            raise InputError("an even number >= 0", **self._where("twojmax"))
        if self.rcutfac <= 0:
            raise InputError("must be positive (Angstrom)", **self._where("rcutfac"))
        if not self.temperatures:
            raise InputError("at least one temperature", **self._where("temperatures"))
        if self.strategy not in SELECTIONS:
            raise InputError(f"unknown strategy; known: {', '.join(SELECTIONS)}", **self._where("strategy"))
        if self.balance not in BALANCES:
            raise InputError(f"unknown balance; known: {', '.join(BALANCES)}", **self._where("balance"))
        if self.balance != "none" and self.strategy in ("threshold", "std_sampling"):
            raise InputError(f"balance = {self.balance!r} needs a strategy that chooses a batch (not "
                             f"{self.strategy})", **self._where("balance"))
        if self.recalibration not in ("quantile", "none"):
            raise InputError("quantile or none", **self._where("recalibration"))
        for key in ("batch", "shortlist"):
            if getattr(self, key) < 1:
                raise InputError("must be at least 1", **self._where(key))
        for key in ("cost_gamma", "spread_cost_gamma"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < np.inf:
                raise InputError("a number >= 0 (0: no cost weighting)", **self._where(key))
        if self.spread_cost_gamma and not (self.strategy in ("max_std", "qbc") and self.balance == "none"
                                           and (self.spread or self.strategy == "qbc")):
            raise InputError("needs strategy max_std (with spread = true) or qbc, and balance = \"none\" "
                             "(it weighs the K-means spread's picks)", **self._where("spread_cost_gamma"))
        if not 0.0 < self.level < 1.0:
            raise InputError("a coverage in (0, 1)", **self._where("level"))
        if self.executor not in ("auto", *EXECUTORS):
            raise InputError(f"unknown executor; known: auto, {', '.join(EXECUTORS)}",
                             **self._where("executor"))
        if self.workers < 0:
            raise InputError("must be at least 0 (0: the CPU count)", **self._where("workers"))
        if self.dask_scheduler and self.executor != "dask":
            raise InputError("a Dask scheduler needs executor = \"dask\"", **self._where("dask_scheduler"))
        if self.executor == "dask" and not dask_available():
            raise InputError(DASK_MISSING, **self._where("executor"))
        if self.test_set not in TEST_SETS:
            raise InputError(f"unknown test set; known: {', '.join(TEST_SETS)}", **self._where("test_set"))
        known = set(self.species()) | {"*"}
        if isinstance(self.tolerance, dict) and not self.fitsnap_input and not set(self.tolerance) <= known:
            raise InputError(f"keys must be elements of {self.species()} (or '*')",
                             **self._where("tolerance"))

    def tolerance_of(self, element: str) -> float:
        """The calibrated force half-width (eV/A) above which an atom of ``element`` makes its frame a
        candidate (``[select] tolerance``: one number, or a table by element with ``*`` for the rest)."""
        if isinstance(self.tolerance, dict):
            return float(self.tolerance.get(element, self.tolerance.get("*", 0.0)))
        return float(self.tolerance)


TEST_SETS = ("md", "lattice")
"""``[loop] test_set``: the loop's own test set of ``test_structures`` configurations: ``md``, frames of an
independent MD at the hottest condition (:meth:`Loop.md_test_set`), or ``lattice``, rattled and strained
lattice cells (``test_rattle``)."""

BALANCES = ("none", "runs", "cost")
"""``[select] balance``: ``none``, or ``runs``: each MD run (start structure x temperature x pressure) is a
stratum, and each pick of a batch comes from the runs with the fewest frames labelled so far (earlier
iterations' labels and this batch's picks), the strategy choosing among their frames
(:func:`fitsnap_uq.active.strategies.least_used`); it replaces ``spread``. ``cost``: the same with the
QM cost (atoms^3) spent on each run instead of its number of labels: a pick goes to the run that has
spent the least once the pick is paid for, so a run of large cells is labelled only when the others
have spent as much."""

SELECTIONS = ("threshold", *STRATEGIES)
"""``[select] strategy``: ``threshold`` (the first ``max_flags`` frames of each MD run above ``flag_above``,
in raw eV/A), or a strategy of :mod:`fitsnap_uq.active.strategies` choosing among every evaluated frame."""

LOOP_GROUP_WEIGHTS = "1.0 0.0 1.0 1.0 1e-6"
"""``[GROUPS]`` sizes and weights of the loop's own groups (training_size testing_size eweight fweight
vweight): all in training, energies and forces weighted alike, stresses nearly off."""


def first_fit_of(name: str) -> int | None:
    """The first fit that uses a labelled file (``data/JSON/<group>/...``): 0 for ``Initial``, k + 1 for
    ``Flagged<k>``; None for files outside the training data (the test set)."""
    parts = Path(name).parts
    if len(parts) < 3 or parts[0] != "data":
        return None
    group = parts[2]
    if group.startswith("Flagged") and group[7:].isdigit():
        return int(group[7:]) + 1
    return 0


NO_TEST: dict[str, Any] = {"energy_rmse": float("nan"), "force_rmse": float("nan"),
                           "energy_rmse_95": (float("nan"), float("nan")),
                           "force_rmse_95": (float("nan"), float("nan")), "test_configurations": 0}
"""The test errors of a fit when there is no labelled test configuration."""


def spread_frames(m: int, n: int) -> list[int]:
    """Indices of ``n`` of ``m`` MD frames (in time order) for a test set: evenly spaced over the second
    half of the run, the last frame included (over the whole run when its second half has fewer than
    ``n``); all of them when ``m`` <= ``n``. Sorted."""
    if m <= n:
        return list(range(m))
    start = m // 2 if m - m // 2 >= n else 0
    return sorted({int(round(x)) for x in np.linspace(m - 1, start, n)})


def bootstrap_rmse(sq_sums: np.ndarray, counts: np.ndarray, seed: int = 0, draws: int = 2000
                   ) -> tuple[float, float]:
    """95% bootstrap interval of an RMSE over configurations (resampled with replacement).

    Args:
        sq_sums: (m,) sum of squared errors of each test configuration.
        counts: (m,) number of values in each sum.
    """
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, sq_sums.size, size=(draws, sq_sums.size))
    rmse = np.sqrt(sq_sums[idx].sum(axis=1) / counts[idx].sum(axis=1))
    lo, hi = np.quantile(rmse, [0.025, 0.975])
    return float(lo), float(hi)


class Loop:
    """One active-learning run in ``workdir`` (see the module docstring)."""

    def __init__(self, config: ALConfig, workdir: str | Path, oracle: ASEOracle | None = None,
                 progress: bool = True, comm: Any | None = None) -> None:
        """``comm``: mpi4py communicator whose ranks share the QM calls (default: COMM_WORLD when run as
        several MPI ranks, else none). Every rank constructs the Loop and calls :meth:`run`."""
        self.comm = world_comm() if comm is None else comm
        self.size = 1 if self.comm is None else int(self.comm.Get_size())
        self.rank = 0 if self.comm is None else int(self.comm.Get_rank())
        self.cfg = config
        self.project = read_project(config.path(config.fitsnap_input)) if config.fitsnap_input else None
        self.elements = self.project.elements if self.project else config.species()
        if self.project and config.elements and list(config.elements) != self.elements:
            raise InputError(f"[system] elements {config.elements} differ from the FitSNAP input's type "
                             f"{self.elements}", **config._where("elements"))
        if config.composition and len(config.composition) != len(self.elements):
            raise InputError(f"one fraction per element of {self.elements}", **config._where("composition"))
        self.work = Path(workdir).resolve()
        self.work.mkdir(parents=True, exist_ok=True)
        if oracle is None and ":" in config.oracle and config.base not in sys.path:
            sys.path.insert(0, config.base)  # module:factory may name a module beside the config
        try:
            self.oracle = oracle or oracle_from_name(config.oracle,
                                                     electronic_temperature=config.electronic_temperature)
        except InputError as exc:
            raise InputError(exc.detail, **config._where("oracle")) from None
        try:
            self.executor = make_executor(config.executor, self.oracle, self.comm, config.workers,
                                          config.dask_scheduler)
        except InputError as exc:
            raise InputError(exc.detail, **config._where("executor")) from None
        self.progress = progress and self.rank == 0
        self.journal = self.work / "journal.jsonl"

    # ---------------------------------------------------------------- journal
    def qm_calls(self) -> list[dict[str, Any]]:
        """The completed QM calls, from the journal (a torn last line is ignored)."""
        if not self.journal.exists():
            return []
        out = []
        for line in self.journal.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out

    def _log_call(self, record: dict[str, Any]) -> None:
        torn = self.journal.exists() and self.journal.stat().st_size > 0 and \
            self.journal.read_bytes()[-1:] != b"\n"  # a line cut by a kill: start a new one
        with open(self.journal, "a") as fh:
            fh.write(("\n" if torn else "") + json.dumps(record) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def _call_record(self, path: Path, set_name: str, energy: float, natoms: int) -> dict[str, Any]:
        """The journal line of a successful QM call (the same whether journalled at once or recovered)."""
        name = str(path.relative_to(self.work))
        record: dict[str, Any] = {"file": name, "set": set_name, "ok": True, "energy": energy,
                                  "natoms": natoms}
        fit = first_fit_of(name)
        if fit is not None:
            record["fit"] = fit
        return record

    def _journal_existing(self, path: Path, record: dict[str, Any], set_name: str) -> None:
        """Journal a labelled file that the journal lacks: the run was killed after the file was
        written and before its journal line (the QM call is kept, not repeated; the line is the one an
        uninterrupted run writes)."""
        name = str(path.relative_to(self.work))
        if any(c.get("file") == name and c.get("ok") for c in self.qm_calls()):
            return
        data = record["Dataset"]["Data"][0]
        self._log_call(self._call_record(path, set_name, float(data["Energy"]), len(data["AtomTypes"])))

    def _budget_left(self, before: int | None = None) -> int:
        """QM calls left in the training budget; with ``before = k``, as it was when fit k ran (calls
        for the initial structures and the frames flagged before iteration k only: a resumed run's
        journal already holds the later ones)."""
        allowed = None if before is None else {"Initial", *(f"Flagged{j}" for j in range(before))}

        def counts(call: dict[str, Any]) -> bool:  # files are data/JSON/<group>/<name>.json
            parts = Path(call.get("file", "")).parts
            return allowed is None or (len(parts) > 2 and parts[2] in allowed)

        used = sum(1 for c in self.qm_calls() if c.get("set") == "train" and counts(c))
        return self.cfg.qm_budget - used

    def label(self, atoms: Any, path: Path, set_name: str = "train") -> bool:
        """Label ``atoms`` into ``path`` unless that file already holds a label; journal the call."""
        if path.exists():
            record, _ = read_fitsnap_json(path)
            if is_labelled(record):
                self._journal_existing(path, record, set_name)
                return True
        result = self.oracle.label(atoms)
        if result.atoms is None:
            self._log_call({"file": str(path.relative_to(self.work)), "set": set_name, "ok": False,
                            "error": result.error})
            return False
        write_record(atoms_record(result.atoms, label=f"labelled by {self.oracle.name}"), path)
        self._log_call(self._call_record(path, set_name, float(result.atoms.get_potential_energy()),
                                         len(atoms)))
        return True

    def label_batch(self, tasks: list[tuple[Any, Path]], set_name: str = "train", budget: bool = True,
                    desc: str = "QM") -> None:
        """Label (atoms, path) tasks, skipping files that hold a label and calls that failed before
        (journalled: an uninterrupted run does not retry them either); with ``budget``, no more calls
        than the QM budget has left (failed calls count). The calls run on the loop's executor
        (:mod:`fitsnap_uq.active.executors`; rank 0 only calls this, the other MPI ranks serve in
        :meth:`run`); each outcome is journalled when it arrives: in task order with ``serial``, in
        completion order with ``processes`` and ``dask``, when the step is done with ``mpi``."""
        todo: list[tuple[Any, Path]] = []
        left = self._budget_left() if budget else len(tasks)
        failed = {c.get("file") for c in self.qm_calls() if not c.get("ok")}
        for atoms, path in tasks:
            if str(path.relative_to(self.work)) in failed:
                continue
            if path.exists():
                record = read_fitsnap_json(path)[0]
                if is_labelled(record):
                    self._journal_existing(path, record, set_name)
                    continue
            if len(todo) >= left:
                break
            todo.append((atoms, path))
        if not todo:
            if tasks:
                _progress.stage(f"{desc}: labelled earlier", self.progress)
            return
        if self.executor.name != "serial":
            _progress.stage(f"{desc}: {len(todo)} QM calls on {self.executor.name}"
                            + (f" ({self.size} ranks)" if self.size > 1 else ""), self.progress)
        with _progress.bar(total=len(todo), desc=desc, unit="QM calls", show=self.progress) as bar:
            for i, worker, outcome in self.executor.label(todo):
                self._log_call(self._outcome_record(todo[i][1], set_name, outcome, len(todo[i][0]), worker))
                bar.update(1)

    def _outcome_record(self, path: Path, set_name: str, outcome: Outcome, natoms: int,
                        worker: int | None) -> dict[str, Any]:
        """The journal line of a QM call's outcome (``rank``: the MPI rank that made it, under mpi)."""
        if outcome.ok:
            record = self._call_record(path, set_name, float(outcome.energy), natoms)
        else:
            record = {"file": str(path.relative_to(self.work)), "set": set_name, "ok": False,
                      "error": outcome.error}
        if worker is not None:
            record["rank"] = worker
        return record

    def _subprocess_env(self) -> dict[str, str]:
        """Environment of the fit subprocess: this package on the path, and no MPI launcher variables
        (a child of an MPI rank that inherits them would try to join the parent's MPI job)."""
        env = {k: v for k, v in os.environ.items()
               if k not in MPI_LAUNCHER_ENV and not k.startswith(("PMI_", "PMIX_", "HYDRA_", "HYDI_"))}
        env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[2]),
                                             os.environ.get("PYTHONPATH", "")])
        return env

    def _lammps_comm(self) -> Any:
        """The communicator of rank 0's in-process LAMMPS runs (COMM_SELF under MPI, else default)."""
        if self.size == 1:
            return None
        from mpi4py import MPI

        return MPI.COMM_SELF

    # ------------------------------------------------------------- structures
    def lattice_cell(self, repeat: tuple[int, int, int], rng: np.random.Generator) -> Any:
        """The lattice of the first element repeated; with several elements, the sites shared out by
        ``composition`` (exact counts, sites drawn at random with ``rng``)."""
        from ase.build import bulk

        atoms = bulk(self.elements[0], self.cfg.lattice, a=self.cfg.a, cubic=True).repeat(repeat)
        if len(self.elements) > 1:
            fractions = list(self.cfg.composition) or [1.0 / len(self.elements)] * len(self.elements)
            counts = np.floor(np.asarray(fractions) * len(atoms) + 0.5).astype(int)
            counts[0] = len(atoms) - counts[1:].sum()
            symbols = np.repeat(self.elements, counts)
            atoms.set_chemical_symbols(list(symbols[rng.permutation(len(atoms))]))
        return atoms

    def structures(self, n: int, seed: int, scale_rattle: float = 1.0) -> list[Any]:
        """Rattled and strained supercells of the lattice (deterministic in ``seed``)."""
        rng = np.random.default_rng(seed)
        out = []
        for _ in range(n):
            atoms = self.lattice_cell(self.cfg.supercell, rng)
            strain = np.eye(3) + rng.normal(scale=self.cfg.strain, size=(3, 3))
            atoms.set_cell(np.asarray(atoms.cell) @ (0.5 * (strain + strain.T)), scale_atoms=True)
            atoms.rattle(stdev=self.cfg.rattle * scale_rattle, seed=int(rng.integers(1 << 30)))
            out.append(atoms)
        return out

    def user_structures(self, names: list[str]) -> list[tuple[str, Any]]:
        """(file stem, Atoms) of every frame of the ASE-readable files ``names`` (config-relative)."""
        import ase.io

        out = []
        for name in names:
            path = self.cfg.path(name)
            try:
                frames = ase.io.read(path, index=":")
            except Exception as exc:
                raise InputError(f"ASE cannot read {path}: {exc}", file=self.cfg.source or None,
                                 section="start", key="structures") from None
            for atoms in frames:
                bad = sorted(set(atoms.get_chemical_symbols()) - set(self.elements))
                if bad:
                    raise InputError(f"{path} holds {', '.join(bad)}, not among the elements "
                                     f"{self.elements}", file=self.cfg.source or None, section="start")
                out.append((path.stem, atoms))
        return out

    def copy_project(self) -> None:
        """Copy the FitSNAP project's JSON groups into ``data/JSON`` (once; each group atomically)."""
        import shutil

        if self.project is None:
            return
        data = self.work / "data" / "JSON"
        for group in self.project.groups:
            if group == "Initial" or first_fit_of(f"data/JSON/{group}/x") != 0:
                raise InputError("group name taken by the loop (Initial, Flagged<k>)",
                                 file=str(self.project.input_file), section="GROUPS", key=group)
            dest = data / group
            if dest.is_dir():
                continue
            tmp = data / f".{group}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(self.project.data_path / group, tmp)
            os.replace(tmp, dest)

    # -------------------------------------------------------------------- fit
    def pair_lines(self, stem: str | Path | None = None) -> list[str]:
        """LAMMPS pair_style/pair_coeff lines: the ZBL reference on every pair of types, plus the SNAP
        of ``stem`` (``<stem>.snapcoeff``, ``<stem>.snapparam``) when given."""
        from ase.data import atomic_numbers

        z = [atomic_numbers[el] for el in self.elements]
        zbl = f"zbl {self.cfg.zbl[0]} {self.cfg.zbl[1]}"
        lines = [f"pair_style hybrid/overlay {zbl} snap" if stem else f"pair_style {zbl}"]
        word = "zbl " if stem else ""
        lines += [f"pair_coeff {i + 1} {j + 1} {word}{z[i]} {z[j]}" for i in range(len(z))
                  for j in range(i, len(z))]
        if stem:
            lines.append(f"pair_coeff * * snap {stem}.snapcoeff {stem}.snapparam {' '.join(self.elements)}")
        return lines

    def bispectrum(self) -> dict[str, str]:
        """The ``[BISPECTRUM]`` settings: the FitSNAP project's, else the config's ``[snap]``."""
        n = len(self.elements)
        if self.project is not None:
            out = {"numTypes": str(n), **self.project.bispectrum, "type": " ".join(self.elements)}
        else:
            c = self.cfg
            out = {"numTypes": str(n), "twojmax": " ".join([str(c.twojmax)] * n), "rcutfac": str(c.rcutfac),
                   "rfac0": str(c.rfac0), "rmin0": "0.0",
                   "wj": " ".join(f"{v:g}" for v in c.per_element("wj", n)),
                   "radelem": " ".join(f"{v:g}" for v in c.per_element("radelem", n)),
                   "type": " ".join(self.elements)}
        defaults = {"wselfallflag": "0", "chemflag": "0", "bzeroflag": "0", "quadraticflag": "0"}
        return {**out, **{k: v for k, v in defaults.items() if k not in out}}

    def fitsnap_input(self, groups: list[str]) -> str:
        from ase.data import atomic_numbers

        c = self.cfg
        z = [atomic_numbers[el] for el in self.elements]
        pairs = [(i, j) for i in range(len(z)) for j in range(i, len(z))]
        weights = self.project.groups if self.project else {}
        lines = ["[BISPECTRUM]", *(f"{k} = {v}" for k, v in self.bispectrum().items()), "",
                 "[CALCULATOR]", "calculator = LAMMPSSNAP", "energy = 1", "force = 1", "stress = 1", "",
                 "[ESHIFT]", *(f"{el} = 0.0" for el in self.elements), "", "[SOLVER]",
                 "solver = BAYES", "", "[UQ]", f"noise_classes = {c.noise_classes}",
                 f"recalibration = {c.recalibration}", "", "[SCRAPER]", "scraper = JSON", "", "[PATH]",
                 f"dataPath = {self.work / 'data' / 'JSON'}", "", "[OUTFILE]", "metrics = metrics.md",
                 "potential = pot", "", "[REFERENCE]", "units = metal", "atom_style = atomic",
                 f"pair_style = hybrid/overlay zero 10.0 zbl {c.zbl[0]} {c.zbl[1]}",
                 "pair_coeff1 = * * zero"]
        lines += [f"pair_coeff{n + 2} = {i + 1} {j + 1} zbl {z[i]} {z[j]}" for n, (i, j) in enumerate(pairs)]
        lines += ["", "[GROUPS]",
                  "group_sections = name training_size testing_size eweight fweight vweight",
                  "group_types = str float float float float float", "smartweights = 0",
                  "random_sampling = 0"]
        lines += [f"{g} = {weights.get(g, LOOP_GROUP_WEIGHTS)}" for g in groups]
        return "\n".join(lines) + "\n"

    def fit_groups(self, k: int) -> list[str]:
        """The labelled groups fit k is on: the FitSNAP project's, the initial structures and the frames
        flagged by the MD of iterations 0..k-1 (not later ones, which a resumed run may already hold)."""
        data = self.work / "data" / "JSON"
        own = list(self.project.groups) if self.project else []
        return [g for g in [*own, "Initial", *(f"Flagged{j}" for j in range(k))]
                if (data / g).is_dir() and any((data / g).glob("*.json"))]

    def fit(self, k: int) -> Path:
        """Fit k on its labelled groups (:meth:`fit_groups`); returns the posterior file. Not repeated
        when its ``done.json`` records the same input and labelled files; a fit that runs (again)
        removes the iteration's MD results, selection and test errors, which depend on it."""
        folder = self.work / f"iter{k}" / "fit"
        folder.mkdir(parents=True, exist_ok=True)
        data = self.work / "data" / "JSON"
        groups = self.fit_groups(k)
        text = self.fitsnap_input(groups)
        files = [[str(f.relative_to(data)), f.stat().st_size] for g in groups
                 for f in sorted((data / g).glob("*.json"))]
        record = {"input": text, "files": files}
        done = folder / "done.json"
        posterior = folder / "pot.posterior.npz"
        if done.exists() and posterior.exists() and json.loads(done.read_text()) == record:
            _progress.stage(f"fitsnap-uq al: fit {k} on {len(files)} configurations: done earlier",
                            self.progress)
            return posterior
        done.unlink(missing_ok=True)
        for stale in [folder / "test_errors.json", *(self.work / f"iter{k}").glob("md_*/done.json"),
                      self.work / f"iter{k}" / "select" / "chosen.json"]:
            stale.unlink(missing_ok=True)
        (folder / "al.in").write_text(text)
        env = self._subprocess_env() if self.size > 1 else dict(
            os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[2]),
                                                    os.environ.get("PYTHONPATH", "")]))
        with _progress.timed(f"fitsnap-uq al: fit {k} (BAYES) on {len(files)} configurations",
                             show=self.progress):
            proc = subprocess.run([sys.executable, "-m", "fitsnap_uq", "--no-progress", "fit", "al.in",
                                   "--overwrite"], cwd=folder, env=env, capture_output=True, text=True,
                                  preexec_fn=die_with_parent)
        if proc.returncode != 0:
            raise RuntimeError(f"fit {k} failed:\n{proc.stderr[-3000:]}")
        atomic_write(done, json.dumps(record))
        return posterior

    def training_configurations(self, k: int) -> int:
        """How many labelled configurations fit k was on (from its ``done.json``)."""
        return len(json.loads((self.work / f"iter{k}" / "fit" / "done.json").read_text())["files"])

    def qm_spent(self, k: int) -> tuple[int, float]:
        """QM calls of the loop behind fit k's training data, and their cost, sum of atoms^3 (the
        FitSNAP project's configurations cost the loop nothing)."""
        own = set(self.project.groups) if self.project else set()
        calls, cost = 0, 0.0
        for name, _ in json.loads((self.work / f"iter{k}" / "fit" / "done.json").read_text())["files"]:
            if Path(name).parts[0] in own:
                continue
            record, _ = read_fitsnap_json(self.work / "data" / "JSON" / name)
            calls += 1
            cost += float(len(record["Dataset"]["Data"][0]["AtomTypes"])) ** 3
        return calls, cost

    # --------------------------------------------------------------------- MD
    def conditions(self) -> list[tuple[float, float | None, int]]:
        """(temperature K, pressure bar or None for NVT, index of the MD start structure in
        ``md_data``) of each MD run per iteration."""
        pressures: list[float | None] = [float(p) for p in self.cfg.pressures] or [None]
        starts = range(max(1, len(self.cfg.md_files())))
        return [(float(t), p, s) for s in starts for t in self.cfg.temperatures for p in pressures]

    def start_names(self) -> list[str]:
        """The name of each MD start structure in folder names: none with one structure (folders
        ``md_<T>K...``), else the file stems (``md_<stem>_<T>K...``), numbered if two stems are equal."""
        files = self.cfg.md_files()
        if len(files) <= 1:
            return [""]
        stems = [Path(name).stem for name in files]
        if len(set(stems)) < len(stems):
            stems = [f"{i}{stem}" for i, stem in enumerate(stems)]
        return stems

    def md_start(self, start: int = 0, test: bool = False) -> Path:
        """MD start structure ``start`` (index in ``md_data``) as a LAMMPS data file (types in element
        order, with masses): the config's ``md_data`` file, or the lattice in ``md_cells`` (``test``:
        the test MD's, with its own random arrangement of the elements). Written once, atomically."""
        import io

        import ase.io

        name = self.start_names()[start]
        prefix = "md_test_start" if test else "md_start"
        path = self.work / (f"{prefix}_{name}.data" if name else f"{prefix}.data")
        if path.exists():
            return path
        if self.cfg.md_files():
            atoms = ase.io.read(self.cfg.path(self.cfg.md_files()[start]))
        else:
            seed = self.cfg.seed + (30_000 if test else 20_000)
            atoms = self.lattice_cell(self.cfg.md_cells, np.random.default_rng(seed))
        buf = io.StringIO()
        ase.io.write(buf, atoms, format="lammps-data", specorder=self.elements, masses=True)
        atomic_write(path, buf.getvalue())
        return path

    def md_script(self, temperature: float, k: int, pressure: float | None = None,
                  folder: Path | None = None, seed: int | None = None, data: Path | None = None,
                  start: int = 0) -> str:
        """The MD input of iteration k (fit k's potential) at one condition, from MD start structure
        ``start``: the user's template filled in, or the built-in NVT/NPT run. ``folder``: where the
        template's potential file is written (default: the iteration's MD folder of the condition);
        ``seed`` (velocities; default: the config's seed + k + 1) and ``data`` (start structure;
        default :meth:`md_start` ``(start)``)."""
        c = self.cfg
        stem = self.work / f"iter{k}" / "fit" / "pot"
        data = data or self.md_start(start)
        seed = c.seed + k + 1 if seed is None else seed
        if c.template:
            folder = folder or self.md_folder(k, temperature, pressure, start)
            folder.mkdir(parents=True, exist_ok=True)
            potential = folder / "potential.mod"
            potential.write_text("\n".join(self.pair_lines(stem)) + "\n")
            bar = 0.0 if pressure is None else pressure
            fills = {"temperature": f"{temperature:g}", "pressure": f"{bar:g}",
                     "seed": str(seed), "steps": str(c.md_steps), "timestep": f"{c.timestep:g}",
                     "data_file": str(data), "potential": str(potential)}
            text = self.cfg.path(c.template).read_text()
            for name, value in fills.items():
                text = text.replace("${" + name + "}", value)
            return text
        damp = 100 * c.timestep
        ensemble = (f"fix nvt all nvt temp {temperature} {temperature} {damp}" if pressure is None else
                    f"fix npt all npt temp {temperature} {temperature} {damp} iso {pressure} {pressure} "
                    f"{1000 * c.timestep}")
        return "\n".join([
            "units metal", "atom_style atomic", "boundary p p p", f"read_data {data}",
            *self.pair_lines(stem),
            f"velocity all create {2 * temperature} {seed} loop geom", ensemble,
            f"timestep {c.timestep}", "thermo 100", f"run {c.md_steps}", ""])

    def md_folder(self, k: int, temperature: float, pressure: float | None, start: int = 0) -> Path:
        """``iter<k>/md_[<start name>_]<T>K[_<P>bar]``."""
        tail = "" if pressure is None else f"_{pressure:g}bar"
        name = self.start_names()[start]
        return self.work / f"iter{k}" / f"md_{name + '_' if name else ''}{temperature:g}K{tail}"

    def md(self, k: int, posterior: Path) -> list[Path]:
        """MD at each condition with the hook; returns the flagged (unlabelled) JSON files, without
        repeats (:meth:`_new_frames`): every evaluated frame (a selection strategy chooses among them),
        or with ``threshold`` the first ``max_flags`` new frames of each run above ``flag_above``."""
        import shutil

        from lammps_hooks.md import run_md

        flagged: list[Path] = []
        for temperature, pressure, start in self.conditions():
            folder = self.md_folder(k, temperature, pressure, start)
            folder.mkdir(parents=True, exist_ok=True)
            done = folder / "done.json"
            if not done.exists():
                (folder / "in.md").write_text(self.md_script(temperature, k, pressure, folder, start=start))
                shutil.rmtree(folder / "flagged", ignore_errors=True)  # a run cut short starts over
                with _progress.timed(f"fitsnap-uq al: MD {k} at {folder.name[3:]} ({self.cfg.md_steps} "
                                     "steps with the uncertainty hook)", show=self.progress):
                    every_frame = self.cfg.strategy != "threshold"  # all evaluated frames are candidates
                    res = run_md(folder / "in.md", posterior, every=self.cfg.every,
                                 flag_dir=folder / "flagged",
                                 flag_above=0.0 if every_frame else self.cfg.flag_above,
                                 halt_above=self.cfg.halt_above, max_flags=None,
                                 log=str(folder / "log.lammps"), screen=False, comm=self._lammps_comm())
                text = json.dumps({"nflagged": res.nflagged, "halted": res.halted,
                                   "last": res.hook.last if res.hook else {}})
                atomic_write(done, text)
                what = "kept as candidates" if every_frame else f"flagged above {self.cfg.flag_above:g} eV/A"
                _progress.stage(f"fitsnap-uq al: MD {k} at {folder.name[3:]}: {res.nflagged} frame(s) {what}",
                                self.progress)
            frames = self._new_frames(k, sorted((folder / "flagged" / "json").rglob("*.json")), flagged)
            flagged += frames if self.cfg.strategy != "threshold" else frames[: self.cfg.max_flags]
        return flagged

    def _new_frames(self, k: int, frames: list[Path], before: list[Path] = ()) -> list[Path]:
        """``frames`` without repeats: a frame whose structure (species, positions and cell to 1e-6 A) is
        that of an earlier frame of the list, of ``before`` or of a frame labelled in an earlier
        iteration is dropped (every MD run starts from the same structure, so its first frame repeats
        across conditions and iterations)."""
        def key(path: Path) -> str:
            data = read_fitsnap_json(path)[0]["Dataset"]["Data"][0]
            numbers = np.round(np.concatenate([np.ravel(data["Positions"]), np.ravel(data["Lattice"])]), 6)
            return json.dumps([data["AtomTypes"], (numbers + 0.0).tolist()])

        data = self.work / "data" / "JSON"
        seen = {key(f) for j in range(k) for f in sorted((data / f"Flagged{j}").glob("*.json"))}
        seen |= {key(f) for f in before}
        out = []
        for path in frames:
            if (h := key(path)) not in seen:
                seen.add(h)
                out.append(path)
        return out

    # -------------------------------------------------------------- selection
    def describe(self, data_root: Path, groups: list[str], folder: Path) -> Any:
        """FitSNAP's descriptor rows (:class:`~fitsnap_uq.linear.rows.Rows`) of the JSON ``groups`` below
        ``data_root``, with the loop's SNAP settings, force rows labelled with their atom and element
        where FitSNAP records them (a posterior's per-atom force scale needs them); FitSNAP runs in
        ``folder`` (in this process)."""
        import contextlib
        import io

        from fitsnap_uq.fitting import descriptor_rows
        from fitsnap_uq.solvers import with_atom_labels

        folder.mkdir(parents=True, exist_ok=True)
        text = self.fitsnap_input(groups).replace(f"dataPath = {self.work / 'data' / 'JSON'}",
                                                  f"dataPath = {data_root}")
        (folder / "describe.in").write_text(text)
        old = os.getcwd()
        os.chdir(folder)
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # FitSNAP's timing lines
                rows, snap = descriptor_rows(str(folder / "describe.in"), comm=self._lammps_comm())
        finally:
            os.chdir(old)
        return rows if rows is None else with_atom_labels(rows, snap.pt.fitsnap_dict)

    def select_frames(self, k: int, posterior: Path, frames: list[Path]) -> list[Path]:
        """The frames of iteration k's MD to label, chosen by ``[select] strategy`` (best first).

        Every evaluated frame is a candidate if the calibrated ``level`` force interval of one of its
        atoms is wider than the atom's element's ``tolerance`` (half-width in eV/A: the posterior's
        recalibrated interval of the force, noise and per-atom force scale included). The strategy
        chooses ``batch`` of them on the posterior (force rows; energy rows only give the K-means
        fingerprints), optionally weighted by QM cost (atoms^(3 cost_gamma)). Kept in
        ``iter<k>/select/chosen.json``.
        """
        import shutil

        from fitsnap_uq.posterior import Posterior

        folder = self.work / f"iter{k}" / "select"
        done = folder / "chosen.json"
        if done.exists():
            return [self.work / f for f in json.loads(done.read_text())["chosen"]]
        shutil.rmtree(folder, ignore_errors=True)
        names = {f"{p.parents[3].name}_{p.stem}.json": p for p in frames}
        for name, path in names.items():  # copies for FitSNAP's descriptors (it refuses unlabelled files)
            record, _ = read_fitsnap_json(path)
            record["Dataset"].pop("fitsnap_uq", None)
            record["Dataset"]["Label"] = "candidate: energy and forces are model predictions, not QM"
            write_record(record, folder / "JSON" / "Candidates" / name)
        rows = self.describe(folder / "JSON", ["Candidates"], folder / "describe")
        rows = rows.subset(rows.row_types.astype(str) != "Stress")
        post = Posterior.load(posterior)
        a = post.to_layout(rows.a)
        types = rows.row_types.astype(str)
        configs = rows.configs.astype(str)
        force = types == "Force"
        half = np.zeros(len(types))
        labels = {}
        if post.atom_scale is not None and rows.atom is not None and rows.element is not None:
            labels = {"atom": rows.atom_ids()[force], "element": rows.element[force]}
        half[force] = post.interval(a[force], self.cfg.level, noise="Force", **labels)
        order = sorted(names)
        widest: dict[str, float] = {}
        eligible = []
        for name in order:
            symbols = read_fitsnap_json(names[name])[1].get_chemical_symbols()
            per_atom = half[force & (configs == name)].reshape(-1, 3).max(axis=1)
            excess = per_atom - np.array([self.cfg.tolerance_of(el) for el in symbols])
            widest[name] = float(per_atom.max())
            if np.any(excess > 0):
                eligible.append(name)
        chosen: list[str] = []
        n = min(self.cfg.batch, self._budget_left())
        if eligible and n > 0:
            index = {name: i for i, name in enumerate(eligible)}
            keep = np.isin(configs, eligible)
            owner = np.array([index[c] for c in configs[keep]])
            natoms = np.bincount(owner[types[keep] == "Force"], minlength=len(eligible)) // 3
            cands = Candidates(a=a[keep], owner=owner, row_types=types[keep], natoms=natoms)
            forces = [v for q, v in post.noise_var.items() if q.endswith("Force")] or [1.0]
            noise = {"Force": float(np.mean(forces)), "Energy": np.inf}  # energy rows: fingerprints only
            settings = QuerySettings(strategy=self.cfg.strategy, cost_gamma=self.cfg.cost_gamma,
                                     spread=self.cfg.spread, shortlist=self.cfg.shortlist,
                                     spread_cost_gamma=self.cfg.spread_cost_gamma)
            strata = counts = weights = None
            if self.cfg.balance != "none":
                strata, counts = self.run_strata(k, [names[name] for name in eligible],
                                                 cost=self.cfg.balance == "cost")
                weights = natoms.astype(float) ** 3 if self.cfg.balance == "cost" else None
            train = None
            if self.cfg.strategy == "qbc":
                train = self.describe(self.work / "data" / "JSON", self.fit_groups(k), folder / "train")
                train = train.subset(train.row_types.astype(str) == "Force")
            picked = choose(cands, n, settings, post.predictive_cov, noise, self.cfg.seed + k, train,
                            strata, counts, weights)
            chosen = [eligible[i] for i in picked]
        record = {"strategy": self.cfg.strategy, "candidates": len(order), "eligible": len(eligible),
                  "widest_half_width": widest,
                  "chosen": [str(names[c].relative_to(self.work)) for c in chosen]}
        atomic_write(done, json.dumps(record, indent=1))
        _progress.stage(f"fitsnap-uq al: selection {k} ({self.cfg.strategy}): {len(chosen)} of "
                        f"{len(eligible)} frames with a calibrated {100 * self.cfg.level:g}% force interval "
                        f"above the tolerance ({len(order)} evaluated)", self.progress)
        return [names[c] for c in chosen]

    def run_strata(self, k: int, frames: list[Path], cost: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """``[select] balance``: the MD run of each of iteration k's candidate ``frames``
        (``iter<k>/md_<run>/flagged/json/<group>/<frame>.json``) as an index into the loop's runs
        (:meth:`conditions`), and the frames labelled from each run in iterations before k (the
        files ``data/JSON/Flagged<j>/md_<run>_<frame>.json``), or with ``cost`` their QM cost
        (sum of atoms^3)."""
        runs = [self.md_folder(k, t, p, s).name for t, p, s in self.conditions()]
        strata = np.array([runs.index(path.parents[3].name) for path in frames], dtype=int)
        counts = np.zeros(len(runs))
        by_length = sorted(range(len(runs)), key=lambda i: -len(runs[i]))  # md_x_600K_1bar before md_x_600K
        for j in range(k):
            for f in sorted((self.work / "data" / "JSON" / f"Flagged{j}").glob("*.json")):
                i = next((i for i in by_length if f.name.startswith(runs[i] + "_")), None)
                if i is not None:
                    counts[i] += len(read_fitsnap_json(f)[1]) ** 3 if cost else 1
        return strata, counts

    # ------------------------------------------------------------------- test
    def test_sets(self) -> dict[str, Path]:
        """The test sets every fit is scored on, name -> folder of labelled FitSNAP JSON files: the loop's
        own (``[loop] test_set``, ``md`` or ``lattice``, in ``testset/``; when ``test_structures`` > 0)
        and the user's ``test_files`` (``user``, in ``testset_user/``)."""
        out = {}
        if self.cfg.test_structures > 0:
            out[self.cfg.test_set] = self.work / "testset"
        if self.cfg.test_files:
            out["user"] = self.work / "testset_user"
        return out

    def hottest(self) -> tuple[float, float | None]:
        """The hottest exploration condition: the highest temperature (K) and, at it, the highest
        pressure (bar; None for NVT)."""
        temperature, pressure, _ = max(self.conditions(),
                                       key=lambda c: (c[0], -np.inf if c[1] is None else c[1]))
        return temperature, pressure

    def md_test_set(self, posterior: Path) -> None:
        """The ``md`` test set: ``test_structures`` frames of an MD independent of the exploration, labelled
        by the oracle into ``testset/`` (QM calls outside the training budget, journalled as ``test``).

        The MD runs fit 0's potential (``posterior``) at the hottest condition (:meth:`hottest`) with the
        exploration's script (the user's template or the built-in NVT/NPT run) and the uncertainty hook
        every ``every`` steps, but its own velocity seed (seed + 30000) and, on the built-in lattice, its
        own random arrangement of the elements (:meth:`md_start`); it runs its full length, whatever fit
        0's uncertainty (no ``halt_above``: its frames are for QM, and fit 0 is the least sure fit). The
        frames are taken evenly spaced from the second half of the run (:func:`spread_frames`).
        Deterministic in the seed; the choice is kept in ``testmd/done.json`` (a run cut short starts
        over).
        """
        import shutil

        cfg = self.cfg
        if cfg.test_set != "md" or cfg.test_structures == 0:
            return
        folder = self.work / "testmd"
        done = folder / "done.json"
        if not done.exists():
            from lammps_hooks.md import run_md

            temperature, pressure = self.hottest()
            folder.mkdir(parents=True, exist_ok=True)
            script = self.md_script(temperature, 0, pressure, folder, seed=cfg.seed + 30_000,
                                    data=self.md_start(test=True))
            (folder / "in.md").write_text(script)
            shutil.rmtree(folder / "flagged", ignore_errors=True)
            where = f"{temperature:g} K" + ("" if pressure is None else f", {pressure:g} bar")
            with _progress.timed(f"fitsnap-uq al: test-set MD at {where} ({cfg.md_steps} steps, fit 0)",
                                 show=self.progress):
                res = run_md(folder / "in.md", posterior, every=cfg.every, flag_dir=folder / "flagged",
                             flag_above=0.0, halt_above=None, max_flags=None,
                             log=str(folder / "log.lammps"), screen=False, comm=self._lammps_comm())
            frames = [p for p in sorted((folder / "flagged" / "json").rglob("*.json"))
                      if not p.stem.endswith("_step0")]  # the start structure is no test
            picked = spread_frames(len(frames), cfg.test_structures)
            chosen = [str(frames[i].relative_to(folder)) for i in picked]
            atomic_write(done, json.dumps({"temperature": temperature, "pressure": pressure,
                                           "halted": bool(res.halted), "frames_evaluated": len(frames),
                                           "chosen": chosen}))
        tasks = [(read_fitsnap_json(folder / name)[1], self.work / "testset" / f"md_{Path(name).stem}.json")
                 for name in json.loads(done.read_text())["chosen"]]
        self.label_batch(tasks, set_name="test", budget=False, desc="QM: test set (independent MD)")

    def test_errors(self, posterior: Path) -> dict[str, dict[str, Any]]:
        """Per test set (:meth:`test_sets`): energy (eV/atom) and force (eV/A) RMSE of the posterior mean,
        with 95% bootstrap intervals over the test configurations; kept in ``test_errors.json`` beside
        the posterior (removed when the fit is redone)."""
        cache = posterior.parent / "test_errors.json"
        if cache.exists():
            return json.loads(cache.read_text())
        errors = {name: self._test_errors(posterior, folder) for name, folder in self.test_sets().items()}
        atomic_write(cache, json.dumps(errors))
        return errors

    def _test_errors(self, posterior: Path, folder: Path) -> dict[str, Any]:
        from ase.calculators.lammpslib import LAMMPSlib

        from fitsnap_uq.compat import import_lammps

        import_lammps()
        stem = str(posterior)[: -len(".posterior.npz")]
        cmds = self.pair_lines(stem)
        types = {el: i + 1 for i, el in enumerate(self.elements)}
        de, f_sq, f_n = [], [], []
        for path in sorted(folder.glob("*.json")):
            _, atoms = read_fitsnap_json(path)
            record = json.loads(path.read_text())["Dataset"]["Data"][0]
            atoms.calc = LAMMPSlib(lmpcmds=cmds, atom_types=types, log_file=None,
                                   keep_alive=False, comm=self._lammps_comm())
            de.append((atoms.get_potential_energy() - record["Energy"]) / len(atoms))
            diff = (atoms.get_forces() - np.asarray(record["Forces"])).ravel()
            f_sq.append(float(diff @ diff))
            f_n.append(diff.size)
        if not f_sq:  # no labelled configuration (every call failed)
            return dict(NO_TEST)
        e_sq, f_sq_a, f_n_a = np.square(de), np.asarray(f_sq), np.asarray(f_n, dtype=float)
        return {"energy_rmse": float(np.sqrt(np.mean(e_sq))),
                "force_rmse": float(np.sqrt(f_sq_a.sum() / f_n_a.sum())),
                "energy_rmse_95": bootstrap_rmse(e_sq, np.ones_like(e_sq), self.cfg.seed),
                "force_rmse_95": bootstrap_rmse(f_sq_a, f_n_a, self.cfg.seed),
                "test_configurations": len(f_sq)}

    # ------------------------------------------------------------------- run
    def run(self) -> dict[str, Any]:
        """Run (or resume) the loop; returns the learning curve and why it stopped (on every rank).
        Raises :class:`fitsnap_uq.active.lock.FolderBusy` (on rank 0) when another loop holds the folder."""
        try:
            if self.size == 1:
                with FolderLock(self.work, "fitsnap-uq al"):
                    return self._run()
            executor = self.executor
            assert isinstance(executor, MPIExecutor)  # make_executor allows no other under mpirun
            with ase_serial():  # rank 0 reads and writes frames alone: ASE must not broadcast over COMM_WORLD
                if self.rank != 0:
                    summary = executor.serve()
                    if summary is None:
                        raise RuntimeError("active-learning loop: rank 0 failed (see its error)")
                    return summary
                summary = None
                try:
                    with FolderLock(self.work, "fitsnap-uq al"):
                        summary = self._run()
                finally:
                    executor.stop(summary)  # None tells the other ranks rank 0 failed
                return summary
        finally:
            self.executor.close()

    def _run(self) -> dict[str, Any]:
        cfg = self.cfg
        self.copy_project()
        initial = [(atoms, f"initial{i:03d}") for i, atoms in
                   enumerate(self.structures(cfg.initial, cfg.seed))]
        initial += [(atoms, f"{stem}_{i:03d}") for i, (stem, atoms) in
                    enumerate(self.user_structures(cfg.structures))]
        self.label_batch([(atoms, self.work / "data" / "JSON" / "Initial" / f"{name}.json")
                          for atoms, name in initial], desc="QM: initial structures")
        if cfg.test_set == "lattice":
            test_scale = 2.0 if cfg.test_rattle is None else cfg.test_rattle / cfg.rattle
            lattice = self.structures(cfg.test_structures, cfg.seed + 10_000, scale_rattle=test_scale)
            self.label_batch([(atoms, self.work / "testset" / f"test{i:03d}.json")
                              for i, atoms in enumerate(lattice)],
                             set_name="test", budget=False, desc="QM: test set (lattice)")
        self.label_batch([(atoms, self.work / "testset_user" / f"{stem}_{i:03d}.json")
                          for i, (stem, atoms) in enumerate(self.user_structures(cfg.test_files))],
                         set_name="test", budget=False, desc="QM: your test structures")
        curve, reason = [], "iterations done"
        for k in range(cfg.iterations):
            _progress.stage(f"fitsnap-uq al: iteration {k + 1} of {cfg.iterations}: fit, MD with the "
                            "uncertainty hook, QM labels of the flagged frames", self.progress)
            posterior = self.fit(k)
            curve.append(self._curve_point(k, posterior))
            if self._budget_left(before=k) <= 0:
                reason = "QM budget spent"
                break
            flagged = self.md(k, posterior)
            if self.cfg.strategy != "threshold":
                flagged = self.select_frames(k, posterior, flagged)
            if not flagged:
                reason = "no frame flagged" if self.cfg.strategy == "threshold" else \
                    "no frame above the tolerance"
                break
            group = self.work / "data" / "JSON" / f"Flagged{k}"
            tasks = []
            for path in flagged:
                _, atoms = read_fitsnap_json(path)
                md_folder = path.parents[3].name  # iter<k>/md_<T>K/flagged/json/Flagged/<frame>.json
                tasks.append((atoms, group / f"{md_folder}_{path.stem}.json"))
            self.label_batch(tasks, desc=f"QM: flagged frames, iteration {k}")
        else:
            _progress.stage("fitsnap-uq al: final fit", self.progress)
            curve.append(self._curve_point(cfg.iterations, self.fit(cfg.iterations)))
        calls = self.qm_calls()
        sets = self.test_sets()
        test_calls = {name: sum(1 for c in calls if c.get("set") == "test" and
                                Path(c.get("file", "")).parts[:1] == (folder.name,))
                      for name, folder in sets.items()}
        summary = {"curve": curve, "stopped": reason, "qm_calls": len(calls),
                   "qm_calls_training": sum(1 for c in calls if c.get("set") == "train"),
                   "qm_calls_test": test_calls,
                   "failed_qm_calls": sum(1 for c in calls if not c.get("ok")),
                   "qm_cost_atoms3": float(sum(float(c.get("natoms", 0)) ** 3 for c in calls
                                               if c.get("ok"))),
                   "test_sets": {name: self._test_set_source(name) for name in sets},
                   "elements": self.elements}
        self.report(summary)
        return summary

    def _test_set_source(self, name: str) -> str:
        """Where a test set's configurations come from, in words (for the summary and the report)."""
        if name == "user":
            return f"the user's test structures ({', '.join(self.cfg.test_files)})"
        if name == "lattice":
            return f"{self.cfg.test_structures} rattled and strained lattice cells"
        info = json.loads((self.work / "testmd" / "done.json").read_text())
        bar = "" if info["pressure"] is None else f", {info['pressure']:g} bar"
        where = f"{info['temperature']:g} K{bar}"
        return (f"{len(info['chosen'])} frames of an independent MD with fit 0 at the hottest condition "
                f"({where}; {info['frames_evaluated']} frames evaluated"
                f"{', halted early' if info['halted'] else ''})")

    def _curve_point(self, k: int, posterior: Path) -> dict[str, Any]:
        """Fit k's point of the learning curve: its training data and QM cost, and its errors on the first
        test set of :meth:`test_sets`, with every set's under ``by_test_set`` when there are several."""
        if k == 0:
            self.md_test_set(posterior)
        by_set = self.test_errors(posterior)
        calls, cost = self.qm_spent(k)
        for name, errors in by_set.items():
            _progress.stage(f"fitsnap-uq al: fit {k}: test force RMSE {errors['force_rmse']:.4f} eV/A, "
                            f"energy RMSE {errors['energy_rmse']:.4f} eV/atom ({name} test set)",
                            self.progress)
        point = {"iteration": k, "configurations": self.training_configurations(k), "qm_calls": calls,
                 "qm_cost_atoms3": cost, **next(iter(by_set.values()), NO_TEST)}
        if len(by_set) > 1:
            point["by_test_set"] = by_set
        return point

    def report(self, summary: dict[str, Any]) -> None:
        """``report.md``, ``summary.json`` and ``learning_curve.png`` in the work folder: one table and one
        curve per test set."""
        from fitsnap_uq.plotting import pyplot, save

        curve = summary["curve"]
        sets = summary["test_sets"] or {"none": "no test set"}
        spent = "".join(f", {n} for the {name} test set" for name, n in summary["qm_calls_test"].items())
        lines = ["# Active-learning run", "",
                 f"Elements: {', '.join(self.elements)}. Oracle: {self.oracle.name}, executor "
                 f"{self.executor.name}. Stopped: {summary['stopped']}. QM calls: {summary['qm_calls']} "
                 f"({summary['failed_qm_calls']} failed): {summary['qm_calls_training']} for training "
                 f"(budget {self.cfg.qm_budget}){spent}. QM cost {summary['qm_cost_atoms3']:.3g} atoms^3 "
                 "(training and test).", ""]
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for name, source in sets.items():
            per_set = [c.get("by_test_set", {}).get(name, c) for c in curve]
            n = per_set[-1]["test_configurations"] if per_set else 0
            lines += [f"## Test set: {name}", "",
                      f"{source[0].upper()}{source[1:]}: {n} configurations. Errors of each fit's posterior "
                      "mean, with 95% bootstrap intervals over the test configurations.", "",
                      "| iteration | training configurations | QM calls | QM cost (atoms^3) | "
                      "test energy RMSE (eV/atom) | test force RMSE (eV/A) |", "|---|---|---|---|---|---|"]
            lines += [f"| {c['iteration']} | {c['configurations']} | {c['qm_calls']} | "
                      f"{c['qm_cost_atoms3']:.3g} | {_with_band(e, 'energy')} | {_with_band(e, 'force')} |"
                      for c, e in zip(curve, per_set)]
            lines.append("")
            y = np.asarray([e["force_rmse"] for e in per_set])
            band = np.asarray([e["force_rmse_95"] for e in per_set]).reshape(-1, 2)
            ax.errorbar([c["qm_calls"] for c in curve], y, yerr=[y - band[:, 0], band[:, 1] - y], fmt="o-",
                        capsize=3, label=f"{name} test set")
        atomic_write(self.work / "report.md", "\n".join(lines))
        atomic_write(self.work / "summary.json", json.dumps(summary, indent=1))
        ax.set_xlabel("QM calls (training)")
        ax.set_ylabel("test force RMSE (eV/A)")
        ax.set_title("Active-learning curve (95% bootstrap intervals)")
        ax.legend()
        fig.tight_layout()
        save(fig, self.work / "learning_curve.png")


def _with_band(errors: dict[str, Any], quantity: str) -> str:
    """``RMSE [lo, hi]`` of ``energy`` or ``force`` for the report's tables."""
    lo, hi = errors[f"{quantity}_rmse_95"]
    return f"{errors[f'{quantity}_rmse']:.4f} [{lo:.4f}, {hi:.4f}]"


def run_state(workdir: str | Path) -> dict[str, Any]:
    """What a finished run in ``workdir`` produced, for comparing two runs (a resumed one against an
    uninterrupted one): the summary, the journal's lines, and per fit the posterior (every array as
    dtype, shape and SHA-256 of its bytes; the header as parsed JSON) and the SNAP coefficient file
    without its comment lines (FitSNAP writes the time of the fit there)."""
    import hashlib

    work = Path(workdir)
    journal = [json.loads(line) for line in (work / "journal.jsonl").read_text().splitlines() if line.strip()]
    fits: dict[str, Any] = {}
    for folder in sorted(work.glob("iter*/fit")):
        with np.load(folder / "pot.posterior.npz", allow_pickle=False) as npz:
            arrays = {k: [str(npz[k].dtype), list(npz[k].shape), hashlib.sha256(npz[k].tobytes()).hexdigest()]
                      for k in npz.files if k != "header"}
            header = json.loads(str(npz["header"]))
        coeff = [ln for ln in (folder / "pot.snapcoeff").read_text().splitlines() if not ln.startswith("#")]
        fits[folder.parent.name] = {"arrays": arrays, "header": header, "snapcoeff": coeff}
    return {"summary": json.loads((work / "summary.json").read_text()), "journal": journal, "fits": fits}
