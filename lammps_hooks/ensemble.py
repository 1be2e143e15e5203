"""Posterior ensembles of MD: error bars on MD observables from the coefficient posterior.

``fitsnap-uq ensemble IN.lammps --posterior P.npz --samples K --observables vol/atoms press``

K replicas of the same unmodified input script, each with one coefficient set drawn from the
posterior (stored samples, or Gaussian draws; seeded) written as its own ``.snapcoeff`` file and
swapped into the script's snap ``pair_coeff`` line. Under ``mpirun -np N`` the ranks split into
partitions of ``--ranks-per-replica`` ranks (like LAMMPS ``-partition``); partitions run their share
of the replicas concurrently, each partition its replicas one after another. On one rank the replicas
run in sequence.

``fitsnap-uq ensemble IN.lammps --nnensemble E.nnensemble.json ...`` does the same over the K members of
a FitSNAP network ensemble (``NNENSEMBLE``): replica k is driven by member k, its ML-IAP ``model nn`` file
(written to the output folder as ``fitsnap-uq nn-export`` does) swapped into the script's ``pair_style
... mliap model nn MODEL descriptor sna DESCRIPTOR`` line (the mean's or any member's, also through an
``include`` of an exported ``.pair.lmp``); the error bars are over the members, as they are over
posterior draws for a linear SNAP.

Observables are LAMMPS equal-style expressions of thermo keywords (``vol/atoms``, ``press``,
``pe/atoms``, ``temp``, ...), recorded every ``--every`` steps with ``fix print``. The replicas' own file
outputs (dump, restart, write_*) are left out; each replica writes its log and observables to the
output folder. Rank 0 writes, in the output folder:

* ``ensemble_timeseries.csv``: step, then for each observable its mean, std and 95% prediction band
  (``lo95``, ``hi95``) over the replicas;
* ``ensemble_summary.md``: per observable (with its unit), the time average over the second half of
  each replica and the final value: mean, std and 95% interval over the replicas, each replica's time
  average with its standard error and effective sample size, and how many replicas ran and were kept;
* ``ensemble.png``: each observable's mean and 95% band against the step;
* ``ensemble.json``: the same numbers and each replica's wall-clock start/end (to check concurrency).

Error bars (:mod:`fitsnap_uq.timeseries`): each replica's time average over the second half of its run
(the first half is left for equilibration) comes with its standard error from the series'
autocorrelation (statistical inefficiency g, N_eff = N / g frames). Over the K replicas kept, the
interval is the Student-t **prediction interval** for one more posterior draw, ``mean +- t s
sqrt(1 + 1/K)`` (K - 1 degrees of freedom), widened by the replicas' MD sampling error (replicas that
start from the same velocities share it, so their spread does not show it; Welch-Satterthwaite degrees
of freedom for the sum): where the observable of the true potential falls if it is another draw from
the posterior, i.e. how far to trust the value. Not the 2.5/97.5% points of the replicas, which for 4
replicas are nearly their min and max, and not the interval of the ensemble mean, which shrinks with
more replicas whatever the potential's uncertainty. The final frame's value gets the prediction
interval over the replicas alone (one frame has no time average).

Units: each observable's unit is inferred from the script's ``units`` style for thermo keywords and
``keyword/atoms`` (``vol/atoms``: A^3/atom in ``metal``), or given after the expression in brackets,
``"press/10000 [GPa]"``; otherwise it is reported as not known.

Replicas that leave the physical region are reported and left out of the error bars, never averaged
into them (:func:`screen_replicas`): a replica whose LAMMPS run stopped (lost atoms, a blown-up
neighbour list, ...), whose observables became NaN/inf, or whose second-half average of an
observable is far outside the others (more than ``z_max`` robust standard deviations of the replicas,
1.4826 x the median absolute deviation, from their median, and more than ``rel_min`` of the median's
size: a temperature runaway, a cell that swelled or collapsed, a pressure of another order). The
summary lists them with the reason; the statistics are over the replicas kept.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fitsnap_uq import progress as _progress
from fitsnap_uq.errors import InputError, NumericalError
from fitsnap_uq.io import atomic_write
from fitsnap_uq.posterior import Posterior
from fitsnap_uq.timeseries import prediction_band, replica_interval, time_average
from lammps_hooks.script import (
    RUN_COMMANDS,
    Command,
    execute,
    nn_script,
    replace_coeff_file,
    replace_mliap_files,
    snap_script,
)
from lammps_hooks.snap_params import check_chem_order
from lammps_hooks.snap_uq import zero_external_force

OUTPUT_COMMANDS = ("dump", "dump_modify", "undump", "write_restart", "write_data", "write_dump",
                   "write_coeff", "restart", "log")


@dataclass
class EnsembleResult:
    """Summary of an ensemble run (complete on rank 0).

    Attributes:
        observables: the expressions recorded (without a bracketed unit).
        steps: (T,) steps of the time series.
        values: (K kept, T, M) the kept replicas' observables (rank 0), in ``units``.
        final: {observable: :func:`~fitsnap_uq.timeseries.replica_interval`} of the last value.
        average: the same for each replica's time average over the second half (``sampling_se``: the
            root mean square of the replicas' standard errors from MD sampling).
        timings: per replica: partition, start and end wall-clock times.
        excluded: {replica: reason} of the replicas left out of the statistics.
        kept: the replicas the statistics are over.
        units: {observable: unit} (None where not known).
        samples: replicas run (kept + excluded).
        per_replica: {observable: one :func:`~fitsnap_uq.timeseries.time_average` per kept replica}.
        first_step: the first step of the averaging window (the second half of the run).
        source: what each replica's potential is: ``posterior draw`` or ``ensemble member``.
    """

    observables: list[str]
    steps: np.ndarray
    values: np.ndarray
    final: dict[str, dict[str, Any]]
    average: dict[str, dict[str, Any]]
    timings: list[dict[str, Any]] = field(default_factory=list)
    excluded: dict[int, str] = field(default_factory=dict)
    kept: list[int] = field(default_factory=list)
    units: dict[str, str | None] = field(default_factory=dict)
    samples: int = 0
    per_replica: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    first_step: float = 0.0
    source: str = "posterior draw"

    @property
    def interval(self) -> str:
        """What the intervals are (:func:`interval_text` for this ensemble's replicas)."""
        return interval_text(self.source)

    @classmethod
    def load(cls, outdir: str | Path) -> EnsembleResult:
        """The result of a finished run, from its ``ensemble.json``."""
        data = json.loads((Path(outdir) / "ensemble.json").read_text())
        return cls(observables=data["observables"], steps=np.asarray(data["steps"]),
                   values=np.asarray(data["values"]), final=data["final"],
                   average=data["second_half_average"], timings=data["timings"],
                   excluded={int(k): v for k, v in data["excluded"].items()}, kept=data["kept"],
                   units=data["units"], samples=data["samples"], per_replica=data["per_replica"],
                   first_step=data["first_step"], source=data.get("source", "posterior draw"))

    def describe(self, observable: str) -> str:
        """One line: the second-half average's interval, sampling error and final value, with units."""
        a, f = self.average[observable], self.final[observable]
        unit = self.units.get(observable)
        u = f" {unit}" if unit else ""
        neff = [r["neff"] for r in self.per_replica[observable]]
        return (f"{observable} [{unit or 'unit not known'}]: {a['mean']:.6g}{u}, 95% prediction interval "
                f"[{a['lo']:.6g}, {a['hi']:.6g}] (replicas' std {a['std']:.3g}, MD sampling error "
                f"{a['sampling_se']:.2g} with N_eff {min(neff):.0f}-{max(neff):.0f} frames, t {a['t']:.3g}); "
                f"final frame {f['mean']:.6g} [{f['lo']:.6g}, {f['hi']:.6g}]")


Z_MAX = 6.0
"""Robust standard deviations of the replicas beyond which a replica's average is an outlier."""
REL_MIN = 0.1
"""... and the least deviation, relative to the median's size, that counts (10%)."""


def screen_replicas(averages: np.ndarray, observables: Sequence[str], z_max: float = Z_MAX,
                    rel_min: float = REL_MIN) -> dict[int, str]:
    """Replicas whose averages are far outside the others', with the reason.

    Args:
        averages: (K, M) each replica's time average of each observable (NaN/inf: a broken replica).
        observables: the M observables' names (for the reasons).
        z_max: deviations from the median over the replicas, in units of 1.4826 x their median
            absolute deviation, beyond which a replica is an outlier (with fewer than 3 replicas there
            is no majority to compare with: only non-finite values are caught).
        rel_min: the deviation must also exceed ``rel_min`` x max(|median|, robust std), so replicas
            that agree to a fraction of a per cent are not split hairs over.

    Returns:
        {replica index: reason}.
    """
    averages = np.asarray(averages, dtype=float)
    out: dict[int, str] = {}
    for k in range(averages.shape[0]):
        bad = [o for o, v in zip(observables, averages[k]) if not np.isfinite(v)]
        if bad:
            out[k] = f"non-finite {', '.join(bad)}"
    finite = [k for k in range(averages.shape[0]) if k not in out]
    if len(finite) < 3:
        return out
    sub = averages[finite]
    med = np.median(sub, axis=0)
    robust = 1.4826 * np.median(np.abs(sub - med), axis=0)
    for j, name in enumerate(observables):
        scale = max(float(robust[j]), 1e-12 * max(abs(float(med[j])), 1e-300))
        for i, k in enumerate(finite):
            dev = abs(float(sub[i, j] - med[j]))
            if dev > z_max * scale and dev > rel_min * max(abs(float(med[j])), float(robust[j])):
                reason = (f"{name} {sub[i, j]:.6g} against the replicas' median {med[j]:.6g} "
                          f"(robust std {robust[j]:.3g})")
                out[k] = f"{out[k]}; {reason}" if k in out else reason
    return dict(sorted(out.items()))


def interval_text(source: str = "posterior draw") -> str:
    """What the ensemble's interval is, for replicas that are each a ``source`` (``posterior draw`` or
    ``ensemble member``)."""
    return (f"95% prediction interval for one more {source} (how far to trust the observable): "
            "mean +- t x sqrt(std^2 (1 + 1/K) + se^2) over the K replicas kept, std their spread, se their "
            "MD sampling error, t the Student-t quantile for the Welch-Satterthwaite degrees of freedom "
            "(K - 1 from the spread); never narrower than from the spread alone")


# Units of LAMMPS thermo keywords by units style (https://docs.lammps.org/units.html, thermo_style).
_DIMENSIONS = {
    "temp": "temperature", "press": "pressure", "vol": "volume", "density": "density",
    "atoms": "", "step": "", "elapsed": "", "elaplong": "", "dt": "time", "time": "time",
    "fmax": "force", "fnorm": "force", "cpu": "seconds", "cpuremain": "seconds",
    "cellalpha": "degrees", "cellbeta": "degrees", "cellgamma": "degrees",
    **{k: "pressure" for k in ("pxx", "pyy", "pzz", "pxy", "pxz", "pyz")},
    **{k: "energy" for k in ("pe", "ke", "etotal", "enthalpy", "evdwl", "ecoul", "epair", "ebond",
                              "eangle", "edihed", "eimp", "emol", "elong", "etail", "ecouple",
                              "econserve")},
    **{k: "distance" for k in ("lx", "ly", "lz", "xlo", "xhi", "ylo", "yhi", "zlo", "zhi", "xy", "xz",
                                "yz", "cella", "cellb", "cellc")},
}
UNIT_STYLES: dict[str, dict[str, str]] = {
    "metal": {"temperature": "K", "pressure": "bar", "volume": "A^3", "density": "g/cm^3",
              "energy": "eV", "distance": "A", "force": "eV/A", "time": "ps"},
    "real": {"temperature": "K", "pressure": "atm", "volume": "A^3", "density": "g/cm^3",
             "energy": "kcal/mol", "distance": "A", "force": "kcal/mol/A", "time": "fs"},
    "si": {"temperature": "K", "pressure": "Pa", "volume": "m^3", "density": "kg/m^3", "energy": "J",
           "distance": "m", "force": "N", "time": "s"},
    "lj": {k: "LJ reduced" for k in ("temperature", "pressure", "volume", "density", "energy",
                                      "distance", "force", "time")},
}
_COMMON = {"": "", "seconds": "s", "degrees": "degrees"}


def split_unit(observable: str) -> tuple[str, str | None]:
    """``"press/10000 [GPa]"`` -> (``"press/10000"``, ``"GPa"``); no bracketed unit: (expr, None).

    The unit is a bracketed suffix after white space (a LAMMPS index such as ``c_msd[4]`` has none)."""
    m = re.fullmatch(r"(.*\S)\s+\[([^\[\]]+)\]\s*", observable)
    return (m.group(1), m.group(2).strip()) if m else (observable.strip(), None)


def observable_unit(expr: str, style: str = "metal") -> str | None:
    """The unit of a thermo keyword or ``keyword/atoms`` in LAMMPS ``units`` ``style``; None if not known.

    ``vol/atoms`` -> ``A^3/atom``, ``press`` -> ``bar``, ``pe/atoms`` -> ``eV/atom`` (``metal``)."""
    text = expr.replace(" ", "")
    per_atom = text.endswith("/atoms")
    word = text[: -len("/atoms")] if per_atom else text
    dim = _DIMENSIONS.get(word)
    if dim is None:
        return None
    unit = _COMMON.get(dim, UNIT_STYLES.get(style, {}).get(dim))
    if unit is None:
        return None
    if per_atom:
        return f"{unit}/atom" if unit else "per atom"
    return unit or "count"


def units_style(commands: Sequence[Any]) -> str:
    """The script's ``units`` style (LAMMPS' default ``lj`` when it has none)."""
    style = "lj"
    for cmd in commands:
        if cmd.word == "units":
            parts = cmd.text.split()
            style = parts[1] if len(parts) > 1 else style
    return style


def _observable_name(expr: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", expr).strip("_") or "obs"


def run_steps(commands: Sequence[Any]) -> int | None:
    """Total MD steps of the script's ``run N`` commands; None if another run command (minimize,
    rerun) or a non-literal step count makes it unknown."""
    total = 0
    for cmd in commands:
        if cmd.word in RUN_COMMANDS:
            parts = cmd.text.split()
            if cmd.word != "run" or len(parts) < 2 or not parts[1].isdigit():
                return None
            total += int(parts[1])
    return total


def run_ensemble(script: str | Path, posterior: Posterior | str | Path | None, samples: int = 4,
                 observables: Sequence[str] = ("vol/atoms", "press", "pe/atoms", "temp"),
                 every: int = 10, outdir: str | Path = "ensemble", seed: int = 0,
                 ranks_per_replica: int = 1, comm: Any = None, progress: bool = True,
                 nnensemble: Any = None) -> EnsembleResult | None:
    """Run the posterior ensemble (see the module docstring); the result on rank 0, None elsewhere.

    Args:
        posterior: a linear SNAP Posterior (or its file); None with ``nnensemble``.
        samples: replicas (posterior draws); with ``nnensemble`` the members (all of them).
        nnensemble: instead of a posterior, a FitSNAP network ensemble
            (:class:`~fitsnap_uq.nn.fitsnap_ensemble.NNEnsemble` or its ``.nnensemble.json``): one replica
            per member, each driven by that member through ML-IAP ``model nn``.
        observables: LAMMPS equal-style expressions, each optionally followed by its unit in brackets
            (``"press/10000 [GPa]"``).
        progress: stage lines and bars over the replicas and the MD steps of rank 0's partition
            (:mod:`fitsnap_uq.progress`; False: none whatever the global setting).
    """
    from mpi4py import MPI

    from lammps_hooks.md import open_lammps

    comm = comm or MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    if size % ranks_per_replica:
        raise InputError(f"{size} MPI ranks do not split into partitions of {ranks_per_replica}")
    outdir = Path(outdir).resolve()
    if nnensemble is not None:
        script, commands, swap_index, replica_command, samples = _nn_replicas(script, nnensemble, outdir,
                                                                              rank, comm)
        if samples < 2:
            raise InputError(f"an ensemble needs at least 2 members, the NNENSEMBLE has {samples}",
                             file=str(nnensemble))
    else:
        if samples < 2:
            raise InputError("an ensemble needs at least 2 samples (--samples)")
        post = posterior if isinstance(posterior, Posterior) else Posterior.load(posterior)
        script, commands, snap = snap_script(script, "a posterior ensemble (it swaps the coefficient file)")
        check_chem_order(post.snap, post.elements, snap.elements, post.path, f"{script.name}")
        swap_index = snap.index

        def replica_command(k: int, cmd: Command) -> Command:
            return replace_coeff_file(cmd, snap, str(outdir / f"replica{k}.snapcoeff"))
    if not any(c.word in RUN_COMMANDS for c in commands):
        raise InputError("the script has no run command", file=str(script))
    split = [split_unit(o) for o in observables]
    exprs = [e for e, _ in split]
    style = units_style(commands)
    units = {e: (u if u is not None else observable_unit(e, style)) for e, u in split}
    names = [_observable_name(o) for o in exprs]
    if rank == 0 and nnensemble is None:
        outdir.mkdir(parents=True, exist_ok=True)
        for k, coeffs in enumerate(post.sample(samples, seed=seed)):
            post.write_snapcoeff(outdir / f"replica{k}.snapcoeff", coeffs,
                                 comment=f"ensemble replica {k} (seed {seed})")
    comm.Barrier()
    npart = size // ranks_per_replica
    color = rank // ranks_per_replica
    sub = comm.Split(color, rank)
    show = progress and rank == 0
    nsteps = run_steps(commands)
    _progress.stage(f"fitsnap-uq ensemble: {samples} replicas of {script.name}"
                   + (f" ({nsteps} MD steps each)" if nsteps else "")
                   + (f" on {npart} partitions of {ranks_per_replica} rank(s), replicas of partition 0 "
                      "shown" if npart > 1 else ", one after another"), show)
    timings = []
    old = os.getcwd()
    os.chdir(script.parent)  # the script's relative paths are from its folder
    try:
        mine = list(range(color, samples, npart))
        for k in _progress.bar(mine, desc="ensemble: replicas", unit="replicas", show=show):
            start = time.time()
            lmp = open_lammps(sub, log=str(outdir / f"replica{k}.log"), screen=False)
            obs_file = outdir / f"replica{k}.obs"
            defined = False
            failure = None
            steps_bar = _progress.bar(total=nsteps, desc=f"ensemble: replica {k} MD", unit="steps",
                                     leave=False, show=show)
            for i, cmd in enumerate(commands):
                if cmd.word in OUTPUT_COMMANDS:
                    continue
                if i == swap_index:
                    cmd = replica_command(k, cmd)
                if not defined and cmd.word in RUN_COMMANDS:
                    for name, expr in zip(names, exprs):
                        lmp.command(f"variable ens_{name} equal {expr}")
                    fields = " ".join(f"$(v_ens_{n}:%.12g)" for n in names)
                    lmp.command(f'fix ens_print all print {every} "$(step) {fields}" file {obs_file} '
                                "screen no")
                    if progress and color == 0:  # every rank of the partition defines the fix
                        _count_steps(lmp, steps_bar, every)
                    defined = True
                try:
                    execute(lmp, cmd, what=f"replica {k}: ")
                except InputError as exc:
                    if not defined:  # the script itself is wrong, before any dynamics
                        raise
                    failure = str(exc)  # the replica's dynamics broke down: reported, left out
                    break
            steps_bar.close()
            lmp.close()
            timings.append({"replica": k, "partition": color, "start": start, "end": time.time(),
                            "failure": failure})
    finally:
        os.chdir(old)
        sub.Free()
    all_timings = comm.gather(timings, root=0)
    if rank != 0:
        return None
    timings = sorted((t for part in all_timings for t in part), key=lambda t: t["replica"])
    return summarize(outdir, samples, exprs, names, timings, every, units=units,
                     source="posterior draw" if nnensemble is None else "ensemble member")


def _nn_replicas(script: str | Path, nnensemble: Any, outdir: Path, rank: int, comm: Any
                 ) -> tuple[Path, list[Command], int, Any, int]:
    """The script, its commands, the index of its ML-IAP ``pair_style``, ``replica_command(k, cmd)``
    (member k's model swapped in) and the number of members K. Rank 0 writes the members' ML-IAP files
    to ``outdir`` (``replica.member<k>.mliap.model``, ``replica.mliap.descriptor``)."""
    from fitsnap_uq.nn.fitsnap_ensemble import NNEnsemble
    from fitsnap_uq.nn.fitsnap_mliap import export_ensemble

    path, commands, mliap = nn_script(script, "an NN-ensemble run swaps the ML-IAP model file of that line")
    ens = nnensemble if isinstance(nnensemble, NNEnsemble) else NNEnsemble(nnensemble)
    unknown = [e for e in mliap.elements if e != "NULL" and e not in ens.elements]
    if unknown:
        raise InputError(f"the script's mliap pair_coeff names elements {unknown} that are not the "
                         f"ensemble's ({ens.elements})", file=str(path))
    message = None
    if rank == 0:
        outdir.mkdir(parents=True, exist_ok=True)
        try:
            export_ensemble(ens, outdir=outdir, prefix="replica")
        except InputError as exc:
            message = str(exc)
    message = comm.bcast(message, root=0)
    if message:
        raise InputError(message)

    def replica_command(k: int, cmd: Command) -> Command:
        return replace_mliap_files(cmd, str(outdir / f"replica.member{k}.mliap.model"),
                                   str(outdir / "replica.mliap.descriptor"))

    return path, commands, mliap.index, replica_command, len(ens)


def _count_steps(lmp: Any, steps_bar: Any, every: int) -> None:
    """Advance ``steps_bar`` every ``every`` MD steps from a ``fix external`` callback that adds no
    force (as the MD hook's): the count of steps of the run in progress."""
    state = {"last": None}

    def callback(caller: Any, step: int, nlocal: int, tag: Any, x: Any, fext: Any) -> None:
        zero_external_force(fext, nlocal)
        if state["last"] is not None and step > state["last"]:
            steps_bar.update(int(step - state["last"]))
        state["last"] = int(step)

    lmp.command(f"fix ens_progress all external pf/callback {every} 1")
    lmp.set_fix_external_callback("ens_progress", callback, None)


def _read_obs(path: Path, m: int) -> np.ndarray:
    rows = [ln.split() for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    data = np.array([[float(x) for x in r] for r in rows if len(r) == m + 1])
    if data.size == 0:
        raise InputError(f"replica produced no observables ({path}); is --every larger than the run?")
    return data


def summarize(outdir: Path, samples: int, observables: list[str], names: list[str],
              timings: list[dict[str, Any]], every: int, units: dict[str, str | None] | None = None,
              source: str = "posterior draw") -> EnsembleResult:
    """Read the replicas' observables, leave out those that left the physical region
    (:func:`screen_replicas`), put error bars on the rest (see the module docstring), and write the
    table, summary, plot and JSON.

    Args:
        units: {observable: unit or None}.
        source: what each replica's potential is (``posterior draw`` or ``ensemble member``).
    """
    units = {o: (units or {}).get(o) for o in observables}
    m = len(observables)
    excluded: dict[int, str] = {t["replica"]: f"the run stopped: {t['failure']}" for t in timings
                                if t.get("failure")}
    series: dict[int, np.ndarray] = {}
    for k in range(samples):
        if k not in excluded:
            try:
                series[k] = _read_obs(outdir / f"replica{k}.obs", m)
            except (InputError, ValueError, OSError) as exc:
                excluded[k] = f"no observables ({exc})"
    if series:
        t_all = min(s.shape[0] for s in series.values())
        half_all = np.array([s[t_all // 2:t_all, 1:].mean(axis=0) for s in series.values()])
        bad = ~np.all(np.isfinite(np.array([s[:t_all, 1:] for s in series.values()])), axis=(1, 2))
        half_all[bad] = np.nan
        for i, reason in screen_replicas(half_all, observables).items():
            excluded[list(series)[i]] = reason
    kept = [k for k in range(samples) if k not in excluded]
    if len(kept) < 2:
        raise NumericalError(
            f"only {len(kept)} of {samples} replicas stayed physical, no error bar: "
            + "; ".join(f"replica {k}: {r}" for k, r in sorted(excluded.items()))
            + f" (outputs in {outdir})")
    t = min(series[k].shape[0] for k in kept)
    steps = series[kept[0]][:t, 0]
    values = np.stack([series[k][:t, 1:] for k in kept])  # (K kept, T, M)
    band = prediction_band(values, axis=0)  # (T, M) each
    header = ["step"] + [f"{n}_{s}" for n in names for s in ("mean", "std", "lo95", "hi95")]
    lines = [",".join(header)]
    for i, step in enumerate(steps):
        row = [f"{step:.0f}"]
        for j in range(m):
            row += [f"{band[s][i, j]:.10g}" for s in ("mean", "std", "lo", "hi")]
        lines.append(",".join(row))
    atomic_write(outdir / "ensemble_timeseries.csv", "\n".join(lines) + "\n")
    per_replica = {o: [time_average(values[i, t // 2:, j]) for i in range(len(kept))]
                   for j, o in enumerate(observables)}
    average, final = {}, {}
    for j, o in enumerate(observables):
        means = np.array([r["mean"] for r in per_replica[o]])
        average[o] = replica_interval(means, sampling_se=np.array([r["se"] for r in per_replica[o]]),
                                      neff=np.array([r["neff"] for r in per_replica[o]]))
        final[o] = replica_interval(values[:, -1, j])
    first_step = float(steps[t // 2])
    result = EnsembleResult(observables, steps, values, final, average, timings,
                            excluded=dict(sorted(excluded.items())), kept=kept, units=units,
                            samples=samples, per_replica=per_replica, first_step=first_step,
                            source=source)
    atomic_write(outdir / "ensemble_summary.md", _summary_markdown(result))
    _plot(outdir / "ensemble.png", steps, band, observables, units)
    blob = json.dumps({"observables": observables, "units": units, "samples": samples, "every": every,
                       "interval": result.interval, "source": result.source, "first_step": first_step,
                       "final": final,
                       "second_half_average": average, "per_replica": per_replica,
                       "timings": timings, "kept": kept,
                       "excluded": {str(k): r for k, r in sorted(excluded.items())},
                       "steps": steps.tolist(), "values": values.tolist()})
    atomic_write(outdir / "ensemble.json", blob)
    return result


def _summary_markdown(res: EnsembleResult) -> str:
    """``ensemble_summary.md``: the replicas, the interval's definition, the table per observable."""
    k = len(res.kept)
    member = res.source == "ensemble member"
    md = [f"# {'Network' if member else 'Posterior'} ensemble of MD: {res.samples} replicas, {k} kept", "",
          ("Each replica ran the same input driven by one member of the network ensemble. " if member
           else "Each replica ran the same input with one coefficient set drawn from the posterior. ")
          + f"{res.samples} replicas ran; {len(res.excluded)} left out by the runaway screen; the "
          f"statistics are over the {k} kept.", "",
          f"Interval: {res.interval}. Time average: over the second half of each replica (from step "
          f"{res.first_step:.0f}); its MD sampling error comes from the series' autocorrelation "
          "(statistical inefficiency, N_eff effective frames). The final frame's interval is over the "
          f"replicas alone (t with {k - 1} degrees of freedom).", ""]
    if res.excluded:
        md += ["**Left out** (they left the physical region; not averaged into the error bars):", ""]
        md += [f"- replica {r}: {why}" for r, why in sorted(res.excluded.items())]
        md.append("")
    md += ["| observable | unit | what | mean | std over replicas | MD sampling error | t | "
           "95% prediction interval |", "|---|---|---|---|---|---|---|---|"]
    for o in res.observables:
        unit = res.units.get(o) or "not known"
        a, f = res.average[o], res.final[o]
        md.append(f"| `{o}` | {unit} | second-half time average | {a['mean']:.6g} | {a['std']:.3g} | "
                  f"{a['sampling_se']:.2g} | {a['t']:.3g} | [{a['lo']:.6g}, {a['hi']:.6g}] |")
        md.append(f"| `{o}` | {unit} | final frame | {f['mean']:.6g} | {f['std']:.3g} | | {f['t']:.3g} | "
                  f"[{f['lo']:.6g}, {f['hi']:.6g}] |")
    md += ["", "Per replica (second-half time average +- its standard error, effective frames N_eff):",
           "", "| replica | " + " | ".join(f"`{o}` ({res.units.get(o) or '?'})" for o in res.observables)
           + " |", "|---|" + "---|" * len(res.observables)]
    for i, r in enumerate(res.kept):
        cells = [f"{res.per_replica[o][i]['mean']:.6g} +- {res.per_replica[o][i]['se']:.2g} "
                 f"(N_eff {res.per_replica[o][i]['neff']:.0f})" for o in res.observables]
        md.append(f"| {r} | " + " | ".join(cells) + " |")
    return "\n".join(md) + "\n"


def _plot(path: Path, steps: np.ndarray, band: dict[str, np.ndarray], observables: list[str],
          units: dict[str, str | None]) -> None:
    from fitsnap_uq.plotting import pyplot, save

    plt = pyplot()
    m = len(observables)
    fig, axes = plt.subplots(m, 1, figsize=(6, 2.2 * m), sharex=True, squeeze=False)
    for j, (ax, o) in enumerate(zip(axes[:, 0], observables)):
        ax.fill_between(steps, band["lo"][:, j], band["hi"][:, j], alpha=0.3,
                        label="95% prediction band over the replicas")
        ax.plot(steps, band["mean"][:, j], lw=1.5, label="mean")
        ax.set_ylabel(f"{o} ({units.get(o) or '?'})")
    axes[0, 0].legend(fontsize=8)
    axes[-1, 0].set_xlabel("step")
    fig.suptitle("Posterior ensemble of MD")
    fig.tight_layout()
    save(fig, path)
