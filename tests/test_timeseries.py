"""Error bars of MD observables (fitsnap_uq.timeseries): the statistical inefficiency of correlated
series and the Student-t prediction interval over few replicas."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import t as student_t

from fitsnap_uq.timeseries import prediction_band, replica_interval, statistical_inefficiency, time_average


def ar1(phi: float, n: int, rng: np.random.Generator) -> np.ndarray:
    x = np.empty(n)
    x[0] = rng.standard_normal() / np.sqrt(1 - phi**2)
    noise = rng.standard_normal(n)
    for i in range(1, n):
        x[i] = phi * x[i - 1] + noise[i]
    return x


def test_statistical_inefficiency_of_ar1_series():
    """g = (1 + phi) / (1 - phi) for an AR(1) series; 1 for white noise and constants."""
    rng = np.random.default_rng(0)
    for phi in (0.5, 0.8, 0.9):
        g = np.median([statistical_inefficiency(ar1(phi, 5000, rng)) for _ in range(10)])
        exact = (1 + phi) / (1 - phi)
        assert abs(g - exact) < 0.15 * exact, (phi, g, exact)
    g0 = np.median([statistical_inefficiency(rng.standard_normal(2000)) for _ in range(10)])
    assert 1.0 <= g0 < 1.3
    assert statistical_inefficiency(np.ones(50)) == 1.0 and statistical_inefficiency(np.ones(1)) == 1.0


def test_time_average_standard_error_is_right_for_correlated_series():
    """The standard error from N_eff covers the true mean (0) of AR(1) series ~95% of the time, where
    the naive std / sqrt(N) covers far less."""
    rng = np.random.default_rng(1)
    inside, naive = 0, 0
    trials = 400
    for _ in range(trials):
        x = ar1(0.9, 2000, rng)  # g = 19: N_eff ~ 100
        avg = time_average(x)
        inside += abs(avg["mean"]) <= 1.96 * avg["se"]
        naive += abs(avg["mean"]) <= 1.96 * np.std(x, ddof=1) / np.sqrt(x.size)
        assert avg["neff"] < x.size / 10
    assert 0.92 <= inside / trials <= 0.98, inside / trials
    assert naive / trials < 0.6


def test_four_replicas_give_a_student_t_prediction_interval_not_min_max():
    values = np.array([17.41, 17.43, 17.44, 17.46])
    out = replica_interval(values)
    s = np.std(values, ddof=1)
    half = student_t.ppf(0.975, 3) * s * np.sqrt(1 + 1 / 4)
    assert out["n"] == 4 and out["dof"] == pytest.approx(3) and out["t"] == pytest.approx(3.182446, rel=1e-6)
    assert out["lo"] == pytest.approx(values.mean() - half)
    assert out["hi"] == pytest.approx(values.mean() + half)
    # far wider than the 2.5/97.5% points of the 4 values (about their min and max)
    q = np.quantile(values, [0.025, 0.975])
    assert out["lo"] < q[0] - 2 * s and out["hi"] > q[1] + 2 * s
    # MD sampling error widens it, and the degrees of freedom follow (Welch-Satterthwaite)
    wide = replica_interval(values, sampling_se=np.full(4, 0.05), neff=np.full(4, 10.0))
    assert wide["hi"] - wide["lo"] > out["hi"] - out["lo"] and 3 < wide["dof"] < 4 * 10
    assert wide["sampling_se"] == pytest.approx(0.05)
    # adding sampling error never narrows the interval, whatever the degrees of freedom do
    halves = [replica_interval(values, sampling_se=np.full(4, se), neff=np.full(4, 50.0))["hi"]
              for se in np.linspace(0.0, 0.1, 41)]
    assert np.all(np.diff(halves) >= -1e-15) and halves[0] == pytest.approx(out["hi"])
    with pytest.raises(ValueError):
        replica_interval(values[:1])


def test_prediction_interval_covers_a_new_replica_95_percent_of_the_time():
    """Replicas drawn from N(mu, 1): the interval from 4 of them holds a 5th draw ~95% of the time; the
    range of the 4 holds it only ~60% of the time."""
    rng = np.random.default_rng(2)
    draws = rng.normal(3.0, 1.0, size=(20000, 5))
    lo, hi = [], []
    for row in draws[:, :4]:
        r = replica_interval(row)
        lo.append(r["lo"])
        hi.append(r["hi"])
    new = draws[:, 4]
    covered = np.mean((new >= np.array(lo)) & (new <= np.array(hi)))
    in_range = np.mean((new >= draws[:, :4].min(axis=1)) & (new <= draws[:, :4].max(axis=1)))
    assert 0.94 <= covered <= 0.96, covered
    assert in_range < 0.65, in_range
    band = prediction_band(draws[:3, :4].T[:, :, None], axis=0)
    np.testing.assert_allclose(band["lo"][:, 0], lo[:3])
    np.testing.assert_allclose(band["hi"][:, 0], hi[:3])
