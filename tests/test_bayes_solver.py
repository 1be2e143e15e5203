"""The BAYES solver through ``fitsnap-uq fit``: posterior, recalibration, report, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import NEEDS_TA, make_cuag_dataset, read_snapcoeff, run_cli, write_cu_input

from fitsnap_uq.posterior import Posterior


def test_bayes_writes_posterior_and_calibration_report(cu_run):
    write_cu_input(cu_run, solver="BAYES", extra="[UQ]\nnsamples = 3\ncv_folds = 4\n")
    proc = run_cli(["fit", "Cu.in", "--overwrite"], cwd=cu_run)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "log evidence" in proc.stdout
    post = Posterior.load(cu_run / "Cu_pot.posterior.npz")
    assert post.elements == ["Cu"] and post.n_coefficients == 15
    assert post.snap["twojmax"] == 4 and post.snap["rcutfac"] == 4.0 and post.snap["bzeroflag"] == 0
    assert post.log_evidence is not None and post.info["converged"]
    # Default: the mean is the user's weighted fit; new configurations get the model-error
    # predictive model (no per-group classes), stored in the posterior.
    assert set(post.noise_std) == {"Energy", "Force", "Stress"}
    assert "predictive model of new configurations" in proc.stdout
    assert post.model_error is not None and post.model_error["cov_scale"] > 0
    assert np.any(post.model_error["factor"] != 0)  # the model error on the posterior's axes
    assert not np.allclose(post.predictive_cov, post.cov)
    # the per-atom force and per-configuration energy scales are on by default (auto: forces given)
    assert post.atom_scale is not None and post.energy_scale is not None
    assert post.recalibration is not None and "Force" in post.recalibration
    np.testing.assert_allclose(read_snapcoeff(cu_run / "Cu_pot.snapcoeff"), post.mean, rtol=1e-12)
    samples = [read_snapcoeff(cu_run / f"Cu_pot.sample{i}.snapcoeff") for i in range(3)]
    assert not np.allclose(samples[0], samples[1])
    np.testing.assert_allclose(samples, post.sample(3, seed=0), rtol=1e-12)
    report = (cu_run / "Cu_metrics.uq.md").read_text()
    assert "Recalibrated" in report and "Bulk" in report and "cov68" in report
    png = (cu_run / "Cu_metrics.calibration.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10000


def test_bayes_atom_scale_is_learned_from_fitsnaps_atom_labels(cu_run):
    """[UQ] atom_scale = yes: FitSNAP's Atom_I/Atom_Type label the force rows, the per-atom force scale
    is learned and stored, and Posterior.predict applies it to force rows given atom labels."""
    write_cu_input(cu_run, solver="BAYES", extra="[UQ]\ncv_folds = 4\natom_scale = yes\n")
    proc = run_cli(["fit", "Cu.in", "--overwrite"], cwd=cu_run)
    assert proc.returncode == 0, proc.stderr[-3000:]
    post = Posterior.load(cu_run / "Cu_pot.posterior.npz")
    assert post.atom_scale is not None and post.atom_scale.nelem == 1
    assert np.all(np.isfinite(post.atom_scale.theta))
    assert post.atom_scale.zlo is not None and np.all(post.atom_scale.zlo <= post.atom_scale.zhi)


@pytest.mark.slow
def test_bayes_scales_switched_off(cu_run):
    """[UQ] atom_scale = no, energy_scale = no: neither scale is fitted or stored."""
    write_cu_input(cu_run, solver="BAYES",
                   extra="[UQ]\ncv_folds = 4\natom_scale = no\nenergy_scale = no\n")
    proc = run_cli(["fit", "Cu.in", "--overwrite"], cwd=cu_run)
    assert proc.returncode == 0, proc.stderr[-3000:]
    post = Posterior.load(cu_run / "Cu_pot.posterior.npz")
    assert post.atom_scale is None and post.energy_scale is None


def test_bayes_group_noise_is_opt_in_and_reported_against_svd(cu_run):
    """noise_classes = group re-weights the mean by learned noise: the report shows each group's RMSE
    beside weighted least squares (SVD) on the same rows."""
    write_cu_input(cu_run, solver="BAYES",
                   extra="[UQ]\nnoise_classes = group\npredictive = noise_classes\ncv_folds = 4\n")
    proc = run_cli(["fit", "Cu.in", "--overwrite"], cwd=cu_run)
    assert proc.returncode == 0, proc.stderr[-3000:]
    post = Posterior.load(cu_run / "Cu_pot.posterior.npz")
    assert {"Energy", "Force", "Stress", "Bulk/Force", "Strained/Energy"} <= set(post.noise_std)
    assert post.model_error is None
    np.testing.assert_array_equal(post.predictive_cov, post.cov)
    report = (cu_run / "Cu_metrics.uq.md").read_text()
    assert "Mean fit against FitSNAP SVD" in report and "rmse_svd" in report


def test_nan_truth_names_the_configuration(cu_run):
    bad = cu_run / "JSON" / "Bulk" / "Bulk_2.json"
    bad.write_text(bad.read_text().replace('"Energy": ', '"Energy": NaN, "Old": ', 1))
    write_cu_input(cu_run, solver="BAYES")
    proc = run_cli(["fit", "Cu.in", "--overwrite"], cwd=cu_run)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "Bulk_2.json" in proc.stderr and "NaN" in proc.stderr


def test_infinite_truth_names_the_configuration(cu_run):
    bad = cu_run / "JSON" / "Strained" / "Strained_1.json"
    record = json.loads(bad.read_text())
    text = json.dumps(record).replace(f'"Energy": {record["Dataset"]["Data"][0]["Energy"]}',
                                      '"Energy": 1e999')
    bad.write_text(text)
    write_cu_input(cu_run, solver="BAYES")
    proc = run_cli(["fit", "Cu.in", "--overwrite"], cwd=cu_run)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "Strained_1.json" in proc.stderr and "infinite" in proc.stderr


def test_elements_with_different_twojmax(tmp_path):
    make_cuag_dataset(tmp_path)
    text = write_cu_input(tmp_path, solver="BAYES").read_text()
    text = (text.replace("numTypes = 1", "numTypes = 2").replace("twojmax = 4", "twojmax = 4 2")
            .replace("radelem = 0.5", "radelem = 0.5 0.45").replace("wj = 1.0", "wj = 1.0 0.9")
            .replace("type = Cu", "type = Cu Ag").replace("Cu = 0.0", "Cu = 0.0\nAg = 0.0")
            .replace("Bulk     = 1.0 0.0 100 1 1e-6\nStrained = 1.0 0.0 100 1 1e-6",
                     "Alloy = 1.0 0.0 100 1 1e-6"))
    (tmp_path / "Cu.in").write_text(text)
    proc = run_cli(["fit", "Cu.in", "--overwrite"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    post = Posterior.load(tmp_path / "Cu_pot.posterior.npz")
    assert post.elements == ["Cu", "Ag"] and post.block_size == 15
    # SNAP's (j1, j2, j) triples for 2J = 4, in LAMMPS/FitSNAP order; Ag (twojmax 2) keeps those
    # with every index <= 2 and its other descriptor columns are zero: held at 0 with zero variance.
    triples = [(j1, j2, j) for j1 in range(5) for j2 in range(j1 + 1)
               for j in range(abs(j1 - j2), min(4, j1 + j2) + 1, 2) if j >= j1]
    assert len(triples) == 14
    kept = np.array([max(t) <= 2 for t in triples])
    ag_mean, ag_var = post.mean[16:], np.diag(post.cov)[16:]
    assert np.all(ag_mean[~kept] == 0) and np.all(ag_var[~kept] == 0)
    assert np.all(ag_var[kept] > 0) and np.all(np.diag(post.cov)[1:15] > 0)
    assert np.all(np.diag(post.predictive_cov)[16:][~kept] == 0)  # no model error on absent columns
    assert np.all(np.isfinite(post.mean))


@pytest.mark.slow
@NEEDS_TA
def test_ta_bayes_fit_and_model_selection_numbers(ta_run):
    text = (ta_run / "Ta-example.in").read_text().replace("solver = SVD", "solver = BAYES")
    (ta_run / "Ta-bayes.in").write_text(text)
    proc = run_cli(["fit", "Ta-bayes.in", "--overwrite"], cwd=ta_run)
    assert proc.returncode == 0, proc.stderr[-3000:]
    post = Posterior.load(ta_run / "Ta_pot.posterior.npz")
    assert post.n_coefficients == 31 and post.info["converged"]
    # The mean is the user's weighted fit: FitSNAP's weighted residual within 1% of its SVD fit's.
    ref = ta_run / "reference_svd_fit"
    a, b, w = (np.load(ref / f) for f in ("Descriptors.npy", "Truth-Ref.npy", "Weights.npy"))
    svd = read_snapcoeff(ref / "Ta_pot.snapcoeff")
    ours, theirs = np.linalg.norm(w * (a @ post.mean - b)), np.linalg.norm(w * (a @ svd - b))
    print(f"weighted residual norm: BAYES mean {ours:.6g}, SVD {theirs:.6g}, ratio {ours / theirs:.5f}")
    assert ours <= 1.01 * theirs
    # The predictive sigma follows the configuration: the liquid's forces (the hardest group) get a
    # larger sigma than the displaced crystals', and the sigmas are in the range of the errors.
    report = (ta_run / "Ta_metrics.uq.md").read_text()
    assert "Volume_BCC" in report
    raw = report.split("## Raw posterior")[1].split("## Recalibrated")[0]

    def rms_sigma_rmse(group: str) -> tuple[float, float]:
        line = next(x for x in raw.splitlines() if x.startswith(f"| {group} ") and "| Force " in x
                    and "| Training " in x)
        cells = [c.strip() for c in line.strip("|").split("|")]
        return float(cells[-1]), float(cells[-2])

    liquid, displaced = rms_sigma_rmse("Liquid"), rms_sigma_rmse("Displaced_FCC")
    print(f"force rms sigma / rmse (eV/A): Liquid {liquid}, Displaced_FCC {displaced}")
    assert liquid[0] > 2.0 * displaced[0]
    for sigma, rmse in (liquid, displaced):
        assert 0.33 < sigma / rmse < 3.0
