"""Helpers shared by the Ta benchmarks: locate ../shared's Ta data, compute FitSNAP's rows once."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TA_DATA = ROOT.parent / "shared" / "data" / "Ta_Linear_JCP2014"


def require_ta() -> Path:
    """The Ta data folder, or exit with the reason (the benchmarks need ../shared/data)."""
    if not TA_DATA.is_dir():
        sys.exit(f"SKIP: Ta DFT data not found at {TA_DATA} (../shared/data beside the checkout)")
    return TA_DATA


@contextlib.contextmanager
def ta_copy(keyword_replacements: list[tuple[str, str, str]] = ()):
    """A writable temporary copy of the Ta example, as the working directory."""
    src = require_ta()
    old = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="ta-bench-") as tmp:
        dest = Path(tmp) / "Ta"
        shutil.copytree(src, dest)
        for p in [dest, *dest.rglob("*")]:
            p.chmod(p.stat().st_mode | 0o200)
        text = (dest / "Ta-example.in").read_text()
        # No dumps of descriptors etc. into the benchmark's folder.
        text = text.split("[EXTRAS]")[0] + "[MEMORY]\noverride = 0\n"
        for section, key, value in keyword_replacements:
            text = text.replace(f"[{section}]\n", f"[{section}]\n{key} = {value}\n", 1)
        (dest / "Ta-bench.in").write_text(text)
        os.chdir(dest)
        try:
            yield dest / "Ta-bench.in"
        finally:
            os.chdir(old)


def ta_rows(twojmax: int | None = None):
    """FitSNAP's unweighted rows of the Ta example (optionally another twojmax)."""
    from fitsnap_uq.fitting import descriptor_rows

    args = ["--keyword", "BISPECTRUM", "twojmax", str(twojmax)] if twojmax else []
    with ta_copy() as infile:
        rows, _ = descriptor_rows(str(infile), args)
    return rows


def split_by_configuration(rows, test_fraction: float = 0.2, seed: int = 0):
    """Mark a seeded random ``test_fraction`` of the configurations as testing (in place)."""
    keys = rows.config_keys()
    unique = np.unique(keys)
    rng = np.random.default_rng(seed)
    test = rng.choice(unique, size=int(round(test_fraction * unique.size)), replace=False)
    rows.testing = np.isin(keys, test)
    return rows


def constant_columns(rows) -> np.ndarray:
    """(p,) bool: the per-element constant columns of FitSNAP's A (bzeroflag = 0): zero on every
    force and stress row. The BAYES solver gives them a flat prior; the benchmarks do the same."""
    other = rows.row_types != "Energy"
    return np.all(rows.a[other] == 0, axis=0) & np.any(rows.a[~other] != 0, axis=0)
