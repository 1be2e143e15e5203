"""Maximum likelihood of Gaussian variances that are linear in their parameters (numpy/scipy only).

Residuals ``r_i`` (n,) with variance ``v_i = F_i . theta + v0_i`` (``F``: (n, m), non-negative,
``theta`` in a box) and row weights ``w_i``; minimize

    f(theta) = 1/2 sum_i w_i (log v_i + r_i^2 / v_i).

Both the predictive model of new configurations (:mod:`fitsnap_uq.linear.predictive`: ``F = [a^T S_f a,
a_k^2, one-hot quantity]``) and the embedded model error with a fixed mean (:mod:`fitsnap_uq.linear.merr`:
``F = (w a_k)^2``, ``v0`` the data noise) are this problem. ``F`` is never held whole: a callable
returns a slice of its rows (e.g. squares of a block of descriptor rows), so memory is one block.

Projected Newton (:func:`newton_variances`): each iteration forms the gradient and the exact Hessian
``F^T diag(d2f/dv2) F`` (in the same pass over the blocks as the objective of the step that led
there) and steps towards the minimizer of the
quadratic model over the parameters not held at a bound by their gradient, within the bounds (a
non-negative least-squares problem, solved exactly), the negative eigenvalues of that block of the
Hessian flipped and small ones floored; a backtracking (Armijo) line search follows. Parameters whose
optimum is at the bound get there in a few iterations (in log coordinates, as L-BFGS-B ran before,
they crawl: 40 units at ~1 per iteration); near the optimum the step is Newton's (quadratic
convergence). The Hessian is formed only on the parameters off their bounds (and those a step lets
leave it): where most variances are zero at the optimum (as the model error of most coefficients) a
step costs about one O(n m) pass. With many rows per parameter the iterations far from the optimum
run on every 8th row first (``warm``). (Measured on the W-Be rows and not kept: reusing an earlier
Hessian, or computing it on every 8th row at the current point, took more iterations of all rows than
they saved.)
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.optimize import nnls

from fitsnap_uq.linear.threads import blas_threads, map_row_chunks, pass_workers

BLOCK = 256
"""Rows of ``F`` per block at 500 columns: a block of 256 x 500 doubles (1 MB) stays in a core's L2
cache while its terms are formed (measured on 300,000 x 500 rows: a pass of ``F theta`` costs 0.13 s
of CPU in blocks of 256 rows, 0.9 s in blocks of 2048, whose 8 MB spill to the shared L3 cache).
Narrower ``F`` gets more rows per block, the same bytes (:func:`cache_rows`)."""
CACHE_BYTES = BLOCK * 500 * 8
"""Bytes of one block of ``F`` (:func:`cache_rows`)."""


def cache_rows(m: int) -> int:
    """Rows per block of an ``F`` with ``m`` columns: :data:`CACHE_BYTES` of doubles, at least
    :data:`BLOCK` rows (the W-Be subset's 110 columns: 1163 rows; its MODELERROR fit took 1.25 s in
    such blocks, 1.68 s in blocks of 256 rows, whose per-block Python overhead dominated)."""
    return max(BLOCK, CACHE_BYTES // (8 * max(int(m), 1)))

Blocks = Callable[[slice], np.ndarray]
"""``block(rows) -> F[rows]`` for a slice of rows (with a step: a subsample)."""
ENTER_MIN = 32
"""Parameters that may leave their bound in one step, at least (see :func:`newton_variances`)."""
WARM_ROWS = 32768
"""Problems of more rows (and more than 64 per parameter) start on every 8th row (see
:func:`newton_variances`)."""


@dataclass
class VarianceFit:
    """Outcome of :func:`newton_variances`.

    Attributes:
        theta: (m,) parameters at the end.
        f: objective there; v: (n,) variances there; grad: (m,) gradient of f there.
        converged, message, iterations: the optimizer's report.
    """

    theta: np.ndarray
    f: float
    v: np.ndarray
    converged: bool
    message: str
    iterations: int
    grad: np.ndarray | None = None


def _spans(n: int, block_rows: int, step: int, start: int = 0):
    """Slices of the rows ``start*step:n*step:step`` in blocks of ``block_rows``, and their positions."""
    for s in range(start, n, block_rows):
        e = min(s + block_rows, n)
        yield slice(s * step, e * step, step), s, e


def variances(block: Blocks, n: int, theta: np.ndarray, offset: float | np.ndarray = 0.0,
              block_rows: int = BLOCK, step: int = 1) -> np.ndarray:
    """(n,) ``F theta + offset`` (not clipped) over every ``step``-th row of ``F``."""
    v = np.empty(n)

    def chunk(lo: int, hi: int) -> None:
        for rows, s, e in _spans(hi, block_rows, step, lo):
            v[s:e] = block(rows) @ theta

    map_row_chunks(chunk, n, block_rows, pass_workers(2.0 * n * theta.size))
    return v + offset


def _add_weighted_gram(h: np.ndarray, fb: np.ndarray, wb: np.ndarray) -> None:
    """``h += fb^T diag(wb) fb`` ((m, m)) as products of the rows of each sign of ``wb`` scaled by
    ``sqrt(|wb|)``. (BLAS ``dsyrk`` on the upper triangle, half the flops, measured slower here with
    one thread: 300,000 x 500 MODELERROR 7.4-9.1 s against 6.5-7.2 s.)"""
    pos = wb > 0
    for sel, sign in ((pos, 1.0), (wb < 0, -1.0)):
        count = int(np.count_nonzero(sel))
        if count == 0:
            continue
        part = fb if count == wb.size else fb[sel]
        b = part * np.sqrt(np.abs(wb[sel] if count < wb.size else wb))[:, None]
        h += sign * (b.T @ b)


def weighted_gram(block: Blocks, n: int, m: int, wv: np.ndarray, block_rows: int = BLOCK,
                  step: int = 1) -> np.ndarray:
    """(m, m) ``F^T diag(wv) F`` over every ``step``-th row of ``F``, one pass (its blocks spread over
    :func:`~fitsnap_uq.linear.threads.pass_workers` threads)."""

    def chunk(lo: int, hi: int) -> np.ndarray:
        h = np.zeros((m, m))
        for rows, s, e in _spans(hi, block_rows, step, lo):
            _add_weighted_gram(h, block(rows), wv[s:e])
        return h

    h = functools.reduce(np.add, map_row_chunks(chunk, n, block_rows, pass_workers(2.0 * n * m * m)))
    return 0.5 * (h + h.T)


def _point(block: Blocks, n: int, m: int, theta: np.ndarray, offset: float | np.ndarray, rt2: np.ndarray,
           weight: np.ndarray, block_rows: int, step: int, cols: np.ndarray, colsq: np.ndarray | None = None
           ) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """The objective, the variances (n,), the gradient (m,) and the Hessian at ``theta``: one pass over
    the blocks of ``F`` (the variances of a block, then its terms; the blocks spread over
    :func:`~fitsnap_uq.linear.threads.pass_workers` threads, partial sums added in order). The Hessian
    (m, m) is formed on the columns ``cols`` ((m,) bool) only, zero elsewhere: parameters held at a
    bound need none. ``colsq``: (m,) if given, ``sum_i w_i F_ij^2`` is added to it in the same pass."""
    v = np.empty(n)
    every = bool(cols.all())
    k = int(cols.sum())
    off = np.broadcast_to(np.asarray(offset, dtype=float), (n,))

    def chunk(lo: int, hi: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        g = np.zeros(m)
        hc = np.zeros((k, k))
        sq = None if colsq is None else np.zeros(m)
        # A trial point of the line search may be far off (v ~ 0): its terms overflow, f is inf or
        # nan and the point is rejected.
        with np.errstate(divide="ignore", over="ignore", invalid="ignore", under="ignore"):
            for rows, s, e in _spans(hi, block_rows, step, lo):
                fb = block(rows)
                vb = np.maximum(fb @ theta + off[s:e], 1e-300)
                v[s:e] = vb
                wb, rb = weight[s:e], rt2[s:e]
                g += (0.5 * wb * (1.0 / vb - rb / vb**2)) @ fb
                if sq is not None:
                    sq += wb @ (fb * fb)
                _add_weighted_gram(hc, fb if every else fb[:, cols],
                                   0.5 * wb * (2.0 * rb / vb**3 - 1.0 / vb**2))
        return g, hc, sq

    parts = map_row_chunks(chunk, n, block_rows, pass_workers(2.0 * n * (m + k * k)))
    g = functools.reduce(np.add, [p[0] for p in parts])
    hc = functools.reduce(np.add, [p[1] for p in parts])
    if colsq is not None:
        colsq += functools.reduce(np.add, [p[2] for p in parts])
    with np.errstate(divide="ignore", over="ignore", invalid="ignore", under="ignore"):
        f = 0.5 * float(np.sum(weight * (np.log(v) + rt2 / v)))
    h = np.zeros((m, m))
    h[np.ix_(cols, cols)] = 0.5 * (hc + hc.T)
    return (f if np.isfinite(f) else np.inf), v, g, h


def newton_variances(block: Blocks, n: int, m: int, rt2: np.ndarray, weight: np.ndarray,
                     theta: np.ndarray, bounds: tuple[float, float], offset: float | np.ndarray = 0.0,
                     max_iter: int = 500, gtol: float = 1e-10, block_rows: int | None = None,
                     progress: Callable[[int, float, float], None] | None = None, stride: int = 1,
                     warm: bool = True) -> VarianceFit:
    """Minimize ``f`` (module docstring) over ``theta`` in ``bounds`` by projected Newton.

    Args:
        block: rows of ``F`` (see :data:`Blocks`); n, m: its shape.
        rt2: (n,) squared residuals; weight: (n,) row weights.
        theta: (m,) start; bounds: (lower, upper) of every parameter.
        offset: ``v0``, a number or (n,).
        max_iter: most iterations.
        gtol: stop when every free parameter's ``|theta_j df/dtheta_j|`` (the gradient in log
            coordinates) is at most ``gtol``, or when a full Newton step no longer lowers ``f``.
        block_rows: rows per block (default :func:`cache_rows` ``(m)``).
        progress: optional callback ``progress(iteration, f, projected gradient)``.
        stride: use every ``stride``-th row of ``F`` only (``n`` of them; ``rt2``, ``weight`` and an
            array ``offset`` given for those rows).
        warm: with more than :data:`WARM_ROWS` rows (and 64 per parameter), first solve the problem
            on every 8th row (to a projected gradient of 1e-6 of its total weight) and start from its
            solution: the iterations far from the optimum, which mostly find the parameters at the
            bound, cost an eighth. The result is the optimum of all the rows (same stopping rule).

    Returns:
        A :class:`VarianceFit`.

    BLAS threads: one per block (the products of a cache-sized block are small: with two BLAS threads
    on two busy cores a pass of 300,000 x 500 rows took 4-8 s of CPU, with one 0.2-0.4 s); the blocks
    of a large pass are spread over the thread budget as Python threads
    (:func:`~fitsnap_uq.linear.threads.map_row_chunks`).
    """
    with blas_threads(1):
        return _newton_variances(block, n, m, rt2, weight, theta, bounds, offset, max_iter, gtol,
                                 block_rows or cache_rows(m), progress, stride, warm)


def _newton_variances(block: Blocks, n: int, m: int, rt2: np.ndarray, weight: np.ndarray,
                      theta: np.ndarray, bounds: tuple[float, float], offset: float | np.ndarray,
                      max_iter: int, gtol: float, block_rows: int,
                      progress: Callable[[int, float, float], None] | None, stride: int, warm: bool
                      ) -> VarianceFit:
    """:func:`newton_variances` (same arguments), under the caller's BLAS thread limit."""
    lo, hi = bounds
    theta = np.clip(np.asarray(theta, dtype=float), lo, hi)
    sub_iter = 0
    if warm and n > max(WARM_ROWS, 64 * m):
        k = 8
        ns = (n + k - 1) // k
        off = offset if np.ndim(offset) == 0 else np.asarray(offset)[::k]
        sub = _newton_variances(block, ns, m, rt2[::k], weight[::k], theta, bounds, off, max_iter,
                                1e-6 * float(np.sum(weight[::k])), block_rows, None, stride * k, True)
        theta, sub_iter = sub.theta, sub.iterations

    def evaluate(th: np.ndarray) -> float:
        v = np.maximum(variances(block, n, th, offset, block_rows, stride), 1e-300)
        with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
            f = 0.5 * float(np.sum(weight * (np.log(v) + rt2 / v)))
        return f if np.isfinite(f) else np.inf

    def point(th: np.ndarray, extra: np.ndarray | None = None, sq: np.ndarray | None = None
              ) -> tuple[np.ndarray, tuple]:
        """The point, its Hessian formed on the parameters off their bounds (and ``extra``)."""
        cols = (th > lo + 1e-12 * abs(lo)) & (th < hi * (1 - 1e-12))
        if extra is not None:
            cols |= extra
        return cols, _point(block, n, m, th, offset, rt2, weight, block_rows, stride, cols, sq)

    def projected(th: np.ndarray, gr: np.ndarray) -> tuple[np.ndarray, float]:
        """The parameters not held at a bound by their gradient, and their largest ``|theta_j g_j|``."""
        at_lo = th <= lo + 1e-12 * abs(lo)
        at_hi = th >= hi * (1 - 1e-12)
        fr = ~((at_lo & (gr > 0)) | (at_hi & (gr < 0)))
        return fr, (float(np.max(np.abs(gr[fr] * th[fr]))) if fr.any() else 0.0)

    colsq = np.zeros(m)  # sum_i w_i F_ij^2: the scale of each parameter's gradient (same pass)
    cols, (f, v, grad, h) = point(theta, sq=colsq)
    stalled = 0
    converged, message, it = False, f"maximum number of iterations ({max_iter}) reached", 0
    for it in range(1, max_iter + 1):  # noqa: B007  (the count is reported)
        free, pg = projected(theta, grad)
        if pg <= gtol:
            converged, message = True, f"projected gradient (log coordinates) {pg:.1e} <= {gtol:g}"
            break
        enter = free & ~cols
        if enter.sum() > max(int(cols.sum()), ENTER_MIN):
            # Many parameters at a bound have a gradient pushing them off (a start far off, e.g. from a
            # subsample): the ones of steepest gradient (scaled by their column's weight) leave first,
            # at most as many as are off their bounds (or ENTER_MIN), so the Hessian block grows with
            # the solution instead of spanning every parameter at once; the others stay this step.
            idx = np.flatnonzero(enter)
            size = np.sqrt(np.maximum(colsq[idx], 1e-300))
            wait = idx[np.argsort(grad[idx] / size)[max(int(cols.sum()), ENTER_MIN):]]
            free[wait] = False
        if np.any(free & ~cols):  # a parameter leaves its bound: its Hessian rows, one more pass
            cols = free.copy()
            with np.errstate(divide="ignore", over="ignore", invalid="ignore", under="ignore"):
                hv = 0.5 * weight * (2.0 * rt2 / v**3 - 1.0 / v**2)
            h = np.zeros((m, m))
            h[np.ix_(cols, cols)] = weighted_gram(lambda rows, c=cols: block(rows)[:, c], n,
                                                  int(cols.sum()), hv, block_rows, stride)
        # The minimizer of the quadratic model over the free parameters within the bounds (a
        # non-negative least-squares problem, solved exactly; parameters held at a bound by their
        # gradient stay there). Negative eigenvalues of the free block of the Hessian are flipped and
        # small ones floored (a descent direction). Near the optimum that block is positive definite
        # and this is the Newton step (quadratic convergence), whatever the bounds do.
        hf = h[np.ix_(free, free)]
        dg = np.abs(np.diag(hf))
        scale = 1.0 / np.sqrt(np.maximum(dg, 1e-14 * max(float(dg.max()), 1e-300)))
        lam, vec = np.linalg.eigh(hf * scale[:, None] * scale[None, :])
        lam = np.maximum(np.abs(lam), 1e-10 * max(float(np.abs(lam).max()), 1e-300))
        root = np.sqrt(lam)[:, None] * vec.T  # root^T root = the modified scaled Hessian
        cx = (theta[free] - lo) / scale
        u = nnls(root, root @ cx - (vec.T @ (scale * grad[free])) / np.sqrt(lam), maxiter=50 * m)[0]
        d = np.zeros_like(theta)
        d[free] = np.minimum(scale * u + lo, hi) - theta[free]
        # The full step's objective, gradient and Hessian in one pass (it is usually taken); shorter
        # steps by objective passes alone, then one pass for the gradient and Hessian where accepted.
        slope = float(grad @ d)
        step = None
        # Clipped into the box: a parameter stepping to its lower bound from far above it would land on
        # theta + (lo - theta), which rounds to 0 (not lo) where theta >> lo, and a zero floor makes
        # the variance of a row that no other term reaches 0 (f and the gradient inf or nan).
        trial = np.clip(theta + d, lo, hi)
        new = point(trial, free)
        by_gradient = False
        if new[1][0] <= f + 1e-4 * slope:
            step = (trial, new, 1.0)
        elif -slope <= 1e-12 * max(abs(f), 1.0) and projected(trial, new[1][2])[1] < pg:
            # The step's predicted decrease is below the rounding of f (a sum of n terms), so f cannot
            # judge it: the full Newton step is taken where it lowers the projected gradient.
            step, by_gradient = (trial, new, 1.0), True
        else:
            t = 0.5
            for _ in range(60):
                trial = np.clip(theta + t * d, lo, hi)
                if evaluate(trial) <= f + 1e-4 * t * slope:
                    step = (trial, point(trial, free), t)
                    break
                t *= 0.5
        if step is None:
            message = "no step lowers the likelihood (line search failed)"
            converged = pg <= 1e3 * gtol
            break
        trial, (cols, new), t = step
        decrease = f - new[0]
        theta = trial
        f, v, grad, h = new
        if progress is not None:
            progress(it, f, pg)
        if by_gradient:
            stalled = 0
            continue
        if t == 1.0 and decrease <= 1e-15 * max(abs(f), 1.0):
            converged, message = True, "a full Newton step no longer lowers the likelihood"
            break
        stalled = stalled + 1 if decrease <= 1e-15 * max(abs(f), 1.0) else 0
        if stalled >= 3:  # shortened steps that no longer lower f: at the optimum to rounding, or stuck
            converged = pg <= 1e3 * gtol
            message = f"three steps without lowering the likelihood (projected gradient {pg:.1e})"
            break
    message = f"{message} after {it} iterations"
    if sub_iter:
        message += f" (and {sub_iter} on every 8th row first)"
    return VarianceFit(theta=theta, f=f, v=v, converged=converged, message=message, iterations=it,
                       grad=grad)
