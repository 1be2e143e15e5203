"""``fitsnap-uq demo``: the whole idea, end to end, on a laptop, with no files of one's own.

1. builds rattled and strained crystals with ASE and labels them with the xTB oracle (tblite GFN1-xTB;
   a real QM code that installs from PyPI), plus an independent QM test set;
2. fits a Bayesian SNAP (solver ``BAYES``), runs MD with the uncertainty hook, labels the flagged
   frames with xTB and refits (the active-learning loop of ``fitsnap-uq al``, journalled: rerunning the
   same command resumes without repeating a QM call);
3. scores the final potential's predictions and intervals on the test set (parity plots with error bars,
   calibration curve and table);
4. runs MD at the hottest active-learning temperature with the first and the final posterior and
   records the per-atom force std of every atom along the run;
5. runs a small posterior ensemble of NPT MD at 300 K in the MD cell (coefficients drawn from the
   posterior) and puts an interval on the volume per atom;
6. writes ``report.md`` and ``report.html`` with the PNG plots beside them.

Everything goes to one output folder (default ``fitsnap-uq-demo``); see :data:`OUTPUTS`. The stages
(:data:`STAGES`) are recorded in ``demo.json`` as they finish: rerunning the same command resumes the
first unfinished one and does nothing once all are done.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fitsnap_uq import progress as _progress
from fitsnap_uq.active.loop import ALConfig, Loop
from fitsnap_uq.errors import InputError
from fitsnap_uq.io import atomic_write

# Per element: crystal, lattice constant (A), SNAP cutoff factor and 2J, default oracle, flagging threshold
# (max per-atom force std, eV/A). W: GFN1-xTB's equilibrium lattice constant in 54-atom cells is
# ~3.26 A (3.22 A in 16-atom cells; experiment 3.165 A). Ta: GFN1-xTB has no equilibrium volume
# below 3.5 A (the cell wants to expand), so the demo's NPT ensemble is meaningless for Ta; it is
# offered for the NVT parts.
# Cu with ASE's EMT is the quick, QM-free variant (tests).
ELEMENTS: dict[str, dict[str, Any]] = {
    "W": {"lattice": "bcc", "a": 3.26, "rcutfac": 4.73442, "twojmax": 8, "oracle": "xtb",
          "flag_above": 0.15, "temperatures": [800.0, 2000.0]},
    "Ta": {"lattice": "bcc", "a": 3.31, "rcutfac": 4.67637, "twojmax": 6, "oracle": "xtb",
           "flag_above": 0.15, "temperatures": [800.0, 2000.0]},
    "Cu": {"lattice": "fcc", "a": 3.61, "rcutfac": 4.9, "twojmax": 6, "oracle": "emt",
           "flag_above": 0.005, "temperatures": [600.0, 1200.0]},
}

OUTPUTS = {
    "report.md / report.html": "the report (same content; open the HTML in a browser)",
    "parity.png": "final potential vs QM on the test set, with 95% intervals",
    "calibration.png": "observed vs nominal coverage of the final potential's intervals on the test set",
    "md_uncertainty.png": "per-atom force std along MD, first vs final potential",
    "learning_curve.png": "test RMSE against labelled configurations",
    "ensemble_volume.png": "volume per atom over the posterior ensemble of NPT MD",
    "calibration_test.md": "calibration metrics of the final potential on the test set",
    "demo.json": "the demo's settings, the stages done with their wall-clock and CPU seconds and the "
                 "load average (a rerun skips the stages done; one with other settings is refused)",
    "al/": "the active-learning run: data/JSON (labelled configurations), testset/, journal.jsonl, "
           "iter<k>/fit (FitSNAP inputs, posteriors, .snapcoeff), iter<k>/md_<T>K (MD, flagged frames)",
    "md/": "the two MD runs of the uncertainty plot: LAMMPS inputs, logs, uq.dump (per-atom stds)",
    "ensemble/": "the posterior ensemble: replica coefficients, logs, timeseries CSV, summary",
}


@dataclass
class DemoSettings:
    """What the demo does; the command-line options of ``fitsnap-uq demo``.

    Attributes:
        element: one of :data:`ELEMENTS`.
        cells: QM and MD cells are ``cells`` x ``cells`` x ``cells`` conventional cubic cells.
        oracle: ``xtb`` (GFN1-xTB), ``gfn2`` or ``emt``; default: the element's.
        iterations: fit -> MD -> label rounds.
        qm_budget: most training QM calls.
        samples: replicas of the posterior ensemble of MD.
        md_steps: steps of each active-learning MD run (the uncertainty runs take 3x as many).
        ensemble_steps: steps of each ensemble replica (NPT, 300 K, 2 fs, in the MD cell).
        seed: seed of the structures, MD velocities and posterior draws.
        temperatures: NVT temperatures (K) of the active-learning MD; default: the element's.
    """

    element: str = "W"
    cells: int = 3
    oracle: str | None = None
    iterations: int = 2
    qm_budget: int = 24
    test_structures: int = 6
    samples: int = 4
    md_steps: int = 300
    ensemble_steps: int = 2000
    seed: int = 0
    temperatures: list[float] | None = None

    def check(self) -> None:
        """Refuse settings the demo cannot run, naming the option."""
        if self.element not in ELEMENTS:
            raise InputError(f"unknown element {self.element!r}; the demo knows {', '.join(ELEMENTS)}",
                             key="--element")
        positive = {"--cells": self.cells, "--iterations": self.iterations, "--qm-budget": self.qm_budget,
                    "--md-steps": self.md_steps, "--ensemble-steps": self.ensemble_steps}
        for key, value in positive.items():
            if value < 1:
                raise InputError(f"must be at least 1, got {value}", key=key)
        if self.samples < 2:
            raise InputError(f"an ensemble needs at least 2 samples, got {self.samples}", key="--samples")
        if self.cells < 2:
            raise InputError("cells smaller than 2 x 2 x 2 are shorter than the SNAP cutoff", key="--cells")

    def al_config(self) -> ALConfig:
        """The active-learning loop's settings."""
        e = ELEMENTS[self.element]
        n = (self.cells,) * 3
        # Initial structures: thermal-like displacements of ~600 K (0.03 A per component); the test set:
        # ~2000 K (0.06 A), the hot MD the potential must learn.
        return ALConfig(element=self.element, lattice=e["lattice"], a=e["a"], supercell=n, initial=6,
                        rattle=0.03, test_rattle=0.06, twojmax=e["twojmax"], noise_classes="group",
                        seed=self.seed, oracle=self.oracle or e["oracle"], rcutfac=e["rcutfac"],
                        temperatures=list(self.temperatures or e["temperatures"]), md_cells=n,
                        md_steps=self.md_steps,
                        flag_above=e["flag_above"], max_flags=4, iterations=self.iterations,
                        qm_budget=self.qm_budget, test_structures=self.test_structures,
                        test_set="lattice")


