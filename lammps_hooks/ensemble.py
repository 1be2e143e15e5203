"""Posterior ensembles of MD: error bars on MD observables from the coefficient posterior.

``fitsnap-uq ensemble IN.lammps --posterior P.npz --samples K --observables vol/atoms press``

K replicas of the same unmodified input script, each with one coefficient set drawn from the
posterior (stored samples, or Gaussian draws; seeded) written as its own ``.snapcoeff`` file and
swapped into the script's snap ``pair_coeff`` line. Under ``mpirun -np N`` the ranks split into
partitions of ``--ranks-per-replica`` ranks (like LAMMPS ``-partition``); partitions run their share
of the replicas concurrently, each partition its replicas one after another. On one rank the replicas
run in sequence.

Observables are LAMMPS equal-style expressions of thermo keywords (``vol/atoms``, ``press``,
``pe/atoms``, ``temp``, ...), recorded every ``--every`` steps with ``fix print``. The replicas' own file
outputs (dump, restart, write_*) are left out; each replica writes its log and observables to the
output folder. Rank 0 writes, in the output folder:

* ``ensemble_timeseries.csv``: step, then for each observable its mean, std, 2.5% and 97.5% quantiles
  over the replicas;
* ``ensemble_summary.md``: per observable, the final value and the time average over the second half
  of each replica: mean, std and 95% interval over the replicas, plus each replica's numbers;
* ``ensemble.png``: each observable's mean and 95% band against the step;
* ``ensemble.json``: the same numbers and each replica's wall-clock start/end (to check concurrency).

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

from fitsnap_uq.errors import InputError, NumericalError
from fitsnap_uq.io import atomic_write
from fitsnap_uq.posterior import Posterior
from lammps_hooks.script import RUN_COMMANDS, execute, replace_coeff_file, snap_script
from lammps_hooks.snap_params import check_chem_order

OUTPUT_COMMANDS = ("dump", "dump_modify", "undump", "write_restart", "write_data", "write_dump",
                   "write_coeff", "restart", "log")


@dataclass
class EnsembleResult:
    """Summary of an ensemble run (complete on rank 0).

    Attributes:
        observables: the expressions recorded.
        steps: (T,) steps of the time series.
        values: (K, T, M) every replica's observables (rank 0).
        final: {observable: {mean, std, lo, hi}} over the replicas, of the last value.
        average: the same for each replica's time average over the second half.
        timings: per replica: partition, start and end wall-clock times.
        excluded: {replica: reason} of the replicas left out of the statistics.
        kept: the replicas the statistics are over.
    """

    observables: list[str]
    steps: np.ndarray
    values: np.ndarray
    final: dict[str, dict[str, float]]
    average: dict[str, dict[str, float]]
    timings: list[dict[str, Any]] = field(default_factory=list)
    excluded: dict[int, str] = field(default_factory=dict)
    kept: list[int] = field(default_factory=list)


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


def spread_stats(x: np.ndarray, axis: int = 0) -> dict[str, Any]:
    """Mean, std (ddof 1), 2.5% and 97.5% quantiles over ``axis``."""
    k = x.shape[axis]
    return {"mean": np.mean(x, axis=axis), "std": np.std(x, axis=axis, ddof=1 if k > 1 else 0),
            "lo": np.quantile(x, 0.025, axis=axis), "hi": np.quantile(x, 0.975, axis=axis)}


def _observable_name(expr: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", expr).strip("_") or "obs"


def run_ensemble(script: str | Path, posterior: Posterior | str | Path, samples: int = 4,
                 observables: Sequence[str] = ("vol/atoms", "press", "pe/atoms", "temp"),
                 every: int = 10, outdir: str | Path = "ensemble", seed: int = 0,
                 ranks_per_replica: int = 1, comm: Any = None, progress: bool = False
                 ) -> EnsembleResult | None:
    """Run the posterior ensemble (see the module docstring); the result on rank 0, None elsewhere.

    ``progress``: a progress bar over the replicas of rank 0's partition.
    """
    from mpi4py import MPI

    from lammps_hooks.md import open_lammps

    comm = comm or MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    if samples < 2:
        raise InputError("an ensemble needs at least 2 samples (--samples)")
    if size % ranks_per_replica:
        raise InputError(f"{size} MPI ranks do not split into partitions of {ranks_per_replica}")
    post = posterior if isinstance(posterior, Posterior) else Posterior.load(posterior)
    script, commands, snap = snap_script(script, "a posterior ensemble (it swaps the coefficient file)")
    check_chem_order(post.snap, post.elements, snap.elements, post.path, f"{script.name}")
    if not any(c.word in RUN_COMMANDS for c in commands):
        raise InputError("the script has no run command", file=str(script))
    outdir = Path(outdir).resolve()
    names = [_observable_name(o) for o in observables]
    if rank == 0:
        outdir.mkdir(parents=True, exist_ok=True)
        for k, coeffs in enumerate(post.sample(samples, seed=seed)):
            post.write_snapcoeff(outdir / f"replica{k}.snapcoeff", coeffs,
                                 comment=f"ensemble replica {k} (seed {seed})")
    comm.Barrier()
    npart = size // ranks_per_replica
    color = rank // ranks_per_replica
    sub = comm.Split(color, rank)
    timings = []
    old = os.getcwd()
    os.chdir(script.parent)  # the script's relative paths are from its folder
    try:
        mine = range(color, samples, npart)
        if progress and rank == 0:
            from tqdm import tqdm

            mine = tqdm(mine, desc="MD: posterior ensemble replicas")
        for k in mine:
            start = time.time()
            lmp = open_lammps(sub, log=str(outdir / f"replica{k}.log"), screen=False)
            obs_file = outdir / f"replica{k}.obs"
            defined = False
            failure = None
            for i, cmd in enumerate(commands):
                if cmd.word in OUTPUT_COMMANDS:
                    continue
                if i == snap.index:
                    cmd = replace_coeff_file(cmd, snap, str(outdir / f"replica{k}.snapcoeff"))
                if not defined and cmd.word in RUN_COMMANDS:
                    for name, expr in zip(names, observables):
                        lmp.command(f"variable ens_{name} equal {expr}")
                    fields = " ".join(f"$(v_ens_{n}:%.12g)" for n in names)
                    lmp.command(f'fix ens_print all print {every} "$(step) {fields}" file {obs_file} '
                                "screen no")
                    defined = True
                try:
                    execute(lmp, cmd, what=f"replica {k}: ")
                except InputError as exc:
                    if not defined:  # the script itself is wrong, before any dynamics
                        raise
                    failure = str(exc)  # the replica's dynamics broke down: reported, left out
                    break
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
    return summarize(outdir, samples, list(observables), names, timings, every)


def _read_obs(path: Path, m: int) -> np.ndarray:
    rows = [ln.split() for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    data = np.array([[float(x) for x in r] for r in rows if len(r) == m + 1])
    if data.size == 0:
        raise InputError(f"replica produced no observables ({path}); is --every larger than the run?")
    return data


def summarize(outdir: Path, samples: int, observables: list[str], names: list[str],
              timings: list[dict[str, Any]], every: int) -> EnsembleResult:
    """Read the replicas' observables, leave out those that left the physical region
    (:func:`screen_replicas`), and write the table, summary, plot and JSON."""
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
    ts = spread_stats(values, axis=0)
    header = ["step"] + [f"{n}_{s}" for n in names for s in ("mean", "std", "lo95", "hi95")]
    lines = [",".join(header)]
    for i, step in enumerate(steps):
        row = [f"{step:.0f}"]
        for j in range(m):
            row += [f"{ts[s][i, j]:.10g}" for s in ("mean", "std", "lo", "hi")]
        lines.append(",".join(row))
    text = "\n".join(lines) + "\n"
    atomic_write(outdir / "ensemble_timeseries.csv", text)
    half = values[:, t // 2:, :].mean(axis=1)  # (K, M) each replica's average over the second half
    final_stats = spread_stats(values[:, -1, :], axis=0)
    avg_stats = spread_stats(half, axis=0)
    final = {o: {s: float(final_stats[s][j]) for s in final_stats} for j, o in enumerate(observables)}
    average = {o: {s: float(avg_stats[s][j]) for s in avg_stats} for j, o in enumerate(observables)}
    md = [f"# Posterior ensemble of MD: {samples} replicas", "",
          "Each replica ran the same input with one coefficient set drawn from the posterior. "
          "Interval: 2.5-97.5% quantiles over the replicas"
          + (f" kept ({len(kept)} of {samples})." if excluded else "."), ""]
    if excluded:
        md += ["**Left out** (they left the physical region; not averaged into the error bars):", ""]
        md += [f"- replica {k}: {r}" for k, r in sorted(excluded.items())]
        md.append("")
    md += [
          "| observable | what | mean | std | 95% interval |", "|---|---|---|---|---|"]
    for o in observables:
        for what, d in (("final value", final[o]), ("second-half time average", average[o])):
            md.append(f"| `{o}` | {what} | {d['mean']:.6g} | {d['std']:.3g} | "
                      f"[{d['lo']:.6g}, {d['hi']:.6g}] |")
    md += ["", "Per replica (second-half time average):", "",
           "| replica | " + " | ".join(f"`{o}`" for o in observables) + " |",
           "|---|" + "---|" * m]
    for i, k in enumerate(kept):
        md.append(f"| {k} | " + " | ".join(f"{half[i, j]:.6g}" for j in range(m)) + " |")
    text_md = "\n".join(md) + "\n"
    atomic_write(outdir / "ensemble_summary.md", text_md)
    _plot(outdir / "ensemble.png", steps, ts, observables)
    result = EnsembleResult(observables, steps, values, final, average, timings,
                            excluded=dict(sorted(excluded.items())), kept=kept)
    blob = json.dumps({"observables": observables, "samples": samples, "every": every,
                       "final": final, "second_half_average": average, "timings": timings,
                       "kept": kept, "excluded": {str(k): r for k, r in sorted(excluded.items())},
                       "steps": steps.tolist(), "values": values.tolist()})
    atomic_write(outdir / "ensemble.json", blob)
    return result


def _plot(path: Path, steps: np.ndarray, ts: dict[str, np.ndarray], observables: list[str]) -> None:
    from fitsnap_uq.plotting import pyplot, save

    plt = pyplot()
    m = len(observables)
    fig, axes = plt.subplots(m, 1, figsize=(6, 2.2 * m), sharex=True, squeeze=False)
    for j, (ax, o) in enumerate(zip(axes[:, 0], observables)):
        ax.fill_between(steps, ts["lo"][:, j], ts["hi"][:, j], alpha=0.3, label="95% of replicas")
        ax.plot(steps, ts["mean"][:, j], lw=1.5, label="mean")
        ax.set_ylabel(o)
    axes[0, 0].legend(fontsize=8)
    axes[-1, 0].set_xlabel("step")
    fig.suptitle("Posterior ensemble of MD")
    fig.tight_layout()
    save(fig, path)
