"""Posterior ensembles of MD: replicas with sampled coefficients, partitions under mpirun."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import NEEDS_TA, read_snapcoeff, run_cli, write_cu_input

from fitsnap_uq.posterior import Posterior

CU_NVT = """
units metal
lattice fcc 3.61
region b block 0 3 0 3 0 3
create_box 1 b
create_atoms 1 box
mass 1 63.5
pair_style snap
pair_coeff * * Cu_pot.snapcoeff Cu_pot.snapparam Cu
velocity all create 600 4928459 loop geom
fix nvt all nvt temp 300 300 0.1
dump d all atom 10 dump.cu
run 60
"""

TA_NPT = """
units metal
lattice bcc 3.316
region b block 0 4 0 4 0 4
create_box 1 b
create_atoms 1 box
mass 1 180.88
pair_style hybrid/overlay zbl 4.0 4.8 snap
pair_coeff * * zbl 73 73
pair_coeff * * snap Ta_pot.snapcoeff Ta_pot.snapparam Ta
velocity all create 600 4928459 loop geom
fix npt all npt temp 300 300 0.1 iso 0 0 1.0
timestep 0.002
thermo 100
run 600
"""


@pytest.mark.slow  # kept out of the default run (< 5 min); CI runs it
def test_serial_ensemble_of_sampled_replicas(cu_run):
    write_cu_input(cu_run, solver="BAYES")
    assert run_cli(["fit", "Cu.in", "--overwrite"], cwd=cu_run).returncode == 0
    (cu_run / "in.nvt").write_text(CU_NVT)
    proc = run_cli(["ensemble", "in.nvt", "--posterior", "Cu_pot.posterior.npz", "--samples", "3",
                    "--observables", "pe/atoms", "temp", "--every", "20", "--outdir", "ens"], cwd=cu_run)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "3 replicas run, 3 kept, 0 left out by the runaway screen" in proc.stdout
    assert "pe/atoms [eV/atom]: " in proc.stdout and "temp [K]: " in proc.stdout
    assert "95% prediction interval for one more posterior draw" in proc.stdout
    out = cu_run / "ens"
    data = json.loads((out / "ensemble.json").read_text())
    values = np.array(data["values"])  # (K, T, M)
    assert values.shape == (3, 4, 2) and data["steps"] == [0, 20, 40, 60]
    assert not np.allclose(values[0, -1], values[1, -1])  # different coefficients, different MD
    post = Posterior.load(cu_run / "Cu_pot.posterior.npz")
    np.testing.assert_allclose([read_snapcoeff(out / f"replica{k}.snapcoeff") for k in range(3)],
                               post.sample(3, seed=0), rtol=1e-12)
    final = data["final"]["pe/atoms"]
    np.testing.assert_allclose(final["mean"], values[:, -1, 0].mean())
    assert final["lo"] <= final["mean"] <= final["hi"]
    # the final frame's interval: Student t over the 3 replicas (2 degrees of freedom), not quantiles
    half = 4.302652729911275 * np.std(values[:, -1, 0], ddof=1) * np.sqrt(1 + 1 / 3)
    np.testing.assert_allclose([final["lo"], final["hi"]], [final["mean"] - half, final["mean"] + half])
    assert data["units"] == {"pe/atoms": "eV/atom", "temp": "K"} and data["samples"] == 3
    assert not (cu_run / "dump.cu").exists()  # replicas' own outputs are left out
    csv = (out / "ensemble_timeseries.csv").read_text().splitlines()
    assert csv[0].startswith("step,pe_atoms_mean,pe_atoms_std,pe_atoms_lo95") and len(csv) == 5
    assert (out / "ensemble.png").stat().st_size > 5000
    summary = (out / "ensemble_summary.md").read_text()
    assert "95% prediction interval" in summary and "| `temp` | K |" in summary
    assert "3 replicas ran; 0 left out by the runaway screen" in summary


@pytest.mark.slow  # guards a landed feature; CI runs it (.ci/run), the default run stays < 5 min
@NEEDS_TA
@pytest.mark.mpi
def test_ta_ensemble_under_mpirun(ta_run):
    (ta_run / "Ta-bayes.in").write_text((ta_run / "Ta-example.in").read_text()
                                        .replace("solver = SVD", "solver = BAYES"))
    assert run_cli(["fit", "Ta-bayes.in", "--overwrite"], cwd=ta_run).returncode == 0
    (ta_run / "in.npt").write_text(TA_NPT)
    proc = run_cli(["ensemble", "in.npt", "--posterior", "Ta_pot.posterior.npz", "--samples", "4",
                    "--observables", "vol/atoms", "press", "--every", "20"], cwd=ta_run, mpi=2)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads((ta_run / "ensemble" / "ensemble.json").read_text())
    timings = {t["replica"]: t for t in data["timings"]}
    assert sorted(timings) == [0, 1, 2, 3] and {t["partition"] for t in timings.values()} == {0, 1}
    # Partitions ran concurrently: replicas 0 and 1 (different partitions) overlap in time.
    assert timings[0]["start"] < timings[1]["end"] and timings[1]["start"] < timings[0]["end"]
    vol = data["second_half_average"]["vol/atoms"]
    assert 17.0 < vol["mean"] < 19.5 and vol["std"] > 0 and vol["lo"] < vol["mean"] < vol["hi"]
    assert "vol/atoms [A^3/atom]: " in proc.stdout and "95% prediction interval [" in proc.stdout
    # the interval of the time averages: at least the t-interval of 4 replicas (3 degrees of freedom),
    # so wider than their range
    avg = np.array([r["mean"] for r in data["per_replica"]["vol/atoms"]])
    half = 3.182446305284263 * np.std(avg, ddof=1) * np.sqrt(1 + 1 / 4)
    assert vol["hi"] - vol["mean"] >= half * (1 - 1e-12) and vol["lo"] < avg.min() and vol["hi"] > avg.max()


def test_screen_replicas_flags_what_left_the_physical_region():
    from lammps_hooks.ensemble import screen_replicas

    rng = np.random.default_rng(0)
    # 8 replicas: volume/atom ~18.1 +- 0.05, temperature ~300 +- 5; one swelled, one boiled, one NaN.
    avg = np.column_stack([18.1 + 0.05 * rng.standard_normal(8), 300 + 5 * rng.standard_normal(8)])
    assert screen_replicas(avg, ["vol/atoms", "temp"]) == {}  # an honest spread: nothing flagged
    avg[2, 0] = 54.0
    avg[5, 1] = 2500.0
    avg[7, 1] = np.nan
    out = screen_replicas(avg, ["vol/atoms", "temp"])
    assert sorted(out) == [2, 5, 7]
    assert out[2].startswith("vol/atoms 54") and out[5].startswith("temp 2500") and "non-finite" in out[7]
    # Agreement to a fraction of a per cent is not split: a 1% outlier among 0.01% replicas stays.
    tight = np.array([[1.0000], [1.0001], [0.9999], [1.0000], [1.01]])
    assert screen_replicas(tight, ["x"]) == {}
    # Two replicas have no majority to compare with: only non-finite values are caught.
    assert screen_replicas(np.array([[1.0], [50.0]]), ["x"]) == {}


@pytest.mark.slow  # kept out of the default run (< 5 min); CI runs it
def test_a_runaway_replica_is_reported_and_left_out(cu_run):
    """A hand-made bad draw (the descriptor coefficients with the wrong sign) among posterior draws:
    the ensemble reports it and its error bars are over the other replicas."""
    write_cu_input(cu_run, solver="BAYES")
    assert run_cli(["fit", "Cu.in", "--overwrite"], cwd=cu_run).returncode == 0
    post = Posterior.load(cu_run / "Cu_pot.posterior.npz")
    bad = post.mean.copy()
    bad[1:] *= -1.0
    draws = np.vstack([post.sample(3, seed=4), bad])
    Posterior(post.mean, post.cov, post.elements, post.snap, samples=draws).save(cu_run / "bad.npz")
    (cu_run / "in.nvt").write_text(CU_NVT)
    proc = run_cli(["ensemble", "in.nvt", "--posterior", "bad.npz", "--samples", "4", "--observables",
                    "pe/atoms", "temp", "press", "--every", "20", "--outdir", "ens"], cwd=cu_run)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads((cu_run / "ens" / "ensemble.json").read_text())
    coeffs = [read_snapcoeff(cu_run / "ens" / f"replica{k}.snapcoeff") for k in range(4)]
    bad_replica = [k for k in range(4) if np.allclose(coeffs[k], bad)]
    assert len(bad_replica) == 1
    k = bad_replica[0]
    print(f"\nreplica {k} (bad draw): {data['excluded']}")
    assert list(data["excluded"]) == [str(k)] and data["kept"] == [j for j in range(4) if j != k]
    assert f"WARNING replica {k} left out" in proc.stdout
    assert "4 replicas run, 3 kept, 1 left out by the runaway screen" in proc.stdout
    values = np.array(data["values"])  # kept replicas only
    assert values.shape[0] == 3
    np.testing.assert_allclose(data["final"]["pe/atoms"]["mean"], values[:, -1, 0].mean())
    assert "Left out" in (cu_run / "ens" / "ensemble_summary.md").read_text()


def test_observable_units_from_the_units_style_or_the_user():
    from lammps_hooks.ensemble import observable_unit, split_unit, units_style
    from lammps_hooks.script import split_commands

    metal = {"vol/atoms": "A^3/atom", "press": "bar", "pe/atoms": "eV/atom", "temp": "K", "vol": "A^3",
             "etotal": "eV", "lx": "A", "density": "g/cm^3", "pxy": "bar", "fmax": "eV/A", "atoms": "count"}
    for expr, unit in metal.items():
        assert observable_unit(expr, "metal") == unit, expr
    assert observable_unit("pe", "real") == "kcal/mol" and observable_unit("press", "real") == "atm"
    # an expression we cannot read is not given a unit it may not have
    for expr in ("press/10000", "v_myvar", "c_msd[4]", "pe*2"):
        assert observable_unit(expr, "metal") is None, expr
    assert split_unit("press/10000 [GPa]") == ("press/10000", "GPa")
    assert split_unit("c_msd[4]") == ("c_msd[4]", None)  # a LAMMPS index is not a unit
    assert split_unit("c_msd[4] [A^2]") == ("c_msd[4]", "A^2")
    assert units_style(split_commands("units real\nrun 10\n")) == "real"
    assert units_style(split_commands("run 10\n")) == "lj"  # LAMMPS' default


@pytest.mark.slow  # kept out of the default run (< 5 min); CI runs it
def test_a_user_unit_reaches_the_output(cu_run):
    """``--observables 'EXPR [UNIT]'``: the unit is shown and the expression recorded without it."""
    write_cu_input(cu_run, solver="BAYES")
    assert run_cli(["fit", "Cu.in", "--overwrite"], cwd=cu_run).returncode == 0
    (cu_run / "in.nvt").write_text(CU_NVT.replace("run 60", "run 40"))
    proc = run_cli(["--no-progress", "ensemble", "in.nvt", "--posterior", "Cu_pot.posterior.npz",
                    "--samples", "2", "--observables", "press/10000 [GPa]", "pe*0+1",
                    "--every", "10", "--outdir", "ens"], cwd=cu_run)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "press/10000 [GPa]: " in proc.stdout and "[unit not known]" in proc.stdout
    data = json.loads((cu_run / "ens" / "ensemble.json").read_text())
    assert data["units"] == {"press/10000": "GPa", "pe*0+1": None}
    assert proc.stderr == ""  # --no-progress: no stage lines
    # with progress (stderr a pipe: plain lines), the MD-step counter (a fix external callback) changes
    # no trajectory
    shown = run_cli(["ensemble", "in.nvt", "--posterior", "Cu_pot.posterior.npz", "--samples", "2",
                     "--observables", "press/10000 [GPa]", "pe*0+1", "--every", "10", "--outdir", "ens2"],
                    cwd=cu_run)
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert "fitsnap-uq ensemble: 2 replicas of in.nvt (40 MD steps each), one after another" in shown.stderr
    assert "ensemble: replicas: 2/2 replicas done in" in shown.stderr and "\r" not in shown.stderr
    again = json.loads((cu_run / "ens2" / "ensemble.json").read_text())
    assert again["values"] == data["values"]
