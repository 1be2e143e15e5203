"""A folder of MD configurations flagged for QM labelling.

Layout of ``DIR``:

* ``flagged.extxyz``: every stored frame (``ase.io.read(path, ":")`` reads them): species, positions
  (A), the cell, the forces on the atoms during the MD (LAMMPS' ``f``, eV/A: the potential's, not QM;
  ``atoms.get_forces()``), the per-atom arrays ``uq_estd`` (eV) and ``uq_fstd`` (eV/A) and, in
  ``atoms.info``, the MD step, the measure that was thresholded and its value. The native plugin's
  ``flag`` file (``fix snap/uq``) holds the same columns and keys;
* ``json/<group>/<name>.json``: each frame as a FitSNAP JSON file, *unlabelled*: its energy and
  forces are the SNAP model's own prediction, kept as placeholders, and the dataset carries
  ``"fitsnap_uq": {"labelled": false, ...}``. ``fitsnap-uq fit`` refuses unlabelled files until an
  oracle has replaced the placeholders with QM values;
* ``store.json``: the index (frame names and descriptor fingerprints), so deduplication also works
  across runs and a restarted run appends rather than overwrites.

Every file is written atomically (temp file + rename). Deduplication: a frame whose fingerprint
(the mean per-atom descriptor row, snapcoeff layout) is within ``min_distance`` (relative L2) of a
stored frame's is skipped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fitsnap_uq.fitsnap_json import fitsnap_record, write_record
from fitsnap_uq.io import atomic_write

STORE_INDEX = "store.json"
EXTXYZ = "flagged.extxyz"


@dataclass
class Frame:
    """One flagged configuration.

    Attributes:
        symbols: (N,) chemical symbols; positions (N, 3) A; cell (3, 3) rows, A; pbc (3,) bool.
        energy: predicted total energy (eV); forces: (N, 3) predicted forces (eV/A).
        estd, fstd: (N,) per-atom energy std (eV) and force std (eV/A).
        fingerprint: (p,) mean per-atom descriptor row.
        info: step, run, measure, value and anything else (JSON-serializable).
    """

    symbols: list[str]
    positions: np.ndarray
    cell: np.ndarray
    pbc: np.ndarray
    energy: float
    forces: np.ndarray
    estd: np.ndarray
    fstd: np.ndarray
    fingerprint: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)

    def to_atoms(self) -> Any:
        """An ASE ``Atoms`` with the MD forces (as a single-point calculator's, so extended XYZ writes
        them as the ``forces`` column), the stds as per-atom arrays and the info."""
        from ase import Atoms
        from ase.calculators.singlepoint import SinglePointCalculator

        atoms = Atoms(self.symbols, positions=self.positions, cell=self.cell, pbc=self.pbc)
        atoms.set_array("uq_estd", np.asarray(self.estd, float))
        atoms.set_array("uq_fstd", np.asarray(self.fstd, float))
        atoms.info.update({k: v for k, v in self.info.items() if np.isscalar(v)})
        atoms.calc = SinglePointCalculator(atoms, forces=np.asarray(self.forces, float))
        return atoms


class QueryStore:
    """Folder of flagged frames (see the module docstring).

    Args:
        folder: the store's folder (created if needed; an existing store is continued).
        min_distance: relative L2 distance of fingerprints under which a frame is a duplicate.
        max_frames: most frames this store object adds (per run); None for no cap.
        group: FitSNAP group name of the JSON files.
    """

    def __init__(self, folder: str | Path, min_distance: float = 1e-3, max_frames: int | None = None,
                 group: str = "Flagged") -> None:
        self.folder = Path(folder)
        self.min_distance = float(min_distance)
        self.max_frames = max_frames
        self.group = group
        self.added = 0
        self.skipped_duplicates = 0
        self.folder.mkdir(parents=True, exist_ok=True)
        index = self.folder / STORE_INDEX
        self.index: dict[str, Any] = {"frames": []}
        if index.exists():
            self.index = json.loads(index.read_text())
        self._fingerprints = [np.asarray(f["fingerprint"]) for f in self.index["frames"]]

    @property
    def full(self) -> bool:
        """True once this store object has added ``max_frames`` frames."""
        return self.max_frames is not None and self.added >= self.max_frames

    def is_duplicate(self, fingerprint: np.ndarray) -> bool:
        """Whether a stored frame is within ``min_distance`` of this fingerprint."""
        for old in self._fingerprints:
            if old.shape == fingerprint.shape and \
                    np.linalg.norm(fingerprint - old) <= self.min_distance * max(np.linalg.norm(old), 1e-300):
                return True
        return False

    def add(self, frame: Frame) -> str | None:
        """Store a frame unless it is a duplicate or the cap is reached; returns its name or None."""
        if self.full:
            return None
        fingerprint = np.asarray(frame.fingerprint, dtype=float)
        if self.is_duplicate(fingerprint):
            self.skipped_duplicates += 1
            return None
        name = f"frame{len(self.index['frames']):05d}_step{int(frame.info.get('step', 0))}"
        record = fitsnap_record(frame.symbols, frame.positions, frame.cell, frame.energy, frame.forces,
                                None, label=f"fitsnap-uq flagged frame {name} (unlabelled)")
        record["Dataset"]["fitsnap_uq"] = {
            "labelled": False, "source": "lammps_hooks", "name": name,
            "placeholder": "Energy and Forces are the SNAP model's prediction, not QM",
            **{k: v for k, v in frame.info.items() if np.isscalar(v)},
        }
        write_record(record, self.folder / "json" / self.group / f"{name}.json")
        self._write_extxyz(frame)
        self.index["frames"].append({"name": name, "fingerprint": fingerprint.tolist(),
                                     "info": {k: v for k, v in frame.info.items() if np.isscalar(v)}})
        self._fingerprints.append(fingerprint)
        text = json.dumps(self.index)
        atomic_write(self.folder / STORE_INDEX, text)
        self.added += 1
        return name

    def _write_extxyz(self, frame: Frame) -> None:
        import ase.io

        path = self.folder / EXTXYZ
        frames = ase.io.read(path, ":") if path.exists() else []
        frames.append(frame.to_atoms())
        tmp = path.with_name(f".{path.name}.tmp")
        ase.io.write(tmp, frames, format="extxyz", parallel=False)  # rank 0 alone writes
        tmp.replace(path)

    def json_files(self) -> list[Path]:
        """The FitSNAP JSON files of the stored frames."""
        return sorted((self.folder / "json").rglob("*.json"))
