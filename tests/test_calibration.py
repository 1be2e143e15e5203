"""Calibration metrics and the cross-validated quantile recalibration."""

from __future__ import annotations

import numpy as np
import pytest

from fitsnap_uq import calibration as C
from fitsnap_uq.linear.rows import RECAL_LEVELS, Rows, cross_validated_ratios, fit_rows, recalibration_map
from fitsnap_uq.posterior import Posterior


def test_metrics_of_a_calibrated_gaussian():
    rng = np.random.default_rng(0)
    sigma = rng.uniform(0.1, 2.0, size=200000)
    err = sigma * rng.normal(size=sigma.size)
    m = C.block_metrics(err, sigma, "Force")
    assert m["cov68"] == pytest.approx(0.6827, abs=0.005)
    assert m["cov95"] == pytest.approx(0.9545, abs=0.003)
    assert m["miscal_area"] < 0.005 and m["zms"] == pytest.approx(1.0, abs=0.02)
    assert m["spearman"] > 0.3
    over = C.block_metrics(err, 3 * sigma, "Force")  # sigma three times too large
    assert over["cov68"] > 0.95 and over["miscal_area"] > 0.2 and over["zms"] < 0.2


def test_metrics_table_blocks():
    groups = np.array(["A"] * 4 + ["B"] * 4)
    types = np.array(["Force"] * 6 + ["Energy"] * 2)
    testing = np.array([False, True] * 4)
    y = np.arange(8.0)
    table = C.metrics_table(y, y + 0.1, np.full(8, 0.1), groups, types, testing)
    assert table.loc[("*ALL", "Force", "Training"), "n"] == 3
    assert table.loc[("B", "Energy", "Testing"), "n"] == 1
    assert table.loc[("A", "Force", "Training"), "rmse"] == pytest.approx(0.1)
    md = C.markdown(table, title="t")
    assert "cov68" in md and "| *ALL" in md


def heavy_tailed_rows(n_conf=300, per_conf=20, seed=0) -> Rows:
    """Linear data whose errors are Student-t (heavy tails): no Gaussian sigma fits both levels."""
    rng = np.random.default_rng(seed)
    n = n_conf * per_conf
    a = rng.normal(size=(n, 5))
    y = a @ rng.normal(size=5) + 0.1 * rng.standard_t(df=2.5, size=n)
    return Rows(a=a, b=y, w=np.ones(n), testing=np.zeros(n, dtype=bool),
                groups=np.array(["G"] * n), row_types=np.array(["Force"] * n),
                configs=np.repeat([f"c{i}.json" for i in range(n_conf)], per_conf))


def test_recalibration_fixes_heavy_tails():
    train, test = heavy_tailed_rows(seed=0), heavy_tailed_rows(seed=0)
    test.b = test.a @ np.linalg.lstsq(train.a, train.b, rcond=None)[0] + 0.1 * \
        np.random.default_rng(9).standard_t(df=2.5, size=test.b.size)
    fit = fit_rows(train, noise_classes="quantity")
    rec = recalibration_map(cross_validated_ratios(train, folds=5, seed=1, noise_classes="quantity"))
    assert set(rec) == {"levels", "Force"} and np.all(np.diff(rec["Force"]) >= 0)
    mean, sigma = fit.predict_raw(test)
    err = test.b - mean
    raw = C.block_metrics(err, sigma, "Force")

    def mult(level, q):
        return float(np.interp(level, rec["levels"], rec[q]))

    cal = C.block_metrics(err, sigma, "Force", mult)
    assert abs(raw["cov68"] - 0.683) > 0.05  # heavy tails: the Gaussian 1-sigma is off
    assert abs(cal["cov68"] - 0.683) < 0.03 and abs(cal["cov95"] - 0.954) < 0.02
    assert cal["miscal_area"] < 0.02 < raw["miscal_area"]


def test_folds_keep_configurations_together():
    from fitsnap_uq.linear.rows import config_folds

    rows = heavy_tailed_rows(n_conf=23, per_conf=7)
    fold = config_folds(rows, 5, seed=3)
    for conf in np.unique(rows.configs):
        assert len(set(fold[rows.configs == conf])) == 1
    counts = np.bincount(fold) // 7
    assert counts.max() - counts.min() <= 1
    assert np.array_equal(fold, config_folds(rows, 5, seed=3))


def test_posterior_multiplier_uses_stored_map():
    rec = recalibration_map({"Force": np.abs(np.random.default_rng(0).standard_t(3, size=5000))})
    post = Posterior(np.zeros(2), np.eye(2) * 0.01, ["X"], {"bzeroflag": 0}, noise_var={"Force": 1.0},
                     recalibration=rec)
    assert post.multiplier(0.5, "Force") == pytest.approx(np.interp(0.5, RECAL_LEVELS, rec["Force"]))
    assert post.multiplier(0.5, "Energy") == pytest.approx(0.6745, abs=1e-4)


def test_anl_sigma():
    a = np.array([[1.0, 0.0], [1.0, 1.0]])
    cov = np.array([[4.0, 0.0], [0.0, 1.0]])
    np.testing.assert_allclose(C.anl_sigma(a, cov), [2.0, np.sqrt(5.0)])
    np.testing.assert_allclose(C.anl_sigma(a, cov, 1.0), [np.sqrt(5.0), np.sqrt(6.0)])


def test_fit_from_fold_statistics_equals_direct_fit():
    from fitsnap_uq.linear.rows import fit_and_recalibrate

    rows = heavy_tailed_rows(n_conf=60, per_conf=10)
    rows.groups = np.where(np.arange(rows.b.size) % 3 == 0, "A", "B")
    direct = fit_rows(rows, noise_classes="group")
    merged, ratios = fit_and_recalibrate(rows, folds=4, seed=0, noise_classes="group")
    np.testing.assert_allclose(merged.result.mean, direct.result.mean, rtol=1e-9)
    np.testing.assert_allclose(merged.result.cov, direct.result.cov, rtol=1e-8)
    assert merged.noise_var == pytest.approx(direct.noise_var, rel=1e-8)
    assert ratios["Force"].size == rows.b.size  # every row scored once (below max_scored_rows)
