"""Bayesian linear regression with a learned noise precision per noise class (numpy/scipy only).

Model (``../design.md`` section 3): rows ``a_i`` (length p) with targets ``y_i`` and relative weights
``w_i`` belong to noise classes ``k = c(i)``;

    y_i = a_i . theta + e_i,   e_i ~ N(0, 1 / (beta_k w_i^2)),   theta ~ N(0, diag(alpha)^-1).

The data enter only through per-class sufficient statistics computed in ONE pass over the rows: the
upper-triangular factor ``R_k`` of the QR decomposition of the weighted rows ``[w A_k | w y_k]``
(so ``G_k = A_k^T W^2 A_k = R_k^T R_k``), the projected targets ``z_k`` and the squared residual norm
``rho2_k`` outside the column space. Everything after that pass (evidence, its maximization,
posterior mean and covariance) costs O(K p^3), independent of the number of rows. Working with QR
factors instead of Gram matrices keeps the accuracy of a least-squares solver: with one class and
no prior the mean equals the SVD/least-squares solution to rounding.

Hyperparameters maximize the log evidence with MacKay's fixed-point updates
(``alpha_j = gamma_j / m_j^2``, ``beta_k = (n_k - beta_k tr(S G_k)) / ||r_k||^2``), which are the
stationarity conditions of the evidence.

BLAS threads: every entry point runs with one thread on matrices of fewer than
:data:`~fitsnap_uq.linear.threads.PARALLEL_MIN_COLS` columns, else with the process's budget
(:mod:`fitsnap_uq.linear.threads`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.linalg as sla

from fitsnap_uq.errors import NumericalError
from fitsnap_uq.linear.threads import limited

PRIORS = ("none", "isotropic", "ard")
DUPLICATE_TOL = 1e-9
"""Two descriptor columns are the same (up to sign) when their weighted rows, each scaled to unit
norm, differ by less than this (the round-off of the QR factor is ~1e-15 of it)."""


@dataclass
class ClassStats:
    """Sufficient statistics of one noise class.

    Attributes:
        r: (p, p) upper-triangular QR factor of the weighted rows (units of weighted A).
        z: (p,) projected weighted targets ``Q^T (w y)``.
        rho2: squared norm of the weighted residual outside the column space of ``w A``.
        n: number of rows with nonzero weight.
        wref2: ``1 / median(w)^2`` over those rows: turns the learned precision of weighted rows
            into the physical noise variance of a row of the class's typical weight,
            ``var = wref2 / beta`` (with one weight per class, as FitSNAP groups have, this is exact).
    """

    r: np.ndarray
    z: np.ndarray
    rho2: float
    n: int
    wref2: float


def _stats_cols(stats, *args, **kwargs) -> int:
    """Columns of the factors in ``stats`` (a list or a dict of :class:`ClassStats`)."""
    first = next(iter(stats.values())) if isinstance(stats, dict) else stats[0]
    return first.r.shape[1] + 1


@limited(lambda block: np.shape(block)[1])
def _qr_r(block: np.ndarray) -> np.ndarray:
    """Upper-triangular R of ``block`` (m, q), padded with zero rows to (q, q)."""
    q = block.shape[1]
    if block.shape[0] == 0:
        return np.zeros((q, q))
    r = np.linalg.qr(block, mode="r")
    if r.shape[0] < q:
        r = np.vstack([r, np.zeros((q - r.shape[0], q))])
    return r


@limited(lambda a, *args, **kwargs: np.shape(a)[1] + 1)
def class_stats(a: np.ndarray, y: np.ndarray, w: np.ndarray | None = None,
                block_rows: int = 16384, index: np.ndarray | None = None) -> ClassStats:
    """One pass over the rows of one noise class (a tall-skinny QR, block by block).

    Args:
        a: (n, p) descriptor rows.
        y: (n,) targets.
        w: (n,) relative weights (1 if None); rows with w == 0 do not count.
        block_rows: rows per QR block; blocks of ~16k rows keep the factorization in cache, which
            makes this pass faster than one LAPACK QR (or ``numpy.linalg.lstsq``) of all rows.
        index: optional row indices into ``a``/``y``/``w``: only these rows, gathered block by block
            (no copy of the selected rows as a whole).

    Returns:
        The class's :class:`ClassStats`.
    """
    a = np.asarray(a, dtype=float)
    y = np.asarray(y, dtype=float)
    p = a.shape[1]
    w = np.ones(a.shape[0]) if w is None else np.asarray(w, dtype=float)
    idx = np.arange(a.shape[0]) if index is None else np.asarray(index)
    idx = idx[w[idx] != 0]
    n = idx.size
    r_aug = np.zeros((0, p + 1))
    for start in range(0, n, block_rows):
        rows = idx[start:start + block_rows]
        top = r_aug.shape[0]
        block = np.empty((top + rows.size, p + 1))
        block[:top] = r_aug
        wb = w[rows]
        np.multiply(a[rows], wb[:, None], out=block[top:, :p])
        np.multiply(y[rows], wb, out=block[top:, p])
        r_aug = np.linalg.qr(block, mode="r")
    r_aug = _qr_r(r_aug)
    wref2 = 1.0 / float(np.median(np.abs(w[idx]))) ** 2 if n else 1.0
    return ClassStats(r=np.triu(r_aug[:p, :p]), z=r_aug[:p, p].copy(), rho2=float(r_aug[p, p] ** 2),
                      n=int(n), wref2=wref2)


@limited(_stats_cols)
def merge_stats(stats: list[ClassStats]) -> ClassStats:
    """Statistics of the union of several classes' rows (for pooled, one-class fits)."""
    p = stats[0].r.shape[0]
    stacked = np.vstack([np.hstack([s.r, s.z[:, None]]) for s in stats])
    r_aug = _qr_r(stacked)
    n = sum(s.n for s in stats)
    refs = [s.wref2 for s in stats if s.n]
    wref2 = float(np.median(refs)) if refs else 1.0
    return ClassStats(r=np.triu(r_aug[:p, :p]), z=r_aug[:p, p].copy(),
                      rho2=float(r_aug[p, p] ** 2 + sum(s.rho2 for s in stats)), n=n, wref2=wref2)


