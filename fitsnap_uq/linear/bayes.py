"""Bayesian linear regression with a learned noise precision per noise class (numpy/scipy only).

Model (``../design.md`` section 3): rows ``a_i`` (length p) with targets ``y_i`` and relative weights
``w_i`` belong to noise classes ``k = c(i)``;

    y_i = a_i . theta + e_i,   e_i ~ N(0, 1 / (beta_k w_i^2)),   theta ~ N(0, Lambda^-1),

with the prior precision ``Lambda = alpha I`` (``isotropic``, the default), ``diag(alpha)`` (``ard``),
``alpha M`` (``g``) or 0 (``none``).

**Prior g** is Zellner's g-prior (Zellner 1986), with ``alpha`` maximizing the evidence (the local
empirical-Bayes g of Liang et al., JASA 2008): ``M = G_PP - G_PU G_UU^-1 G_UP`` is the Gram matrix of
the weighted rows (``G = sum_k G_k``, FitSNAP's weights) on the penalized columns with the unpenalized
(per-element constant) columns ``U`` projected out, so the prior's covariance is the data's own inverse
information scaled by ``1/alpha``. Consequences, for one noise class:

* the posterior mean is the weighted least-squares fit, its penalized part shrunk by
  ``c = beta / (alpha + beta)`` (the constant columns re-fit to it), and the evidence's fixed point
  ``alpha = p_P c / (c^2 m_LS^T M m_LS)`` gives ``1 - c = p_P / (beta m_LS^T M m_LS)``: the number of
  penalized columns over the fit's signal-to-noise sum (2e-7 to 3e-7 on the Ta and W-Be data), so the
  mean is the user's weighted fit (FitSNAP's SVD) wherever that sum is much larger than the number of
  coefficients;
* it is invariant under every invertible linear map of the penalized columns, and under shifts of them
  by the constant columns (bzero): the predictions do not change, whatever the columns' scales (they
  span 7 orders of magnitude on W-Be);
* the posterior covariance is ``(alpha M + beta G)^-1`` (``~ G^-1 / beta``, the least-squares one;
  without unpenalized columns it has the isotropic prior's principal axes, the eigenvectors of G).

It does not regularize what the rows determine poorly. Measured: on held-out Ta and W-Be
configurations (20% of each group, seeds 101, 202, 303) its energy and force RMSE is within 0.4% of
SVD's in every group, where the isotropic prior's is within -14% to +11% (it shrinks the few directions
the weighted rows determine least by up to 12%, ``beta lambda / (beta lambda + alpha)`` >= 0.88; ARD,
and an isotropic prior on standardized columns ``alpha diag(G) / n``, moved them more, 0.39 to 1.46);
but the isotropic prior has the higher evidence (by ~90 nats on Ta, ~190 on W-Be), and on a quadratic
SNAP fit of 5 configurations (240 columns, ``tests/test_chemflag.py``'s data) the g-prior's largest
coefficient is 376 (isotropic: 3.4) and its leave-one-configuration-out force RMSE 1.29 eV/A
(isotropic: 0.47, no prior: 1.32). Where ``M`` is singular (the rows do not determine every
coefficient) the g-prior is improper and :func:`fit_bayes` uses the isotropic prior, saying so in its
message. The g-prior is fitted by the isotropic machinery in coordinates ``u`` where it is isotropic
(:func:`g_coordinates`).

**Sufficient statistics, one pass.** The data enter only through per-class statistics computed in one
pass over the rows (:func:`cell_stats`; many classes, or classes x cross-validation folds, at once):
the Gram matrix ``G_k = A_k^T W^2 A_k`` (p x p), and, relative to an *anchor* coefficient vector
``m0`` shared by all classes (a ridge-regularized pooled least-squares fit), ``h0_k = A_k^T W^2 (y_k -
A_k m0)`` and ``ee0_k = ||W (y_k - A_k m0)||^2`` from a second, O(n p) pass. The residual of any
coefficients ``m`` is then ``||W (y_k - A_k m)||^2 = ee0_k - 2 d^T h0_k + d^T G_k d`` with ``d = m -
m0``: the anchor removes the large common part of the targets (energies of -8 eV/atom fitted to meV)
before the Gram algebra, so residuals keep their relative accuracy (no ``y^T y - 2 m^T h + m^T G m``
cancellation), and the solve for ``d`` from exact row residuals is a step of iterative refinement of
the normal equations (the mean agrees with a QR / SVD solution to ~1e-12 relative on the Ta data).
Statistics of several classes or folds merge by summation (a fold's fit sums the other folds').

**Evidence, in O(K p^2 + p^3) per iteration.** Everything after the passes works on the p x p sums:
the posterior precision ``P = diag(alpha) + sum_k beta_k G_k`` is factored by Cholesky in coordinates
scaled by powers of two (each column's Gram diagonal ~1: exact scaling, so descriptor columns spanning
many orders of magnitude cost no accuracy), ``S = P^-1``, ``tr(S G_k)`` for all classes in one
product. Hyperparameters maximize the log evidence with MacKay's fixed-point updates
(``alpha_j = gamma_j / m_j^2``, ``beta_k = (n_k - beta_k tr(S G_k)) / ||r_k||^2``), the stationarity
conditions of the evidence, accelerated by Anderson mixing in log space (a step that lowers the
evidence is replaced by the plain update); the stopping rule is the plain update's: largest relative
change below ``tol``. A warm start (``alpha0``, ``beta0``: e.g. the full fit's values for a
cross-validation fold) starts the iteration near its end.

Memory: K p^2 doubles for the statistics of K classes (or cells); the rows are read block by block
(:data:`BLOCK_ROWS` at a time), never copied whole.

BLAS threads (:mod:`fitsnap_uq.linear.threads`): the passes over the rows run with one thread on
matrices of fewer than :data:`~fitsnap_uq.linear.threads.PARALLEL_MIN_COLS` columns, else with the
process's budget; the evidence iterations always with one: their p x p factorizations and K p^2
products are small or memory-bound, and with two threads on busy cores the 5-fold recalibration of
100,000 x 500 rows took 26 s of CPU instead of ~5 s.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import scipy.linalg as sla

from fitsnap_uq.errors import NumericalError
from fitsnap_uq.linear.threads import limited

PRIORS = ("none", "isotropic", "ard", "g")
BLOCK_ROWS = 4096
"""Rows gathered per block in the passes over the rows (a block of 4096 x 500 doubles is 16 MB)."""
ANCHOR_RIDGE = 1e-10
"""Ridge of the anchor fit, relative to the (scaled, ~unit) Gram diagonal."""
ANDERSON_DEPTH = 5
"""Previous iterates the Anderson mixing of the evidence iteration combines."""
DUPLICATE_TOL = 1e-12
"""Two descriptor columns are the same (up to a factor) when the correlation of their weighted rows,
``G_ij / sqrt(G_ii G_jj)``, is within this of +-1 (their unit-norm rows differ by at most
``sqrt(2 DUPLICATE_TOL)`` ~ 1.4e-6 relative, the resolution of the Gram statistics; duplicates by
construction agree to round-off, ~1e-15)."""


@dataclass
class ClassStats:
    """Sufficient statistics of one noise class (or of one class within one cross-validation fold).

    Attributes:
        g: (p, p) Gram matrix of the weighted rows ``A^T W^2 A`` (units of weighted A squared).
        h0: (p,) ``A^T W^2 (y - A m0)``: the weighted rows times their residual at the anchor.
        ee0: ``||W (y - A m0)||^2``, the weighted squared residual at the anchor.
        yy: ``||W y||^2``, the weighted squared targets.
        n: number of rows with nonzero weight.
        wref2: ``1 / median(w)^2`` over those rows: turns the learned precision of weighted rows
            into the physical noise variance of a row of the class's typical weight,
            ``var = wref2 / beta`` (with one weight per class, as FitSNAP groups have, this is exact).
        anchor: (p,) the anchor coefficients ``m0`` (shared, not copied, by the statistics of one pass).
    """

    g: np.ndarray
    h0: np.ndarray
    ee0: float
    yy: float
    n: int
    wref2: float
    anchor: np.ndarray

    @property
    def h(self) -> np.ndarray:
        """(p,) ``A^T W^2 y``."""
        return self.h0 + self.g @ self.anchor

    def res2(self, m: np.ndarray) -> float:
        """``||W (y - A m)||^2`` for coefficients ``m`` (p,)."""
        d = np.asarray(m, dtype=float) - self.anchor
        return float(self.ee0 - 2.0 * d @ self.h0 + d @ self.g @ d)

    def reanchored(self, anchor: np.ndarray) -> ClassStats:
        """The same statistics relative to another anchor (p,)."""
        if anchor is self.anchor:
            return self
        d = np.asarray(anchor, dtype=float) - self.anchor
        gd = self.g @ d
        return replace(self, h0=self.h0 - gd, ee0=float(self.ee0 - 2.0 * d @ self.h0 + d @ gd),
                       anchor=anchor)


def _blocks(index: np.ndarray, block_rows: int):
    """Row selections of at most ``block_rows`` rows: slices where ``index`` is a contiguous run."""
    for start in range(0, index.size, block_rows):
        rows = index[start:start + block_rows]
        if rows.size and rows[-1] - rows[0] == rows.size - 1:
            yield slice(int(rows[0]), int(rows[-1]) + 1)
        else:
            yield rows


def _scale(diag: np.ndarray) -> np.ndarray:
    """Powers of two ``d`` with ``d_j^2 diag_j`` in [0.5, 2) (exact scaling); 1 where diag is 0."""
    out = np.ones_like(diag)
    pos = diag > 0
    out[pos] = np.exp2(-np.round(0.5 * np.log2(diag[pos])))
    return out


def _cholesky(p: np.ndarray) -> np.ndarray | None:
    """Lower Cholesky factor of a symmetric (q, q) matrix, or None if it is not positive definite."""
    factor, info = sla.lapack.dpotrf(p, lower=1, clean=1, overwrite_a=0)
    return factor if info == 0 else None


def _chol_inverse(factor: np.ndarray) -> np.ndarray:
    """(q, q) inverse of ``L L^T`` from its lower Cholesky factor ``L``."""
    inv, info = sla.lapack.dpotri(factor, lower=1)
    if info != 0:
        raise NumericalError("posterior precision is singular (inverse of its Cholesky factor failed)")
    return np.tril(inv) + np.tril(inv, -1).T


def anchor_fit(g: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Ridge-regularized least squares ``(G + lambda D^-2) m = h`` (p,), lambda = :data:`ANCHOR_RIDGE`
    in power-of-two scaled coordinates; columns with zero Gram diagonal get 0."""
    diag = np.diag(g).copy()
    act = diag > 0
    out = np.zeros(g.shape[0])
    if not act.any():
        return out
    d = _scale(diag[act])
    gs = g[np.ix_(act, act)] * d[:, None] * d[None, :]
    gs[np.diag_indices_from(gs)] += ANCHOR_RIDGE
    factor = _cholesky(gs)
    if factor is None:  # not positive definite even with the ridge: a stronger one (the anchor is a guess)
        gs[np.diag_indices_from(gs)] += 1e-6
        factor = _cholesky(gs)
        if factor is None:
            return out
    out[act] = d * sla.cho_solve((factor, True), d * h[act])
    return out