@dataclass
class DemoResult:
    """Where the demo wrote its report and how long each stage took.

    Attributes:
        timings: {stage: wall-clock seconds} over every session that worked on the folder, and
            ``total``, their sum.
        already_done: the folder held a finished demo: nothing was run.
        ran: the stages this call ran (the others were done before).
    """

    outdir: Path
    report_md: Path
    report_html: Path
    timings: dict[str, float]
    summary: dict[str, Any]
    already_done: bool = False
    ran: list[str] = field(default_factory=list)


def _say(message: str, show: bool) -> None:
    _progress.stage(f"fitsnap-uq demo: {message}", show)


def prepare_outdir(settings: DemoSettings, outdir: Path, overwrite: bool) -> None:
    """Create ``outdir``; a rerun with the same settings resumes, other settings are refused."""
    marker = outdir / "demo.json"
    if overwrite and outdir.exists():
        if outdir.is_dir() and (marker.exists() or not any(outdir.iterdir())):
            shutil.rmtree(outdir)
        else:
            raise InputError("not a demo output folder (no demo.json): refusing to delete it",
                             file=str(outdir), key="--outdir")
    if marker.exists():
        old = json.loads(marker.read_text()).get("settings", {})
        new = json.loads(json.dumps(asdict(settings)))
        diff = sorted(k for k in new if old.get(k) != new[k])
        if diff:
            raise InputError(f"this folder holds a demo run with other settings ({', '.join(diff)}); "
                             "rerun with the same options to resume, or pass --overwrite or another "
                             "--outdir", file=str(marker), key="--" + diff[0].replace("_", "-"))
    elif outdir.exists() and any(outdir.iterdir()):
        raise InputError("folder exists and is not a demo output folder; choose another --outdir",
                         file=str(outdir), key="--outdir")
    outdir.mkdir(parents=True, exist_ok=True)
    if not marker.exists():
        _write_json(marker, {"settings": asdict(settings), "stages": {}, "complete": False})


