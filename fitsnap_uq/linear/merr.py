"""Embedded model error (Sargsyan, Huan, Najm, IJUQ 9(4) 2019) for linear models; numpy/scipy only.

The coefficients carry the model error: ``theta = c + diag(s) xi``, ``xi ~ N(0, I)``, on the embedded
coefficients (all, or a chosen list); additive ``s_k = sigma_k`` or multiplicative
``s_k = sigma_k |c_k|``. For weighted rows ``a_i``, targets ``y_i`` and data noise variance ``d``:

* ``iid``:  ``y_i ~ N(a_i . c, v_i)``, ``v_i = sum_k a_ik^2 s_k^2 + d`` (independent rows);
* ``abc``:  the approximate-Bayesian-computation likelihood of FitSNAP's MERR, which asks the spread
  to match the error: ``-0.5 sum_i ((|r_i| - sqrt(v_i)) / eps)^2`` (``eps = 0.1``);
* ``full``: ``y ~ N(A c, A diag(s^2) A^T + d I)``, evaluated with Woodbury/Cholesky identities in
  the embedded dimension (never an n x n matrix), from the Gram sums of one pass over the rows.
  For a linear model with free c this likelihood mostly assigns no model error: errors of the form
  ``A xi`` are absorbed by c (the least-squares residual is orthogonal to A's columns), so what the
  functional form cannot fit is seen by the ``iid`` and ``abc`` likelihoods, not by ``full``.

The negative log-likelihood is minimized from a deterministic start (the least-squares coefficients
and a model-error scale that explains the least-squares residuals); see :func:`_fit_model_error` for
the methods. The same objective as FitSNAP 3.1.0.4's MERR (``lreg.py``'s ``logpost_emb``), so values are
directly comparable.

**Rows in blocks.** The rows are read :data:`BLOCK` at a time (:class:`RowBlocks`; weights applied per
block): the squares ``a_ik^2``, residuals and weighted products are formed block by block, so memory is
the rows themselves plus O(n + p^2) (the ``abc`` likelihood, whose least-squares solver needs its
n x (p + q) Jacobian, is the exception). Each pass costs O(n p) (objective, gradient) or O(n p^2)
(weighted Gram matrices, Hessians).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import scipy.linalg as sla
from scipy.optimize import minimize, nnls

from fitsnap_uq.errors import InputError
from fitsnap_uq.linear.bayes import cell_stats, duplicate_columns, least_squares
from fitsnap_uq.linear.varfit import newton_variances, variances, weighted_gram

LIKELIHOODS = ("iid", "abc", "full")
ABC_EPS = 0.1
BLOCK = 4096
"""Rows per block of the passes over the rows."""


class RowBlocks:
    """The weighted rows ``(w_i a_i, w_i y_i)`` of a linear system, read :data:`BLOCK` rows at a time.

    Args:
        a: (n, p) rows (not copied).
        y: (n,) targets.
        w: optional (n,) row weights (the rows are ``w_i a_i``, ``w_i y_i``); None: 1.
    """

    def __init__(self, a: np.ndarray, y: np.ndarray, w: np.ndarray | None = None,
                 block_rows: int = BLOCK) -> None:
        self.a = a
        self.w = None if w is None else np.asarray(w, dtype=float)
        self.y_raw = np.asarray(y, dtype=float)
        self.y = self.y_raw if self.w is None else self.y_raw * self.w
        self.n, self.p = np.shape(a)
        self.block_rows = block_rows

    def spans(self):
        """Row ranges ``(s, e)`` of the blocks."""
        for s in range(0, self.n, self.block_rows):
            yield s, min(s + self.block_rows, self.n)

    def rows(self, s: int, e: int) -> np.ndarray:
        """(e - s, p) weighted rows ``s:e``."""
        blk = np.asarray(self.a[s:e], dtype=float)
        return blk if self.w is None else blk * self.w[s:e, None]

    def squares(self, embed: np.ndarray) -> Callable[[slice], np.ndarray]:
        """``block(rows) -> (w a[rows, embed])^2``: rows of ``E = A_e^2`` (a slice; for :mod:`varfit`)."""
        every = embed.size == self.p and bool(np.all(embed == np.arange(self.p)))

        def block(rows: slice) -> np.ndarray:
            src = self.a[rows] if every else self.a[rows, embed]
            out = np.empty(src.shape)
            if self.w is not None:
                np.multiply(src, self.w[rows, None], out=out)
            else:
                out[...] = src
            return np.square(out, out=out)

        return block

    def matvec(self, c: np.ndarray) -> np.ndarray:
        """(n,) ``A c``."""
        out = np.empty(self.n)
        for s, e in self.spans():
            out[s:e] = self.rows(s, e) @ c
        return out

    def gram(self, omega: np.ndarray | None = None) -> np.ndarray:
        """(p, p) ``A^T diag(omega) A`` (omega >= 0, (n,); None: 1)."""
        g = np.zeros((self.p, self.p))
        for s, e in self.spans():
            blk = self.rows(s, e)
            if omega is not None:
                blk = blk * np.sqrt(omega[s:e])[:, None]
            g += blk.T @ blk
        return 0.5 * (g + g.T)

    def weighted_least_squares(self, omega: np.ndarray | None = None) -> np.ndarray:
        """(p,) ``argmin sum_i omega_i (y_i - a_i c)^2`` on the weighted rows (columns without data: 0),
        from one pass of Gram statistics and one of residuals
        (:func:`~fitsnap_uq.linear.bayes.least_squares`)."""
        return self.least_squares_and_gram(omega)[0]

    def least_squares_and_gram(self, omega: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`weighted_least_squares` and the Gram matrix ``A^T diag(omega) A`` (p, p) it used."""
        w = np.ones(self.n) if self.w is None else self.w
        if omega is not None:
            w = w * np.sqrt(omega)
        st = cell_stats(self.a, self.y_raw, w, np.zeros(self.n, dtype=np.int64), 1,
                        block_rows=self.block_rows)[0]
        if st is None:
            return np.zeros(self.p), np.zeros((self.p, self.p))
        return least_squares(st), st.g

    def dense(self) -> np.ndarray:
        """(n, p) all weighted rows (a copy unless unweighted)."""
        return np.asarray(self.a, dtype=float) if self.w is None else self.a * self.w[:, None]


