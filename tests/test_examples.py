"""Every example runs as its README says (slow): the README's ``bash`` commands, from its folder.

The examples are copied to a temporary tree with ``shared`` beside it (their inputs point at
``../../../shared/data``), and run in order: the MD and ensemble examples read the posterior of
``ta_bayes``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import NEEDS_TA, ROOT

pytestmark = pytest.mark.slow


def readme_commands(folder: Path) -> list[str]:
    text = (folder / "README.md").read_text()
    return [c for block in re.findall(r"```bash\n(.*?)\n```", text, flags=re.S)
            for c in block.splitlines() if c.strip() and not c.startswith("#")]


@pytest.fixture(scope="module")
def examples(tmp_path_factory) -> Path:
    top = tmp_path_factory.mktemp("examples")
    shutil.copytree(ROOT / "examples", top / "repo" / "examples", ignore=shutil.ignore_patterns(
        "*.snapcoeff", "*.snapparam", "*.mod", "*.posterior.npz", "*_metrics.md", "*.uq.md",
        "*.calibration.png", "log*.lammps", "uq.dump", "md.json", "flagged", "*_al", "ensemble_*",
        "__pycache__"))
    (top / "shared").symlink_to(ROOT.parent / "shared")
    return top / "repo" / "examples"


def run_readme(folder: Path) -> list[subprocess.CompletedProcess]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1",
               PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"])
    out = []
    for command in readme_commands(folder):
        proc = subprocess.run(command, shell=True, cwd=folder, env=env, capture_output=True, text=True,
                              timeout=900)
        assert proc.returncode == 0, f"{folder.name}: {command}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        out.append(proc)
    return out


@NEEDS_TA
def test_ta_bayes(examples):
    folder = examples / "ta_bayes"
    (proc,) = run_readme(folder)
    assert "log evidence" in proc.stdout
    for name in ("Ta_pot.posterior.npz", "Ta_pot.snapcoeff", "Ta_metrics.uq.md", "Ta_metrics.calibration.png",
                 "Ta_pot.sample3.snapcoeff"):
        assert (folder / name).exists(), name
    # the README's promise: calibration on held-out testing rows (20% of each group), raw and recalibrated
    report = (folder / "Ta_metrics.uq.md").read_text()
    raw, recal = report.split("## Recalibrated", 1)
    for table in (raw, recal):
        for quantity in ("Energy", "Force"):
            row = re.search(rf"^\| \*ALL\s+\| {quantity}\s+\| Testing\s+\|\s+(\d+) \|\s+([0-9.]+)", table,
                            flags=re.M)
            assert row and int(row.group(1)) > 0 and 0 < float(row.group(2)) <= 1, quantity


@NEEDS_TA
def test_ta_modelerror(examples):
    folder = examples / "ta_modelerror"
    run_readme(folder)
    from fitsnap_uq.posterior import Posterior

    post = Posterior.load(folder / "Ta_merr.posterior.npz")
    assert post.info["solver"] == "MODELERROR"
    assert (folder / "Ta_merr_metrics.uq.md").exists() and (folder / "Ta_merr.sample3.snapcoeff").exists()


@NEEDS_TA
def test_md_hook(examples):
    folder = examples / "md_hook"
    serial, parallel = run_readme(folder)
    summary = json.loads((folder / "md.json").read_text())
    assert summary["history"] and summary["last"]["fstd_max"] > 0
    assert "v_uq_fstd_max" in (folder / "log.lammps").read_text()
    assert (folder / "uq.dump").stat().st_size > 0
    import ase.io

    assert 0 < summary["nflagged"] <= 5
    frames = ase.io.read(folder / "flagged" / "flagged.extxyz", ":")
    assert len(frames) == summary["nflagged"] and all(f.info["value"] > 1.1 for f in frames)
    # the same uncertainty under mpirun -np 2 (thermo column of the last step)
    def last_thermo(log: Path) -> list[str]:
        lines = log.read_text().splitlines()
        head = max(i for i, ln in enumerate(lines) if ln.split()[:2] == ["Step", "Temp"])
        rows = [ln.split() for ln in lines[head + 1:] if ln.split() and ln.split()[0].isdigit()]
        return rows[-1]
    a, b = last_thermo(folder / "log.lammps"), last_thermo(folder / "log.np2.lammps")
    assert a[0] == b[0]
    np.testing.assert_allclose(float(a[4]), float(b[4]), rtol=1e-6)  # v_uq_pe_atom_std


@NEEDS_TA
def test_ensemble(examples):
    folder = examples / "ensemble"
    (proc,) = run_readme(folder)
    assert "vol/atoms [A^3/atom]: " in proc.stdout and "press [bar]: " in proc.stdout
    assert "4 replicas run, 4 kept" in proc.stdout
    data = json.loads((folder / "ensemble" / "ensemble.json").read_text())
    avg = data["second_half_average"]["vol/atoms"]
    assert avg["std"] > 0 and avg["lo"] < avg["mean"] < avg["hi"] and avg["t"] > 2
    assert data["units"]["pe/atoms"] == "eV/atom"
    parts = {t["partition"] for t in data["timings"]}
    assert parts == {0, 1}  # two partitions ran replicas


@NEEDS_TA
def test_ta_nnensemble(examples):
    folder = examples / "ta_nnensemble"
    run_readme(folder)  # serial, then mpirun -np 2 (members on both ranks)
    desc = json.loads((folder / "Ta_pot.nnensemble.json").read_text())
    assert len(desc["members"]) == 4
    for m in range(4):
        assert (folder / f"Ta_pot.nnensemble.member{m}.pt").exists()
    pred = np.load(folder / "Ta_pot.nnensemble.predictions.npz")
    assert np.all(pred["std"] > 0)
    assert (folder / "Ta_metrics.uq.md").exists()


def test_active_learning(examples):
    folder = examples / "active_learning"
    (proc,) = run_readme(folder)
    summary = json.loads((folder / "ta_xtb_al" / "summary.json").read_text())
    assert len(summary["curve"]) >= 2 and summary["curve"][-1]["force_rmse"] > 0
    assert (folder / "ta_xtb_al" / "learning_curve.png").exists()
