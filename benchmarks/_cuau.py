"""The two-element Cu-Au EMT active-learning config shared by the AL benchmarks and their tests, and the
Cu-Au structures (bulk cells, vacancy, slab) and EMT MD frames of the on-the-fly benchmark."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

BASE: dict[str, dict[str, Any]] = {
    "system": {"elements": ["Cu", "Au"], "composition": [0.75, 0.25], "lattice": "fcc", "a": 3.75,
               "supercell": [2, 2, 2], "initial": 4, "seed": 0},
    "oracle": {"name": "emt"},
    "snap": {"twojmax": 4, "rcutfac": 4.9, "radelem": [0.5, 0.55], "wj": [1.0, 0.9]},
    "md": {"temperatures": [800.0, 1200.0], "md_cells": [2, 2, 2], "md_steps": 100},
    "select": {"strategy": "max_std", "batch": 2, "tolerance": 0.0},
    "loop": {"iterations": 3, "qm_budget": 20, "test_structures": 3},
}
"""32-atom fcc cells of Cu3Au composition (Au on random sites), EMT, SNAP 2J = 4, MD at 800 and 1200 K,
two frames a round chosen by max_std among every evaluated frame."""


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_value(x)}" for k, x in v.items()) + "}"
    return json.dumps(v)  # numbers, strings and lists of them are TOML as JSON writes them


def cuau_toml(**tables: dict[str, Any]) -> str:
    """The config as TOML, with ``tables`` ({table: {key: value}}) overriding or adding keys."""
    return config_toml(BASE, **tables)


def config_toml(base: dict[str, dict[str, Any]], **tables: dict[str, Any]) -> str:
    """The config ``base`` as TOML, with ``tables`` ({table: {key: value}}) overriding or adding keys."""
    merged = {name: dict(keys) for name, keys in base.items()}
    for name, keys in tables.items():
        merged.setdefault(name, {}).update(keys)
    return "".join(f"[{name}]\n" + "".join(f"{k} = {_value(v)}\n" for k, v in keys.items())
                   for name, keys in merged.items())


def cuau_cell(repeat: tuple[int, int, int], rng: Any, vacancy: bool = False, vacuum: float = 0.0) -> Any:
    """A Cu3Au-composition fcc cell (a = 3.75 A, cubic cells repeated), Au on random sites (exact
    counts, ``rng``: numpy Generator); ``vacancy``: one random Cu removed; ``vacuum`` (A): a (001)
    slab with that much vacuum along z (periodic box, two free surfaces)."""
    from ase.build import bulk

    atoms = bulk("Cu", "fcc", a=3.75, cubic=True).repeat(repeat)
    n = len(atoms)
    au = int(round(0.25 * n))
    atoms.set_chemical_symbols(list(np.array(["Cu"] * (n - au) + ["Au"] * au)[rng.permutation(n)]))
    if vacancy:
        cu = np.flatnonzero(np.array(atoms.get_chemical_symbols()) == "Cu")
        del atoms[int(rng.choice(cu))]
    if vacuum:
        atoms.center(vacuum=0.5 * vacuum, axis=2)
    return atoms


def emt_md_frames(atoms: Any, temperature: float, rng: Any, frames: int, equilibrate: int = 500,
                  spacing: int = 100) -> list[Any]:
    """``frames`` snapshots of an EMT Langevin MD (ASE, 2 fs steps, friction 0.02) of ``atoms`` at
    ``temperature`` K, ``spacing`` steps apart after ``equilibrate`` steps (no calculator attached)."""
    from ase.calculators.emt import EMT

    return langevin_frames(atoms.copy(), EMT(), temperature, rng, frames, 2.0, 0.02, equilibrate, spacing)


def langevin_frames(atoms: Any, calc: Any, temperature: float, rng: Any, frames: int, timestep_fs: float,
                    friction: float, equilibrate: int, spacing: int) -> list[Any]:
    """``frames`` snapshots of an ASE Langevin MD of ``atoms`` (driven by ``calc``; Maxwell-Boltzmann
    velocities at ``temperature`` K from ``rng``; ``friction`` in ASE's inverse time units),
    ``spacing`` steps of ``timestep_fs`` fs apart after ``equilibrate`` steps; no calculator attached
    to the snapshots."""
    from ase import units
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    atoms.calc = calc
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=rng)
    dyn = Langevin(atoms, timestep_fs * units.fs, temperature_K=temperature, friction=friction, rng=rng)
    dyn.run(equilibrate)
    out = []
    for _ in range(frames):
        dyn.run(spacing)
        snap = atoms.copy()
        snap.calc = None
        out.append(snap)
    return out
