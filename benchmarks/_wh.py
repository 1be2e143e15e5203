"""The two-element GFN1-xTB system of ``benchmarks/al_otf.py --system wh``: hydrogen in bcc tungsten, the
seed talk's example (an early W-H potential let H cluster in bulk W until such configurations were
added to its training set).

16-atom bcc W cells (2 x 2 x 2, a = 3.165 A) with 1 or 2 H on tetrahedral interstitial sites, labelled
by GFN1-xTB (tblite, 3000 K smearing); MD of a W16H2 cell at 600 and 1200 K with 0.5 fs steps (H is
light); SNAP 2J = 6. Two test sets, the same for every method of a seed: 8 frames of a GFN1-xTB
Langevin MD at 1200 K (:func:`xtb_test_frames`, the loop's ``test_files``), on which al_otf scores the
runs, and the loop's own (``[loop] test_set = "md"``: 8 frames of its independent MD at 1200 K with fit
0, which every method shares), in each run's report and summary.
Every QM cell holds the MD cell's 16 W: tblite's periodic xTB samples the Gamma point only, so a metal's
energy per atom depends on the cell size.
"""

from __future__ import annotations

import itertools
import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
from _cuau import config_toml, langevin_frames

A_W = 3.165
"""bcc W lattice constant (A)."""

BASE: dict[str, dict[str, Any]] = {
    "system": {"elements": ["W", "H"], "initial": 0, "seed": 0},
    "start": {"structures": ["wh_initial.extxyz"]},
    "oracle": {"name": "xtb"},
    # ZBL only below 1 A (W-H bonds are 1.8 A: the default 1.5-2.0 A switch would shape them)
    "snap": {"twojmax": 6, "rcutfac": 4.7, "radelem": [0.5, 0.35], "wj": [1.0, 0.8], "zbl": [0.6, 1.0]},
    # halt only far off: fit 0's force std already exceeds 2 eV/A (the default halt) within 10 steps
    "md": {"md_data": "wh_md.extxyz", "temperatures": [600.0, 1200.0], "md_steps": 400,
           "timestep": 0.0005, "every": 10, "halt_above": 50.0},
    "select": {"strategy": "max_std", "batch": 2, "tolerance": 0.0},
    "loop": {"iterations": 6, "qm_budget": 15, "test_structures": 8, "test_set": "md"},
}


def tetrahedral_sites(repeat: tuple[int, int, int] = (2, 2, 2), a: float = A_W) -> np.ndarray:
    """Cartesian positions (A), shape (12 * cells, 3), of the tetrahedral interstitial sites of a bcc
    supercell of ``repeat`` conventional cells: the permutations of (0, 1/2, 1/4) and (0, 1/2, 3/4)."""
    base = sorted({p for q in ((0.0, 0.5, 0.25), (0.0, 0.5, 0.75)) for p in itertools.permutations(q)})
    cells = np.array(list(itertools.product(*(range(n) for n in repeat))), dtype=float)
    return a * (cells[:, None, :] + np.asarray(base)[None, :, :]).reshape(-1, 3)


def wh_cell(n_h: int, rng: np.random.Generator, rattle: float = 0.05, strain: float = 0.01,
            min_hh: float = 2.0) -> Any:
    """A 16-atom bcc W cell with ``n_h`` H on random tetrahedral sites at least ``min_hh`` A apart,
    strained (symmetric, ``strain`` per component) and rattled (``rattle`` A)."""
    from ase import Atoms
    from ase.build import bulk

    atoms = bulk("W", "bcc", a=A_W, cubic=True).repeat((2, 2, 2))
    sites = tetrahedral_sites()
    chosen: list[np.ndarray] = []
    for i in rng.permutation(len(sites)):
        if len(chosen) == n_h:
            break
        # distances through the periodic cell (cubic, side 2a)
        if all(np.linalg.norm((sites[i] - c + A_W) % (2 * A_W) - A_W) >= min_hh for c in chosen):
            chosen.append(sites[i])
    atoms += Atoms("H" * n_h, positions=chosen)
    eps = rng.normal(scale=strain, size=(3, 3))
    atoms.set_cell(np.asarray(atoms.cell) @ (np.eye(3) + 0.5 * (eps + eps.T)), scale_atoms=True)
    atoms.rattle(stdev=rattle, seed=int(rng.integers(1 << 30)))
    return atoms