def _blocks_of(a: np.ndarray | RowBlocks, y: np.ndarray | None) -> RowBlocks:
    return a if isinstance(a, RowBlocks) else RowBlocks(a, y)


@dataclass
class MerrResult:
    """Outcome of :func:`fit_model_error` (FitSNAP's column layout, weighted units for ``data_var``).

    Attributes:
        coef: (p,) coefficient mean c.
        sigma: (p,) model-error std of each coefficient (``s_k``; 0 where not embedded).
        data_var: data-noise variance d of the weighted rows.
        nll: final negative log-likelihood (FitSNAP MERR's objective for ``iid``/``abc``).
        grad_norm: infinity norm of the gradient at the end (scaled coordinates).
        iterations, converged, message: the optimizer's report.
        coef_cov: (p, p) Laplace covariance of c at the optimum (parametric uncertainty).
        embed: indices of the embedded coefficients.
        ties: the duplicate columns, ``(column, its earlier column, factor)`` (column = factor x
            earlier column on every row), as :attr:`fitsnap_uq.linear.bayes.BayesResult.ties`: left
            out of the fit (mean, model error, covariance 0), their share carried by the earlier one.
    """

    coef: np.ndarray
    sigma: np.ndarray
    data_var: float
    nll: float
    grad_norm: float
    iterations: int
    converged: bool
    message: str
    coef_cov: np.ndarray
    embed: np.ndarray
    history: list[float] = field(default_factory=list)
    ties: list[tuple[int, int, float]] = field(default_factory=list)

    @property
    def total_cov(self) -> np.ndarray:
        """(p, p) covariance of the coefficients: the model error ``diag(s^2)`` plus the Laplace
        covariance of the mean (not symmetrized)."""
        return np.diag(self.sigma**2) + self.coef_cov


def nll_iid(x: np.ndarray, a: np.ndarray | RowBlocks, y: np.ndarray | None, embed: np.ndarray,
            data_var: float, abc: bool = False) -> tuple[float, np.ndarray]:
    """Negative log-likelihood (``iid`` or ``abc``) and its gradient w.r.t. ``x = [c, t]``,
    ``t_k = s_k^2`` the model-error variances of the embedded coefficients.

    Args:
        x: (p + q,) coefficients and variances.
        a, y: (n, p) weighted rows and (n,) targets, or a :class:`RowBlocks` (``y`` ignored).
        embed: (q,) embedded coefficient indices; data_var: ``d``.
    """
    return _iid_pass(x, _blocks_of(a, y), embed, data_var, abc)[:2]


