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

The negative log-likelihood is minimized with L-BFGS (scipy) and analytic gradients, from a
deterministic start (the least-squares coefficients and a model-error scale that explains the
least-squares residuals), in coordinates scaled by the columns' norms. The same objective as
FitSNAP 3.1.0.4's MERR (``lreg.py``'s ``logpost_emb``), so values are directly comparable.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.linalg as sla
from scipy.optimize import minimize

from fitsnap_uq.errors import InputError

LIKELIHOODS = ("iid", "abc", "full")
ABC_EPS = 0.1


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

    @property
    def total_cov(self) -> np.ndarray:
        """(p, p) covariance of the coefficients: the model error ``diag(s^2)`` plus the Laplace
        covariance of the mean (not symmetrized)."""
        return np.diag(self.sigma**2) + self.coef_cov


def nll_iid(x: np.ndarray, a: np.ndarray, y: np.ndarray, embed: np.ndarray, data_var: float,
            abc: bool = False) -> tuple[float, np.ndarray]:
    """Negative log-likelihood (``iid`` or ``abc``) and its gradient w.r.t. ``x = [c, t]``,
    ``t_k = s_k^2`` the model-error variances of the embedded coefficients."""
    p = a.shape[1]
    c, t = x[:p], x[p:]
    ae2 = a[:, embed] ** 2
    r = a @ c - y
    v = ae2 @ t + data_var
    if abc:
        sd = np.sqrt(v)
        e = (np.abs(r) - sd) / ABC_EPS
        val = 0.5 * float(e @ e) + 0.5 * np.log(2 * np.pi) + np.log(ABC_EPS)
        g_r = e * np.sign(r) / ABC_EPS
        g_v = -e * 0.5 / (sd * ABC_EPS)
    else:
        val = (0.5 * float(np.sum(r**2 / v)) + 0.5 * float(np.sum(np.log(v)))
               + 0.5 * r.size * np.log(2 * np.pi))
        g_r = r / v
        g_v = 0.5 / v - 0.5 * r**2 / v**2
    return val, np.concatenate([a.T @ g_r, ae2.T @ g_v])


@dataclass
class GramStats:
    """One pass over the rows for the ``full`` likelihood: G = A^T A, h = A^T y, yy = y^T y, n."""

    g: np.ndarray
    h: np.ndarray
    yy: float
    n: int

    @classmethod
    def of(cls, a: np.ndarray, y: np.ndarray) -> GramStats:
        return cls(g=a.T @ a, h=a.T @ y, yy=float(y @ y), n=int(y.size))


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


def _irls_iid(a: np.ndarray, y: np.ndarray, embed: np.ndarray, d: float, c: np.ndarray, t: np.ndarray,
              max_iter: int, tol: float) -> tuple[np.ndarray, np.ndarray, int]:
    """Alternate the exact c-step (weighted least squares with weights 1/v) and the Fisher-scoring
    t-step (non-negative weighted least squares of r^2 - d on E = A_e^2 with weights 1/(2 v^2));
    each step lowers the iid negative log-likelihood for its block. O(n (p + q)^2) per iteration."""

    from scipy.optimize import nnls

    from fitsnap_uq.linear.bayes import class_stats

    live = np.any(a != 0, axis=0)
    al = a[:, live]
    ae2 = a[:, embed] ** 2
    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007  (the count is reported)
        v = ae2 @ t + d
        # Exact c-step: weighted least squares from the blocked QR of [A | y] / sqrt(v).
        st = class_stats(al, y, 1.0 / np.sqrt(v))
        c_new = np.zeros_like(c)
        c_new[live] = sla.solve_triangular(st.r, st.z, check_finite=False)
        r = a @ c_new - y
        # Fisher-scoring t-step: min_{t >= 0} sum_i (E_i t - (r_i^2 - d))^2 / (2 v_i^2), solved on
        # the R factor and projected targets of the weighted system (same minimizer as on n rows).
        st_t = class_stats(ae2, r**2 - d, 1.0 / (np.sqrt(2.0) * v))
        t_new = nnls(st_t.r, st_t.z, maxiter=50 * max(t.size, 1))[0]
        change = max(float(np.max(np.abs(t_new - t))) / max(float(np.max(t_new)), 1e-300),
                     float(np.max(np.abs(c_new - c))) / max(float(np.max(np.abs(c_new))), 1e-300))
        c, t = c_new, t_new
        if change < tol:
            break
    return c, t, it