@limited(lambda a, *args, **kwargs: np.shape(a)[1] + 1)
def cell_stats(a: np.ndarray, y: np.ndarray, w: np.ndarray | None, cell: np.ndarray, ncells: int,
               block_rows: int = BLOCK_ROWS, anchor: np.ndarray | None = None
               ) -> list[ClassStats | None]:
    """Statistics of many disjoint sets of rows ("cells": noise classes, or classes x folds) in one
    pass over the rows (Gram blocks, O(n p^2)), then one O(n p) pass for the residuals at the anchor.

    Args:
        a: (n, p) descriptor rows (not copied: rows are gathered block by block).
        y: (n,) targets.
        w: (n,) relative weights (1 if None); rows of weight 0 belong to no cell.
        cell: (n,) int, the cell of each row in ``0 .. ncells - 1``; -1: the row is not used.
        ncells: number of cells.
        block_rows: rows per block.
        anchor: (p,) anchor coefficients; default the ridge-regularized least-squares fit of all the
            cells' rows (:func:`anchor_fit`).

    Returns:
        One :class:`ClassStats` per cell (sharing one anchor array), None for a cell without rows.
    """
    a = np.asarray(a)
    y = np.asarray(y, dtype=float)
    n, p = a.shape
    w = np.ones(n) if w is None else np.asarray(w, dtype=float)
    cell = np.where(w != 0, np.asarray(cell, dtype=np.int64), -1)
    order = np.argsort(cell, kind="stable")
    bounds = np.searchsorted(cell[order], np.arange(-1, ncells + 1), side="left")
    members = [order[bounds[c + 1]:bounds[c + 2]] for c in range(ncells)]

    grams: list[np.ndarray | None] = []
    aug = np.empty((min(block_rows, max(n, 1)), p + 1))
    for idx in members:
        if idx.size == 0:
            grams.append(None)
            continue
        gram = np.zeros((p + 1, p + 1))
        for sel in _blocks(idx, block_rows):
            wb = w[sel]
            k = wb.shape[0]
            blk = aug[:k]
            np.multiply(a[sel], wb[:, None], out=blk[:, :p])
            np.multiply(y[sel], wb, out=blk[:, p])
            gram += blk.T @ blk
        grams.append(gram)

    if anchor is None:
        tot = sum(gm for gm in grams if gm is not None)
        anchor = anchor_fit(tot[:p, :p], tot[:p, p]) if isinstance(tot, np.ndarray) else np.zeros(p)
    anchor = np.asarray(anchor, dtype=float)

    out: list[ClassStats | None] = []
    for idx, gram in zip(members, grams):
        if gram is None:
            out.append(None)
            continue
        h0 = np.zeros(p)
        ee0 = 0.0
        for sel in _blocks(idx, block_rows):
            ab = a[sel]
            wb = w[sel]
            e = wb * (y[sel] - ab @ anchor)
            h0 += ab.T @ (wb * e)
            ee0 += float(e @ e)
        wabs = np.abs(w[idx])
        out.append(ClassStats(g=np.ascontiguousarray(gram[:p, :p]), h0=h0, ee0=ee0, yy=float(gram[p, p]),
                              n=int(idx.size), wref2=1.0 / float(np.median(wabs)) ** 2, anchor=anchor))
    return out


