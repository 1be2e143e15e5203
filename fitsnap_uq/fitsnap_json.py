"""Write labelled structures as FitSNAP JSON training files (what FitSNAP's JSON scraper reads).

Units and conventions of the files (as in the FitSNAP examples): positions and lattice in Angstrom,
lattice vectors as rows, energy in eV (total), forces in eV/A, stress in bar with LAMMPS' sign
(positive = compressive, the pressure tensor), which is minus ASE's stress.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from fitsnap_uq.io import atomic_write

EV_PER_A3_TO_BAR = 1.602176634e6
"""1 eV/Angstrom^3 in bar."""


def fitsnap_record(symbols: list[str], positions: np.ndarray, cell: np.ndarray, energy: float,
                   forces: np.ndarray, stress_bar: np.ndarray | None = None,
                   label: str = "fitsnap-uq") -> dict[str, Any]:
    """One configuration as FitSNAP's JSON dict.

    Args:
        symbols: (N,) chemical symbols.
        positions: (N, 3) Angstrom.
        cell: (3, 3) lattice vectors as rows, Angstrom.
        energy: total energy, eV.
        forces: (N, 3) eV/A.
        stress_bar: (3, 3) pressure tensor in bar (LAMMPS sign), or None (zeros are written).
        label: free text stored in the file.
    """
    positions = np.asarray(positions, dtype=float)
    forces = np.asarray(forces, dtype=float)
    stress = np.zeros((3, 3)) if stress_bar is None else np.asarray(stress_bar, dtype=float)
    return {"Dataset": {
        "Label": label,
        "PositionsStyle": "angstrom", "AtomTypeStyle": "chemicalsymbol", "StressStyle": "bar",
        "LatticeStyle": "angstrom", "EnergyStyle": "electronvolt",
        "ForcesStyle": "electronvoltperangstrom",
        "Data": [{
            "Positions": positions.tolist(), "AtomTypes": list(symbols),
            "Lattice": np.asarray(cell, dtype=float).tolist(), "NumAtoms": int(len(symbols)),
            "Energy": float(energy), "Forces": forces.tolist(), "Stress": stress.tolist(),
        }],
    }}


def atoms_record(atoms: Any, label: str = "fitsnap-uq") -> dict[str, Any]:
    """FitSNAP JSON dict of an ASE ``Atoms`` with a calculator (or stored results) attached.

    Energy, forces and, where the calculator has it, stress are read from ``atoms``; ASE's stress
    (eV/A^3, tensile positive) is converted to FitSNAP's bar with LAMMPS' sign.
    """
    energy = float(atoms.get_potential_energy())
    forces = np.asarray(atoms.get_forces())
    stress = None
    if atoms.pbc.all():
        try:
            stress = -np.asarray(atoms.get_stress(voigt=False)) * EV_PER_A3_TO_BAR
        except Exception:  # a calculator without stress: FitSNAP then needs vweight 0
            stress = None
    return fitsnap_record(atoms.get_chemical_symbols(), atoms.get_positions(), np.asarray(atoms.cell),
                          energy, forces, stress, label)


def write_record(record: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write one FitSNAP JSON record atomically (temp file + rename)."""
    path = Path(path)
    text = json.dumps(record)
    atomic_write(path, text)
    return path
