"""QM oracles behind one small interface on ASE calculators, and labelling of FitSNAP JSON files.

An oracle takes an ASE ``Atoms`` and returns its energy (eV), forces (eV/A) and, for periodic cells
where the calculator has it, stress. Any ASE calculator works (VASP, Quantum ESPRESSO, ...):
``ASEOracle(lambda: Vasp(...))``. Built in by name (:func:`oracle_from_name`): ``xtb``/``gfn1``,
``gfn2`` (tblite xTB, real QM that runs on a laptop), ``emt`` (ASE's EMT, for quick tests with Cu,
Ag, Au, Ni, Pd, Pt, Al).
A failed calculation is retried (``retries``) and then reported as failed, not raised.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fitsnap_uq.errors import InputError
from fitsnap_uq.fitsnap_json import atoms_record, write_record


@dataclass
class LabelResult:
    """Outcome of one labelling: the labelled atoms (None if it failed) and the error text."""

    atoms: Any | None
    error: str | None = None
    attempts: int = 1


class ASEOracle:
    """An oracle over an ASE calculator.

    Args:
        make_calculator: returns a fresh calculator (called for every configuration, so state of
            one calculation never leaks into the next).
        name: recorded in the labelled files.
        retries: extra attempts after a failure.
    """

    def __init__(self, make_calculator: Callable[[], Any], name: str = "ase", retries: int = 1) -> None:
        self.make_calculator = make_calculator
        self.name = name
        self.retries = int(retries)

    def label(self, atoms: Any) -> LabelResult:
        """Energy, forces (and stress for periodic cells) of ``atoms``; never raises."""
        from ase.calculators.singlepoint import SinglePointCalculator

        error = None
        for attempt in range(1, self.retries + 2):
            work = atoms.copy()
            work.calc = self.make_calculator()
            try:
                energy = float(work.get_potential_energy())
                forces = np.asarray(work.get_forces())
                stress = None
                if work.pbc.all():
                    try:
                        stress = np.asarray(work.get_stress(voigt=True))
                    except Exception:  # calculators without stress: energies and forces only
                        stress = None
                if not (np.isfinite(energy) and np.all(np.isfinite(forces))):
                    raise ValueError("non-finite energy or forces")
            except Exception as exc:  # a QM code can fail in many ways; record and retry
                error = f"{type(exc).__name__}: {exc}"
                continue
            out = atoms.copy()
            out.calc = SinglePointCalculator(out, energy=energy, forces=forces, stress=stress)
            return LabelResult(out, None, attempt)
        return LabelResult(None, error, self.retries + 1)


def oracle_from_name(name: str, electronic_temperature: float = 3000.0, max_iterations: int = 500,
                     retries: int = 1) -> ASEOracle:
    """A built-in oracle: ``xtb``/``gfn1`` (GFN1-xTB), ``gfn2`` (GFN2-xTB) via tblite, or ``emt``.

    ``xtb`` means GFN1-xTB: for transition metals such as Ta and W, GFN2-xTB's SCF does not converge
    here even with smearing, GFN1-xTB does (0.3 s for 16 Ta atoms). ``electronic_temperature`` (K) is
    the Fermi smearing of the xTB SCF; metals need a few thousand K to converge.
    """
    key = name.lower()
    if key in ("xtb", "gfn1", "gfn1-xtb"):
        method = "GFN1-xTB"
    elif key in ("gfn2", "gfn2-xtb"):
        method = "GFN2-xTB"
    elif key == "emt":
        from ase.calculators.emt import EMT

        return ASEOracle(EMT, name="EMT", retries=retries)
    else:
        raise InputError(f"unknown oracle {name!r}; built in: xtb (= gfn1), gfn1, gfn2, emt (or any "
                         "ASE calculator through ASEOracle)")

    def make() -> Any:
        from tblite.ase import TBLite

        return TBLite(method=method, electronic_temperature=electronic_temperature,
                      max_iterations=max_iterations, verbosity=0)

    return ASEOracle(make, name=f"{method} (tblite, {electronic_temperature:g} K)", retries=retries)


def read_fitsnap_json(path: str | Path) -> tuple[dict[str, Any], Any]:
    """A FitSNAP JSON file's record and its configuration as ASE ``Atoms``."""
    from ase import Atoms

    text = Path(path).read_text()
    if not text.lstrip().startswith("{"):
        text = text.split("\n", 1)[1]
    record = json.loads(text)
    data = record["Dataset"]["Data"][0]
    atoms = Atoms(data["AtomTypes"], positions=data["Positions"], cell=data["Lattice"], pbc=True)
    return record, atoms


def is_labelled(record: dict[str, Any]) -> bool:
    """False for frames written by the MD hook and not labelled since."""
    return bool(record["Dataset"].get("fitsnap_uq", {}).get("labelled", True))


def label_json_file(path: str | Path, oracle: ASEOracle) -> LabelResult:
    """Replace an unlabelled FitSNAP JSON file's placeholders by the oracle's values (atomically)."""
    record, atoms = read_fitsnap_json(path)
    result = oracle.label(atoms)
    if result.atoms is None:
        return result
    meta = dict(record["Dataset"].get("fitsnap_uq", {}))
    meta.update({"labelled": True, "oracle": oracle.name})
    new = atoms_record(result.atoms, label=f"labelled by {oracle.name}")
    new["Dataset"]["fitsnap_uq"] = meta
    write_record(new, path)
    return result


def label_folder(folder: str | Path, oracle: ASEOracle) -> dict[str, list[str]]:
    """Label every unlabelled FitSNAP JSON file below ``folder``; returns labelled/failed names."""
    done: dict[str, list[str]] = {"labelled": [], "failed": [], "skipped": []}
    for path in sorted(Path(folder).rglob("*.json")):
        record, _ = read_fitsnap_json(path)
        if is_labelled(record):
            done["skipped"].append(str(path))
            continue
        result = label_json_file(path, oracle)
        done["labelled" if result.atoms is not None else "failed"].append(str(path))
    return done
