"""Gross outliers of a linear fit: configurations whose data disagree with the rest of their group.

A configuration with broken data (the energy of a 54-atom cell given for a 1-atom cell, forces in the
wrong unit) is absorbed by a least-squares fit without a word: its group's learned noise (or the model
error) grows to cover it and every prediction of that group gets wider intervals. Worse, a broken
configuration pulls the fit towards itself, so its ordinary residual looks modest and its group's other
residuals grow ("masking"). The screen therefore compares each configuration with a fit that never saw
it, computed exactly and cheaply from the full weighted least-squares fit (deletion formulas):

- ``G = Aw^T Aw`` (columns scaled to unit norm, a tiny ridge), ``x = G^-1 Aw^T bw``, ``r = bw - Aw x``;
- deleting configuration c's rows ``Aw_c``: ``H_cc = Aw_c G^-1 Aw_c^T``, its deleted residuals
  ``e_c = (I - H_cc)^-1 r_c`` (its misfit when predicted by the fit of the others) and the change of
  the coefficients ``d_c = -G^-1 Aw_c^T e_c``;
- c's misfit in units of its own prediction's spread: ``e_c`` has covariance
  ``s^2 (I - H_cc)^-1`` (s: the noise), so ``e_c^T (I - H_cc) e_c = r_c . e_c`` is s^2 times a
  chi-square of n_c degrees: a configuration that the others must *extrapolate* to (large ``H_cc``)
  is not an outlier merely because the extrapolation is uncertain (the block form of the externally
  studentized residual); its rms is ``sqrt(r_c . e_c / n_c)`` over its rows of one quantity;
- for each quantity q (``Energy``, ``Force``, ``Stress``) of c's group g, the other configurations'
  residuals under the fit without c, ``r_o - Aw_o d_c``, each divided by ``sqrt(1 - h_ii)`` (its
  leverage in the full fit) so that these in-sample residuals estimate the noise as c's do: their rms
  is the scale of the group's noise without c;
- ``ratio = rms(c's rows of q) / rms(others' rows of q)``.

A ratio above ``ratio`` (10 by default) names the configuration. On the two DFT data sets of this
project (Ta, 363 configurations; W-Be, 1916) with FitSNAP's weights, none and two configuration-
quantities of 1089 and 5748 exceed 10 (W-Be: two Be interstitial cells whose forces the linear model
cannot fit). Outliers are named, never removed: the data are the user's. Configurations whose rows
alone determine a direction of the coefficients (leverage 1: ``I - H_cc`` singular) cannot be checked
against the others and are skipped. Cost: about two passes of ``n m^2`` over the rows (n rows, m
columns), plus ``min(n_c, m)^3`` per configuration.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg

__all__ = ["Outlier", "gross_outliers"]


@dataclass(frozen=True)
class Outlier:
    """One configuration's rows of one quantity that disagree with the rest of its group.

    Attributes:
        group, quantity, config: where (FitSNAP group, ``Energy``/``Force``/``Stress``, file).
        ratio: rms of its studentized deleted residuals over the rms of the group's other
            configurations' residuals under the fit without it (module docstring; dimensionless).
        rms, rms_others: those two rms values (weighted units: residual times FitSNAP weight).
    """

    group: str
    quantity: str
    config: str
    ratio: float
    rms: float
    rms_others: float

    def line(self) -> str:
        """One log line naming the configuration."""
        return (f"configuration {self.config} (group {self.group}, {self.quantity}): predicted by a fit "
                f"of all other configurations, its rms weighted residual is {self.rms:.4g}, "
                f"{self.ratio:.3g}x that of its group's other configurations ({self.rms_others:.4g}); "
                f"check its data")


def _deletion(aw_c: np.ndarray, r_c: np.ndarray, u: np.ndarray, gram: np.ndarray,
              rhs: np.ndarray, x_full: np.ndarray, chol: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Deleted residuals (n_c,) and coefficient change (m,) of deleting the rows ``aw_c`` (residuals
    ``r_c``, ``u = L^-1 aw_c^T`` (m, n_c)) from the fit ``x_full``; None when ``I - H_cc`` is (near)
    singular: the rows alone determine a direction of the coefficients."""
    n_c, m = aw_c.shape
    if n_c <= m:
        ih = np.eye(n_c) - u.T @ u
        if np.linalg.cond(ih) > 1e12:
            return None
        e_c = np.linalg.solve(ih, r_c)
        d_c = -scipy.linalg.solve_triangular(chol, u @ e_c, lower=True, trans="T")
        return e_c, d_c
    reduced = gram - aw_c.T @ aw_c
    if np.linalg.cond(reduced) > 1e14:
        return None
    bw_c = r_c + aw_c @ x_full
    d_c = np.linalg.solve(reduced, rhs - aw_c.T @ bw_c) - x_full
    return bw_c - aw_c @ (x_full + d_c), d_c


