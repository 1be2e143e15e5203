"""MODELERROR and BAYESMCMC through ``fitsnap-uq fit``, serial and under mpirun, and bad input."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import read_snapcoeff, run_cli, write_cu_input

from fitsnap_uq.posterior import Posterior

SHORT_MCMC = "mcmc_steps = 800\nmcmc_burn = 300\nmcmc_walkers = 40\nmcmc_chains = 2\n"


@pytest.mark.parametrize("ranks", [0, 2], ids=["serial", "mpirun-np2"])
def test_modelerror_solver(cu_run, ranks):
    write_cu_input(cu_run, solver="MODELERROR", extra="[UQ]\nmerr_likelihood = iid\n")
    proc = run_cli(["fit", "Cu.in", "--overwrite"], cwd=cu_run, mpi=ranks)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "MODELERROR (iid): NLL" in proc.stdout and "projected gradient" in proc.stdout
    post = Posterior.load(cu_run / "Cu_pot.posterior.npz")
    report = post.info["report"]
    assert report["converged"] and report["iterations"] > 0 and "grad_norm" in report
    sigma = np.array(post.info["model_error_std"])
    assert sigma.shape == (15,) and np.all(sigma >= 0)
    assert set(post.noise_std) == {"Energy", "Force", "Stress"}
    np.testing.assert_allclose(read_snapcoeff(cu_run / "Cu_pot.snapcoeff"), post.mean, rtol=1e-12)
    # The predictive spread splits: coefficient part (model error + Laplace) and data noise.
    assert np.all(np.diag(post.cov) >= sigma**2 * (1 - 1e-9))


@pytest.mark.parametrize("likelihood", ["gaussian", pytest.param("student_t", marks=pytest.mark.slow)])
def test_bayesmcmc_solver(cu_run, likelihood):
    write_cu_input(cu_run, solver="BAYESMCMC",
                   extra=f"[UQ]\nmcmc_likelihood = {likelihood}\n{SHORT_MCMC}max_samples = 500\n")
    proc = run_cli(["fit", "Cu.in", "--overwrite"], cwd=cu_run)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "R-hat max" in proc.stdout and "ESS min" in proc.stdout
    assert f"fitsnap-uq BAYESMCMC: sampling ({likelihood}): 2 chains x 800 steps" in proc.stderr
    post = Posterior.load(cu_run / "Cu_pot.posterior.npz")
    assert post.samples.shape == (500, 15)
    diag = post.info["diagnostics"]
    assert diag["rhat_max"] < 1.1 and diag["ess_min"] > 50
    spread = np.sqrt(np.diag(post.cov)).max()
    np.testing.assert_allclose(post.samples.mean(axis=0), post.mean, atol=5 * spread)


@pytest.mark.mpi
def test_bayesmcmc_under_mpirun(cu_run):
    write_cu_input(cu_run, solver="BAYESMCMC", extra=f"[UQ]\n{SHORT_MCMC}max_samples = 100\n")
    proc = run_cli(["fit", "Cu.in", "--overwrite"], cwd=cu_run, mpi=2)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert Posterior.load(cu_run / "Cu_pot.posterior.npz").samples.shape == (100, 15)


@pytest.mark.slow  # kept out of the default run (< 5 min); CI runs it
def test_bayesmcmc_same_seed_same_samples(cu_run):
    write_cu_input(cu_run, solver="BAYESMCMC", extra=f"[UQ]\n{SHORT_MCMC}max_samples = 100\nseed = 3\n")
    out = []
    for _ in range(2):
        assert run_cli(["fit", "Cu.in", "--overwrite"], cwd=cu_run).returncode == 0
        out.append(Posterior.load(cu_run / "Cu_pot.posterior.npz").samples)
    np.testing.assert_array_equal(out[0], out[1])


def test_embedding_index_out_of_range_names_the_key(cu_run):
    write_cu_input(cu_run, solver="MODELERROR", extra="[UQ]\nmerr_embed = 0 3 99\n")
    proc = run_cli(["fit", "Cu.in", "--overwrite"], cwd=cu_run)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "Cu.in" in proc.stderr and "'merr_embed'" in proc.stderr and "99" in proc.stderr


def test_mcmc_settings_are_checked(cu_run):
    write_cu_input(cu_run, solver="BAYESMCMC", extra="[UQ]\nmcmc_steps = 100\nmcmc_burn = 100\n")
    proc = run_cli(["fit", "Cu.in", "--overwrite"], cwd=cu_run)
    assert proc.returncode == 2 and "'mcmc_burn'" in proc.stderr
