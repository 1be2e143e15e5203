"""The gross-outlier screen (fitsnap_uq.linear.outliers): deleted residuals, masking, thresholds."""

from __future__ import annotations

import numpy as np
import pytest

from fitsnap_uq.linear.outliers import gross_outliers


def _system(n_configs=6, rows_per_config=30, m=8, noise=0.1, seed=0):
    """A linear system: configurations of rows in one group (Force rows), truth = a x + noise."""
    rng = np.random.default_rng(seed)
    configs = np.repeat([f"c{i}.json" for i in range(n_configs)], rows_per_config)
    a = rng.normal(size=(configs.size, m))
    b = a @ rng.normal(size=m) + noise * rng.normal(size=configs.size)
    return a, b, np.full(configs.size, "G"), np.full(configs.size, "Force"), configs


def _brute_force_ratio(a, b, configs, name):
    """The ratio by refitting without the configuration (the definition): its misfit e^T (I - H) e
    over the others' residuals, these scaled by 1/sqrt(1 - leverage in the full fit)."""
    keep = configs != name
    x = np.linalg.lstsq(a[keep], b[keep], rcond=None)[0]
    r = b - a @ x
    hat = a @ np.linalg.solve(a.T @ a, a.T)
    e = r[~keep]
    own = e @ (np.eye(e.size) - hat[np.ix_(~keep, ~keep)]) @ e / e.size
    return np.sqrt(own) / np.sqrt(np.mean(r[keep] ** 2 / (1 - np.diag(hat)[keep])))


def test_broken_configuration_found_with_the_refit_ratio():
    a, b, groups, quantities, configs = _system()
    b[configs == "c3.json"] *= 50  # e.g. forces in the wrong unit
    found = gross_outliers(a, b, groups, quantities, configs)
    assert [o.config for o in found] == ["c3.json"]
    assert found[0].ratio == pytest.approx(_brute_force_ratio(a, b, configs, "c3.json"), rel=1e-6)
    assert (found[0].group, found[0].quantity) == ("G", "Force")
    assert "c3.json" in found[0].line() and "group G" in found[0].line()


def test_masking_a_few_configurations_and_many_columns():
    """Few configurations, many columns: the broken one pulls the full fit, yet is found."""
    a, b, groups, quantities, configs = _system(n_configs=4, rows_per_config=24, m=15, noise=0.01, seed=3)
    b[configs == "c1.json"] *= 50
    full = np.linalg.lstsq(a, b, rcond=None)[0]
    r = b - a @ full
    naive = np.sqrt(np.mean(r[configs == "c1.json"] ** 2)) / np.sqrt(np.mean(r[configs != "c1.json"] ** 2))
    found = gross_outliers(a, b, groups, quantities, configs)
    assert [o.config for o in found] == ["c1.json"] and found[0].ratio > 10 * naive


def test_clean_data_and_scale_differences_give_no_outlier():
    for seed in range(10):
        a, b, groups, quantities, configs = _system(seed=seed)
        assert gross_outliers(a, b, groups, quantities, configs) == []
    # a second quantity 1000x larger everywhere is not an outlier of the first
    a, b, groups, quantities, configs = _system()
    a2, b2 = np.r_[a, 1000 * a], np.r_[b, 1000 * b]
    assert gross_outliers(a2, b2, np.r_[groups, groups], np.r_[quantities, np.full(b.size, "Energy")],
                          np.r_[configs, configs]) == []


def test_small_groups_skipped_and_arguments_checked():
    a, b, groups, quantities, configs = _system(n_configs=2)
    b[configs == "c1.json"] *= 100
    assert gross_outliers(a, b, groups, quantities, configs) == []
    with pytest.raises(ValueError):
        gross_outliers(a, b, groups, quantities, configs, ratio=1.0)
    with pytest.raises(ValueError):
        gross_outliers(a, b, groups, quantities, configs, min_configs=1)


def test_configuration_with_more_rows_than_columns_uses_the_reduced_system():
    a, b, groups, quantities, configs = _system(n_configs=5, rows_per_config=40, m=6)
    b[configs == "c2.json"] += 30.0
    found = gross_outliers(a, b, groups, quantities, configs)
    assert [o.config for o in found] == ["c2.json"]
    assert found[0].ratio == pytest.approx(_brute_force_ratio(a, b, configs, "c2.json"), rel=1e-6)