def class_stats(a: np.ndarray, y: np.ndarray, w: np.ndarray | None = None,
                block_rows: int = BLOCK_ROWS, index: np.ndarray | None = None) -> ClassStats:
    """Statistics of one noise class (see :func:`cell_stats`).

    Args:
        a: (n, p) descriptor rows.
        y: (n,) targets.
        w: (n,) relative weights (1 if None); rows with w == 0 do not count.
        block_rows: rows per block.
        index: optional row indices into ``a``/``y``/``w``: only these rows, gathered block by block
            (no copy of the selected rows as a whole).
    """
    n = np.shape(a)[0]
    if index is None:
        cell = np.zeros(n, dtype=np.int64)
    else:
        cell = np.full(n, -1, dtype=np.int64)
        cell[np.asarray(index)] = 0
    st = cell_stats(a, y, w, cell, 1, block_rows=block_rows)[0]
    if st is None:
        p = np.shape(a)[1]
        return ClassStats(g=np.zeros((p, p)), h0=np.zeros(p), ee0=0.0, yy=0.0, n=0, wref2=1.0,
                          anchor=np.zeros(p))
    return st


def merge_stats(stats: list[ClassStats]) -> ClassStats:
    """Statistics of the union of several classes' (or cells') rows: sums, on the first one's anchor."""
    anchor = stats[0].anchor
    parts = [s.reanchored(anchor) for s in stats]
    refs = [s.wref2 for s in parts if s.n]
    return ClassStats(g=np.sum([s.g for s in parts], axis=0), h0=np.sum([s.h0 for s in parts], axis=0),
                      ee0=float(sum(s.ee0 for s in parts)), yy=float(sum(s.yy for s in parts)),
                      n=sum(s.n for s in parts), wref2=float(np.median(refs)) if refs else 1.0,
                      anchor=anchor)