def _profile_newton_iid(a: np.ndarray, y: np.ndarray, embed: np.ndarray, d: float, t: np.ndarray,
                        max_iter: int, tol: float) -> tuple[np.ndarray, np.ndarray, int]:
    """Projected Newton on the profile likelihood ``F(t) = min_c f(c, t)`` of the iid model.

    ``grad F = E^T (1/v - r^2/v^2) / 2`` at ``c*(t)`` and ``hess F = H_tt - M^T M`` with
    ``M = Q^T (E r / v^1.5)`` from the QR of ``A / sqrt(v)`` that gives ``c*(t)``: no inverse of the
    (possibly very ill-conditioned) weighted Gram matrix. Variances at 0 with a positive gradient stay
    at their bound; a non-positive-definite Hessian is shifted (Levenberg); steps are projected onto
    t >= 0 with Armijo backtracking. Converges quadratically near the optimum.
    """
    live = np.any(a != 0, axis=0)
    al = a[:, live]
    ae2 = a[:, embed] ** 2
    n = y.size

    def profile(t: np.ndarray):
        v = ae2 @ t + d
        sw = 1.0 / np.sqrt(v)
        q, r_fac = sla.qr(al * sw[:, None], mode="economic", check_finite=False)
        c_live = sla.solve_triangular(r_fac, q.T @ (y * sw), check_finite=False)
        r = al @ c_live - y
        val = 0.5 * float(np.sum(r**2 / v)) + 0.5 * float(np.sum(np.log(v))) + 0.5 * n * np.log(2 * np.pi)
        return val, c_live, r, v, q

    val, c_live, r, v, q = profile(t)
    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007  (the count is reported)
        g = ae2.T @ (0.5 / v - 0.5 * r**2 / v**2)
        free = (t > 0) | (g < 0)
        if not free.any():
            break
        m = q.T @ (ae2 * (r / v**1.5)[:, None])
        h = ae2.T @ (ae2 * (-0.5 / v**2 + r**2 / v**3)[:, None]) - m.T @ m
        hf = h[np.ix_(free, free)]
        gf = g[free]
        lam = np.linalg.eigvalsh(hf).min()
        if lam <= 1e-12 * max(abs(lam), 1.0):
            hf = hf + (abs(lam) + 1e-8 * max(np.abs(np.diag(hf)).max(), 1e-300)) * np.eye(hf.shape[0])
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
                c_full = np.zeros(a.shape[1])
                c_full[live] = c_live
                _, t_new, _ = _irls_iid(a, y, embed, d, c_full, t, 1, 0.0)
                new = profile(t_new)
                break
        change = float(np.max(np.abs(t_new - t))) / max(float(np.max(t_new)), 1e-300)
        decrement = val - new[0]
        t = t_new
        val, c_live, r, v, q = new
        if change < tol or 0 <= decrement <= 1e-13 * max(abs(val), 1.0):
            break
    c = np.zeros(a.shape[1])
    c[live] = c_live
    return c, t, it


def fit_model_error(a: np.ndarray, y: np.ndarray, embed: np.ndarray | list[int] | None = None,
                    multiplicative: bool = False, likelihood: str = "iid", data_var: float | None = None,
                    max_iter: int = 500, gtol: float = 1e-6, fix_mean: bool = False) -> MerrResult:
    """Fit the embedded model error to (weighted) rows ``a`` (n, p), ``y`` (n,).

    Arguments and method: see :func:`_fit_model_error`. BLAS threads as
    :func:`fitsnap_uq.linear.threads.blas_threads`: one for fewer than ``PARALLEL_MIN_COLS`` columns (the
    tall-skinny factorizations of a few dozen columns are faster so than with several: 0.14 s vs
    0.19 s measured on the Ta rows on idle cores, far more on busy ones).
    """
    from fitsnap_uq.linear.threads import blas_threads

    with blas_threads(np.shape(a)[1] + 1):
        return _fit_model_error(a, y, embed=embed, multiplicative=multiplicative, likelihood=likelihood,
                                data_var=data_var, max_iter=max_iter, gtol=gtol, fix_mean=fix_mean)