def write_inputs(folder: Path, seed: int) -> None:
    """``wh_initial.extxyz`` (W16H, W16H, W16H2, W16H2: the labelled start) and ``wh_md.extxyz`` (the MD
    start, W16H2 unstrained and unrattled) in ``folder``, from ``seed``; kept when present."""
    import ase.io

    folder.mkdir(parents=True, exist_ok=True)
    if (folder / "wh_md.extxyz").exists():
        return
    rng = np.random.default_rng(50_000 + seed)
    ase.io.write(folder / "wh_initial.extxyz", [wh_cell(n, rng) for n in (1, 1, 2, 2)])
    ase.io.write(folder / "wh_md.extxyz", wh_cell(2, rng, rattle=0.0, strain=0.0))


def xtb_test_frames(path: Path, seed: int, temperature: float = 1200.0, frames: int = 8, every: int = 10,
                    equilibrate: int = 60) -> None:
    """``frames`` configurations of a GFN1-xTB Langevin MD (ASE; 0.5 fs steps, friction 0.02/fs) of a W16H2
    cell (its own H sites, from ``seed``) at ``temperature`` K: ``equilibrate`` steps, then one frame
    every ``every`` steps; written as extxyz (kept when present). The loop labels them again as its
    user test set (``test_files``): physical hot configurations, whatever the fits do."""
    import ase.io
    from ase import units

    from fitsnap_uq.active.oracles import oracle_from_name

    if path.exists():
        return
    rng = np.random.default_rng(60_000 + seed)
    atoms = wh_cell(2, rng, rattle=0.0, strain=0.0)
    out = langevin_frames(atoms, oracle_from_name("xtb").make_calculator(), temperature, rng, frames, 0.5,
                          0.02 / units.fs, equilibrate, every)
    ase.io.write(path, out)


def wh_toml(**tables: dict[str, Any]) -> str:
    """The W-H config as TOML, with ``tables`` ({table: {key: value}}) overriding or adding keys."""
    return config_toml(BASE, **tables)


def run_wh(method: str, seed: int, args: Any, out: Path) -> dict:
    """One W-H loop of ``benchmarks/al_otf.py`` (``args``: its options) in ``out/seed<seed>/<method>``:
    resumed if cut short, reused if finished; returns its summary."""
    folder = out / f"seed{seed}"
    write_inputs(folder, seed)
    xtb_test_frames(folder / "wh_test_xtb_md.extxyz", seed)
    work = folder / method
    if (work / "summary.json").exists():
        return scored_on(json.loads((work / "summary.json").read_text()), "user")
    config = folder / f"{method}.toml"
    conditions = len(BASE["md"]["temperatures"])
    config.write_text(wh_toml(
        system={"seed": seed}, start={"test_files": ["wh_test_xtb_md.extxyz"]},
        md={"flag_above": args.flag_above, "max_flags": max(1, args.batch // conditions)},
        select={"strategy": method, "batch": args.batch},
        loop={"iterations": args.iterations, "qm_budget": args.budget}))
    from al_resume import command, env

    proc = subprocess.run(command(config, work), env=env(), capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"W-H {method} seed {seed}:\n{proc.stderr[-3000:]}")
    return scored_on(json.loads((work / "summary.json").read_text()), "user")


def scored_on(summary: dict, name: str) -> dict:
    """``summary`` with each curve point's test errors those of its test set ``name``."""
    return {**summary, "curve": [{**c, **c["by_test_set"][name]} for c in summary["curve"]]}
