"""The on-the-fly active-learning loop: structures -> QM labels -> fit -> MD with the hook -> flagged
frames -> QM labels -> refit, until no frame is flagged, the iterations are done or the QM budget is
spent. ``fitsnap-uq al CONFIG.toml`` (see ``examples/active_learning/``).

Everything lives in the work folder (default: next to the config, ``<config stem>_al``):

* ``data/JSON/<group>/<name>.json``: labelled configurations (FitSNAP JSON), written atomically;
* ``journal.jsonl``: one line per completed QM call (appended and fsynced after its file is written);
* ``testset/``: an independent QM-labelled test set (its own budget), for the learning curve;
* ``iter<k>/fit``: the FitSNAP input and outputs of fit k; ``iter<k>/md_<T>K``: MD script and flags;
* ``report.md`` and ``learning_curve.png``.

Cell sizes: flagged MD frames are labelled in the MD cell (``md_cells``), the initial structures in
``supercell``. With a QM code that samples the Brillouin zone at the Gamma point only (tblite's
periodic xTB), a metal's energy per atom depends on the cell size: use the same size for both, or
the data mix energy scales.

Resuming: rerunning the same command after a crash (even ``kill -9``) redoes only what is missing. A
QM call whose file exists is never repeated; one interrupted before its file was written is redone
(its result was not stored). A fit is not repeated when its ``done.json`` records the same input and
the same labelled files (names and sizes); otherwise it is redone (deterministic, seeded), and then
the MD runs and test errors of that iteration are redone too. A finished MD run (``done.json``) is not
repeated.

Progress (:mod:`fitsnap_uq.progress`, rank 0): a stage line per labelling step, fit, test and MD run,
and a bar over each step's QM calls.

Under ``mpirun -np N fitsnap-uq al CONFIG.toml`` the QM calls of each labelling step (initial
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
from typing import Any

import numpy as np

from fitsnap_uq import progress as _progress
from fitsnap_uq.active.oracles import (
    MPI_LAUNCHER_ENV,
    ASEOracle,
    ase_serial,
    is_labelled,
    label_many,
    oracle_from_name,
    read_fitsnap_json,
    world_comm,
)
from fitsnap_uq.errors import InputError
from fitsnap_uq.fitsnap_json import atoms_record, write_record
from fitsnap_uq.io import atomic_write
from fitsnap_uq.parallel import sleeping_bcast


@dataclass
class ALConfig:
    """Settings of the loop (the TOML file's tables, with defaults)."""

    element: str = "Ta"
    lattice: str = "bcc"
    a: float = 3.31
    supercell: tuple[int, int, int] = (2, 2, 2)
    initial: int = 6
    rattle: float = 0.05
    test_rattle: float | None = None  # A; default 2 x rattle
    strain: float = 0.02
    seed: int = 0
    oracle: str = "xtb"
    electronic_temperature: float = 3000.0
    twojmax: int = 6
    rcutfac: float = 4.67637
    rfac0: float = 0.99363
    radelem: float = 0.5
    wj: float = 1.0
    zbl: tuple[float, float] = (1.5, 2.0)  # close contacts only: it must not shape normal bonds
    noise_classes: str = "quantity"
    temperatures: list[float] = field(default_factory=lambda: [800.0, 2000.0])
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

    @classmethod
    def read(cls, path: str | Path) -> ALConfig:
        """Read a TOML config; unknown tables or keys are errors naming them."""
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
        tables = {"system": ("element", "lattice", "a", "supercell", "initial", "rattle", "test_rattle",
                             "strain", "seed"),
                  "oracle": ("oracle", "electronic_temperature"),
                  "snap": ("twojmax", "rcutfac", "rfac0", "radelem", "wj", "zbl"),
                  "fit": ("noise_classes",),
                  "md": ("temperatures", "md_cells", "md_steps", "timestep", "every", "flag_above",
                         "halt_above", "max_flags"),
                  "loop": ("iterations", "qm_budget", "test_structures")}
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
        return cls(**values)


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
        self.work = Path(workdir).resolve()
        self.work.mkdir(parents=True, exist_ok=True)
        self.oracle = oracle or oracle_from_name(config.oracle,
                                                 electronic_temperature=config.electronic_temperature)
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

    def _journal_existing(self, path: Path, record: dict[str, Any], set_name: str) -> None:
        """Journal a labelled file that the journal lacks: the run was killed after the file was
        written and before its journal line (the QM call is kept, not repeated)."""
        name = str(path.relative_to(self.work))
        if any(c.get("file") == name and c.get("ok") for c in self.qm_calls()):
            return
        energy = float(record["Dataset"]["Data"][0]["Energy"])
        self._log_call({"file": name, "set": set_name, "ok": True, "energy": energy, "recovered": True})

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
        self._log_call({"file": str(path.relative_to(self.work)), "set": set_name, "ok": True,
                        "energy": float(result.atoms.get_potential_energy())})
        return True

    def label_batch(self, tasks: list[tuple[Any, Path]], set_name: str = "train", budget: bool = True,
                    desc: str = "QM") -> None:
        """Label (atoms, path) tasks in order, skipping files that hold a label; with ``budget``, stop
        when the QM budget is spent. Several ranks: the calls are spread over them (rank 0 only calls
        this; the others serve in :meth:`run`), results journalled by rank 0 in task order."""
        todo: list[tuple[Any, Path]] = []
        left = self._budget_left() if budget else len(tasks)
        for atoms, path in tasks:
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
        if self.size == 1:
            for atoms, path in _progress.bar(todo, desc=desc, unit="QM calls", show=self.progress):
                if budget and self._budget_left() <= 0:  # failed calls count too
                    break
                self.label(atoms, path, set_name)
            return
        _progress.stage(f"{desc}: {len(todo)} QM calls on {self.size} ranks", self.progress)
        sleeping_bcast(self.comm, ("label", todo), root=0)
        for rank, outcome in label_many(todo, self.oracle, self.comm):
            record: dict[str, Any] = {"file": str(Path(outcome.path).relative_to(self.work)),
                                      "set": set_name, "ok": outcome.ok, "rank": rank}
            if outcome.ok:
                record["energy"] = outcome.energy
            else:
                record["error"] = outcome.error
            self._log_call(record)

    def _serve(self) -> dict[str, Any]:
        """A rank other than 0: label its share of each batch rank 0 sends, until rank 0 stops."""
        while True:
            kind, payload = sleeping_bcast(self.comm, None, root=0)
            if kind == "label":
                label_many(payload, self.oracle, self.comm)
            elif kind == "stop":
                if payload is None:
                    raise RuntimeError("active-learning loop: rank 0 failed (see its error)")
                return payload

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
    def structures(self, n: int, seed: int, scale_rattle: float = 1.0) -> list[Any]:
        """Rattled and strained supercells of the lattice (deterministic in ``seed``)."""
        from ase.build import bulk

        rng = np.random.default_rng(seed)
        out = []
        for _ in range(n):
            atoms = bulk(self.cfg.element, self.cfg.lattice, a=self.cfg.a, cubic=True).repeat(
                self.cfg.supercell)
            strain = np.eye(3) + rng.normal(scale=self.cfg.strain, size=(3, 3))
            atoms.set_cell(np.asarray(atoms.cell) @ (0.5 * (strain + strain.T)), scale_atoms=True)
            atoms.rattle(stdev=self.cfg.rattle * scale_rattle, seed=int(rng.integers(1 << 30)))
            out.append(atoms)
        return out

    # -------------------------------------------------------------------- fit
    def fitsnap_input(self, groups: list[str]) -> str:
        from ase.data import atomic_numbers

        z = atomic_numbers[self.cfg.element]
        c = self.cfg
        lines = [
            "[BISPECTRUM]", "numTypes = 1", f"twojmax = {c.twojmax}", f"rcutfac = {c.rcutfac}",
            f"rfac0 = {c.rfac0}", "rmin0 = 0.0", f"wj = {c.wj}", f"radelem = {c.radelem}",
            f"type = {c.element}", "wselfallflag = 0", "chemflag = 0", "bzeroflag = 0",
            "quadraticflag = 0", "", "[CALCULATOR]", "calculator = LAMMPSSNAP", "energy = 1",
            "force = 1", "stress = 1", "", "[ESHIFT]", f"{c.element} = 0.0", "", "[SOLVER]",
            "solver = BAYES", "", "[UQ]", f"noise_classes = {c.noise_classes}", "recalibration = none",
            "", "[SCRAPER]", "scraper = JSON", "", "[PATH]",
            f"dataPath = {self.work / 'data' / 'JSON'}", "", "[OUTFILE]", "metrics = metrics.md",
            "potential = pot", "", "[REFERENCE]", "units = metal", "atom_style = atomic",
            f"pair_style = hybrid/overlay zero 10.0 zbl {c.zbl[0]} {c.zbl[1]}",
            "pair_coeff1 = * * zero", f"pair_coeff2 = * * zbl {z} {z}", "", "[GROUPS]",
            "group_sections = name training_size testing_size eweight fweight vweight",
            "group_types = str float float float float float", "smartweights = 0", "random_sampling = 0",
        ]
        lines += [f"{g} = 1.0 0.0 1.0 1.0 1e-6" for g in groups]
        return "\n".join(lines) + "\n"

    def fit_groups(self, k: int) -> list[str]:
        """The labelled groups fit k is on: the initial structures and the frames flagged by the MD of
        iterations 0..k-1 (not later ones, which a resumed run may already hold)."""
        data = self.work / "data" / "JSON"
        return [g for g in ["Initial", *(f"Flagged{j}" for j in range(k))]
                if (data / g).is_dir() and any((data / g).glob("*.json"))]

    def fit(self, k: int) -> Path:
        """Fit k on its labelled groups (:meth:`fit_groups`); returns the posterior file. Not repeated
        when its ``done.json`` records the same input and labelled files; a fit that runs (again)
        removes the iteration's MD results and test errors, which depend on it."""
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
        for stale in [folder / "test_errors.json", *(self.work / f"iter{k}").glob("md_*K/done.json")]:
            stale.unlink(missing_ok=True)
        (folder / "al.in").write_text(text)
        env = self._subprocess_env() if self.size > 1 else dict(
            os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[2]),
                                                    os.environ.get("PYTHONPATH", "")]))
        with _progress.timed(f"fitsnap-uq al: fit {k} (BAYES) on {len(files)} configurations",
                             show=self.progress):
            proc = subprocess.run([sys.executable, "-m", "fitsnap_uq", "--no-progress", "fit", "al.in",
                                   "--overwrite"], cwd=folder, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"fit {k} failed:\n{proc.stderr[-3000:]}")
        atomic_write(done, json.dumps(record))
        return posterior

    def training_configurations(self, k: int) -> int:
        """How many labelled configurations fit k was on (from its ``done.json``)."""
        return len(json.loads((self.work / f"iter{k}" / "fit" / "done.json").read_text())["files"])

    def md_script(self, temperature: float, k: int) -> str:
        from ase.data import atomic_masses, atomic_numbers

        z = atomic_numbers[self.cfg.element]
        nx, ny, nz = self.cfg.md_cells
        fit = self.work / f"iter{k}" / "fit"
        return "\n".join([
            "units metal", f"lattice {self.cfg.lattice} {self.cfg.a}",
            f"region box block 0 {nx} 0 {ny} 0 {nz}",
            "create_box 1 box", "create_atoms 1 box", f"mass 1 {atomic_masses[z]:.4f}",
            f"pair_style hybrid/overlay zbl {self.cfg.zbl[0]} {self.cfg.zbl[1]} snap",
            f"pair_coeff * * zbl {z} {z}",
            f"pair_coeff * * snap {fit / 'pot.snapcoeff'} {fit / 'pot.snapparam'} {self.cfg.element}",
            f"velocity all create {2 * temperature} {self.cfg.seed + k + 1} loop geom",
            f"fix nvt all nvt temp {temperature} {temperature} {100 * self.cfg.timestep}",
            f"timestep {self.cfg.timestep}", "thermo 100", f"run {self.cfg.md_steps}", ""])

    def md(self, k: int, posterior: Path) -> list[Path]:
        """MD at each temperature with the hook; returns the flagged (unlabelled) JSON files."""
        from lammps_hooks.md import run_md

        flagged: list[Path] = []
        for temperature in self.cfg.temperatures:
            folder = self.work / f"iter{k}" / f"md_{temperature:g}K"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "in.md").write_text(self.md_script(temperature, k))
            done = folder / "done.json"
            if not done.exists():
                import shutil

                shutil.rmtree(folder / "flagged", ignore_errors=True)  # a run cut short starts over
                with _progress.timed(f"fitsnap-uq al: MD {k} at {temperature:g} K ({self.cfg.md_steps} "
                                     "steps with the uncertainty hook)", show=self.progress):
                    res = run_md(folder / "in.md", posterior, every=self.cfg.every,
                                 flag_dir=folder / "flagged", flag_above=self.cfg.flag_above,
                                 halt_above=self.cfg.halt_above, max_flags=self.cfg.max_flags,
                                 log=str(folder / "log.lammps"), screen=False, comm=self._lammps_comm())
                text = json.dumps({"nflagged": res.nflagged, "halted": res.halted,
                                   "last": res.hook.last if res.hook else {}})
                atomic_write(done, text)
                _progress.stage(f"fitsnap-uq al: MD {k} at {temperature:g} K: {res.nflagged} frame(s) "
                                f"flagged above {self.cfg.flag_above:g} eV/A", self.progress)
            flagged += sorted((folder / "flagged" / "json").rglob("*.json"))
        return flagged

    def test_errors(self, posterior: Path) -> dict[str, float]:
        """Energy (eV/atom) and force (eV/A) RMSE of the posterior mean on the QM test set; kept in
        ``test_errors.json`` beside the posterior (removed when the fit is redone)."""
        cache = posterior.parent / "test_errors.json"
        if cache.exists():
            return json.loads(cache.read_text())
        errors = self._test_errors(posterior)
        atomic_write(cache, json.dumps(errors))
        return errors

    def _test_errors(self, posterior: Path) -> dict[str, float]:
        from ase.calculators.lammpslib import LAMMPSlib
        from ase.data import atomic_numbers

        from fitsnap_uq.compat import import_lammps

        import_lammps()
        z = atomic_numbers[self.cfg.element]
        stem = str(posterior)[: -len(".posterior.npz")]
        cmds = [f"pair_style hybrid/overlay zbl {self.cfg.zbl[0]} {self.cfg.zbl[1]} snap",
                f"pair_coeff * * zbl {z} {z}",
                f"pair_coeff * * snap {stem}.snapcoeff {stem}.snapparam {self.cfg.element}"]
        de, df = [], []
        for path in sorted((self.work / "testset").glob("*.json")):
            _, atoms = read_fitsnap_json(path)
            record = json.loads(path.read_text())["Dataset"]["Data"][0]
            atoms.calc = LAMMPSlib(lmpcmds=cmds, atom_types={self.cfg.element: 1}, log_file=None,
                                   keep_alive=False, comm=self._lammps_comm())
            de.append((atoms.get_potential_energy() - record["Energy"]) / len(atoms))
            df.append((atoms.get_forces() - np.asarray(record["Forces"])).ravel())
        return {"energy_rmse": float(np.sqrt(np.mean(np.square(de)))),
                "force_rmse": float(np.sqrt(np.mean(np.concatenate(df) ** 2)))}

    # ------------------------------------------------------------------- run
    def run(self) -> dict[str, Any]:
        """Run (or resume) the loop; returns the learning curve and why it stopped (on every rank)."""
        if self.size == 1:
            return self._run()
        with ase_serial():  # rank 0 reads and writes frames alone: ASE must not broadcast over COMM_WORLD
            if self.rank != 0:
                return self._serve()
            summary = None
            try:
                summary = self._run()
            finally:
                # None tells the other ranks rank 0 failed.
                sleeping_bcast(self.comm, ("stop", summary), root=0)
            return summary

    def _run(self) -> dict[str, Any]:
        cfg = self.cfg
        initial = self.structures(cfg.initial, cfg.seed)
        self.label_batch([(atoms, self.work / "data" / "JSON" / "Initial" / f"initial{i:03d}.json")
                          for i, atoms in enumerate(initial)], desc="QM: initial structures")
        test_scale = 2.0 if cfg.test_rattle is None else cfg.test_rattle / cfg.rattle
        test = self.structures(cfg.test_structures, cfg.seed + 10_000, scale_rattle=test_scale)
        self.label_batch([(atoms, self.work / "testset" / f"test{i:03d}.json")
                          for i, atoms in enumerate(test)], set_name="test", budget=False,
                         desc="QM: test set")
        curve, reason = [], "iterations done"
        for k in range(cfg.iterations):
            _progress.stage(f"fitsnap-uq al: iteration {k + 1} of {cfg.iterations}: fit, MD with the "
                            "uncertainty hook, QM labels of the flagged frames", self.progress)
            posterior = self.fit(k)
            errors = self.test_errors(posterior)
            curve.append({"iteration": k, "qm_calls": self.training_configurations(k), **errors})
            self._say_errors(k, errors)
            if self._budget_left(before=k) <= 0:
                reason = "QM budget spent"
                break
            flagged = self.md(k, posterior)
            if not flagged:
                reason = "no frame flagged"
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
            posterior = self.fit(cfg.iterations)
            errors = self.test_errors(posterior)
            n_train = self.training_configurations(cfg.iterations)
            curve.append({"iteration": cfg.iterations, "qm_calls": n_train, **errors})
            self._say_errors(cfg.iterations, errors)
        summary = {"curve": curve, "stopped": reason, "qm_calls": len(self.qm_calls()),
                   "failed_qm_calls": sum(1 for c in self.qm_calls() if not c.get("ok"))}
        self.report(summary)
        return summary

    def _say_errors(self, k: int, errors: dict[str, float]) -> None:
        _progress.stage(f"fitsnap-uq al: fit {k}: test force RMSE {errors['force_rmse']:.4f} eV/A, "
                        f"energy RMSE {errors['energy_rmse']:.4f} eV/atom", self.progress)

    def report(self, summary: dict[str, Any]) -> None:
        """``report.md``, ``summary.json`` and ``learning_curve.png`` in the work folder."""
        from fitsnap_uq.plotting import pyplot, save

        lines = ["# Active-learning run", "",
                 f"Oracle: {self.oracle.name}. Stopped: {summary['stopped']}. QM calls: "
                 f"{summary['qm_calls']} ({summary['failed_qm_calls']} failed).", "",
                 "| iteration | labelled configurations | test energy RMSE (eV/atom) | "
                 "test force RMSE (eV/A) |", "|---|---|---|---|"]
        lines += [f"| {c['iteration']} | {c['qm_calls']} | {c['energy_rmse']:.4f} | "
                  f"{c['force_rmse']:.4f} |" for c in summary["curve"]]
        atomic_write(self.work / "report.md", "\n".join(lines) + "\n")
        atomic_write(self.work / "summary.json", json.dumps(summary, indent=1))
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.plot([c["qm_calls"] for c in summary["curve"]], [c["force_rmse"] for c in summary["curve"]],
                "o-")
        ax.set_xlabel("labelled configurations (QM calls)")
        ax.set_ylabel("test force RMSE (eV/A)")
        ax.set_title("Active-learning curve")
        fig.tight_layout()
        save(fig, self.work / "learning_curve.png")