def least_squares(st: ClassStats) -> np.ndarray:
    """(p,) least-squares coefficients ``argmin ||W (y - A m)||^2`` from statistics: the anchor plus the
    solve of the normal equations for the correction (a step of iterative refinement on exact
    residuals), in power-of-two scaled coordinates. Columns without data get 0. Where the scaled Gram
    matrix is numerically singular, the minimum-norm correction over its eigenvalues above ``q eps``
    of the largest (as an SVD solve with that cut-off)."""
    diag = np.diag(st.g).copy()
    act = diag > 0
    out = np.zeros(st.g.shape[0])
    if not act.any():
        return out
    d = _scale(diag[act])
    gs = st.g[np.ix_(act, act)] * d[:, None] * d[None, :]
    rhs = d * st.h0[act]
    factor = _cholesky(gs)
    piv = np.diag(factor) ** 2 if factor is not None else None
    if factor is not None and piv.min() > gs.shape[0] * np.finfo(float).eps * piv.max():
        delta = sla.cho_solve((factor, True), rhs)
    else:
        lam, vec = np.linalg.eigh(gs)
        keep = lam > gs.shape[0] * np.finfo(float).eps * lam.max()
        delta = vec[:, keep] @ ((vec[:, keep].T @ rhs) / lam[keep])
    out[act] = st.anchor[act] + d * delta
    return out


