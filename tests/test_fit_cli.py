"""``fitsnap-uq fit``: FitSNAP's whole flow with the plugin, serial and under mpirun -np 2."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import NEEDS_TA, SHARED_TA, read_snapcoeff, run_cli, write_cu_input

REFERENCE = SHARED_TA / "reference_svd_fit" / "Ta_pot.snapcoeff"


@NEEDS_TA
@pytest.mark.parametrize("ranks", [0, 2], ids=["serial", "mpirun-np2"])
def test_ta_svd_reproduces_reference(ta_run, ranks):
    proc = run_cli(["fit", "Ta-example.in", "--overwrite"], cwd=ta_run, mpi=ranks)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ours = read_snapcoeff(ta_run / "Ta_pot.snapcoeff")
    ref = read_snapcoeff(REFERENCE)
    assert ours.shape == ref.shape == (31,)
    assert np.max(np.abs(ours - ref)) <= 1e-10


@pytest.mark.slow
@NEEDS_TA
def test_ta_anl_runs(ta_run):
    (ta_run / "Ta-anl.in").write_text(
        (ta_run / "Ta-example.in").read_text().replace("solver = SVD", "solver = ANL"))
    proc = run_cli(["fit", "Ta-anl.in", "--overwrite"], cwd=ta_run)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cov = np.load(ta_run / "covariance.npy")
    assert cov.shape == (31, 31)
    assert np.allclose(read_snapcoeff(ta_run / "Ta_pot.snapcoeff"), read_snapcoeff(REFERENCE), atol=1e-6)
    # The calibration metrics score FitSNAP ANL's own covariance file.
    from fitsnap_uq import calibration

    d = SHARED_TA / "reference_svd_fit"
    a, b = np.load(d / "Descriptors.npy"), np.load(d / "Truth-Ref.npy")
    mean = a @ np.load(ta_run / "mean.npy")
    m = calibration.block_metrics(b - mean, calibration.anl_sigma(a, cov), None)
    assert m["n"] == b.size and 0 <= m["cov68"] < 0.3  # ANL's sigma is far too small


@pytest.mark.parametrize("solver", ["SVD", "ANL", "BAYES"])
def test_own_data_fits_with_each_solver(cu_run, solver):
    write_cu_input(cu_run, solver=solver)
    proc = run_cli(["fit", "Cu.in", "--overwrite"], cwd=cu_run)
    assert proc.returncode == 0, proc.stderr[-3000:]
    coeffs = read_snapcoeff(cu_run / "Cu_pot.snapcoeff")
    assert coeffs.shape == (15,) and np.all(np.isfinite(coeffs)) and np.any(coeffs != 0)
    assert (cu_run / "Cu_metrics.md").read_text().count("Force") > 0
    assert (cu_run / "Cu_pot.posterior.npz").exists() == (solver == "BAYES")


@pytest.mark.mpi
def test_own_data_bayes_under_mpirun_matches_serial(cu_run):
    write_cu_input(cu_run, solver="BAYES")
    serial = run_cli(["fit", "Cu.in", "--overwrite"], cwd=cu_run)
    assert serial.returncode == 0, serial.stderr[-3000:]
    one = read_snapcoeff(cu_run / "Cu_pot.snapcoeff")
    parallel = run_cli(["fit", "Cu.in", "--overwrite"], cwd=cu_run, mpi=2)
    assert parallel.returncode == 0, parallel.stderr[-3000:]
    np.testing.assert_allclose(read_snapcoeff(cu_run / "Cu_pot.snapcoeff"), one, rtol=1e-9, atol=1e-12)


def test_printlammps_flag_echoes_lammps_commands(cu_run):
    write_cu_input(cu_run)
    proc = run_cli(["fit", "Cu.in", "--overwrite", "--printlammps"], cwd=cu_run)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "compute snap all snap" in proc.stdout


def test_help_lists_fitsnap_flags(tmp_path):
    proc = run_cli(["fit", "--help"], cwd=tmp_path)
    assert proc.returncode == 0
    assert "--overwrite" in proc.stdout and "--printlammps" in proc.stdout