def _write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write(path, json.dumps(data, indent=1))


# ----------------------------------------------------------------- stages
def test_set_predictions(loop: Loop, posterior_path: Path, folder: Path) -> dict[str, np.ndarray]:
    """The final posterior's predictions on the loop's QM test set, from FitSNAP's descriptors.

    Returns arrays over test rows: ``truth``, ``mean``, ``sigma`` (raw Gaussian std incl. the learned
    noise of the quantity), ``half95`` (calibrated 95% half-width), ``row_types``, ``configs``; energies
    are per atom (eV/atom), forces eV/A, stresses bar; the ZBL reference is subtracted from the truth.
    """
    from fitsnap_uq.posterior import Posterior

    rows = loop.describe(loop.work, ["testset"], folder)
    post = Posterior.load(posterior_path)
    keep = rows.row_types.astype(str) != "Stress"  # stresses of tiny cells are not shown
    rows = rows.subset(keep)
    names = list(rows.row_types.astype(str))
    mean, sigma = post.predict_raw(rows.a, noise=names)
    half95 = post.interval(rows.a, 0.95, noise=names)
    return {"truth": rows.b, "mean": mean, "sigma": sigma, "half95": half95,
            "row_types": rows.row_types.astype(str), "configs": rows.configs.astype(str),
            "multiplier": post.multiplier}


def read_uq_dump(path: Path, column: str = "d_uq_fstd") -> tuple[np.ndarray, np.ndarray]:
    """Steps (T,) and one per-atom column (T, N) of a LAMMPS ``dump custom`` file sorted by id."""
    steps, frames = [], []
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("ITEM: TIMESTEP"):
            step = int(lines[i + 1])
            natoms = int(lines[i + 3])
            header = lines[i + 8].split()[2:]
            j = header.index(column)
            data = [float(lines[i + 9 + k].split()[j]) for k in range(natoms)]
            steps.append(step)
            frames.append(data)
            i += 9 + natoms
        else:
            i += 1
    steps_arr, values = np.array(steps), np.array(frames)
    if len(values) > 1 and not values[0].any():  # the hook's columns are still zero at setup
        steps_arr, values = steps_arr[1:], values[1:]
    return steps_arr, values


def md_uncertainty(loop: Loop, iteration: int, folder: Path, steps: int, every: int, redo: bool = False
                   ) -> tuple[Path, Path]:
    """MD at the hottest temperature with posterior ``iteration``; per-atom stds dumped every
    ``every`` steps. Returns the dump and the summary file. A run that finished before (its summary file
    exists) is not repeated unless ``redo``."""
    from lammps_hooks.md import run_md

    folder.mkdir(parents=True, exist_ok=True)
    temperature = max(loop.cfg.temperatures)
    script = loop.md_script(temperature, iteration).replace(f"run {loop.cfg.md_steps}", "\n".join([
        f"dump uq all custom {every} uq.dump id type x y z d_uq_estd d_uq_fstd",
        "dump_modify uq sort id", f"run {steps}"]))
    (folder / "in.md").write_text(script)
    dump = folder / "uq.dump"
    done = folder / "done.json"
    if redo:
        done.unlink(missing_ok=True)
    if not done.exists():
        dump.unlink(missing_ok=True)
        res = run_md(folder / "in.md", loop.work / f"iter{iteration}" / "fit" / "pot.posterior.npz",
                     every=every, log=str(folder / "log.lammps"), screen=False)
        _write_json(done, {"last": res.hook.last if res.hook else {}, "halted": res.halted})
    return dump, done


def ensemble_script(cfg: ALConfig, fit: Path, cells: int, steps: int, seed: int) -> str:
    """NPT at 300 K and zero pressure with the fitted SNAP (on its ZBL reference)."""
    from ase.data import atomic_masses, atomic_numbers

    z = atomic_numbers[cfg.element]
    return "\n".join([
        "units metal", f"lattice {cfg.lattice} {cfg.a}", f"region box block 0 {cells} 0 {cells} 0 {cells}",
        "create_box 1 box", "create_atoms 1 box", f"mass 1 {atomic_masses[z]:.4f}",
        f"pair_style hybrid/overlay zbl {cfg.zbl[0]} {cfg.zbl[1]} snap", f"pair_coeff * * zbl {z} {z}",
        f"pair_coeff * * snap {fit / 'pot.snapcoeff'} {fit / 'pot.snapparam'} {cfg.element}",
        f"velocity all create 600 {seed + 7} loop geom",
        "fix npt all npt temp 300 300 0.1 iso 0 0 1.0", "timestep 0.002", "thermo 500", f"run {steps}", ""])