def _fit_model_error(a: np.ndarray, y: np.ndarray, embed: np.ndarray | list[int] | None = None,
                    multiplicative: bool = False, likelihood: str = "iid", data_var: float | None = None,
                    max_iter: int = 500, gtol: float = 1e-6, fix_mean: bool = False) -> MerrResult:
    """Fit the embedded model error to (weighted) rows ``a`` (n, p), ``y`` (n,).

    The unknowns are c and the model-error variances ``t_k = s_k^2 >= 0`` (in s, ``s_k = 0`` is a
    stationary manifold that stalls optimizers; in t the bound is explicit). From the deterministic
    start (least squares, one variance explaining its residuals):
    ``iid``: alternating exact weighted least squares for c and Fisher scoring (non-negative least
    squares) for t, then bounded L-BFGS polish; ``abc``: bounded trust-region nonlinear least squares
    with the analytic Jacobian; ``full``: bounded L-BFGS with the analytic gradient (each evaluation
    costs O(q^3) from the Gram sums). The multiplicative model ``s_k = sigma_k |c_k|`` is a
    reparametrization of the same likelihood, so it has the same maximum: it is found as above and
    reported as ``sigma_k = s_k / |c_k|`` in the message.

    Args:
        embed: coefficient indices carrying model error (default: all non-zero columns).
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

    a = np.asarray(a, dtype=float)
    y = np.asarray(y, dtype=float)
    n, p = a.shape
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"likelihood must be one of {LIKELIHOODS}, not {likelihood!r}")
    live = np.flatnonzero(np.any(a != 0, axis=0))
    if embed is None:
        embed = live
    embed = np.asarray(embed, dtype=int)
    bad = embed[(embed < 0) | (embed >= p)]
    if bad.size:
        raise InputError(f"model-error coefficient index {int(bad[0])} is out of range: the fit has "
                         f"{p} coefficients (0..{p - 1})", section="UQ", key="embed")
    embed = np.unique(embed[np.isin(embed, live)])
    q = embed.size
    a_live = a[:, live]
    c0 = np.zeros(p)
    c0[live] = sla.lstsq(a_live, y, 1e-13)[0]
    r0 = a @ c0 - y
    # FitSNAP ANL's sigmahat from the same least-squares residual (see anl_data_var).
    d = float((r0 @ r0 / 2.0) / ((n - live.size) / 2.0 - 1.0)) if data_var is None else float(data_var)
    ae2 = a[:, embed] ** 2
    excess = max(float(np.mean(r0**2)) - d, 1e-3 * float(np.mean(r0**2)), 1e-300)
    t0 = np.full(q, excess / max(float(np.mean(ae2.sum(axis=1))), 1e-300))
    history: list[float] = []
    iterations = 0
    if likelihood == "iid" and not fix_mean:
        # A few Fisher-scoring sweeps, then Newton on the profile likelihood.
        c0, t0, iterations = _irls_iid(a, y, embed, d, c0, t0, 8, 1e-3)
        c0, t0, more = _profile_newton_iid(a, y, embed, d, t0, max_iter, 1e-12)
        iterations += more
    # Scaled coordinates x = x0 + u / scale: columns' norms for c, curvature of v for t.
    col = np.sqrt(np.sum(a**2, axis=0))
    col[col == 0] = 1.0
    tscale = np.sqrt(np.sum((ae2 / (ae2 @ t0 + d)[:, None]) ** 2, axis=0))
    tscale[tscale == 0] = 1.0
    scale = np.concatenate([col, tscale])
    x0 = np.concatenate([c0, t0])
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
        st = GramStats.of(a, y)

        def objective(x: np.ndarray) -> tuple[float, np.ndarray]:
            return nll_full(x, st, embed, d)
    else:
        def objective(x: np.ndarray) -> tuple[float, np.ndarray]:
            return nll_iid(x, a, y, embed, d, abc=likelihood == "abc")

    def fun(u_free: np.ndarray) -> tuple[float, np.ndarray]:
        val, grad = objective(x0 + full_u(u_free) / scale)
        history.append(val)
        return val, (grad / scale)[free]

    if likelihood == "abc":
        def resid_jac(u_free: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            x = x0 + full_u(u_free) / scale
            c, t = x[:p], np.maximum(x[p:], 0.0)
            r = a @ c - y
            sd = np.sqrt(ae2 @ t + d)
            e = (np.abs(r) - sd) / ABC_EPS
            jac = np.hstack([a * (np.sign(r) / ABC_EPS)[:, None], -ae2 * (0.5 / (sd * ABC_EPS))[:, None]])
            return e, (jac / scale[None, :])[:, free]

        res = least_squares(lambda u: resid_jac(u)[0], np.zeros(int(free.sum())),
                            jac=lambda u: resid_jac(u)[1], bounds=(lower[free], upper[free]),
                            method="trf", x_scale="jac", xtol=1e-12, ftol=1e-12, gtol=1e-12,
                            max_nfev=max_iter)
        u, iterations = full_u(res.x), int(res.nfev)
        converged, message = bool(res.status > 0), str(res.message)
    else:
        res = minimize(fun, np.zeros(int(free.sum())), jac=True, method="L-BFGS-B", bounds=bounds,
                       options={"maxiter": max_iter, "gtol": gtol * 1e-3, "ftol": 1e-15, "maxcor": 50})
        u = full_u(res.x)
        iterations += int(res.nit)
        converged, message = bool(res.success), str(res.message)
    x = x0 + u / scale
    c, t = x[:p], np.maximum(x[p:], 0.0)
    val, grad = objective(np.concatenate([c, t]))
    g = grad / scale
    g[:p][~free[:p]] = 0.0  # a fixed mean has no gradient to follow
    at_bound = t <= 1e-12 * max(float(t.max()), float(t0.max()), 1e-300)
    t[at_bound] = 0.0
    g[p:][at_bound & (g[p:] > 0)] = 0.0  # projected gradient: variances held at their bound
    grad_norm = float(np.max(np.abs(g)))
    if grad_norm <= gtol:
        converged = True
        message = f"projected gradient {grad_norm:.2e} <= {gtol:g}"
    elif converged:
        message += f" (projected gradient {grad_norm:.2e})"
    sigma = np.zeros(p)
    sigma[embed] = np.sqrt(t)
    if multiplicative:
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = np.where(c[embed] != 0, sigma[embed] / np.abs(c[embed]), 0.0)
        message += f"; multiplicative: sigma_k/|c_k| in [{rel.min():.3g}, {rel.max():.3g}]"
    coef_cov = _laplace_coef_cov(a, y, c, sigma, embed, d, likelihood)
    return MerrResult(coef=c.copy(), sigma=sigma, data_var=d, nll=float(val), grad_norm=grad_norm,
                      iterations=iterations, converged=converged, message=message, coef_cov=coef_cov,
                      embed=embed, history=history)


def _laplace_coef_cov(a: np.ndarray, y: np.ndarray, c: np.ndarray, sigma: np.ndarray, embed: np.ndarray,
                      d: float, likelihood: str) -> np.ndarray:
    """Laplace covariance of c with the model error held at its optimum: (A^T V^-1 A)^-1."""
    p = a.shape[1]
    live = np.any(a != 0, axis=0)
    if likelihood == "full":
        s = sigma[embed]
        ae = a[:, embed]
        st = ae.T @ ae
        m = np.eye(embed.size) + (s[:, None] * st * s[None, :]) / d
        g = a.T @ a
        ga = a.T @ ae
        prec = (g - ga @ (s[:, None] * np.linalg.solve(m, s[:, None] * ga.T)) / d) / d
    else:
        v = (a[:, embed] ** 2) @ (sigma[embed] ** 2) + d
        prec = a.T @ (a / v[:, None])
    cov = np.zeros((p, p))
    sub = prec[np.ix_(live, live)]
    inv = np.linalg.inv(sub)
    cov[np.ix_(live, live)] = 0.5 * (inv + inv.T)
    return cov
