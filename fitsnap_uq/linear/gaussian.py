"""Gaussian primitives shared by the core, the FitSNAP adapters and the LAMMPS side (numpy/scipy only).

One implementation each of:

* :func:`row_variance`: the variance ``a_i S a_i^T`` of each row's prediction under a coefficient
  covariance ``S`` (the posterior, FitSNAP ANL's ``covariance.npy``, a fold fit, a predictive model);
* :func:`live_cholesky`: the Cholesky factor of the live block of a covariance (coefficients held at 0
  have zero rows and columns and stay exact);
* :func:`gaussian_multiplier` and :func:`interval_multiplier`: the half-width of a central interval in
  units of the raw sigma, Gaussian or from a stored recalibration map.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.stats import norm

ONE_SIGMA = float(2 * norm.cdf(1.0) - 1)  # 0.6827
TWO_SIGMA = float(2 * norm.cdf(2.0) - 1)  # 0.9545


def row_variance(a: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """(n,) ``a_i cov a_i^T`` of rows ``a`` (n, p) under a (p, p) covariance (not clipped at 0)."""
    return np.einsum("ij,jk,ik->i", a, cov, a, optimize=True)


def live_cholesky(cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The live coefficients of a (p, p) covariance and the Cholesky factor of their block.

    Returns:
        ``(live, factor)``: (p,) bool, the coefficients with a nonzero row/column, and the lower
        triangular (k, k) factor of ``cov[live][:, live]`` (k = live.sum(); (0, 0) when none is live).

    Raises:
        numpy.linalg.LinAlgError: the live block is not positive definite.
    """
    cov = np.asarray(cov, dtype=float)
    live = np.any(cov != 0, axis=0)
    if not live.any():
        return live, np.zeros((0, 0))
    return live, np.linalg.cholesky(cov[np.ix_(live, live)])


def gaussian_multiplier(level: float, quantity: str | None = None) -> float:
    """Half-width of the Gaussian central interval at coverage ``level``, in sigmas:
    ``Phi^-1((1 + level) / 2)`` (``quantity`` is ignored; it makes this a calibration multiplier)."""
    return float(norm.ppf(0.5 + 0.5 * level))


def interval_multiplier(recalibration: dict[str, Any] | None, level: float, quantity: str | None) -> float:
    """Half-width of the central interval at ``level`` in raw sigmas: interpolated in a recalibration
    map ``{"levels": (L,), quantity: (L,) multipliers}`` where it has ``quantity``, else Gaussian."""
    if recalibration is not None and quantity is not None and quantity in recalibration:
        return float(np.interp(level, recalibration["levels"], recalibration[quantity]))
    return gaussian_multiplier(level)
