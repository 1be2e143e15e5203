"""Error bars of MD observables: time averages of correlated series, and intervals over few replicas.

Two sources of uncertainty meet in a posterior ensemble of MD (``fitsnap-uq ensemble``):

* **MD sampling.** Successive frames of one replica are correlated, so a time average over N frames
  carries the information of N_eff = N / g independent ones, g the statistical inefficiency
  (g = 1 + 2 sum_t (1 - t/N) C(t), C the normalized autocorrelation).
  :func:`statistical_inefficiency` is the estimator of pymbar's ``timeseries.statisticalInefficiency``
  (Chodera et al., J. Chem. Theory Comput. 3, 26 (2007)): the sum runs until C first drops to zero or
  below after ``mintime`` lags; g >= 1.
* **The potential.** Each replica runs with coefficients drawn from the posterior, so the replicas'
  time averages are draws of the observable over the plausible potentials. With K replicas (few: 4)
  their spread is estimated with K - 1 degrees of freedom, and a Gaussian interval from it would be far
  too narrow; min-max or 2.5/97.5% quantiles of 4 values are not a 95% interval at all.

:func:`replica_interval` gives the Student-t **prediction interval** for one more draw: where the
observable of the true potential falls if it is another draw from the posterior, i.e. how far to trust
the value the fit gives. From the spread s alone it is ``mean +- t_{K-1} s sqrt(1 + 1/K)``. (The
t-interval of the ensemble *mean*, ``mean +- t_{K-1} s / sqrt(K)``, answers another question, how well
K replicas pin down the average over the posterior; it shrinks to zero with more replicas whatever the
potential's uncertainty.) Replicas that start from the same velocities (a fixed seed in the script)
share much of their MD sampling error, which their spread then does not show; so the replicas'
sampling variance (mean of se_k^2) is added to the interval's variance, with the Welch-Satterthwaite
degrees of freedom of the sum (and never narrower than the interval from the spread alone). When the
replicas' noise is independent this counts it twice (conservative). The two parts are reported
separately too (``posterior_half``, ``sampling_se``): a sampling error as large as the spread says the
run is too short to resolve the potential's effect.

Numpy and scipy only (core layer).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.stats import t as student_t


def statistical_inefficiency(x: np.ndarray, mintime: int = 3) -> float:
    """Statistical inefficiency g >= 1 of a time series (pymbar's estimator, see the module docstring).

    Args:
        x: (N,) equally spaced samples.
        mintime: lags always included before the sum may stop at the first C(t) <= 0.

    Returns:
        g (in units of the sampling interval); 1.0 for a constant series or N < 2.
    """
    x = np.asarray(x, dtype=float)
    n = x.size
    if n < 2:
        return 1.0
    dx = x - x.mean()
    var = float(dx @ dx) / n
    if var <= 0.0:
        return 1.0
    size = 1 << (2 * n - 1).bit_length()  # zero-padded FFT: linear, not circular, correlation
    spec = np.fft.rfft(dx, size)
    acf = np.fft.irfft(spec * np.conj(spec), size)[:n]
    g = 1.0
    for lag in range(1, n - 1):
        c = acf[lag] / ((n - lag) * var)
        if c <= 0.0 and lag > mintime:
            break
        g += 2.0 * c * (1.0 - lag / n)
    return max(g, 1.0)


def time_average(x: np.ndarray) -> dict[str, float]:
    """Mean of a correlated series with its standard error.

    Args:
        x: (N,) samples (any unit).

    Returns:
        ``mean``, ``se`` (standard error of the mean, std / sqrt(N_eff), ddof 1), ``g`` (statistical
        inefficiency), ``neff`` (N / g) and ``n`` (N).
    """
    x = np.asarray(x, dtype=float)
    n = x.size
    g = statistical_inefficiency(x)
    neff = n / g
    std = float(np.std(x, ddof=1)) if n > 1 else 0.0
    return {"mean": float(np.mean(x)), "se": std / np.sqrt(max(neff, 1.0)), "g": g, "neff": neff,
            "n": float(n)}


def replica_interval(values: np.ndarray, level: float = 0.95, sampling_se: np.ndarray | None = None,
                     neff: np.ndarray | None = None) -> dict[str, Any]:
    """Interval of an observable over K replicas (one value each), see the module docstring.

    The variance of one more replica's value is ``V_post = s^2 (1 + 1/K)`` (K - 1 degrees of freedom);
    with ``sampling_se`` the replicas' MD sampling variance ``V_md = mean(se_k^2)`` is added (with
    ``mean(N_eff) - 1`` degrees of freedom), since replicas that start from the same velocities share
    their sampling error, which their spread then does not show. The interval is ``mean +- t_nu
    sqrt(V_post + V_md)`` with the Welch-Satterthwaite degrees of freedom ``nu`` of the sum, and never
    narrower than ``t_{K-1} sqrt(V_post)``, the interval from the spread alone.

    Args:
        values: (K,) each replica's value (K >= 2), any unit.
        level: coverage of the interval.
        sampling_se: (K,) optional standard errors of the values from MD sampling (same unit).
        neff: (K,) effective sample sizes behind ``sampling_se`` (default: treated as large).

    Returns:
        ``n`` (K), ``mean``, ``std`` (ddof 1), ``sem`` (std / sqrt(K)), ``posterior_half`` (the
        half-width of the prediction interval from the replicas' spread alone, Student t with K - 1
        degrees of freedom), ``sampling_se`` (root mean square of ``sampling_se``, or None), ``dof``
        (nu), ``t`` (its quantile), ``lo``, ``hi`` (the interval), ``level``.

    Raises:
        ValueError: fewer than 2 values.
    """
    v = np.asarray(values, dtype=float)
    k = v.size
    if k < 2:
        raise ValueError(f"an interval over replicas needs at least 2 values, got {k}")
    mean, std = float(v.mean()), float(np.std(v, ddof=1))
    q = 0.5 + 0.5 * level
    var_post = std**2 * (1.0 + 1.0 / k)
    var_md, dof_md, se = 0.0, np.inf, None
    if sampling_se is not None:
        var_md = float(np.mean(np.square(sampling_se)))
        se = float(np.sqrt(var_md))
        if neff is not None:
            dof_md = max(float(np.mean(neff)) - 1.0, 1.0)
    var = var_post + var_md
    denom = var_post**2 / (k - 1) + (var_md**2 / dof_md if np.isfinite(dof_md) else 0.0)
    dof = var**2 / denom if denom > 0 else float(k - 1)
    tq = float(student_t.ppf(q, dof))
    posterior_half = float(student_t.ppf(q, k - 1)) * np.sqrt(var_post)
    # never narrower than the interval from the spread alone (more degrees of freedom must not make
    # an added variance shrink it)
    half = max(tq * np.sqrt(var), posterior_half)
    return {"n": k, "mean": mean, "std": std, "sem": std / np.sqrt(k), "posterior_half": posterior_half,
            "sampling_se": se, "dof": float(dof), "t": tq, "lo": mean - half, "hi": mean + half,
            "level": level}


def prediction_band(values: np.ndarray, level: float = 0.95, axis: int = 0) -> dict[str, np.ndarray]:
    """:func:`replica_interval`'s mean, std and prediction interval over ``axis`` of an array (e.g.
    (K, T, M) replicas x steps x observables): ``mean``, ``std``, ``lo``, ``hi`` with ``axis`` removed."""
    v = np.asarray(values, dtype=float)
    k = v.shape[axis]
    if k < 2:
        raise ValueError(f"an interval over replicas needs at least 2 values, got {k}")
    mean, std = v.mean(axis=axis), v.std(axis=axis, ddof=1)
    half = float(student_t.ppf(0.5 + 0.5 * level, k - 1)) * np.sqrt(1.0 + 1.0 / k) * std
    return {"mean": mean, "std": std, "lo": mean - half, "hi": mean + half}
