"""The shared Gaussian primitives (fitsnap_uq.linear.gaussian): one implementation used by the posterior,
the calibration metrics, the query strategies and the MD hook."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm

from fitsnap_uq.linear.gaussian import (
    ONE_SIGMA,
    TWO_SIGMA,
    gaussian_multiplier,
    interval_multiplier,
    live_cholesky,
    row_variance,
)


def test_row_variance_is_the_quadratic_form():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((7, 4))
    m = rng.standard_normal((4, 4))
    cov = m @ m.T
    np.testing.assert_allclose(row_variance(a, cov), [x @ cov @ x for x in a], rtol=1e-12)


def test_live_cholesky_skips_fixed_coefficients():
    cov = np.zeros((4, 4))
    cov[np.ix_([1, 3], [1, 3])] = [[4.0, 1.0], [1.0, 2.0]]
    live, factor = live_cholesky(cov)
    assert live.tolist() == [False, True, False, True]
    np.testing.assert_allclose(factor @ factor.T, cov[np.ix_(live, live)], atol=1e-14)
    live, factor = live_cholesky(np.zeros((3, 3)))
    assert not live.any() and factor.shape == (0, 0)
    with pytest.raises(np.linalg.LinAlgError):
        live_cholesky(np.array([[1.0, 2.0], [2.0, 1.0]]))


def test_multipliers():
    assert gaussian_multiplier(ONE_SIGMA) == pytest.approx(1.0, abs=1e-12)
    assert gaussian_multiplier(TWO_SIGMA) == pytest.approx(2.0, abs=1e-12)
    assert gaussian_multiplier(0.9) == norm.ppf(0.95)
    rec = {"levels": np.array([0.1, 0.5, 0.9]), "Force": np.array([0.2, 1.0, 3.0])}
    assert interval_multiplier(rec, 0.7, "Force") == pytest.approx(2.0)
    assert interval_multiplier(rec, 0.7, "Energy") == gaussian_multiplier(0.7)
    assert interval_multiplier(rec, 0.7, None) == gaussian_multiplier(0.7)
    assert interval_multiplier(None, 0.7, "Force") == gaussian_multiplier(0.7)