def duplicate_columns(g: np.ndarray, candidates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ``candidates`` columns of the data (given by their Gram matrix ``g`` (p, p) ``= A^T W^2 A``)
    that equal a multiple of an earlier candidate column on every row, to :data:`DUPLICATE_TOL`:
    (p,) the earlier column of each (-1 where none) and (p,) the factor (column j = factor[j] *
    column rep[j]).

    Explicit multi-element SNAP (``chemflag = 1``) has such columns by construction (e.g. with j1 = j2
    the components of element triples (e1, e2, e3) and (e2, e1, e3) agree). The data cannot tell the
    coefficients of such a pair apart (only ``theta_rep + factor * theta_dup`` enters any prediction);
    with both in the fit the posterior covariance has exact null directions of the data, along which
    its spread is the prior's alone, and whose conditioning no Cholesky factor survives.
    """
    p = g.shape[0]
    rep = np.full(p, -1)
    factor = np.ones(p)
    cols = np.flatnonzero(np.asarray(candidates, bool) & (np.diag(g) > 0))
    if cols.size < 2:
        return rep, factor
    norms = np.sqrt(np.diag(g)[cols])
    corr = g[np.ix_(cols, cols)] / norms[:, None] / norms[None, :]
    for i, j in np.argwhere(np.triu(np.abs(corr) > 1.0 - DUPLICATE_TOL, k=1)):  # i < j, by i then j
        if rep[cols[j]] >= 0 or rep[cols[i]] >= 0:  # j already tied; or i is, and so is j to i's rep
            continue
        rep[cols[j]] = cols[i]
        factor[cols[j]] = np.sign(corr[i, j]) * norms[j] / norms[i]
    return rep, factor


@dataclass
class BayesResult:
    """Outcome of :func:`fit_bayes` (arrays over the p columns given to it).

    Attributes:
        mean: (p,) posterior mean of the coefficients.
        cov: (p, p) posterior covariance.
        alpha: (p,) prior precisions (0 for no prior).
        beta: (K,) noise precisions of the weighted rows, one per class.
        noise_var: {class: physical noise variance}, ``wref2 / beta``.
        log_evidence: log marginal likelihood at the optimum (None for an improper prior).
        active: (p,) bool, columns that enter the fit (all-zero columns and duplicates are left out:
            mean 0, var 0).
        iterations, converged, message: optimizer report.
        history: log evidence per iteration.
        ties: the duplicate columns left out, ``(column, its earlier column, factor)``: column =
            factor * earlier column on every row, so ``theta_earlier`` stands for
            ``theta_earlier + factor * theta_column`` (:func:`duplicate_columns`).
        prior_precision: (p, p) the prior's precision matrix where it is not diagonal (prior ``g``:
            ``alpha M``, see :func:`g_coordinates`); None where it is ``diag(alpha)``.
    """

    mean: np.ndarray
    cov: np.ndarray
    alpha: np.ndarray
    beta: np.ndarray
    noise_var: dict[str, float]
    log_evidence: float | None
    active: np.ndarray
    iterations: int
    converged: bool
    message: str
    history: list[float] = field(default_factory=list)
    ties: list[tuple[int, int, float]] = field(default_factory=list)
    prior_precision: np.ndarray | None = None


class _Problem:
    """The statistics of a fit on its active columns, in power-of-two scaled coordinates.

    ``u = theta / d`` are the scaled coefficients (``A theta = (A D) u``); the Gram matrices are
    ``D G_k D``; a prior precision ``alpha`` on theta is ``alpha d^2`` on u.
    """

    def __init__(self, st: list[ClassStats], active: np.ndarray) -> None:
        anchor = st[0].anchor
        self.k = len(st)
        diag = np.sum([np.diag(s.g)[active] for s in st], axis=0)
        self.d = _scale(diag)
        self.scale2 = diag  # squared column norms of the weighted rows (original units)
        q = int(active.sum())
        self.q = q
        dd = self.d[:, None] * self.d[None, :]
        self.gs = np.empty((self.k, q, q))
        for i, s in enumerate(st):
            np.multiply(s.g[np.ix_(active, active)], dd, out=self.gs[i])
        self.hs = np.array([s.h0[active] * self.d for s in st])
        self.ee0 = np.array([s.ee0 for s in st])
        self.yy = np.array([s.yy for s in st])
        self.n = np.array([s.n for s in st], dtype=float)
        self.u0 = anchor[active] / self.d
        self.n_tot = float(self.n.sum())
        self.gflat = self.gs.reshape(self.k, q * q)
        self._roots: list[np.ndarray] | None = None

    def _stacked_factor(self, alpha_s: np.ndarray, beta: np.ndarray) -> np.ndarray | None:
        """Lower factor ``L`` with ``L L^T = diag(alpha_s) + sum_k beta_k G_k`` from the QR of the
        stacked ``[diag(sqrt(alpha_s)); sqrt(beta_k) F_k]`` (``F_k^T F_k = G_k`` from an
        eigendecomposition): accurate where the precision is too ill-conditioned for Cholesky (a class
        the model fits exactly gets a huge precision along a few directions). O(K q^3), a fallback."""
        if self._roots is None:
            roots = []
            for g in self.gs:
                lam, vec = np.linalg.eigh(g)
                roots.append(np.sqrt(np.maximum(lam, 0.0))[:, None] * vec.T)
            self._roots = roots
        blocks = [np.diag(np.sqrt(alpha_s))] + [np.sqrt(b) * f for b, f in zip(beta, self._roots)]
        r = np.linalg.qr(np.vstack(blocks), mode="r")
        lower = (r * np.sign(np.diag(r))[:, None]).T
        return lower if np.all(np.diag(lower) > 0) else None

    def evaluate(self, alpha: np.ndarray, beta: np.ndarray, need_cov: bool = True) -> _Point:
        """The posterior at prior precisions ``alpha`` (q,) on theta and noise precisions ``beta`` (K,).

        The precision is factored by Cholesky after a power-of-two Jacobi scaling (its diagonal ~1:
        noise precisions of different classes may differ by many orders of magnitude); where that
        fails, by the QR of its stacked square roots (:meth:`_stacked_factor`).

        Raises:
            NumericalError: the precision is not positive definite.
        """
        alpha_s = alpha * self.d**2
        prec = np.tensordot(beta, self.gs, axes=1)
        prec[np.diag_indices(self.q)] += alpha_s
        e = _scale(np.diag(prec).copy())
        factor = _cholesky(prec * e[:, None] * e[None, :])
        if factor is None:
            e = np.ones(self.q)
            factor = self._stacked_factor(alpha_s, beta)
        singular = factor is None
        if not singular:
            piv = np.diag(factor) ** 2
            singular = not np.all(alpha > 0) and piv.min() <= self.q * np.finfo(float).eps * piv.max()
        if singular:
            raise NumericalError("posterior precision is singular: the data do not determine every "
                                 "coefficient and there is no prior (use prior = isotropic or ard)")
        rhs = beta @ self.hs - alpha_s * self.u0
        delta = e * sla.cho_solve((factor, True), e * rhs)
        cov = _chol_inverse(factor) * e[:, None] * e[None, :] if need_cov else None
        vecs = [np.outer(delta, delta).ravel()] + ([cov.ravel()] if cov is not None else [])
        prods = self.gflat @ np.stack(vecs, axis=1)  # (K, 1 or 2): d^T G_k d and tr(S G_k)
        res2 = self.ee0 - 2.0 * (self.hs @ delta) + prods[:, 0]
        return _Point(alpha=alpha, beta=beta, u=self.u0 + delta, factor=factor, cov=cov,
                      res2=res2, tr=prods[:, 1] if cov is not None else None,
                      logdet=float(np.sum(np.log(piv)) - 2.0 * np.sum(np.log(e))
                                   - 2.0 * np.sum(np.log(self.d))))

    def log_evidence(self, pt: _Point) -> float:
        """Log marginal likelihood of the weighted data at a point (needs alpha > 0)."""
        mean = pt.u * self.d
        e_data = float(pt.beta @ pt.res2)
        e_prior = float(np.sum(pt.alpha * mean**2))
        return float(0.5 * self.n @ np.log(pt.beta) + 0.5 * np.sum(np.log(pt.alpha))
                     - 0.5 * (e_data + e_prior) - 0.5 * pt.logdet - 0.5 * self.n_tot * np.log(2 * np.pi))


@dataclass
class _Point:
    alpha: np.ndarray
    beta: np.ndarray
    u: np.ndarray
    factor: np.ndarray
    cov: np.ndarray | None
    res2: np.ndarray
    tr: np.ndarray | None
    logdet: float


def _common(stats: list[ClassStats]) -> list[ClassStats]:
    """The statistics on one anchor (that of the class with the most rows) unless they share one."""
    first = stats[0].anchor
    if all(s.anchor is first or np.array_equal(s.anchor, first) for s in stats):
        return stats
    anchor = max(stats, key=lambda s: s.n).anchor
    return [s.reanchored(anchor) for s in stats]


def log_evidence(stats: dict[str, ClassStats] | list[ClassStats], alpha: np.ndarray,
                 beta: np.ndarray) -> float:
    """Log marginal likelihood of the weighted data for prior precisions ``alpha`` (p,) > 0 on the
    columns with data and noise precisions ``beta`` (K,)."""
    st = _common(list(stats.values()) if isinstance(stats, dict) else list(stats))
    active = np.sum([np.diag(s.g) for s in st], axis=0) > 0
    prob = _Problem(st, active)
    return prob.log_evidence(prob.evaluate(np.asarray(alpha, dtype=float)[active],
                                           np.asarray(beta, dtype=float), need_cov=False))


def g_coordinates(stats: list[ClassStats], flat: np.ndarray | None = None
                  ) -> tuple[np.ndarray, np.ndarray, list[ClassStats]]:
    """Coordinates in which Zellner's g-prior is isotropic: ``theta = T u`` with ``T^T G T`` block
    diagonal, ``G = sum_k G_k`` the Gram matrix of the weighted rows (FitSNAP's weights).

    With ``U`` the ``flat`` (unpenalized: per-element constant) columns and ``P`` the others, ``B =
    G_UU^-1 G_UP`` (least squares where ``G_UU`` is singular) and ``M = G_PP - G_PU B = L L^T`` (the
    Gram matrix of the penalized columns with the constant columns projected out; Cholesky):

        theta_P = L^-T u_P,   theta_U = u_U - B theta_P,   so   T^T G T = diag(G_UU, I).

    The g-prior ``theta_P ~ N(0, (alpha M)^-1)`` (flat on ``theta_U``) is ``u_P ~ N(0, alpha^-1 I)``:
    the isotropic prior in ``u``, so :func:`fit_bayes` fits it with its isotropic machinery on the
    transformed statistics ``T^T G_k T``, ``T^T h0_k``, anchor ``T^-1 m0`` (residuals unchanged).
    The factorization is done in power-of-two scaled coordinates (as the fit's own).

    Args:
        stats: the classes' statistics on one anchor, over q columns (all with data, no duplicates).
        flat: (q,) bool, the unpenalized columns (default none).

    Returns:
        ``T`` (q, q), ``T^-1`` (q, q), and the statistics in ``u``.

    Raises:
        NumericalError: ``M`` is singular: the data do not determine every penalized coefficient
            (there the g-prior is improper).
    """
    gram = np.sum([s.g for s in stats], axis=0)
    q = gram.shape[0]
    flat = np.zeros(q, dtype=bool) if flat is None else np.asarray(flat, dtype=bool)
    d = _scale(np.diag(gram).copy())
    gs = gram * d[:, None] * d[None, :]
    u_, p_ = np.flatnonzero(flat), np.flatnonzero(~flat)
    if p_.size == 0:  # nothing penalized: the prior is flat, u = theta
        return np.eye(q), np.eye(q), list(stats)
    b = (np.linalg.lstsq(gs[np.ix_(u_, u_)], gs[np.ix_(u_, p_)], rcond=None)[0] if u_.size
         else np.zeros((0, p_.size)))
    m = gs[np.ix_(p_, p_)] - gs[np.ix_(p_, u_)] @ b
    factor = _cholesky(0.5 * (m + m.T))
    piv = np.diag(factor) ** 2 if factor is not None else None
    if factor is None or piv.min() <= p_.size * np.finfo(float).eps * piv.max():
        raise NumericalError("prior g is improper here: the weighted rows do not determine every "
                             "coefficient (their Gram matrix is singular)")
    r = sla.solve_triangular(factor, np.eye(p_.size), lower=True, trans="T")  # L^-T
    t = np.eye(q)
    t[np.ix_(p_, p_)] = r
    t[np.ix_(u_, p_)] = -b @ r
    tinv = np.eye(q)
    tinv[np.ix_(p_, p_)] = factor.T
    tinv[np.ix_(u_, p_)] = b
    t *= d[:, None]  # theta = D theta_s, theta_s = T_s u
    tinv /= d[None, :]
    anchor = tinv @ stats[0].anchor
    out = [ClassStats(g=t.T @ s.g @ t, h0=t.T @ s.h0, ee0=s.ee0, yy=s.yy, n=s.n, wref2=s.wref2,
                      anchor=anchor) for s in stats]
    return t, tinv, out


@limited(lambda *args, **kwargs: 1)
def fit_bayes(stats: dict[str, ClassStats], prior: str = "isotropic", max_iter: int = 500,
              tol: float = 1e-8, alpha0: float | np.ndarray | None = None,
              beta0: dict[str, float] | None = None, unpenalized: np.ndarray | None = None,
              accelerate: bool = True, progress: Callable[[int, float], None] | None = None
              ) -> BayesResult:
    """Maximize the evidence over prior and per-class noise precisions; return the posterior.

    Args:
        stats: {class name: statistics}, from :func:`cell_stats` / :func:`class_stats`.
        prior: ``isotropic`` (one alpha on the raw coefficients), ``none`` (flat prior: the mean is
            the weighted least-squares solution), ``ard`` (one alpha per coefficient) or ``g``
            (Zellner's g-prior, precision ``alpha M`` with ``M`` the Gram matrix of the weighted rows
            on the penalized columns, constant columns projected out: the mean is the weighted
            least-squares fit shrunk by ``beta / (alpha + beta)``, see the module notes; the
            isotropic prior where ``M`` is singular).
        max_iter: most fixed-point iterations.
        tol: stop when the largest relative change of alpha and beta in a plain fixed-point update
            is below ``tol``.
        alpha0: starting prior precision: a number, or (p,) per column (a warm start from another
            fit's ``alpha``); default from the data scale.
        beta0: starting noise precision per class (default: from the least-squares residuals).
        unpenalized: (p,) bool, columns left out of the prior's optimization, e.g. the per-element
            constant (energy offset) columns of SNAP, which only energies determine and which a
            shrinking prior would bias. They get a fixed, very weak prior (precision 1e-12 of the
            data scale): it does not bias an offset the data determine and keeps one they do not
            (two elements always in the same ratio) regular.
        accelerate: Anderson mixing of the fixed-point iteration (False: plain MacKay updates).
        progress: optional callback ``progress(iteration, log_evidence)`` after each iteration.

    Returns:
        A :class:`BayesResult`; ``converged`` False with ``message`` if ``max_iter`` was reached.
        With prior ``g``: ``alpha`` holds the precision in the coordinates ``u`` of
        :func:`g_coordinates` (alpha on the penalized ones) and ``prior_precision`` the (p, p) matrix.
        Columns the data leave at zero, and penalized columns that are a multiple of an earlier one
        (:func:`duplicate_columns`; ``ties`` lists them), are left out of the fit: mean 0, variance 0,
        the earlier column carries the pair, which is all any prediction sees.

    Raises:
        NumericalError: no column has data, or the precision is singular (no prior, too few data).
    """
    if prior not in PRIORS:
        raise ValueError(f"prior must be one of {PRIORS}, not {prior!r}")
    names = list(stats)
    st = _common([stats[k] for k in names])
    p = st[0].g.shape[0]
    gram = np.sum([s.g for s in st], axis=0)
    active = np.diag(gram) > 0
    flat_all = np.zeros(p, dtype=bool) if unpenalized is None else np.asarray(unpenalized, bool)
    rep, factor = duplicate_columns(gram, active & ~flat_all)
    del gram
    active &= rep < 0
    q = int(active.sum())
    if q == 0:
        raise NumericalError("every descriptor column is zero: nothing to fit")
    ties = [(int(j), int(rep[j]), float(factor[j])) for j in np.flatnonzero(rep >= 0)]
    if ties and np.any(st[0].anchor[rep >= 0] != 0):
        # The fit moves the active columns only: the anchor's share on a left-out duplicate is
        # folded into its earlier column (column j = factor * column rep: the same predictions).
        anchor = st[0].anchor.copy()
        for j, r, f in ties:
            anchor[r] += f * anchor[j]
            anchor[j] = 0.0
        st = [s.reanchored(anchor) for s in st]
    fallback = ""
    if prior == "g":
        sub = [ClassStats(g=s.g[np.ix_(active, active)], h0=s.h0[active], ee0=s.ee0, yy=s.yy, n=s.n,
                          wref2=s.wref2, anchor=s.anchor[active]) for s in st]
        try:
            coords = g_coordinates(sub, flat_all[active])
        except NumericalError as exc:  # the g-prior is improper here: the isotropic prior instead
            prior, fallback = "isotropic", f"; {exc}, so the isotropic prior was used"
        else:
            return _fit_g(coords, names, active, ties, max_iter=max_iter, tol=tol, alpha0=alpha0,
                          beta0=beta0, unpenalized=flat_all[active], accelerate=accelerate,
                          progress=progress)
    prob = _Problem(st, active)
    flat = flat_all[active]
    pen = ~flat
    scale2 = prob.scale2
    mean_scale2 = float(np.mean(scale2))

    # Start: beta from the per-class residuals of the pooled fit (unit class weights, a weak prior).
    if prior == "none":
        alpha = np.zeros(q)
    else:
        if alpha0 is None:
            a0 = np.full(q, 1e-6 * mean_scale2)
        elif np.ndim(alpha0) == 0:
            a0 = np.full(q, float(alpha0))
        else:
            a0 = np.asarray(alpha0, dtype=float)[active]
        alpha = np.where(pen, a0, 1e-12 * mean_scale2)
    tiny = np.full(q, 1e-12 * mean_scale2) if prior == "none" else alpha
    start = prob.evaluate(tiny, np.ones(prob.k), need_cov=False)
    beta = np.empty(prob.k)
    for i, name in enumerate(names):
        if beta0 and name in beta0:
            beta[i] = beta0[name]
        else:
            beta[i] = max(prob.n[i], 1) / max(start.res2[i], 1e-12 * max(prob.yy[i], 1e-300))

    # Noise floor: a class's residual is never taken below 1e-12 of its own mean square target (noise
    # std >= 1e-6 of the data scale), so classes the model fits exactly (fewer rows than coefficients)
    # keep a finite precision. A class whose targets are all zero (forces of perfect lattices) gets the
    # smallest physical scale of the other classes. Weighted units: yy_k ~ w_k^2 sum y^2, so the
    # physical mean square is yy_k wref2_k / n_k.
    n_k = np.maximum(prob.n, 1)
    wref2 = np.array([s.wref2 for s in st])
    phys = prob.yy * wref2 / n_k
    smallest = float(phys[phys > 0].min()) if np.any(phys > 0) else 1.0
    res_floor = 1e-12 * np.where(prob.yy > 0, prob.yy, n_k * smallest / wref2)
    has_rows = prob.n > 0

    def update(pt: _Point) -> tuple[np.ndarray, np.ndarray]:
        """MacKay's fixed-point update of (alpha, beta) at a point."""
        s_diag = np.diag(pt.cov) * prob.d**2
        mean = pt.u * prob.d
        gamma_k = np.maximum(prob.n - pt.beta * pt.tr, 1e-6 * prob.n)
        new_beta = np.where(has_rows, gamma_k / np.maximum(pt.res2, res_floor), pt.beta)
        new_alpha = pt.alpha.copy()
        if prior == "isotropic" and pen.any():
            gamma = max(float(np.sum(1.0 - pt.alpha[pen] * s_diag[pen])), 1e-6)
            new_alpha[pen] = gamma / max(float(np.sum(mean[pen] ** 2)), 1e-300)
        elif prior == "ard":
            gamma = np.clip(1.0 - pt.alpha * s_diag, 1e-10, 1.0)
            new_alpha = np.where(pen, np.minimum(gamma / np.maximum(mean**2, 1e-300),
                                                 1e12 * np.max(scale2)), pt.alpha)
        return new_alpha, new_beta

    # Log-space coordinates of the hyperparameters that move: beta, and alpha on penalized columns
    # (one value for the isotropic prior).
    moves_alpha = prior != "none" and pen.any()

    def pack(alpha_: np.ndarray, beta_: np.ndarray) -> np.ndarray:
        if not moves_alpha:
            return np.log(beta_)
        al = alpha_[pen][:1] if prior == "isotropic" else alpha_[pen]
        return np.concatenate([np.log(beta_), np.log(al)])

    def unpack(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        beta_ = np.exp(x[:prob.k])
        alpha_ = alpha.copy()
        if moves_alpha:
            alpha_[pen] = np.exp(x[prob.k:]) if prior == "ard" else float(np.exp(x[prob.k]))
        return alpha_, beta_

    history: list[float] = []
    converged, message, iterations = False, "maximum number of iterations reached", 0
    pt = prob.evaluate(alpha, beta)
    ev = prob.log_evidence(pt) if prior != "none" else None
    xs: list[np.ndarray] = []  # Anderson history: iterates and their fixed-point residuals
    fs: list[np.ndarray] = []
    for iterations in range(1, max_iter + 1):  # noqa: B007  (the count is reported)
        new_alpha, new_beta = update(pt)
        x = pack(pt.alpha, pt.beta)
        gx = pack(new_alpha, new_beta)
        change = float(np.max(np.abs(gx - x)))
        if change < tol:
            pt = prob.evaluate(new_alpha, new_beta)
            if prior != "none":
                history.append(prob.log_evidence(pt))
            converged, message = True, f"relative change of hyperparameters < {tol:g}"
            break
        cand = gx
        if accelerate and prior != "none":
            xs.append(x)
            fs.append(gx - x)
            del xs[:-(ANDERSON_DEPTH + 1)], fs[:-(ANDERSON_DEPTH + 1)]
            if len(fs) > 1:
                df = np.diff(np.array(fs), axis=0).T
                dx = np.diff(np.array(xs), axis=0).T
                gamma = np.linalg.lstsq(df, fs[-1], rcond=1e-10)[0]
                cand = gx - (dx + df) @ gamma
                cand = x + np.clip(cand - x, -5.0, 5.0)  # at most a factor e^5 per step
        new_pt = None
        if cand is not gx:
            try:
                trial = prob.evaluate(*unpack(cand))
                trial_ev = prob.log_evidence(trial)
                if np.isfinite(trial_ev) and trial_ev >= ev:
                    new_pt, ev = trial, trial_ev
            except NumericalError:
                pass
            if new_pt is None:
                xs.clear()
                fs.clear()
        if new_pt is None:
            new_pt = prob.evaluate(new_alpha, new_beta)
            if prior != "none":
                ev = prob.log_evidence(new_pt)
        pt = new_pt
        if prior != "none":
            history.append(ev)
        if progress is not None:
            progress(iterations, ev if ev is not None else float("nan"))

    q_cov = prob.d[:, None] * pt.cov * prob.d[None, :]
    full_mean = np.zeros(p)
    full_mean[active] = pt.u * prob.d
    full_cov = np.zeros((p, p))
    full_cov[np.ix_(active, active)] = 0.5 * (q_cov + q_cov.T)
    full_alpha = np.zeros(p)
    full_alpha[active] = pt.alpha
    logev = prob.log_evidence(pt) if prior != "none" else None
    noise_var = {name: s.wref2 / b for name, s, b in zip(names, st, pt.beta)}
    return BayesResult(mean=full_mean, cov=full_cov, alpha=full_alpha, beta=pt.beta.copy(),
                       noise_var=noise_var, log_evidence=logev, active=active, iterations=iterations,
                       converged=converged, message=message + fallback, history=history, ties=ties)


def _fit_g(coords: tuple[np.ndarray, np.ndarray, list[ClassStats]], names: list[str],
           active: np.ndarray, ties: list[tuple[int, int, float]],
           alpha0: float | np.ndarray | None = None, **kwargs: object) -> BayesResult:
    """:func:`fit_bayes` with Zellner's g-prior: the isotropic fit in :func:`g_coordinates`
    (``coords``, over the active columns), mapped back: ``mean = T m_u``, ``cov = T S_u T^T``, prior
    precision ``T^-T diag(alpha_u) T^-1`` (``alpha M`` on the penalized columns). The log evidence is
    the g-prior's (the marginal likelihood of the data does not depend on the coordinates)."""
    t, tinv, stats_u = coords
    p = active.size
    a0 = alpha0 if alpha0 is None or np.ndim(alpha0) == 0 else np.asarray(alpha0, dtype=float)[active]
    res = fit_bayes(dict(zip(names, stats_u)), prior="isotropic", alpha0=a0,
                    **kwargs)  # type: ignore[arg-type]
    mean = np.zeros(p)
    mean[active] = t @ res.mean
    cov = np.zeros((p, p))
    c = t @ res.cov @ t.T
    cov[np.ix_(active, active)] = 0.5 * (c + c.T)
    prec = np.zeros((p, p))
    pq = tinv.T @ (res.alpha[:, None] * tinv)
    prec[np.ix_(active, active)] = 0.5 * (pq + pq.T)
    alpha = np.zeros(p)
    alpha[active] = res.alpha
    return replace(res, mean=mean, cov=cov, alpha=alpha, active=active.copy(), ties=ties,
                   prior_precision=prec)