def _iid_pass(x: np.ndarray, rb: RowBlocks, embed: np.ndarray, data_var: float, abc: bool = False,
              extras: bool = False) -> tuple[float, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """:func:`nll_iid` in one pass over the rows; with ``extras`` (iid) also the curvature scales of
    the variances ``sqrt(sum_i (a_ik^2 / v_i)^2)`` (q,) and ``A^T V^-1 A`` (p, p) in the same pass."""
    p = rb.p
    c, t = x[:p], x[p:]
    val = 0.0
    g_c = np.zeros(p)
    g_t = np.zeros(embed.size)
    tsc = np.zeros(embed.size) if extras else None
    prec = np.zeros((p, p)) if extras else None
    for s, e in rb.spans():
        blk = rb.rows(s, e)
        ae2 = blk[:, embed] ** 2
        r = blk @ c - rb.y[s:e]
        v = ae2 @ t + data_var
        if abc:
            sd = np.sqrt(v)
            err = (np.abs(r) - sd) / ABC_EPS
            val += 0.5 * float(err @ err)
            g_r = err * np.sign(r) / ABC_EPS
            g_v = -err * 0.5 / (sd * ABC_EPS)
        else:
            val += 0.5 * float(np.sum(r**2 / v)) + 0.5 * float(np.sum(np.log(v)))
            g_r = r / v
            g_v = 0.5 / v - 0.5 * r**2 / v**2
        g_c += blk.T @ g_r
        g_t += ae2.T @ g_v
        if extras:
            tsc += np.einsum("ij,ij->j", ae2, ae2 / v[:, None] ** 2)
            sw = blk / np.sqrt(v)[:, None]
            prec += sw.T @ sw
    val += (0.5 * np.log(2 * np.pi) + np.log(ABC_EPS)) if abc else 0.5 * rb.n * np.log(2 * np.pi)
    if extras:
        tsc, prec = np.sqrt(tsc), 0.5 * (prec + prec.T)
    return val, np.concatenate([g_c, g_t]), tsc, prec


def _fixed_mean_pass(rb: RowBlocks, embed: np.ndarray, v: np.ndarray, precision: bool
                     ) -> tuple[np.ndarray, np.ndarray | None]:
    """The curvature scales of the variances ``sqrt(sum_i (a_ik^2 / v_i)^2)`` (q,) and, with
    ``precision``, ``A^T V^-1 A`` (p, p) at known variances ``v`` (n,): what :func:`_iid_pass` adds with
    ``extras``, without its objective and gradient (known from the variances' Newton fit), in one pass
    of :func:`fitsnap_uq.linear.varfit.cache_rows` rows (cache-sized blocks) with one BLAS thread each
    (300,000 x 500 rows on two busy cores: 4 s, 16 s with two BLAS threads), the blocks spread over
    the thread budget as Python threads."""
    from fitsnap_uq.linear.threads import blas_threads
    from fitsnap_uq.linear.varfit import cache_rows

    with blas_threads(1):
        return _fixed_mean_sums(rb, embed, v, precision, cache_rows(rb.p))


def _fixed_mean_sums(rb: RowBlocks, embed: np.ndarray, v: np.ndarray, precision: bool, rows: int
                     ) -> tuple[np.ndarray, np.ndarray | None]:
    """:func:`_fixed_mean_pass` in blocks of ``rows`` rows, spread over
    :func:`~fitsnap_uq.linear.threads.pass_workers` threads (partial sums added in order)."""
    from fitsnap_uq.linear.threads import map_row_chunks, pass_workers

    every = embed.size == rb.p and bool(np.all(embed == np.arange(rb.p)))

    def chunk(lo: int, hi: int) -> tuple[np.ndarray, np.ndarray | None]:
        tsc = np.zeros(embed.size)
        prec = np.zeros((rb.p, rb.p)) if precision else None
        for s in range(lo, hi, rows):
            e = min(s + rows, hi)
            sw = rb.rows(s, e) * (1.0 / np.sqrt(v[s:e]))[:, None]  # a_i / sqrt(v_i)
            if prec is not None:
                prec += sw.T @ sw
            q2 = np.square(sw if every else sw[:, embed])  # a_ik^2 / v_i
            tsc += np.einsum("ij,ij->j", q2, q2)
        return tsc, prec

    flops = 2.0 * rb.n * (rb.p * rb.p if precision else embed.size)
    parts = map_row_chunks(chunk, rb.n, rows, pass_workers(flops))
    tsc = functools.reduce(np.add, [t for t, _ in parts])
    prec = None if not precision else functools.reduce(np.add, [p for _, p in parts])
    return np.sqrt(tsc), (None if prec is None else 0.5 * (prec + prec.T))


@dataclass
class GramStats:
    """One pass over the rows for the ``full`` likelihood: G = A^T A, h = A^T y, yy = y^T y, n."""

    g: np.ndarray
    h: np.ndarray
    yy: float
    n: int

    @classmethod
    def of(cls, a: np.ndarray | RowBlocks, y: np.ndarray | None = None) -> GramStats:
        """From (n, p) rows and (n,) targets, or a :class:`RowBlocks`, block by block."""
        rb = _blocks_of(a, y)
        g = np.zeros((rb.p, rb.p))
        h = np.zeros(rb.p)
        for s, e in rb.spans():
            blk = rb.rows(s, e)
            g += blk.T @ blk
            h += blk.T @ rb.y[s:e]
        return cls(g=0.5 * (g + g.T), h=h, yy=float(rb.y @ rb.y), n=rb.n)


def nll_full(x: np.ndarray, st: GramStats, embed: np.ndarray, data_var: float) -> tuple[float, np.ndarray]:
    """Negative log-likelihood of ``y ~ N(A c, A_e T A_e^T + d I)`` and its gradient w.r.t. [c, t].

    With ``B = A_e^T A_e``, ``P = (I + T B / d)^-1`` and ``h = A_e^T r``: ``r^T C^-1 r =
    (|r|^2 - h^T P T h / d) / d``, ``log|C| = n log d + log|I + S B S / d|`` (S = T^1/2),
    ``d/dt_k = -0.5 (P^T h)_k^2 / d^2 + 0.5 (B P)_kk / d``: everything in the embedded dimension.
    """
    p = st.g.shape[0]
    c, t = x[:p], x[p:]
    d = data_var
    gc = st.g @ c
    rr = st.yy - 2.0 * float(st.h @ c) + float(c @ gc)
    ar = gc - st.h  # A^T (A c - y)
    b = st.g[np.ix_(embed, embed)]
    h = ar[embed]
    q = embed.size
    sq = np.sqrt(np.maximum(t, 0.0))
    chol = np.linalg.cholesky(np.eye(q) + sq[:, None] * b * sq[None, :] / d)
    logdet_m = 2.0 * float(np.sum(np.log(np.diag(chol))))
    pmat = np.linalg.inv(np.eye(q) + t[:, None] * b / d)  # P
    kh = pmat @ (t * h)  # P T h
    val = 0.5 * (rr - float(h @ kh) / d) / d + 0.5 * (st.n * np.log(d) + logdet_m) \
        + 0.5 * st.n * np.log(2 * np.pi)
    grad_c = (ar - st.g[:, embed] @ kh / d) / d
    pth = pmat.T @ h
    grad_t = -0.5 * pth**2 / d**2 + 0.5 * np.diag(b @ pmat) / d
    return val, np.concatenate([grad_c, grad_t])


def anl_data_var(a: np.ndarray, y: np.ndarray) -> float:
    """FitSNAP ANL's data-noise estimate ``sigmahat`` (what FitSNAP's MERR uses as ``datavar``)."""
    npt, nbas = a.shape
    coef = sla.lstsq(a, y, 1e-13)[0]
    res = y - a @ coef
    return float((res @ res / 2.0) / ((npt - nbas) / 2.0 - 1.0))


def _nnls_gram(gram: np.ndarray, rhs: np.ndarray, max_iter: int) -> np.ndarray:
    """``argmin_{t >= 0} 1/2 t^T G t - rhs^T t`` (G (q, q) positive semi-definite) by non-negative least
    squares on a square root of the diagonally scaled G (eigenvalues below 1e-14 of the largest
    floored: G is known to that accuracy)."""
    dg = np.diag(gram)
    scale = 1.0 / np.sqrt(np.where(dg > 0, dg, 1.0))
    lam, vec = np.linalg.eigh(gram * scale[:, None] * scale[None, :])
    lam = np.maximum(lam, 1e-14 * max(float(lam.max()), 1e-300))
    root = np.sqrt(lam)[:, None] * vec.T
    u = nnls(root, (vec.T @ (scale * rhs)) / np.sqrt(lam), maxiter=max_iter)[0]
    return scale * u


def _irls_iid(rb: RowBlocks, embed: np.ndarray, d: float, c: np.ndarray, t: np.ndarray,
              max_iter: int, tol: float) -> tuple[np.ndarray, np.ndarray, int]:
    """Alternate the exact c-step (weighted least squares with weights 1/v) and the Fisher-scoring
    t-step (non-negative weighted least squares of r^2 - d on E = A_e^2 with weights 1/(2 v^2));
    each step lowers the iid negative log-likelihood for its block. Per iteration: a weighted Gram
    matrix of A (O(n p^2)) and of E (O(n q^2)), in blocks."""
    square = rb.squares(embed)
    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007  (the count is reported)
        v = variances(square, rb.n, t, d)
        c_new = rb.weighted_least_squares(1.0 / v)
        r = rb.matvec(c_new) - rb.y
        omega = 1.0 / (2.0 * v**2)
        gram = weighted_gram(square, rb.n, embed.size, omega)
        rhs = np.zeros(embed.size)
        for s, e in rb.spans():
            rhs += (omega[s:e] * (r[s:e] ** 2 - d)) @ square(slice(s, e))
        t_new = _nnls_gram(gram, rhs, 50 * max(t.size, 1))
        change = max(float(np.max(np.abs(t_new - t))) / max(float(np.max(t_new)), 1e-300),
                     float(np.max(np.abs(c_new - c))) / max(float(np.max(np.abs(c_new))), 1e-300))
        c, t = c_new, t_new
        if change < tol:
            break
    return c, t, it


def _profile_newton_iid(rb: RowBlocks, live: np.ndarray, embed: np.ndarray, d: float, t: np.ndarray,
                        max_iter: int, tol: float) -> tuple[np.ndarray, np.ndarray, int]:
    """Projected Newton on the profile likelihood ``F(t) = min_c f(c, t)`` of the iid model.

    ``grad F = E^T (1/v - r^2/v^2) / 2`` at ``c*(t)`` and ``hess F = H_tt - K^T G_v^-1 K`` with
    ``G_v = A^T V^-1 A``, ``K = A^T diag(r / v^2) E``, ``H_tt = E^T diag(r^2/v^3 - 1/(2 v^2)) E``
    (one pass over the rows; ``G_v^-1 K`` by the Cholesky factor of the diagonally scaled ``G_v``).
    Variances at 0 with a positive gradient stay at their bound; a non-positive-definite Hessian is
    shifted (Levenberg); steps are projected onto t >= 0 with Armijo backtracking. Converges
    quadratically near the optimum. Each profile evaluation: a weighted least-squares fit (O(n p^2)).
    """
    n = rb.n
    square = rb.squares(embed)
    lv = np.flatnonzero(live)

    def profile(t: np.ndarray):
        v = variances(square, n, t, d)
        c = rb.weighted_least_squares(1.0 / v)
        r = rb.matvec(c) - rb.y
        val = 0.5 * float(np.sum(r**2 / v)) + 0.5 * float(np.sum(np.log(v))) + 0.5 * n * np.log(2 * np.pi)
        return val, c, r, v

    val, c, r, v = profile(t)
    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007  (the count is reported)
        g = np.zeros(embed.size)
        k = np.zeros((lv.size, embed.size))
        h = np.zeros((embed.size, embed.size))
        gv_ = np.zeros((lv.size, lv.size))
        for s, e in rb.spans():
            blk = rb.rows(s, e)[:, lv]
            ae2 = np.square(rb.rows(s, e)[:, embed])
            vb, rb_ = v[s:e], r[s:e]
            g += (0.5 / vb - 0.5 * rb_**2 / vb**2) @ ae2
            k += blk.T @ ((rb_ / vb**2)[:, None] * ae2)
            h += ae2.T @ ((-0.5 / vb**2 + rb_**2 / vb**3)[:, None] * ae2)
            sw = blk / np.sqrt(vb)[:, None]
            gv_ += sw.T @ sw
        free = (t > 0) | (g < 0)
        if not free.any():
            break
        dg = np.diag(gv_)
        sc = 1.0 / np.sqrt(np.where(dg > 0, dg, 1.0))
        lam, vec = np.linalg.eigh(gv_ * sc[:, None] * sc[None, :])
        keep = lam > lam.max() * lv.size * np.finfo(float).eps
        m = (vec[:, keep].T @ (sc[:, None] * k)) / np.sqrt(lam[keep])[:, None]
        h = 0.5 * (h + h.T) - m.T @ m
        hf = h[np.ix_(free, free)]
        gf = g[free]
        lam_min = np.linalg.eigvalsh(hf).min()
        if lam_min <= 1e-12 * max(abs(lam_min), 1.0):
            hf = hf + (abs(lam_min) + 1e-8 * max(np.abs(np.diag(hf)).max(), 1e-300)) * np.eye(hf.shape[0])
        step = np.zeros_like(t)
        step[free] = -np.linalg.solve(hf, gf)
        alpha = 1.0
        while True:
            t_new = np.maximum(t + alpha * step, 0.0)
            new = profile(t_new)
            if new[0] <= val + 1e-4 * float(g @ (t_new - t)):
                break
            alpha *= 0.5
            if alpha < 1.0 / 64:
                # Newton is not making progress here: one Fisher-scoring sweep instead (it always
                # lowers F), then try Newton again from there.
                _, t_new, _ = _irls_iid(rb, embed, d, c, t, 1, 0.0)
                new = profile(t_new)
                break
        change = float(np.max(np.abs(t_new - t))) / max(float(np.max(t_new)), 1e-300)
        decrement = val - new[0]
        t = t_new
        val, c, r, v = new
        if change < tol or 0 <= decrement <= 1e-13 * max(abs(val), 1.0):
            break
    return c, t, it


def fit_model_error(a: np.ndarray, y: np.ndarray, embed: np.ndarray | list[int] | None = None,
                    multiplicative: bool = False, likelihood: str = "iid", data_var: float | None = None,
                    max_iter: int = 500, gtol: float = 1e-6, fix_mean: bool = False,
                    w: np.ndarray | None = None) -> MerrResult:
    """Fit the embedded model error to the rows ``w_i a_i`` (n, p), targets ``w_i y_i`` (n,).

    Arguments and method: see :func:`_fit_model_error`; ``w``: (n,) row weights (None: the rows are
    given weighted), applied block by block (no weighted copy of ``a``). BLAS threads as
    :func:`fitsnap_uq.linear.threads.blas_threads`: one for fewer than ``PARALLEL_MIN_COLS`` columns (the
    tall-skinny factorizations of a few dozen columns are faster so than with several: 0.14 s vs
    0.19 s measured on the Ta rows on idle cores, far more on busy ones).
    """
    from fitsnap_uq.linear.threads import blas_threads

    with blas_threads(np.shape(a)[1] + 1):
        return _fit_model_error(RowBlocks(a, y, w), embed=embed, multiplicative=multiplicative,
                                likelihood=likelihood, data_var=data_var, max_iter=max_iter, gtol=gtol,
                                fix_mean=fix_mean)


def _fit_model_error(rb: RowBlocks, embed: np.ndarray | list[int] | None = None,
                     multiplicative: bool = False, likelihood: str = "iid", data_var: float | None = None,
                     max_iter: int = 500, gtol: float = 1e-6, fix_mean: bool = False) -> MerrResult:
    """Fit the embedded model error to the weighted rows of ``rb``.

    The unknowns are c and the model-error variances ``t_k = s_k^2 >= 0`` (in s, ``s_k = 0`` is a
    stationary manifold that stalls optimizers; in t the bound is explicit). From the deterministic
    start (least squares, one variance explaining its residuals):
    ``iid``: alternating exact weighted least squares for c and Fisher scoring (non-negative least
    squares) for t, then Newton on the profile likelihood, then bounded L-BFGS polish; with a fixed
    mean, projected Newton on t (:func:`fitsnap_uq.linear.varfit.newton_variances`: the variance is
    linear in t) then the L-BFGS polish; ``abc``: bounded trust-region nonlinear least squares with
    the analytic Jacobian; ``full``: bounded L-BFGS with the analytic gradient (each evaluation
    costs O(q^3) from the Gram sums). The multiplicative model ``s_k = sigma_k |c_k|`` is a
    reparametrization of the same likelihood, so it has the same maximum: it is found as above and
    reported as ``sigma_k = s_k / |c_k|`` in the message.

    Args:
        embed: coefficient indices carrying model error (default: all non-zero columns; tied
            duplicate columns, see :class:`MerrResult`, never: their earlier column carries it).
        multiplicative: also report the model error relative to |c_k| (see above).
        likelihood: ``iid``, ``abc`` or ``full``.
        data_var: data-noise variance of the rows; default FitSNAP ANL's ``sigmahat`` (as MERR).
        max_iter, gtol: optimizer limits; gtol on the projected gradient (scaled coordinates).
        fix_mean: keep c at the least-squares solution of the rows as given (the user's weighted fit)
            and fit the model-error variances alone; otherwise (FitSNAP MERR's objective) c and t are
            fitted jointly, which re-weights the mean by the model error.

    Raises:
        InputError: an embedded index out of range.
    """
    from scipy.optimize import least_squares

    n, p = rb.n, rb.p
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"likelihood must be one of {LIKELIHOODS}, not {likelihood!r}")
    c0, gram = rb.least_squares_and_gram()
    col = np.sqrt(np.diag(gram))
    # Columns that are a multiple of an earlier column (explicit multi-element SNAP) are tied to it as
    # in BAYES (:func:`~fitsnap_uq.linear.bayes.duplicate_columns`): the data see only the combination,
    # carried on the earlier column; the tied ones have mean, model error and variance 0.
    rep, factor = duplicate_columns(gram, col > 0)
    ties = [(int(j), int(rep[j]), float(factor[j])) for j in np.flatnonzero(rep >= 0)]
    live_mask = (col > 0) & (rep < 0)
    live = np.flatnonzero(live_mask)
    c0 = _fold_ties(c0, ties)
    if embed is None:
        embed = live
    embed = np.asarray(embed, dtype=int)
    bad = embed[(embed < 0) | (embed >= p)]
    if bad.size:
        raise InputError(f"model-error coefficient index {int(bad[0])} is out of range: the fit has "
                         f"{p} coefficients (0..{p - 1})", section="UQ", key="embed")
    embed = np.unique(embed[np.isin(embed, live)])
    q = embed.size
    r0 = rb.matvec(c0) - rb.y
    # FitSNAP ANL's sigmahat from the same least-squares residual (see anl_data_var).
    d = float((r0 @ r0 / 2.0) / ((n - live.size) / 2.0 - 1.0)) if data_var is None else float(data_var)
    square = rb.squares(embed)
    excess = max(float(np.mean(r0**2)) - d, 1e-3 * float(np.mean(r0**2)), 1e-300)
    t0 = np.full(q, excess / max(float(np.sum(col[embed] ** 2)) / n, 1e-300))
    history: list[float] = []
    iterations = 0
    newton_converged = False
    if likelihood == "iid" and not fix_mean:
        # A few Fisher-scoring sweeps, then Newton on the profile likelihood.
        c0, t0, iterations = _irls_iid(rb, embed, d, c0, t0, 8, 1e-3)
        c0, t0, more = _profile_newton_iid(rb, live_mask, embed, d, t0, max_iter, 1e-12)
        iterations += more
    elif likelihood == "iid":
        # The mean is fixed, so the variance is linear in t: projected Newton on t.
        fit = newton_variances(square, n, q, r0**2, np.ones(n), t0, (0.0, np.inf), offset=d,
                               max_iter=max_iter, gtol=1e-12 * n)
        t0, iterations, newton_converged = fit.theta, fit.iterations, fit.converged
    # Scaled coordinates x = x0 + u / scale: columns' norms for c, curvature of v for t. For the iid
    # likelihood one pass gives these scales, the objective and gradient at x0 and the Laplace
    # precision A^T V^-1 A (used as they are where Newton converged and no polish moves x0).
    col = np.where(col == 0, 1.0, col)
    x0 = np.concatenate([c0, t0])
    at_x0 = None
    if likelihood == "iid" and fix_mean and fit.grad is not None:
        # The objective and gradient at x0 are the Newton fit's (the mean's gradient is not used).
        tscale, prec0 = _fixed_mean_pass(rb, embed, fit.v, precision=newton_converged)
        at_x0 = (fit.f + 0.5 * n * np.log(2 * np.pi), np.concatenate([np.zeros(p), fit.grad]), tscale,
                 prec0)
    elif likelihood == "iid":
        at_x0 = _iid_pass(x0, rb, embed, d, extras=True)
        tscale = at_x0[2]
    else:
        v0 = variances(square, n, t0, d)
        tscale = np.zeros(q)
        for s, e in rb.spans():
            tscale += np.sum((square(slice(s, e)) / v0[s:e, None]) ** 2, axis=0)
        tscale = np.sqrt(tscale)
    tscale[tscale == 0] = 1.0
    scale = np.concatenate([col, tscale])
    lower = np.concatenate([np.full(p, -np.inf), -t0 * tscale])  # t >= 0
    upper = np.full(p + q, np.inf)
    free = np.ones(p + q, dtype=bool)
    if fix_mean:
        free[:p] = False  # c stays the least-squares solution
    bounds = list(zip(lower[free], upper[free]))

    def full_u(u_free: np.ndarray) -> np.ndarray:
        u = np.zeros(p + q)
        u[free] = u_free
        return u

    if likelihood == "full":
        st = GramStats.of(rb)

        def objective(x: np.ndarray) -> tuple[float, np.ndarray]:
            return nll_full(x, st, embed, d)
    else:
        def objective(x: np.ndarray) -> tuple[float, np.ndarray]:
            return nll_iid(x, rb, None, embed, d, abc=likelihood == "abc")

    def fun(u_free: np.ndarray) -> tuple[float, np.ndarray]:
        val, grad = objective(x0 + full_u(u_free) / scale)
        history.append(val)
        return val, (grad / scale)[free]

    def final(x: np.ndarray, known: tuple | None = None) -> tuple[np.ndarray, np.ndarray, float, float]:
        """c, t (variances at their bound set to 0), the objective and its projected gradient's
        largest entry (scaled coordinates) at ``x`` (``known``: the objective and gradient there)."""
        c, t = x[:p], np.maximum(x[p:], 0.0)
        val, grad = known[:2] if known is not None else objective(np.concatenate([c, t]))
        g = grad / scale
        g[:p][~free[:p]] = 0.0  # a fixed mean has no gradient to follow
        at_bound = t <= 1e-12 * max(float(t.max()), float(t0.max()), 1e-300)
        t[at_bound] = 0.0
        g[p:][at_bound & (g[p:] > 0)] = 0.0  # projected gradient: variances held at their bound
        return c, t, float(val), float(np.max(np.abs(g)))

    checked = None
    if likelihood == "abc":
        aw, bw = rb.dense(), rb.y  # the least-squares solver needs the whole Jacobian
        ae2 = aw[:, embed] ** 2

        def resid_jac(u_free: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            x = x0 + full_u(u_free) / scale
            c, t = x[:p], np.maximum(x[p:], 0.0)
            r = aw @ c - bw
            sd = np.sqrt(ae2 @ t + d)
            e = (np.abs(r) - sd) / ABC_EPS
            jac = np.hstack([aw * (np.sign(r) / ABC_EPS)[:, None], -ae2 * (0.5 / (sd * ABC_EPS))[:, None]])
            return e, (jac / scale[None, :])[:, free]

        res = least_squares(lambda u: resid_jac(u)[0], np.zeros(int(free.sum())),
                            jac=lambda u: resid_jac(u)[1], bounds=(lower[free], upper[free]),
                            method="trf", x_scale="jac", xtol=1e-12, ftol=1e-12, gtol=1e-12,
                            max_nfev=max_iter)
        u, iterations = full_u(res.x), int(res.nfev)
        converged, message = bool(res.status > 0), str(res.message)
    else:
        checked = final(x0, at_x0) if newton_converged else None
        if checked is not None and checked[3] <= gtol:
            # Newton converged and the projected gradient passes the test below: the L-BFGS polish
            # would move nothing (it is run where Newton stopped short).
            u, converged, message = np.zeros(p + q), True, "Newton converged"
        else:
            checked = None
            res = minimize(fun, np.zeros(int(free.sum())), jac=True, method="L-BFGS-B", bounds=bounds,
                           options={"maxiter": max_iter, "gtol": gtol * 1e-3, "ftol": 1e-15, "maxcor": 50})
            u = full_u(res.x)
            iterations += int(res.nit)
            converged, message = bool(res.success), str(res.message)
    c, t, val, grad_norm = checked if checked is not None else final(x0 + u / scale)
    if grad_norm <= gtol:
        converged = True
        message = f"projected gradient {grad_norm:.2e} <= {gtol:g}"
    elif converged:
        message += f" (projected gradient {grad_norm:.2e})"
    c = _fold_ties(c, ties)
    sigma = np.zeros(p)
    sigma[embed] = np.sqrt(t)
    if multiplicative:
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = np.where(c[embed] != 0, sigma[embed] / np.abs(c[embed]), 0.0)
        message += f"; multiplicative: sigma_k/|c_k| in [{rel.min():.3g}, {rel.max():.3g}]"
    prec = at_x0[3] if checked is not None and at_x0 is not None else None
    coef_cov = _laplace_coef_cov(rb, live_mask, sigma, embed, d, likelihood, prec)
    return MerrResult(coef=c.copy(), sigma=sigma, data_var=d, nll=float(val), grad_norm=grad_norm,
                      iterations=iterations, converged=converged, message=message, coef_cov=coef_cov,
                      embed=embed, history=history, ties=ties)


def _fold_ties(c: np.ndarray, ties: list[tuple[int, int, float]]) -> np.ndarray:
    """(p,) coefficients with each tied column's share moved to its earlier column (``c_i += f c_j``,
    ``c_j = 0`` for a tie ``(j, i, f)``, column j = f column i): the same predictions."""
    out = np.array(c, dtype=float)
    for j, i, f in ties:
        out[i] += f * out[j]
        out[j] = 0.0
    return out


def _laplace_coef_cov(rb: RowBlocks, live: np.ndarray, sigma: np.ndarray, embed: np.ndarray, d: float,
                      likelihood: str, prec: np.ndarray | None = None) -> np.ndarray:
    """Laplace covariance of c with the model error held at its optimum: (A^T V^-1 A)^-1 (``prec``:
    that precision, if computed already)."""
    p = rb.p
    if prec is None and likelihood == "full":
        s = sigma[embed]
        g = GramStats.of(rb).g
        ga = g[:, embed]
        m = np.eye(embed.size) + (s[:, None] * g[np.ix_(embed, embed)] * s[None, :]) / d
        prec = (g - ga @ (s[:, None] * np.linalg.solve(m, s[:, None] * ga.T)) / d) / d
    elif prec is None:
        v = variances(rb.squares(embed), rb.n, sigma[embed] ** 2, d)
        prec = rb.gram(1.0 / v)
    cov = np.zeros((p, p))
    sub = prec[np.ix_(live, live)]
    inv = np.linalg.inv(sub)
    cov[np.ix_(live, live)] = 0.5 * (inv + inv.T)
    return cov