def duplicate_columns(r: np.ndarray, candidates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ``candidates`` columns of the data (given by a factor ``r`` (k, p) with Gram
    ``r^T r = A^T W^2 A``) that equal +- an earlier candidate column on every row, to
    :data:`DUPLICATE_TOL` relative: (p,) the earlier column of each (-1 where none) and (p,) the sign
    (column j = sign[j] * column rep[j]).

    Explicit multi-element SNAP (``chemflag = 1``) has such columns by construction (e.g. with j1 = j2
    the components of element triples (e1, e2, e3) and (e2, e1, e3) agree). The data cannot tell the
    coefficients of such a pair apart (only ``theta_rep + sign * theta_dup`` enters any prediction);
    with both in the fit the posterior covariance has exact null directions of the data, along which
    its spread is the prior's alone, and whose conditioning no Cholesky factor survives.
    """
    p = r.shape[1]
    rep = np.full(p, -1)
    sign = np.ones(p)
    cols = np.flatnonzero(candidates)
    if cols.size < 2:
        return rep, sign
    u = r[:, cols]
    norms = np.linalg.norm(u, axis=0)
    live = norms > 0
    u = u[:, live] / norms[live]
    cols = cols[live]
    gram = u.T @ u
    for i, j in np.argwhere(np.triu(np.abs(gram) > 1.0 - 1e-8, k=1)):  # i < j, by i then j
        if rep[cols[j]] >= 0 or rep[cols[i]] >= 0:  # j already tied; or i is, and so is j to i's rep
            continue
        sg = 1.0 if gram[i, j] > 0 else -1.0
        if np.linalg.norm(u[:, j] - sg * u[:, i]) <= DUPLICATE_TOL:
            rep[cols[j]], sign[cols[j]] = cols[i], sg * norms[live][j] / norms[live][i]
    return rep, sign


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


@limited(_stats_cols)
def _posterior(stats: list[ClassStats], alpha: np.ndarray, beta: np.ndarray):
    """Posterior factor R_post (p, p) with S^-1 = R_post^T R_post, and the mean m."""
    p = stats[0].r.shape[0]
    blocks = [np.diag(np.sqrt(alpha))]
    rhs = [np.zeros(p)]
    for s, b in zip(stats, beta):
        sb = np.sqrt(b)
        blocks.append(sb * s.r)
        rhs.append(sb * s.z)
    m_aug = np.hstack([np.vstack(blocks), np.concatenate(rhs)[:, None]])
    r_aug = _qr_r(m_aug)
    r_post = np.triu(r_aug[:p, :p])
    c = r_aug[:p, p]
    d = np.abs(np.diag(r_post))
    if d.min() <= 1e-13 * max(d.max(), 1e-300):
        raise NumericalError("posterior precision is singular: the data do not determine every "
                             "coefficient and there is no prior (use prior = isotropic or ard)")
    mean = sla.solve_triangular(r_post, c)
    return r_post, mean


def log_evidence(stats: list[ClassStats], alpha: np.ndarray, beta: np.ndarray,
                 r_post: np.ndarray, mean: np.ndarray) -> float:
    """Log marginal likelihood of the weighted data for given (alpha, beta); alpha > 0 needed."""
    n_tot = sum(s.n for s in stats)
    e_data = sum(b * (np.sum((s.z - s.r @ mean) ** 2) + s.rho2) for s, b in zip(stats, beta))
    e_prior = float(np.sum(alpha * mean**2))
    logdet_prec = 2.0 * np.sum(np.log(np.abs(np.diag(r_post))))
    return float(0.5 * sum(s.n * np.log(b) for s, b in zip(stats, beta))
                 + 0.5 * np.sum(np.log(alpha)) - 0.5 * (e_data + e_prior)
                 - 0.5 * logdet_prec - 0.5 * n_tot * np.log(2 * np.pi))


@limited(_stats_cols)
def fit_bayes(stats: dict[str, ClassStats], prior: str = "isotropic", max_iter: int = 500,
              tol: float = 1e-8, alpha0: float | None = None,
              beta0: dict[str, float] | None = None, unpenalized: np.ndarray | None = None
              ) -> BayesResult:
    """Maximize the evidence over prior and per-class noise precisions; return the posterior.

    Args:
        stats: {class name: statistics}, from :func:`class_stats`.
        prior: ``none`` (flat prior: the mean is the weighted least-squares solution),
            ``isotropic`` (one alpha) or ``ard`` (one alpha per coefficient).
        max_iter: most fixed-point iterations.
        tol: stop when the largest relative change of alpha and beta is below ``tol``.
        alpha0: starting prior precision (default: from the data scale).
        beta0: starting noise precision per class (default: from the least-squares residuals).
        unpenalized: (p,) bool, columns left out of the prior's optimization, e.g. the per-element
            constant (energy offset) columns of SNAP, which only energies determine and which a
            shrinking prior would bias. They get a fixed, very weak prior (precision 1e-12 of the
            data scale): it does not bias an offset the data determine and keeps one they do not
            (two elements always in the same ratio) regular.

    Returns:
        A :class:`BayesResult`; ``converged`` False with ``message`` if ``max_iter`` was reached.
        Columns the data leave at zero, and penalized columns that are a multiple of an earlier one
        (:func:`duplicate_columns`; ``ties`` lists them), are left out of the fit: mean 0, variance 0,
        the earlier column carries the pair, which is all any prediction sees.
    """
    if prior not in PRIORS:
        raise ValueError(f"prior must be one of {PRIORS}, not {prior!r}")
    names = list(stats)
    st_all = [stats[k] for k in names]
    p = st_all[0].r.shape[0]
    # Columns no class touches (all-zero descriptors) are left out of the fit.
    colnorm = np.sqrt(sum(np.sum(s.r**2, axis=0) for s in st_all))
    active = colnorm > 1e-300
    flat_all = np.zeros(p, dtype=bool) if unpenalized is None else np.asarray(unpenalized, bool)
    rep, factor = duplicate_columns(merge_stats(st_all).r, active & ~flat_all)
    active &= rep < 0
    q = int(active.sum())
    if q == 0:
        raise NumericalError("every descriptor column is zero: nothing to fit")
    flat = flat_all[active]
    pen = ~flat
    st = st_all
    if q < p:
        # Re-factor with the active columns: [R[:, act] | z] keeps the same Gram and projections.
        st = []
        for s in st_all:
            r_aug = _qr_r(np.hstack([s.r[:, active], s.z[:, None]]))
            st.append(ClassStats(r=np.triu(r_aug[:q, :q]), z=r_aug[:q, q].copy(),
                                 rho2=s.rho2 + float(r_aug[q, q] ** 2), n=s.n, wref2=s.wref2))

    # Start: beta from the per-class residuals of the pooled least-squares fit.
    pooled = merge_stats(st)
    scale = np.sqrt(np.sum(pooled.r**2, axis=0))
    if prior == "none":
        alpha = np.zeros(q)
    else:
        a0 = alpha0 if alpha0 is not None else 1e-6 * float(np.mean(scale**2))
        weak = 1e-12 * float(np.mean(scale**2))
        alpha = np.where(pen, a0, weak)
    tiny = np.full(q, 1e-12 * float(np.mean(scale**2))) if prior == "none" else alpha
    _, m0 = _posterior([pooled], tiny, np.ones(1))
    beta = np.empty(len(st))
    for i, (name, s) in enumerate(zip(names, st)):
        if beta0 and name in beta0:
            beta[i] = beta0[name]
            continue
        res2 = float(np.sum((s.z - s.r @ m0) ** 2) + s.rho2)
        beta[i] = max(s.n, 1) / max(res2, 1e-12 * max(float(np.sum(s.z**2) + s.rho2), 1e-300))

    # Noise floor: a class's residual is never taken below 1e-12 of its own mean square target (noise
    # std >= 1e-6 of the data scale), so classes the model fits exactly (fewer rows than coefficients)
    # keep a finite precision. A class whose targets are all zero (forces of perfect lattices) gets the
    # smallest physical scale of the other classes. Weighted units: yy_k ~ w_k^2 sum y^2, so the
    # physical mean square is yy_k wref2_k / n_k.
    yy = np.array([float(np.sum(s.z**2) + s.rho2) for s in st])
    n_k = np.array([max(s.n, 1) for s in st], dtype=float)
    wref2 = np.array([s.wref2 for s in st])
    phys = yy * wref2 / n_k
    smallest = float(phys[phys > 0].min()) if np.any(phys > 0) else 1.0
    res_floor = 1e-12 * np.where(yy > 0, yy, n_k * smallest / wref2)

    history: list[float] = []
    converged, message, iterations = False, "maximum number of iterations reached", 0
    r_post, mean = _posterior(st, alpha, beta)
    for iterations in range(1, max_iter + 1):  # noqa: B007  (the count is reported)
        rinv = sla.solve_triangular(r_post, np.eye(q))  # S = rinv rinv^T
        s_diag = np.sum(rinv**2, axis=1)
        new_beta = beta.copy()
        for i, s in enumerate(st):
            if s.n == 0:
                continue
            tr_sg = float(np.sum((s.r @ rinv) ** 2))
            res2 = float(np.sum((s.z - s.r @ mean) ** 2) + s.rho2)
            gamma_k = max(s.n - beta[i] * tr_sg, 1e-6 * s.n)
            new_beta[i] = gamma_k / max(res2, res_floor[i])
        new_alpha = alpha.copy()
        if prior == "isotropic" and pen.any():
            gamma = max(float(np.sum(1.0 - alpha[pen] * s_diag[pen])), 1e-6)
            new_alpha[pen] = gamma / max(float(np.sum(mean[pen] ** 2)), 1e-300)
        elif prior == "ard":
            gamma = np.clip(1.0 - alpha * s_diag, 1e-10, 1.0)
            new_alpha = np.where(pen, np.minimum(gamma / np.maximum(mean**2, 1e-300),
                                                 1e12 * np.max(scale**2)), alpha)
        change = float(np.max(np.abs(np.log(new_beta / beta))))
        if prior != "none" and pen.any():
            change = max(change, float(np.max(np.abs(np.log(new_alpha[pen] / alpha[pen])))))
        alpha, beta = new_alpha, new_beta
        r_post, mean = _posterior(st, alpha, beta)
        if prior != "none":
            history.append(log_evidence(st, alpha, beta, r_post, mean))
        if change < tol:
            converged, message = True, f"relative change of hyperparameters < {tol:g}"
            break

    rinv = sla.solve_triangular(r_post, np.eye(q))
    cov_q = rinv @ rinv.T
    cov_q = 0.5 * (cov_q + cov_q.T)
    full_mean = np.zeros(p)
    full_mean[active] = mean
    full_cov = np.zeros((p, p))
    full_cov[np.ix_(active, active)] = cov_q
    full_alpha = np.zeros(p)
    full_alpha[active] = alpha
    logev = log_evidence(st, alpha, beta, r_post, mean) if prior != "none" else None
    noise_var = {name: s.wref2 / b for name, s, b in zip(names, st, beta)}
    return BayesResult(mean=full_mean, cov=full_cov, alpha=full_alpha, beta=beta, noise_var=noise_var,
                       log_evidence=logev, active=active, iterations=iterations, converged=converged,
                       message=message, history=history,
                       ties=[(int(j), int(rep[j]), float(factor[j])) for j in np.flatnonzero(rep >= 0)])
