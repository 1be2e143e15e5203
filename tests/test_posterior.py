"""The Posterior contract: layout, prediction, sampling, file round trip, refusal of bad covariances."""

from __future__ import annotations

import numpy as np
import pytest

from fitsnap_uq.errors import InputError, NumericalError
from fitsnap_uq.posterior import ONE_SIGMA, Posterior

SNAP = {"twojmax": 2, "rcutfac": 4.0, "rfac0": 0.99363, "rmin0": 0.0, "radelem": [0.5, 0.4],
        "wj": [1.0, 0.9], "bzeroflag": 1, "switchflag": 1, "wselfallflag": 0, "chemflag": 0,
        "quadraticflag": 0, "bnormflag": 0, "ncoeff": 5}


def make(seed=0, bzero=1, **kw) -> Posterior:
    rng = np.random.default_rng(seed)
    p = 12  # two elements x (1 constant + 5)
    mean = rng.normal(size=p)
    m = rng.normal(size=(p, p))
    cov = m @ m.T / p
    if bzero:
        for i in (0, 6):
            mean[i] = 0.0
            cov[i, :] = cov[:, i] = 0.0
    snap = dict(SNAP, bzeroflag=bzero)
    return Posterior(mean, cov, ["Ta", "W"], snap, noise_var={"Energy": 1e-4, "Force": 0.01,
                                                                "Liquid/Force": 0.04}, **kw)


def test_layout_and_prediction():
    post = make()
    assert post.block_size == 6 and post.fit_columns.tolist() == [1, 2, 3, 4, 5, 7, 8, 9, 10, 11]
    rng = np.random.default_rng(1)
    a_fit = rng.normal(size=(7, 10))  # FitSNAP's A without constant columns (bzeroflag = 1)
    full = post.to_layout(a_fit)
    mean, std = post.predict(a_fit)
    np.testing.assert_allclose(mean, full @ post.mean)
    np.testing.assert_allclose(std, np.sqrt(np.einsum("ij,jk,ik->i", full, post.cov, full)))
    _, std_f = post.predict(a_fit, noise="Force")
    np.testing.assert_allclose(std_f**2, std**2 + 0.01)
    _, std_mix = post.predict(a_fit, noise=["Liquid/Force"] * 3 + ["Surface/Force"] * 4)
    # An unknown group falls back to the pooled class of its quantity.
    np.testing.assert_allclose(std_mix**2, std**2 + np.array([0.04] * 3 + [0.01] * 4))
    with pytest.raises(ValueError, match="columns"):
        post.predict(np.ones((2, 5)))
    with pytest.raises(KeyError):
        post.predict(a_fit, noise="Charge")


def test_gaussian_intervals_without_recalibration():
    post = make()
    a = np.eye(12)[1:3]
    _, std = post.predict_raw(a, noise="Force")
    np.testing.assert_allclose(post.interval(a, 0.95, noise="Force"), 1.959964 * std, rtol=1e-6)
    np.testing.assert_allclose(post.predict(a, noise="Force")[1], std, rtol=1e-12)


def test_recalibrated_intervals():
    rec = {"levels": np.array([0.1, ONE_SIGMA, 0.95]), "Force": np.array([0.2, 1.5, 4.0])}
    post = make(recalibration=rec)
    a = np.eye(12)[1:2]
    _, std = post.predict_raw(a, noise="Force")
    np.testing.assert_allclose(post.interval(a, 0.95, noise="Force"), 4.0 * std)
    np.testing.assert_allclose(post.predict(a, noise="Liquid/Force")[1],
                               1.5 * post.predict_raw(a, noise="Liquid/Force")[1])
    # Energies have no recalibration here: Gaussian.
    np.testing.assert_allclose(post.interval(a, 0.95, noise="Energy"),
                               1.959964 * post.predict_raw(a, noise="Energy")[1], rtol=1e-6)


def test_sampling_is_seeded_and_matches_the_gaussian():
    post = make()
    s1, s2 = post.sample(20000, seed=5), post.sample(20000, seed=5)
    assert np.array_equal(s1, s2) and s1.shape == (20000, 12)
    assert not np.array_equal(s1, post.sample(20000, seed=6))
    np.testing.assert_allclose(s1.mean(0), post.mean, atol=0.05)
    np.testing.assert_allclose(np.cov(s1.T), post.cov, atol=0.05)
    assert np.all(s1[:, [0, 6]] == 0)  # constants held at 0 with bzeroflag = 1


def test_stored_samples_are_used():
    post = make()
    stored = post.sample(50, seed=1)
    with_samples = make(samples=stored)
    draws = with_samples.sample(10, seed=2)
    assert all(any(np.array_equal(d, s) for s in stored) for d in draws)


def test_round_trip(tmp_path):
    rec = {"levels": np.array([0.5, 0.9]), "Force": np.array([0.7, 1.8])}
    post = make(recalibration=rec, log_evidence=-12.5, info={"solver": "BAYES", "iterations": 3})
    path = post.save(tmp_path / "p.posterior.npz")
    back = Posterior.load(path)
    np.testing.assert_array_equal(back.mean, post.mean)
    np.testing.assert_array_equal(back.cov, post.cov)
    assert back.elements == ["Ta", "W"] and back.snap == post.snap
    assert back.noise_std == pytest.approx(post.noise_std)
    assert back.log_evidence == -12.5 and back.info["iterations"] == 3
    np.testing.assert_array_equal(back.recalibration["Force"], rec["Force"])
    assert not list(tmp_path.glob(".*tmp"))  # no temp files left


def test_snapcoeff_export(tmp_path):
    post = make()
    path = post.write_snapcoeff(tmp_path / "x.snapcoeff")
    rows = [ln.split() for ln in path.read_text().splitlines() if ln and not ln.startswith("#")]
    assert rows[0] == ["2", "6"]
    assert rows[1] == ["Ta", "0.5", "1.0"] and rows[8] == ["W", "0.4", "0.9"]
    np.testing.assert_allclose([float(r[0]) for r in rows[2:8] + rows[9:15]], post.mean, rtol=1e-15)


def test_not_positive_definite_is_refused(tmp_path):
    post = make()
    bad = post.cov.copy()
    bad[1, 1] = -1.0
    with pytest.raises(NumericalError, match="positive definite"):
        Posterior(post.mean, bad, post.elements, post.snap)
    post.cov[1, 1] = -1.0  # corrupted after construction: save must refuse, not write
    with pytest.raises(NumericalError):
        post.save(tmp_path / "bad.npz")
    assert not (tmp_path / "bad.npz").exists()
    nan = make().cov
    nan[2, 3] = np.nan
    with pytest.raises(NumericalError, match="NaN"):
        Posterior(post.mean, nan, post.elements, post.snap)


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(InputError, match="missing.npz"):
        Posterior.load(tmp_path / "missing.npz")
    junk = tmp_path / "junk.npz"
    junk.write_text("not a zip")
    with pytest.raises(InputError, match="junk.npz"):
        Posterior.load(junk)