# ------------------------------------------------------------------- main
STAGES = ("active learning (QM, fits, MD)", "test-set predictions", "MD with the uncertainty hook",
          "posterior ensemble of MD", "report")
"""The demo's stages, in order; each is recorded in ``demo.json`` when it completes and skipped on a
rerun (a stage that runs again invalidates the ones after it)."""


class _Stages:
    """Runs the demo's stages once: each completed stage is recorded in ``demo.json`` (atomically, with
    its wall-clock and CPU seconds and the load average), and a rerun skips the recorded ones."""

    def __init__(self, marker: Path, show: bool) -> None:
        self.marker = marker
        self.state = json.loads(marker.read_text())
        self.state.setdefault("stages", {})
        self.show = show
        self.ran: list[str] = []

    def done(self, name: str) -> bool:
        return name in self.state["stages"]

    def start(self, name: str, message: str, missing: bool = False) -> bool:
        """Announce stage ``name``; True when it must run, False to skip it: it is recorded as done, no
        stage before it ran in this call, and its output is not ``missing``."""
        k = STAGES.index(name) + 1
        if self.done(name) and not self.ran and not missing:
            seconds = self.state["stages"][name]["seconds"]
            _say(f"[{k}/{len(STAGES)}] {name}: done earlier ({seconds:.0f} s), skipped", self.show)
            return False
        _say(f"[{k}/{len(STAGES)}] {message}", self.show)
        for later in STAGES[k - 1:]:  # this stage runs (again): the ones after it are stale
            self.state["stages"].pop(later, None)
        self.state["complete"] = False
        self._t0, self._cpu0, self._load0 = time.time(), _cpu_seconds(), _load()
        return True

    def finish(self, name: str, **extra: Any) -> None:
        """Record stage ``name`` as done (and anything in ``extra`` at the top level of demo.json)."""
        self.state["stages"][name] = {"seconds": time.time() - self._t0,
                                      "cpu_seconds": _cpu_seconds() - self._cpu0,
                                      "load_start": self._load0, "load_end": _load()}
        self.state.update(extra)
        self.ran.append(name)
        self.write()

    def timings(self) -> dict[str, float]:
        out = {name: float(self.state["stages"][name]["seconds"]) for name in STAGES
               if name in self.state["stages"]}
        out["total"] = float(sum(out.values()))
        return out

    def write(self) -> None:
        self.state["timings"] = self.timings()
        _write_json(self.marker, self.state)


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process and its finished children (the fits)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _load() -> float | None:
    """The 1-minute load average (None where the system has none)."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def _save_predictions(path: Path, pred: dict[str, Any]) -> None:
    arrays = {k: np.asarray(v) for k, v in pred.items() if k != "multiplier"}
    with io.BytesIO() as buf:
        np.savez(buf, **arrays)
        atomic_write(path, buf.getvalue())


def _load_predictions(path: Path, posterior_path: Path) -> dict[str, Any]:
    from fitsnap_uq.posterior import Posterior

    with np.load(path) as data:
        pred: dict[str, Any] = {k: data[k] for k in data.files}
    pred["multiplier"] = Posterior.load(posterior_path).multiplier
    return pred


def _finished(outdir: Path, show: bool) -> DemoResult | None:
    """The result of a finished demo in ``outdir`` (said on stderr), or None when work is left."""
    marker = outdir / "demo.json"
    state = json.loads(marker.read_text())
    md_path, html_path = outdir / "report.md", outdir / "report.html"
    if not (state.get("complete") and md_path.exists() and html_path.exists()
            and all(name in state.get("stages", {}) for name in STAGES)):
        return None
    timings = {name: float(state["stages"][name]["seconds"]) for name in STAGES}
    timings["total"] = float(sum(timings.values()))
    _say(f"already done in {outdir} (the stages took {timings['total']:.0f} s); nothing to do. "
         "Pass --overwrite to run it again.", show)
    return DemoResult(outdir, md_path, html_path, timings, state.get("summary", {}), already_done=True)


def run_demo(settings: DemoSettings, outdir: str | Path = "fitsnap-uq-demo", overwrite: bool = False,
             progress: bool = True) -> DemoResult:
    """Run the demo (see the module docstring) into ``outdir``.

    Resumable: the stages (:data:`STAGES`) are recorded in ``demo.json`` as they complete; a rerun with
    the same settings skips those and resumes the first unfinished one (the active-learning loop within
    its stage resumes without repeating a QM call or a completed fit or MD run), and a rerun of a
    finished demo does nothing (``DemoResult.already_done``). ``progress``: stage lines and bars
    (:mod:`fitsnap_uq.progress`; False: none whatever the global setting).
    """
    from lammps_hooks.ensemble import EnsembleResult, run_ensemble

    settings.check()
    outdir = Path(outdir).resolve()
    prepare_outdir(settings, outdir, overwrite)
    finished = _finished(outdir, progress)
    if finished is not None:
        return finished
    stages = _Stages(outdir / "demo.json", progress)
    cfg = settings.al_config()
    loop = Loop(cfg, outdir / "al", progress=progress)
    natoms = len(loop.structures(1, 0)[0])

    name = STAGES[0]
    summary_file = outdir / "al" / "summary.json"
    if stages.start(name, f"active learning: {settings.element} with the {cfg.oracle} oracle, "
                          f"{natoms}-atom cells (QM labels -> BAYES fit -> MD with the hook -> flagged "
                          "frames -> QM -> refit)", missing=not summary_file.exists()):
        summary = loop.run()
        stages.finish(name, summary=summary)
    summary = json.loads(summary_file.read_text())
    last = summary["curve"][-1]["iteration"]
    final_fit = outdir / "al" / f"iter{last}" / "fit"
    final_post = final_fit / "pot.posterior.npz"

    name = STAGES[1]
    pred_file = outdir / "testset_rows" / "predictions.npz"
    if stages.start(name, "test set: predictions and intervals of the final potential",
                    missing=not pred_file.exists()):
        _save_predictions(pred_file, test_set_predictions(loop, final_post, outdir / "testset_rows"))
        stages.finish(name)
    pred = _load_predictions(pred_file, final_post)

    name = STAGES[2]
    md_steps = 3 * settings.md_steps
    # an earlier stage that ran in this call may have changed the posteriors: the MD runs are redone
    redo = bool(stages.ran)
    todo = stages.start(name, f"MD at {max(cfg.temperatures):g} K with the first and the final "
                              f"potential ({md_steps} steps, per-atom force std every {cfg.every} steps)")
    runs, md_last = {}, {}
    for label, k in _progress.bar((("first fit", 0), ("final fit", last)), desc="demo: MD runs", unit="runs",
                                  show=progress and todo):
        dump, done = md_uncertainty(loop, k, outdir / "md" / f"iter{k}", md_steps, cfg.every,
                                    redo=redo)
        steps, fstd = read_uq_dump(dump)
        runs[f"{label} ({summary['curve'][k]['qm_calls']} configs)"] = (steps * cfg.timestep, fstd)
        md_last[label] = json.loads(done.read_text())
    if todo:
        stages.finish(name, md_last=md_last)

    name = STAGES[3]
    ens_dir = outdir / "ensemble"
    ens_cells = settings.cells
    if stages.start(name, f"posterior ensemble: {settings.samples} NPT replicas at 300 K, "
                          f"{natoms} atoms, {settings.ensemble_steps} steps",
                    missing=not (ens_dir / "ensemble.json").exists()):
        ens_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(ens_dir / "in.npt", ensemble_script(cfg, final_fit, ens_cells, settings.ensemble_steps,
                                                         settings.seed))
        run_ensemble(ens_dir / "in.npt", final_post, samples=settings.samples,
                     observables=["vol/atoms", "pe/atoms", "press"], every=20, outdir=ens_dir,
                     seed=settings.seed, progress=progress)
        stages.finish(name)
    ens = EnsembleResult.load(ens_dir)

    name = STAGES[4]
    stages.start(name, "report")
    md_path, html_path = write_report(outdir, settings, cfg, loop, summary, pred, runs, ens,
                                      stages.timings())
    stages.finish(name, complete=True)
    timings = stages.timings()
    return DemoResult(outdir, md_path, html_path, timings, summary, ran=list(stages.ran))


def write_report(outdir: Path, settings: DemoSettings, cfg: ALConfig, loop: Loop, summary: dict[str, Any],
                 pred: dict[str, Any], runs: dict[str, tuple[np.ndarray, np.ndarray]], ens: Any,
                 timings: dict[str, float]) -> tuple[Path, Path]:
    """``report.md``/``report.html`` and the plots, from the stages' results; returns the two paths."""
    from fitsnap_uq import calibration
    from fitsnap_uq.report import (
        Report,
        ensemble_plot,
        learning_curve_plot,
        md_uncertainty_plot,
        parity_plot,
    )

    report = Report(f"fitsnap-uq demo: {settings.element}, {cfg.oracle} oracle")
    curve = pd.DataFrame(summary["curve"])
    n0, n1 = int(curve["qm_calls"].iloc[0]), int(curve["qm_calls"].iloc[-1])
    f0, f1 = float(curve["force_rmse"].iloc[0]), float(curve["force_rmse"].iloc[-1])
    natoms = len(loop.structures(1, 0)[0])
    report.text(
        f"Crystal: {cfg.lattice} {settings.element}, {natoms}-atom cells, a = {cfg.a} A. QM oracle: "
        f"{loop.oracle.name}. SNAP: 2J = {cfg.twojmax}, rcutfac = {cfg.rcutfac}, on a ZBL reference for "
        f"close contacts ({cfg.zbl[0]}-{cfg.zbl[1]} A). Solver: `BAYES` (Bayesian linear regression, "
        f"a noise level learned for each group's energies, forces and stresses: the initial crystals and "
        f"each round's flagged frames). Active learning stopped: {summary['stopped']}; "
        f"{summary['qm_calls']} QM calls in all ({summary['failed_qm_calls']} failed), of which "
        f"{settings.test_structures} for the independent test set.")
    report.heading("1. Active learning: MD flags what the potential is unsure of, QM labels it")
    report.text(f"Starting from {n0} rattled and strained crystals, each round fits a Bayesian SNAP, runs "
                f"NVT MD at {', '.join(f'{x:g}' for x in cfg.temperatures)} K with the uncertainty hook "
                f"every {cfg.every} steps, and sends frames whose largest per-atom force std exceeds "
                f"{cfg.flag_above:g} eV/A to QM (at most {cfg.max_flags} per run). Test force RMSE went "
                f"from {f0:.3f} eV/A with {n0} configurations to {f1:.3f} eV/A with {n1}.")
    learning_curve_plot(outdir / "learning_curve.png", curve["qm_calls"].to_numpy(),
                        curve["force_rmse"].to_numpy(), curve["energy_rmse"].to_numpy())
    report.image("learning_curve.png", "Test-set RMSE of each fit against the number of labelled "
                 "training configurations.")
    report.table(curve.rename(columns={"iteration": "fit", "qm_calls": "training configurations",
                                       "energy_rmse": "test energy RMSE (eV/atom)",
                                       "force_rmse": "test force RMSE (eV/A)"}))

    report.heading("2. The final potential's predictions and intervals on the QM test set")
    rt = pred["row_types"]
    panels = []
    shift = float(np.mean(pred["truth"][rt == "Energy"]))
    for q, label, unit, off in (("Energy", "energy per atom - mean", "eV/atom", shift),
                                ("Force", "force component", "eV/A", 0.0)):
        sel = rt == q
        panels.append({"truth": pred["truth"][sel] - off, "mean": pred["mean"][sel] - off,
                       "half": pred["half95"][sel], "label": label, "unit": unit, "level": 0.95})
    parity_plot(outdir / "parity.png", panels, title="Final potential on the independent QM test set")
    report.image("parity.png", "QM vs SNAP on the test set with the posterior's 95% intervals "
                 "(coefficient uncertainty + learned noise of the quantity); red: truth outside the "
                 "interval. Energies relative to the test-set mean.")
    abs_err = np.abs(pred["truth"] - pred["mean"])
    curves = {}
    for q in ("Energy", "Force"):
        sel = rt == q
        curves[f"{q} (n={int(sel.sum())})"] = (calibration.CURVE_LEVELS, calibration.observed_coverage(
            abs_err[sel], pred["sigma"][sel], q, pred["multiplier"]))
    calibration.calibration_plot(outdir / "calibration.png", curves,
                                 title="Calibration on the test set")
    report.image("calibration.png", "Fraction of test errors inside the central interval against the "
                 "interval's nominal coverage; on the diagonal the intervals mean what they say.")
    table = calibration.metrics_table(pred["truth"], pred["mean"], pred["sigma"],
                                      np.array(["testset"] * len(rt)), rt, np.ones(len(rt), dtype=bool),
                                      multiplier=pred["multiplier"])
    table = table.reset_index()
    table = table[table["Group"] == "*ALL"].drop(columns=["Group", "Set"])
    atomic_write(outdir / "calibration_test.md", calibration.markdown(
        table.set_index("Subsystem"), title="Final potential on the QM test set") + "\n")
    report.text("Calibration metrics (energy eV/atom, force eV/A; cov68/cov95 ideal 0.683/0.954, "
                "miscal_area ideal 0):")
    report.table(table)

    report.heading("3. Uncertainty along MD")
    md_uncertainty_plot(outdir / "md_uncertainty.png", runs, threshold=cfg.flag_above)
    report.image("md_uncertainty.png", f"Per-atom force std (eV/A) of every atom along NVT MD at "
                 f"{max(cfg.temperatures):g} K, with the first and the final posterior: median and 5-95% "
                 "band over the atoms, and the largest atom.")
    peak = {label: float(v[1].max()) for label, v in runs.items()}
    report.text("Largest per-atom force std during the run: " + "; ".join(
        f"{label}: {value:.3f} eV/A" for label, value in peak.items()) + ". The per-atom values are "
        "in `md/iter<k>/uq.dump` (columns `d_uq_estd`, `d_uq_fstd`; open it in OVITO).")

    report.heading("4. Error bars on an MD observable: a posterior ensemble")
    vol = ens.values[:, :, ens.observables.index("vol/atoms")]
    ensemble_plot(outdir / "ensemble_volume.png", ens.steps * cfg.timestep, vol, "volume per atom",
                  "A^3", average=ens.average["vol/atoms"], average_from=ens.first_step * cfg.timestep)
    k = len(ens.kept)
    report.image("ensemble_volume.png", f"NPT at 300 K and 0 bar: {ens.samples} replicas, each with "
                 f"coefficients drawn from the final posterior ({k} kept). Red: the 95% prediction "
                 "interval of the replicas' time averages over the second half.")
    rows = []
    names = {"vol/atoms": "volume per atom", "pe/atoms": "potential energy per atom", "press": "pressure"}
    for obs in ens.observables:
        d = ens.average[obs]
        rows.append({"observable": names.get(obs, obs), "unit": ens.units.get(obs) or "?",
                     "mean": d["mean"], "std over replicas": d["std"], "95% low": d["lo"],
                     "95% high": d["hi"], "MD sampling error": d["sampling_se"]})
    report.text(f"{ens.samples} replicas ran, {k} kept ({len(ens.excluded)} left out by the runaway "
                "screen). Each replica's time average over the second half of its run (from "
                f"{ens.first_step * cfg.timestep:g} ps); over the replicas, the mean, the std and the 95% "
                "Student-t prediction interval for one more posterior draw: where the observable of the "
                "true potential falls if it is another plausible fit, i.e. how far to trust the value "
                f"(from the spread of {k} replicas, {k - 1} degrees of freedom, widened by their MD "
                "sampling error). The MD sampling error is a replica's standard error from the "
                "autocorrelation of its time series; the replicas start from the same velocities, so "
                "they share much of it and their spread does not show it. When it is as large as the "
                "std over replicas, the run is too short to resolve the potential's effect.")
    report.table(pd.DataFrame(rows), floatfmt=".5g")
    report.heading("Files", 2)
    report.table(pd.DataFrame([{"file": k, "what": v} for k, v in OUTPUTS.items()]))
    report.heading("Timings", 2)
    report.text("Wall-clock seconds of each stage before this report (over every session that worked "
                "on this folder; `demo.json` has the CPU seconds and the load average too):")
    report.table(pd.DataFrame([{"stage": k, "seconds": round(v, 1)} for k, v in timings.items()]))
    return report.write(outdir)