def gross_outliers(aw: np.ndarray, bw: np.ndarray, groups: np.ndarray, quantities: np.ndarray,
                   configs: np.ndarray, ratio: float = 10.0, min_configs: int = 3,
                   overwrite_a: bool = False) -> list[Outlier]:
    """The configurations whose deleted-residual ratio (module docstring) exceeds ``ratio``.

    BLAS threads: one (the per-configuration solves and conditions are small: with two threads on
    two busy cores the W-Be screen's small LAPACK calls took minutes).

    Args:
        aw: (n, m) weighted descriptor rows ``w a`` of the fitted rows.
        bw: (n,) weighted truths ``w b``.
        groups, quantities, configs: (n,) each row's group, quantity and configuration.
        ratio: threshold on the ratio (> 1; 10 by default).
        min_configs: groups with fewer configurations of a quantity are not screened (>= 2).
        overwrite_a: ``aw`` (a float array) may be scaled in place (no copy of the rows).

    Returns:
        The outliers, largest ratio first.
    """
    from fitsnap_uq.linear.threads import blas_threads

    with blas_threads(1):
        return _gross_outliers(aw, bw, groups, quantities, configs, ratio, min_configs, overwrite_a)


def _gross_outliers(aw: np.ndarray, bw: np.ndarray, groups: np.ndarray, quantities: np.ndarray,
                    configs: np.ndarray, ratio: float, min_configs: int, overwrite_a: bool
                    ) -> list[Outlier]:
    """:func:`gross_outliers` (same arguments) under the caller's BLAS thread limit."""
    if ratio <= 1.0:
        raise ValueError(f"ratio must be above 1, got {ratio}")
    if min_configs < 2:
        raise ValueError(f"min_configs must be at least 2, got {min_configs}")
    aw = np.asarray(aw, dtype=float)
    bw = np.asarray(bw, dtype=float)
    groups, quantities, configs = (np.asarray(x).astype(str) for x in (groups, quantities, configs))
    norms = np.sqrt(np.einsum("ij,ij->j", aw, aw))
    inv = 1.0 / np.where(norms > 0, norms, 1.0)  # unit columns: G's diagonal is 1 (or 0)
    if overwrite_a:
        aw *= inv
    else:
        aw = aw * inv
    gram = aw.T @ aw
    gram[np.diag_indices_from(gram)] += 1e-10
    chol = np.linalg.cholesky(gram)
    rhs = aw.T @ bw
    x_full = scipy.linalg.cho_solve((chol, True), rhs)
    resid = bw - aw @ x_full

    group_names, group_code = np.unique(groups, return_inverse=True)
    _, first, config_code = np.unique(np.char.add(np.char.add(groups, "\n"), configs), return_index=True,
                                      return_inverse=True)
    deleted = np.zeros(resid.shape)
    leverage = np.zeros(resid.shape)  # h_ii of each row in the full fit
    shifts = np.zeros((first.size, aw.shape[1]))
    checkable = np.zeros(first.size, dtype=bool)
    order = np.argsort(config_code, kind="stable")
    bounds = np.searchsorted(config_code[order], np.arange(first.size + 1))
    for c in range(first.size):
        rows = order[bounds[c]:bounds[c + 1]]
        u = scipy.linalg.solve_triangular(chol, aw[rows].T, lower=True)  # (m, n_c): L^-1 Aw_c^T
        leverage[rows] = np.einsum("ij,ij->j", u, u)
        out = _deletion(aw[rows], resid[rows], u, gram, rhs, x_full, chol)
        if out is not None:
            deleted[rows], shifts[c] = out
            checkable[c] = True

    # others' residuals are in-sample: scaled by 1/sqrt(1 - h_ii) they estimate out-of-sample ones
    inflation = 1.0 / np.clip(1.0 - leverage, 1e-6, None)
    found: list[Outlier] = []
    for g in range(group_names.size):
        for q in np.unique(quantities[group_code == g]):
            sel = np.flatnonzero((group_code == g) & (quantities == q))
            members, inverse = np.unique(config_code[sel], return_inverse=True)
            if members.size < min_configs:
                continue
            a_k, r_k, v_k = aw[sel], resid[sel], inflation[sel]
            d = shifts[members].T  # (m, k): each member's coefficient change
            # sum_i v_i (r_i - a_i d_c)^2 over the block, for every member c, from the block's weighted
            # Gram matrix (no n_k x k array); then c's own rows are taken out
            va = v_k[:, None] * a_k
            total = (v_k * r_k) @ r_k - 2 * (r_k @ va) @ d + np.einsum("ij,ij->j", d, (a_k.T @ va) @ d)
            own_ss = np.maximum(np.bincount(inverse, weights=resid[sel] * deleted[sel],
                                            minlength=members.size), 0.0)
            own_v = np.bincount(inverse, weights=v_k * deleted[sel] ** 2, minlength=members.size)
            own_n = np.bincount(inverse, minlength=members.size).astype(float)
            rms = np.sqrt(own_ss / own_n)
            rms_others = np.sqrt(np.maximum(total - own_v, 0.0) / (sel.size - own_n))
            for i in np.flatnonzero(checkable[members]):
                value = rms[i] / rms_others[i] if rms_others[i] > 0 else (np.inf if rms[i] > 0 else 0.0)
                if value > ratio:
                    found.append(Outlier(str(group_names[g]), str(q), str(configs[first[members[i]]]),
                                         float(value), float(rms[i]), float(rms_others[i])))
    return sorted(found, key=lambda o: -o.ratio)
