"""On-the-fly active learning (issue 18, acceptance 1): ``fitsnap-uq al`` with each selection strategy
against random selection of MD frames and first-come thresholding, at equal QM budget, on a two-element
EMT system (Cu-Au, fcc, Cu3Au composition, 32-atom cells).

    python benchmarks/al_otf.py --seeds 0 1 2 [--methods random threshold max_std d_optimal]
        [--budget 14] [--outdir benchmarks/out/al_otf]
    python benchmarks/al_otf.py --system wh --seeds 0 --methods random threshold max_std

``--system wh``: hydrogen in bcc W with GFN1-xTB instead (``benchmarks/_wh.py``; 16 W + 1-2 H cells,
scored on frames of an independent xTB MD at 1200 K), written to ``OUTDIR/wh``.

Per seed every method starts from the same labelled lattice structures and is scored on the same test
set: frames of an independent EMT Langevin MD (ASE) at the hottest loop temperature, from another random
Cu-Au arrangement (``test_files``). Learning curves: test force RMSE against training QM calls and
against QM cost (sum of atoms^3). For each method and seed: the QM calls (and cost) at which its curve
first reaches random's final test force RMSE, as a fraction of random's calls (cost) at its end; mean
over seeds. Acceptance: the best strategy within 0.5x the calls and 0.7x the cost (mean over seeds).
A finished run (its ``summary.json``) is reused when the benchmark is rerun; one cut short resumes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from _cuau import cuau_toml  # noqa: E402
from _wh import run_wh  # noqa: E402


def test_frames(path: Path, seed: int, temperature: float, frames: int = 8) -> None:
    """``frames`` configurations of an EMT Langevin MD of a 32-atom Cu3Au-composition cell (random
    arrangement from ``seed``) at ``temperature`` K, 200 fs apart after 1 ps, written as extxyz."""
    import ase.io
    from ase import units
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    if path.exists():
        return
    rng = np.random.default_rng(10_000 + seed)
    atoms = bulk("Cu", "fcc", a=3.75, cubic=True).repeat((2, 2, 2))
    atoms.set_chemical_symbols(list(np.array(["Cu"] * 24 + ["Au"] * 8)[rng.permutation(32)]))
    atoms.calc = EMT()
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=rng)
    dyn = Langevin(atoms, 2 * units.fs, temperature_K=temperature, friction=0.02, rng=rng)
    dyn.run(500)
    out = []
    for _ in range(frames):
        dyn.run(100)
        snap = atoms.copy()
        snap.calc = None
        out.append(snap)
    ase.io.write(path, out)


def run(method: str, seed: int, args: argparse.Namespace, out: Path) -> dict:
    """One loop (resumed if cut short, reused if finished); returns its summary."""
    if args.system == "wh":
        return run_wh(method, seed, args, out)
    folder = out / f"seed{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    test = folder / "test_md.extxyz"
    test_frames(test, seed, 1200.0)
    work = folder / method
    if (work / "summary.json").exists():
        return json.loads((work / "summary.json").read_text())
    strategy = "threshold" if method == "threshold" else method
    conditions = 2
    config = folder / f"{method}.toml"
    config.write_text(cuau_toml(
        system={"initial": 3, "rattle": 0.05, "seed": seed}, start={"test_files": [test.name]},
        snap={"twojmax": 6},
        md={"temperatures": [600.0, 1200.0], "md_steps": 200, "every": 10, "flag_above": args.flag_above,
            "max_flags": max(1, args.batch // conditions)},
        select={"strategy": strategy, "batch": args.batch},
        loop={"iterations": args.iterations, "qm_budget": args.budget, "test_structures": 0}))
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "fitsnap_uq", "al", str(config), "--workdir", str(work),
                           "--no-progress"], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{method} seed {seed}:\n{proc.stderr[-3000:]}")
    return json.loads((work / "summary.json").read_text())


def reach(curve: list[dict], target: float) -> tuple[float, float]:
    """(QM calls, QM cost) at which a curve's test force RMSE first is <= target (nan if never)."""
    for point in curve:
        if point["force_rmse"] <= target * (1 + 1e-12):
            return float(point["qm_calls"]), float(point["qm_cost_atoms3"])
    return float("nan"), float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", default=["random", "threshold", "max_std", "d_optimal"])
    ap.add_argument("--budget", type=int, default=15, help="training QM calls (initial ones included)")
    ap.add_argument("--batch", type=int, default=2, help="frames labelled per iteration")
    ap.add_argument("--iterations", type=int, default=6)
    ap.add_argument("--flag-above", type=float, default=0.005, help="threshold method: raw eV/A")
    ap.add_argument("--outdir", default=str(ROOT / "benchmarks" / "out" / "al_otf"))
    ap.add_argument("--system", choices=["cuau", "wh"], default="cuau",
                    help="cuau: Cu-Au with EMT; wh: H in W with GFN1-xTB (benchmarks/_wh.py), in OUTDIR/wh")
    args = ap.parse_args()
    out = Path(args.outdir).resolve() / ("wh" if args.system == "wh" else "")
    results: dict[str, dict[int, list[dict]]] = {m: {} for m in args.methods}
    failed: dict[str, list[int]] = {m: [] for m in args.methods}
    for seed in args.seeds:
        for method in args.methods:
            try:
                summary = run(method, seed, args, out)
            except RuntimeError as exc:  # a run that fails is reported, not hidden: it counts as not reaching
                failed[method].append(seed)
                results[method][seed] = [{"qm_calls": 0, "qm_cost_atoms3": 0.0, "force_rmse": float("nan")}]
                print(f"seed {seed} {method:>18}: FAILED: {str(exc).strip().splitlines()[-1]}", flush=True)
                continue
            results[method][seed] = summary["curve"]
            pts = [(c["qm_calls"], round(c["force_rmse"], 4)) for c in summary["curve"]]
            print(f"seed {seed} {method:>18}: (QM calls, test force RMSE eV/A) {pts}", flush=True)
    if "random" not in results:
        return 0
    print("\nQM calls / cost to reach random's final test force RMSE, as a fraction of random's at its end")
    seeds = " | ".join(f"seed {s} calls, cost" for s in args.seeds)
    print(f"{'method':>18} | {seeds} | mean calls, cost")
    table, reached = {}, {}
    for method in args.methods:
        fc, fk = [], []
        for seed in args.seeds:
            rand = results["random"][seed][-1]
            calls, cost = reach(results[method][seed], rand["force_rmse"])
            fc.append(calls / rand["qm_calls"])
            fk.append(cost / rand["qm_cost_atoms3"])
        table[method] = (float(np.mean(fc)), float(np.mean(fk)))
        reached[method] = int(np.sum(np.isfinite(fc)))
        cells = " | ".join(f"{c:.2f}, {k:.2f}" for c, k in zip(fc, fk))
        print(f"{method:>18} | {cells} | {table[method][0]:.2f}, {table[method][1]:.2f} "
              f"(reached in {reached[method]} of {len(args.seeds)} seeds)")
    finals = {m: float(np.mean([results[m][s][-1]["force_rmse"] for s in args.seeds])) for m in args.methods}
    if any(failed.values()):
        print(f"failed runs (counted as never reaching; nan in means): {failed}")
    print("final test force RMSE (mean over seeds, eV/A): " +
          ", ".join(f"{m} {v:.4f}" for m, v in finals.items()))
    strategies = [m for m in args.methods if m not in ("random", "threshold")]
    if strategies:
        best = min(strategies, key=lambda m: (np.nan_to_num(table[m][0], nan=np.inf),
                                               np.nan_to_num(finals[m], nan=np.inf)))
        calls, cost = table[best]
        ok = calls <= 0.5 and cost <= 0.7
        print(f"best strategy {best}: {calls:.2f}x the QM calls, {cost:.2f}x the cost of random -> "
              f"{'PASS' if ok else 'FAIL'} (bounds 0.5x, 0.7x)")
    plot(results, args.seeds, out, TITLES[args.system])
    (out / "results.json").write_text(json.dumps({"args": vars(args), "curves": results, "fractions": table},
                                                 indent=1))
    return 0


TITLES = {"cuau": "fitsnap-uq al on Cu-Au (EMT): strategies vs random and first-come threshold",
          "wh": "fitsnap-uq al on H in W (GFN1-xTB): strategies vs random and first-come threshold"}


def plot(results: dict[str, dict[int, list[dict]]], seeds: list[int], out: Path, title: str = TITLES["cuau"]
         ) -> None:
    """Learning curves against QM calls and atoms^3 cost, one line per method and seed."""
    sys.path.insert(0, str(ROOT))
    from fitsnap_uq.plotting import pyplot, save

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for i, (method, curves) in enumerate(results.items()):
        for j, seed in enumerate(seeds):
            c = curves[seed]
            for ax, key in zip(axes, ("qm_calls", "qm_cost_atoms3")):
                ax.plot([p[key] for p in c], [p["force_rmse"] for p in c], "o-", color=f"C{i}",
                        alpha=0.7, label=method if j == 0 else None)
    axes[0].set_xlabel("training QM calls")
    axes[1].set_xlabel("QM cost (sum of atoms^3)")
    for ax in axes:
        ax.set_ylabel("test force RMSE (eV/A)")
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    save(fig, out / "learning_curves.png")


if __name__ == "__main__":
    raise SystemExit(main())
