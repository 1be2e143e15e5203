"""Posterior draws that respect what the data constrain (issue 16, acceptance 4).

    python benchmarks/ensemble_draws.py [--systems ta w] [--samples 8] [--steps 3000] [--np 2]
        [--outdir benchmarks/out/ensemble_draws]

For each system the default BAYES fit of the shared data (``solver = BAYES`` in the data's own FitSNAP
input, everything else as given; ``mpirun -np N fitsnap-uq fit``, reused when its posterior exists):
Ta from ``Ta_Linear_JCP2014``, W from the W-Be fit of ``WBe_PRB2019_subset`` (a pure-W crystal with the
two-element potential). Then NPT MD of the bcc crystal (4 x 4 x 4 cells, 128 atoms) at 600 K and 0 bar
with the ZBL reference of the fit:

* once with the posterior mean (the fit's ``.snapcoeff``), the volume per atom averaged over the second
  half of the run;
* ``fitsnap-uq ensemble`` with ``--samples`` posterior draws (same script, same velocities), its
  ``ensemble.json``.

Acceptance: every replica kept by the runaway screen (none left out) and each replica's second-half
mean volume within 3% of the mean potential's. Prints each replica's relative deviation.
Needs the shared data (skips a system whose data folder is absent), LAMMPS and mpirun.
"""

from __future__ import annotations

import argparse
import configparser
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
BOUND = 0.03

SYSTEMS = {
    # data folder, FitSNAP input, element, bcc lattice constant (A), mass, ZBL Z
    "ta": ("Ta_Linear_JCP2014", "Ta-example.in", "Ta", 3.316, 180.88, 73),
    "w": ("WBe_PRB2019_subset", "WBe-example.in", "W", 3.165, 183.84, 74),
}


def bayes_input(system: str, outdir: Path) -> Path | None:
    """The data's FitSNAP input with ``solver = BAYES`` and absolute data path, in ``outdir``."""
    folder, name, *_ = SYSTEMS[system]
    src = DATA / folder / name
    if not src.exists():
        print(f"[{system}] skipped: {src} not found")
        return None
    cfg = configparser.ConfigParser(inline_comment_prefixes=("#",))
    cfg.optionxform = str  # FitSNAP's keys and group names are case-sensitive
    cfg.read(src)
    cfg["SOLVER"]["solver"] = "BAYES"
    cfg["PATH"]["dataPath"] = str((src.parent / cfg["PATH"]["dataPath"]).resolve())
    cfg["OUTFILE"]["metrics"] = f"{system}_metrics.md"
    cfg["OUTFILE"]["potential"] = f"{system}_pot"
    outdir.mkdir(parents=True, exist_ok=True)
    path = outdir / f"{system}.in"
    with open(path, "w") as fh:
        cfg.write(fh)
    return path


def fit(system: str, outdir: Path, ranks: int) -> Path | None:
    """The posterior file of the default BAYES fit (fitted when absent)."""
    post = outdir / f"{system}_pot.posterior.npz"
    if post.exists():
        print(f"[{system}] reusing {post}")
        return post
    infile = bayes_input(system, outdir)
    if infile is None:
        return None
    cmd = ["mpirun", "-np", str(ranks), "fitsnap-uq", "fit", infile.name, "--overwrite"]
    print(f"[{system}] {' '.join(cmd)}", flush=True)
    subprocess.run(cmd, cwd=outdir, check=True, stdout=subprocess.DEVNULL)
    return post


def md_script(system: str, outdir: Path, steps: int, coeff: str) -> Path:
    """NPT at 600 K and 0 bar of the bcc crystal with the fit's potential (``coeff`` its coefficients)."""
    _, _, element, a, mass, z = SYSTEMS[system]
    text = f"""# bcc {element}, 128 atoms, NPT at 600 K and 0 bar
units           metal
lattice         bcc {a}
region          box block 0 4 0 4 0 4
create_box      1 box
create_atoms    1 box
mass            1 {mass}
pair_style      hybrid/overlay zbl 4.0 4.8 snap
pair_coeff      * * zbl {z} {z}
pair_coeff      * * snap {coeff} {system}_pot.snapparam {element}
velocity        all create 1200.0 4928459 loop geom
fix             npt all npt temp 600.0 600.0 0.1 iso 0.0 0.0 1.0
timestep        0.002
thermo          500
run             {steps}
"""
    path = outdir / f"in.{system}.npt"
    path.write_text(text)
    return path


