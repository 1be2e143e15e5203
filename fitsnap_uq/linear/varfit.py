"""Maximum likelihood of Gaussian variances that are linear in their parameters (numpy/scipy only).

Residuals ``r_i`` (n,) with variance ``v_i = F_i . theta + v0_i`` (``F``: (n, m), non-negative,
``theta`` in a box) and row weights ``w_i``; minimize

    f(theta) = 1/2 sum_i w_i (log v_i + r_i^2 / v_i).

Both the predictive model of new configurations (:mod:`fitsnap_uq.linear.predictive`: ``F = [a^T S_f a,
a_k^2, one-hot quantity]``) and the embedded model error with a fixed mean (:mod:`fitsnap_uq.linear.merr`:
``F = (w a_k)^2``, ``v0`` the data noise) are this problem. ``F`` is never held whole: a callable
returns its rows ``s:e`` (e.g. squares of a block of descriptor rows), so memory is one block.

Projected Newton (:func:`newton_variances`): each iteration forms the gradient and the exact Hessian
``F^T diag(d2f/dv2) F`` (O(n m^2), one pass over the blocks). Once the parameters held at the lower
bound are known (the same as at the last iteration, with a gradient pushing them there) it takes the
plain Newton step of the free ones: quadratic convergence. Otherwise it takes the minimizer of the
quadratic model within the bounds (a non-negative least-squares problem, solved exactly), with the
Hessian's negative eigenvalues flipped and small ones floored: a descent direction that finds the
parameters whose optimum is at the bound in a few iterations (in log coordinates, as L-BFGS-B ran
before, they crawl: 40 units at ~1 per iteration). A backtracking (Armijo) line search follows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.optimize import nnls

BLOCK = 8192
"""Rows of ``F`` per block."""

Blocks = Callable[[int, int], np.ndarray]
"""``block(s, e) -> F[s:e]``, an (e - s, m) array."""


@dataclass
class VarianceFit:
    """Outcome of :func:`newton_variances`.

    Attributes:
        theta: (m,) parameters at the end.
        f: objective there; v: (n,) variances there.
        converged, message, iterations: the optimizer's report.
    """

    theta: np.ndarray
    f: float
    v: np.ndarray
    converged: bool
    message: str
    iterations: int


def variances(block: Blocks, n: int, theta: np.ndarray, offset: float | np.ndarray = 0.0,
              block_rows: int = BLOCK) -> np.ndarray:
    """(n,) ``F theta + offset`` (not clipped)."""
    v = np.empty(n)
    for s in range(0, n, block_rows):
        e = min(s + block_rows, n)
        v[s:e] = block(s, e) @ theta
    return v + offset


def gradient_hessian(block: Blocks, n: int, m: int, gv: np.ndarray, hv: np.ndarray,
                     block_rows: int = BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """``F^T gv`` (m,) and ``F^T diag(hv) F`` (m, m), one pass over the blocks."""
    g = np.zeros(m)
    h = np.zeros((m, m))
    for s in range(0, n, block_rows):
        e = min(s + block_rows, n)
        fb = block(s, e)
        g += gv[s:e] @ fb
        h += fb.T @ (hv[s:e, None] * fb)
    return g, 0.5 * (h + h.T)


def newton_variances(block: Blocks, n: int, m: int, rt2: np.ndarray, weight: np.ndarray,
                     theta: np.ndarray, bounds: tuple[float, float], offset: float | np.ndarray = 0.0,
                     max_iter: int = 500, gtol: float = 1e-10, block_rows: int = BLOCK) -> VarianceFit:
    """Minimize ``f`` (module docstring) over ``theta`` in ``bounds`` by projected Newton.

    Args:
        block: rows of ``F`` (see :data:`Blocks`); n, m: its shape.
        rt2: (n,) squared residuals; weight: (n,) row weights.
        theta: (m,) start; bounds: (lower, upper) of every parameter.
        offset: ``v0``, a number or (n,).
        max_iter: most iterations.
        gtol: stop when every free parameter's ``|theta_j df/dtheta_j|`` (the gradient in log
            coordinates) is at most ``gtol``, or when a full Newton step no longer lowers ``f``.

    Returns:
        A :class:`VarianceFit`.
    """
    lo, hi = bounds
    theta = np.clip(np.asarray(theta, dtype=float), lo, hi)

    def evaluate(th: np.ndarray) -> tuple[float, np.ndarray]:
        v = np.maximum(variances(block, n, th, offset, block_rows), 1e-300)
        return 0.5 * float(np.sum(weight * (np.log(v) + rt2 / v))), v

    f, v = evaluate(theta)
    active = None
    converged, message, it = False, f"maximum number of iterations ({max_iter}) reached", 0
    for it in range(1, max_iter + 1):  # noqa: B007  (the count is reported)
        gv = 0.5 * weight * (1.0 / v - rt2 / v**2)
        hv = 0.5 * weight * (2.0 * rt2 / v**3 - 1.0 / v**2)
        grad, h = gradient_hessian(block, n, m, gv, hv, block_rows)
        at_lo = theta <= lo + 1e-12 * abs(lo)
        at_hi = theta >= hi * (1 - 1e-12)
        free = ~((at_lo & (grad > 0)) | (at_hi & (grad < 0)))
        pg = float(np.max(np.abs(grad[free] * theta[free]))) if free.any() else 0.0
        if pg <= gtol:
            converged, message = True, f"projected gradient (log coordinates) {pg:.1e} <= {gtol:g}"
            break
        dg = np.abs(np.diag(h))
        scale = 1.0 / np.sqrt(np.maximum(dg, 1e-14 * max(float(dg.max()), 1e-300)))
        hs = h * scale[:, None] * scale[None, :]
        d = None
        if active is not None and np.all(grad[active] > 0) and not active.all():
            fr = ~active
            try:
                chol = np.linalg.cholesky(hs[np.ix_(fr, fr)])
                d = np.zeros_like(theta)
                d[fr] = -scale[fr] * np.linalg.solve(chol.T, np.linalg.solve(chol, scale[fr] * grad[fr]))
                d[active] = lo - theta[active]
                if np.any(theta[fr] + d[fr] < lo):
                    d = None
            except np.linalg.LinAlgError:
                d = None
        if d is None:
            lam, vec = np.linalg.eigh(hs)
            lam = np.maximum(np.abs(lam), 1e-10 * max(float(np.abs(lam).max()), 1e-300))
            root = np.sqrt(lam)[:, None] * vec.T  # root^T root = the modified scaled Hessian
            cx = (theta - lo) / scale
            u = nnls(root, root @ cx - (vec.T @ (scale * grad)) / np.sqrt(lam), maxiter=50 * m)[0]
            d = np.minimum(scale * u + lo, hi) - theta
            active = u == 0
        step = None
        t = 1.0
        for _ in range(60):
            trial = theta + t * d
            f_trial, v_trial = evaluate(trial)
            if f_trial <= f + 1e-4 * t * float(grad @ d):
                step = (trial, f_trial, v_trial, t)
                break
            t *= 0.5
        if step is None:
            message = "no step lowers the likelihood (line search failed)"
            converged = pg <= 1e3 * gtol
            break
        trial, f_trial, v_trial, t = step
        decrease = f - f_trial
        theta, f, v = trial, f_trial, v_trial
        if t == 1.0 and decrease <= 1e-15 * max(abs(f), 1.0):
            converged, message = True, "a full Newton step no longer lowers the likelihood"
            break
    return VarianceFit(theta=theta, f=f, v=v, converged=converged,
                       message=f"{message} after {it} iterations", iterations=it)