def mean_potential_volume(script: Path, every: int) -> float:
    """Second-half average of vol/atoms of the script run as is (the posterior mean's coefficients)."""
    sys.path.insert(0, str(ROOT))
    from lammps_hooks.md import open_lammps

    obs = script.with_suffix(".mean.obs")
    lmp = open_lammps(log=None, screen=False)
    old = os.getcwd()
    os.chdir(script.parent)
    try:
        lines = [ln.split("#")[0].strip() for ln in script.read_text().splitlines()]
        for line in lines:
            if not line:
                continue
            if line.startswith("run"):
                lmp.command("variable vpa equal vol/atoms")
                lmp.command(f'fix rec all print {every} "$(step) $(v_vpa:%.12g)" file {obs} screen no')
            lmp.command(line)
    finally:
        os.chdir(old)
        lmp.close()
    data = np.loadtxt(obs, comments="#")
    half = data[:, 0] >= data[-1, 0] / 2
    return float(np.mean(data[half, 1]))


def run_system(system: str, args: argparse.Namespace) -> bool | None:
    outdir = (args.outdir / system).resolve()
    post = fit(system, outdir, args.np)
    if post is None:
        return None
    script = md_script(system, outdir, args.steps, f"{system}_pot.snapcoeff")
    v_mean = mean_potential_volume(script, args.every)
    ens = outdir / "ensemble"
    cmd = ["mpirun", "-np", str(args.np), "fitsnap-uq", "ensemble", script.name, "--posterior", post.name,
           "--samples", str(args.samples), "--observables", "vol/atoms", "temp", "press",
           "--every", str(args.every), "--outdir", str(ens), "--seed", str(args.seed), "--no-progress"]
    print(f"[{system}] {' '.join(cmd)}", flush=True)
    subprocess.run(cmd, cwd=outdir, check=True, stdout=subprocess.DEVNULL)
    res = json.loads((ens / "ensemble.json").read_text())
    kept, excluded = res["kept"], res["excluded"]
    vols = [r["mean"] for r in res["per_replica"]["vol/atoms"]]
    dev = [(v - v_mean) / v_mean for v in vols]
    print(f"[{system}] mean potential: vol/atoms {v_mean:.4f} A^3/atom (second-half average)")
    for k, v, d in zip(kept, vols, dev):
        print(f"[{system}]   replica {k}: vol/atoms {v:.4f} A^3/atom, {100 * d:+.2f}% of the mean "
              "potential's")
    for k, why in excluded.items():
        print(f"[{system}]   replica {k}: LEFT OUT by the runaway screen: {why}")
    worst = max(abs(d) for d in dev) if dev else float("nan")
    ok = not excluded and len(kept) == args.samples and worst <= BOUND
    print(f"{'PASS' if ok else 'FAIL'}  [{system}] {len(kept)}/{args.samples} replicas kept, largest volume "
          f"deviation {100 * worst:.2f}% (bound {100 * BOUND:.0f}%)", flush=True)
    return ok


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--systems", nargs="+", default=["ta", "w"], choices=sorted(SYSTEMS))
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--every", type=int, default=10)
    ap.add_argument("--np", type=int, default=2, help="MPI ranks of the fit and the ensemble")
    ap.add_argument("--seed", type=int, default=0, help="seed of the posterior draws")
    ap.add_argument("--outdir", type=Path, default=ROOT / "benchmarks" / "out" / "ensemble_draws")
    args = ap.parse_args(argv)
    results = {s: run_system(s, args) for s in args.systems}
    ran = {s: r for s, r in results.items() if r is not None}
    if not ran:
        print("no system ran")
        return 1
    print("ALL PASS" if all(ran.values()) else "SOME FAIL")
    return 0 if all(ran.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
