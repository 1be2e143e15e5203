"""The predictive uncertainty of a new configuration, learned from cross-validated residuals.

A new configuration (an MD frame, an active-learning candidate, a held-out structure) belongs to no
FitSNAP group, so its uncertainty must come from the configuration itself. We model the error of
the fitted potential on a row ``a`` (unweighted descriptors, FitSNAP layout; an energy row per atom
or a force component) as Gaussian with variance

    var(a) = c * a^T S a  +  a^T (diag(s^2) + U U^T) a  +  sigma_q^2

* ``a^T S a``: the posterior variance of the mean fit (``S``: its coefficient covariance), scaled by
  ``c`` because FitSNAP's weights are hand-set ratios, not noise levels, so ``S`` has no reliable
  absolute scale;
* ``a^T (diag(s^2) + U U^T) a``: the embedded model error (Sargsyan, Huan, Najm 2019): the
  coefficients carry random offsets, so the spread follows the descriptors (large where the
  environment drives the basis hard, zero where symmetry zeroes a force) and does not shrink with
  more data (it is what the functional form cannot fit). ``diag(s^2)`` is diagonal in the columns of
  the rows given; :func:`fitsnap_uq.linear.rows.fit_with_model_error` passes rows rotated onto the
  principal axes of ``S`` by default. ``U`` (rank 3 in :func:`~fitsnap_uq.linear.rows.fit_with_model_error`
  by default; 0: none) is a correlated part;
* ``sigma_q^2``: a floor per quantity (``Energy``, ``Force``, ``Stress``).

``c``, the model error and ``sigma_q`` maximize the Gaussian likelihood of the residuals of held-out
rows in K-fold cross-validation over configurations (each row's residual and ``a^T S_f a`` from the
fit that did not see it). The variance is linear in these parameters, so the maximum is found by
projected Newton (:func:`fitsnap_uq.linear.varfit.newton_variances`; it replaced L-BFGS-B in log
coordinates: the same objective, an optimum of equal or lower NLL; on the W-Be data 13 Newton steps
(+ 14 on every 8th row) instead of 846 L-BFGS evaluations, ~0.5 s instead of ~4 s); with a low-rank
part ``U`` (not linear) by L-BFGS on all parameters from a start on the directions of steepest
descent, then that Newton solve with ``U`` fixed (:func:`_low_rank`; measured and not kept:
alternating the Newton solve with trust-region Newton steps on ``U`` took 13 rounds and 10 s on the
Ta rows to a higher NLL than the joint L-BFGS's in 4 s). ``U`` is fitted with every held-out row
counting once, the variances of that last solve with the quantities balanced (``factor_balance`` of
:func:`_fit_shared`: balanced, the few energy rows set ``U``). The mean is not touched: the
model describes the errors of the user's fit.
Everything but the floors is a covariance on the coefficients, so the same number comes out of
``Posterior.predict``, the LAMMPS hook and the native plugin.

Pure numpy/scipy. BLAS threads: one for fewer than ``PARALLEL_MIN_COLS`` columns
(:mod:`fitsnap_uq.linear.threads`): the products of up to 50k x 110 rows with a vector are
memory-bound and were slower with two threads (3.3 ms vs 13.9 ms per pair of products on the 2-core
test machine while another job ran).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import OptimizeResult, minimize, minimize_scalar

from fitsnap_uq.linear.atomscale import AtomScale, atom_sums, energy_features
from fitsnap_uq.linear.threads import limited
from fitsnap_uq.linear.varfit import WARM_ROWS, newton_variances

QUANTITIES = ("Energy", "Force", "Stress")
NULL_COLUMN = 1e-10
"""A column whose RMS over the rows is below this fraction of the largest column's is numerically
zero (round-off of a direction the rows do not reach: ~1e-16 relative; the weakest directions the
rows do reach were above 4e-5 relative in the Ta and the two-element chemflag fits we checked) and gets
no model error."""
SHARED = ("Energy", "Force")
"""Quantities whose rows train the model error; the others (stresses, which FitSNAP inputs often
weight out) get only a floor of their own."""


@dataclass
class PredictiveModel:
    """Fitted parameters of the predictive variance (see the module docstring).

    Attributes:
        cov_scale: ``c`` (dimensionless), the multiplier of the fit's posterior covariance.
        coef_var: (m,) ``s_k^2``, model-error variance of each coefficient (FitSNAP column layout;
            units of coefficient^2).
        factor: (m, r) ``U``, the low-rank correlated part of the model error ``U U^T`` (r may be 0).
        floor_var: {quantity: ``sigma_q^2``} in (eV/atom)^2, (eV/A)^2, bar^2.
        nll: mean negative log-likelihood per scored row at the optimum.
        n_rows: {quantity: rows it was fitted on}.
        converged, message: the optimizer's report.
        atom_scale: optional per-atom scales of the force rows' coefficient part and floor
            (:mod:`fitsnap_uq.linear.atomscale`); None: no scale.
        energy_scale: optional per-configuration scales of the energy rows' coefficient part and
            floor (an :class:`~fitsnap_uq.linear.atomscale.AtomScale` whose features are the energy
            row's own ``a^T M a``, ``a^T S a``, ``|a|^2`` and whose intercepts are weighted by the
            configuration's element fractions); None: no scale.
        energy_columns: (k,) indices (FitSNAP layout) of the per-element constant columns whose
            values on an energy row are the configuration's element fractions, the intercepts of
            :attr:`energy_scale` (:func:`~fitsnap_uq.linear.rows.composition_columns`); None: one
            intercept.
    """

    cov_scale: float
    coef_var: np.ndarray
    floor_var: dict[str, float]
    factor: np.ndarray
    nll: float
    n_rows: dict[str, int]
    converged: bool
    message: str
    atom_scale: AtomScale | None = field(default=None)
    energy_scale: AtomScale | None = field(default=None)
    energy_columns: np.ndarray | None = field(default=None)

    def model_error_var(self, a: np.ndarray) -> np.ndarray:
        """(n,) ``a^T M a``, the model-error variance of rows ``a`` (n, m)."""
        low = np.sum((a @ self.factor) ** 2, axis=1) if self.factor.size else 0.0
        return (a**2) @ self.coef_var + low

    def variance(self, a: np.ndarray, post_var: np.ndarray, row_types: np.ndarray,
                 log_scale: np.ndarray | None = None, log_floor: np.ndarray | None = None
                 ) -> np.ndarray:
        """(n,) predictive variance of rows ``a`` (n, m) whose fit variance is ``post_var`` (n,);
        ``log_scale``, ``log_floor`` (n,): optional logs of factors on each row's coefficient part
        and on its floor (:meth:`atom_log_scales`)."""
        floor = np.array([self.floor_var.get(str(q), 0.0) for q in row_types])
        coef = self.cov_scale * post_var + self.model_error_var(a)
        if log_scale is not None:
            coef = coef * np.exp(np.clip(log_scale, -50.0, 50.0))
        if log_floor is not None:
            floor = floor * np.exp(np.clip(log_floor, -50.0, 50.0))
        return coef + floor

    def atom_log_scales(self, a: np.ndarray, post_var: np.ndarray, atom: np.ndarray,
                        element: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(n,) logs of the per-atom factors of each row's coefficient part and of its floor (0 on
        rows with ``atom < 0`` or without an :attr:`atom_scale`).

        Args:
            a: (n, m) rows; every force row of an atom that has any must be among them (the features
                sum over the atom's three rows).
            post_var: (n,) ``a^T S a`` of the full fit.
            atom: (n,) atom id per row (unique across configurations), -1 on non-force rows.
            element: (n,) element index of the row's atom.
        """
        out, out_floor = np.zeros(np.shape(a)[0]), np.zeros(np.shape(a)[0])
        atom = np.asarray(atom)
        sel = atom >= 0
        if self.atom_scale is None or not sel.any():
            return out, out_floor
        a_f = np.asarray(a)[sel]
        feats = atom_sums(self.model_error_var(a_f), np.asarray(post_var)[sel],
                          np.einsum("ij,ij->i", a_f, a_f), atom[sel])
        el = np.asarray(element)[sel]
        out[sel] = self.atom_scale.log_scale(feats, el)
        out_floor[sel] = self.atom_scale.log_floor_scale(feats, el)
        return out, out_floor

    def energy_log_scales(self, a: np.ndarray, post_var: np.ndarray, row_types: np.ndarray,
                          composition: np.ndarray, natoms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(n,) logs of the per-configuration factors of each energy row's coefficient part and
        floor (0 on other rows, or without an :attr:`energy_scale`).

        Args:
            a: (n, m) rows; post_var: (n,) ``a^T S a`` of the full fit.
            row_types: (n,) ``Energy``/``Force``/``Stress``.
            composition: (n, nelem) element fractions of each row's configuration, natoms: (n,)
                its number of atoms (used on energy rows only).
        """
        out, out_floor = np.zeros(np.shape(a)[0]), np.zeros(np.shape(a)[0])
        sel = np.asarray(row_types).astype(str) == "Energy"
        if self.energy_scale is None or not sel.any():
            return out, out_floor
        a_e = np.asarray(a)[sel]
        feats = energy_features(self.model_error_var(a_e), np.asarray(post_var)[sel], a_e,
                                np.asarray(natoms)[sel])
        comp = np.asarray(composition, float)[sel]
        out[sel] = self.energy_scale.log_scale(feats, comp)
        out_floor[sel] = self.energy_scale.log_floor_scale(feats, comp)
        return out, out_floor

    def atom_log_scale(self, a: np.ndarray, post_var: np.ndarray, atom: np.ndarray,
                       element: np.ndarray) -> np.ndarray:
        """(n,) the first of :meth:`atom_log_scales` (the coefficient part's)."""
        return self.atom_log_scales(a, post_var, atom, element)[0]

    def log_scales(self, a: np.ndarray, post_var: np.ndarray, row_types: np.ndarray,
                   atom: np.ndarray | None = None, element: np.ndarray | None = None,
                   composition: np.ndarray | None = None, natoms: np.ndarray | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
        """(n,) logs of the factors of every row's coefficient part and floor: per atom on force
        rows (with ``atom`` and ``element``, :meth:`atom_log_scales`), per configuration on energy
        rows (with ``composition`` and ``natoms``, :meth:`energy_log_scales`); 0 elsewhere. Pass them to
        :meth:`variance`."""
        ls, lf = np.zeros(np.shape(a)[0]), np.zeros(np.shape(a)[0])
        if atom is not None and element is not None:
            ls, lf = self.atom_log_scales(a, post_var, atom, element)
        if composition is not None and natoms is not None:
            es, ef = self.energy_log_scales(a, post_var, row_types, composition, natoms)
            ls, lf = ls + es, lf + ef
        return ls, lf

    @property
    def floor_std(self) -> dict[str, float]:
        """{quantity: ``sigma_q``} in eV/atom, eV/A, bar."""
        return {q: float(np.sqrt(v)) for q, v in self.floor_var.items()}


@limited(lambda a, *args, **kwargs: np.shape(a)[1] + 1)
def fit_predictive(a: np.ndarray, resid: np.ndarray, post_var: np.ndarray, row_types: np.ndarray,
                   rank: int = 0, balance: bool = True, max_iter: int = 3000, seed: int = 0,
                   factor_balance: bool = False) -> PredictiveModel:
    """The predictive model of held-out rows: ``c`` and the model error from the rows of
    :data:`SHARED` quantities, then a floor for each other quantity given those.

    Arguments as :func:`_fit_shared`; ``seed`` is accepted and unused (the low-rank part starts on
    deterministic directions, so the result does not depend on it).
    """
    types = np.asarray(row_types).astype(str)
    shared = np.isin(types, SHARED)
    if not shared.any():
        shared = np.ones(types.shape, dtype=bool)
    a = np.asarray(a, dtype=float)
    resid = np.asarray(resid, dtype=float)
    post_var = np.asarray(post_var, dtype=float)
    a_sh = a if shared.all() else a[shared]  # no copy of the rows when every row is shared
    model = _fit_shared(a_sh, resid[shared], post_var[shared], types[shared], rank=rank,
                        balance=balance, max_iter=max_iter, factor_balance=factor_balance)
    del a_sh
    for q in sorted(set(types[~shared].tolist())):
        sel = types == q
        base = model.variance(a[sel], post_var[sel], types[sel])
        model.floor_var[q] = _floor_ml(resid[sel] ** 2, base)
        model.n_rows[q] = int(sel.sum())
    return model


def _floor_ml(r2: np.ndarray, base: np.ndarray) -> float:
    """Maximum-likelihood constant ``f >= 0`` in ``r ~ N(0, base + f)``."""
    ms = max(float(np.mean(r2)), 1e-300)

    def nll(t: float) -> float:
        var = np.maximum(base + ms * np.exp(t), 1e-300)
        return float(np.mean(np.log(var) + r2 / var))

    best = minimize_scalar(nll, bounds=(-40.0, 5.0), method="bounded")
    return float(ms * np.exp(best.x))


def _fit_shared(a: np.ndarray, resid: np.ndarray, post_var: np.ndarray, row_types: np.ndarray,
                rank: int = 0, balance: bool = True, max_iter: int = 3000,
                factor_balance: bool = False) -> PredictiveModel:
    """Maximum-likelihood ``c``, model-error covariance and floors from held-out residuals.

    Args:
        a: (n, m) unweighted descriptor rows (FitSNAP layout) of held-out rows.
        resid: (n,) truth minus the prediction of the fit that did not see the row (eV/atom, eV/A,
            bar).
        post_var: (n,) ``a^T S_f a`` of that fit (same units squared).
        row_types: (n,) ``Energy``/``Force``/``Stress``.
        rank: besides the diagonal ``diag(s^2)``, a low-rank part ``U U^T`` with ``U`` (m, rank):
            correlated model error of several coefficients.
        balance: weigh each quantity's rows so every quantity counts as much as the others (force
            rows outnumber energy rows 100:1 and would otherwise set every parameter alone).
        factor_balance: fit the low-rank part ``U`` (rank > 0) with the ``balance`` weights too.
            Default False: ``U`` (and the start of the variances, steps 1-3 of :func:`_low_rank`) is
            fitted with every row counting once, then ``c``, ``s^2`` and the floors with the
            ``balance`` weights and ``U`` fixed (step 4). ``U`` has ``m * rank`` parameters (330 at
            rank 3 on 110 columns); with balanced weights the few energy rows (291 held-out Ta
            configurations) carry half the likelihood and ``U`` lined up with their residuals: on
            held-out Ta configurations (split seeds 101/202/303) the energy errors of the full fit
            were 91-96% (R^2) one fixed combination of the three ``a^T u_k``, so ``|error| / sigma``
            bunched near one value and the quantile recalibration learned on the spread of five fold
            fits over-covered at 68% (0.79-0.81; energy miscalibration area 0.060/0.076/0.083).
            Set by the force rows, ``U`` gave energy areas 0.068/0.045/0.038 there, and
            Spearman(|error|, sigma) of forces 0.883/0.880/0.893 (balanced: 0.873/0.870/0.878);
            W-Be: force Spearman 0.862/0.853/0.850 (balanced 0.824/0.831/0.829).
        max_iter: most iterations of the Newton solve (and of each L-BFGS stage of :func:`_low_rank`).

    Returns:
        A :class:`PredictiveModel`. Columns that are zero in every row, or numerically zero (RMS over
        the rows below :data:`NULL_COLUMN` times the largest column's), get no model error: the data
        cannot see them, so their variance is not determined and, unbounded, it would turn the
        round-off of new rows along them into any std (the differences of the duplicate columns of
        explicit multi-element SNAP are such directions).
    """
    a = np.asarray(a, dtype=float)
    r2 = np.asarray(resid, dtype=float) ** 2
    v = np.maximum(np.asarray(post_var, dtype=float), 0.0)
    types = np.asarray(row_types).astype(str)
    quants = [q for q in QUANTITIES if np.any(types == q)]
    n, m = a.shape
    if n == 0 or not quants:
        raise ValueError("no held-out rows to fit the predictive model on")
    qidx = np.array([quants.index(t) if t in quants else -1 for t in types])
    if np.any(qidx < 0):
        raise ValueError(f"row types must be among {QUANTITIES}")
    counts = np.bincount(qidx, minlength=len(quants)).astype(float)
    weight = (n / (len(quants) * counts))[qidx] if balance else np.ones(n)
    weight /= weight.sum()
    rms = np.sqrt(np.einsum("ij,ij->j", a, a) / n)
    live = rms > NULL_COLUMN * float(rms.max()) if rms.size else np.zeros(0, dtype=bool)
    # Scale-free coordinates: each quantity's residuals in units of its RMS (a row's variance is
    # divided by ms_q), each column in units of its RMS over the rows.
    ms = np.array([max(float(np.mean(r2[qidx == j])), 1e-300) for j in range(len(quants))])
    al = a if live.all() else a[:, live]
    col = rms[live]
    rs = 1.0 / np.sqrt(ms[qidx])
    at2 = al * rs[:, None]  # (n, q) scaled rows, row-scaled by 1/rms_q, then squared (one copy)
    at2 /= col
    # the unsquared rows for U in single precision (what its L-BFGS reads; half the bytes of a copy)
    at = at2.astype(np.float32) if rank else None
    np.square(at2, out=at2)
    rt2 = r2 * rs**2
    vt = v * rs**2
    q = at2.shape[1]
    k = int(rank)
    nq = len(quants)
    theta0 = np.concatenate([[1.0], np.full(q, 0.5 / q), np.full(nq, 0.25)])
    if k == 0:
        theta, fval, converged, message = _newton_variances(at2, vt, qidx, nq, rt2, weight, theta0,
                                                            max_iter)
        c, s2, fl = theta[0], theta[1:1 + q], theta[1 + q:]
        u = np.zeros((q, 0))
    else:
        w_u = weight if factor_balance else np.full(n, 1.0 / n)
        c, s2, fl, u, fval, converged, message = _low_rank(at, at2, vt, qidx, nq, rt2, w_u, theta0,
                                                           k, max_iter, weight_final=weight)
    coef_var = np.zeros(m)
    coef_var[live] = s2 / col**2
    factor = np.zeros((m, k))
    factor[live] = u / col[:, None]
    # Physical variance = ms_q * scaled variance = c v + (a / col)^2 s2 + ms_q fl_q: the model-error
    # terms are shared by every quantity, the floors are per quantity.
    return PredictiveModel(cov_scale=float(c), coef_var=coef_var,
                           floor_var={qq: float(fl[j] * ms[j]) for j, qq in enumerate(quants)},
                           factor=factor,
                           nll=float(fval) + 0.5 * np.log(2 * np.pi),
                           n_rows={qq: int(counts[j]) for j, qq in enumerate(quants)},
                           converged=bool(converged), message=str(message))


BOUNDS = (np.exp(-40.0), np.exp(40.0))
"""Bounds of every variance parameter in the scaled coordinates (``c``, ``s_k^2``, floors)."""
GTOL = 1e-10
"""Convergence: largest ``|theta_j df/dtheta_j|`` (the gradient in log coordinates) of a free
parameter (L-BFGS-B's ``gtol`` before)."""


def _newton_variances(at2: np.ndarray, vt: np.ndarray, qidx: np.ndarray, nq: int, rt2: np.ndarray,
                      weight: np.ndarray, theta: np.ndarray, max_iter: int,
                      offset: float | np.ndarray = 0.0) -> tuple[np.ndarray, float, bool, str]:
    """Minimize ``1/2 sum_i w_i (log v_i + r_i^2 / v_i)``, ``v_i = c vt_i + at2_i . s2 + fl_q(i) +
    offset_i``, linear in ``theta = [c, s2, fl]`` within :data:`BOUNDS`, by projected Newton
    (:func:`fitsnap_uq.linear.varfit.newton_variances`; the design ``[vt, at2, onehot]`` is built a
    block of rows at a time).

    Returns:
        ``(theta, f, converged, message)``.
    """
    n, q = at2.shape
    m = 1 + q + nq
    levels = np.arange(nq)

    def block(rows: slice) -> np.ndarray:
        f_vt = vt[rows]
        out = np.empty((f_vt.size, m))
        out[:, 0] = f_vt
        out[:, 1:1 + q] = at2[rows]
        out[:, 1 + q:] = qidx[rows, None] == levels[None, :]
        return out

    fit = newton_variances(block, n, m, rt2, weight, theta, BOUNDS, offset=offset, max_iter=max_iter,
                           gtol=GTOL)
    return fit.theta, fit.f, fit.converged, fit.message


def _low_rank(at: np.ndarray, at2: np.ndarray, vt: np.ndarray, qidx: np.ndarray, nq: int,
              rt2: np.ndarray, weight: np.ndarray, theta0: np.ndarray, k: int, max_iter: int,
              weight_final: np.ndarray | None = None
              ) -> tuple[float, np.ndarray, np.ndarray, np.ndarray, float, bool, str]:
    """The model with a low-rank part ``U U^T`` (not linear in ``U``).

    1. ``theta = [c, s2, fl]`` at the rank-0 optimum (:func:`_newton_variances`).
    2. ``U = 0`` is a stationary point (the gradient in ``U`` is ``2 at^T diag(g) at U``, ``g_i =
       df/dv_i``), so ``U`` starts on the eigenvectors of ``at^T diag(g) at`` of the most negative
       eigenvalues (the directions in which extra variance lowers ``f`` fastest), each scaled by the
       minimizer of ``f`` along it (a bounded scalar search); none where no eigenvalue is negative.
    3. ``(theta, U)`` jointly by L-BFGS in ``theta = psi^2`` (unconstrained: a variance whose optimum
       is 0 reaches it at the rate of a quadratic, where in log coordinates it crawled) with the
       analytic gradient (:func:`_joint_lbfgs`; the rows in single precision), first on every 8th row
       with more than :data:`~fitsnap_uq.linear.varfit.WARM_ROWS` rows (the iterations far from the
       optimum at an eighth of the cost), then on all rows.
    4. ``theta`` polished by :func:`_newton_variances` with ``U`` fixed (a per-row offset
       ``|at_i U|^2``): the parameters whose optimum is 0 land on their bound.

    Args:
        at: (n, q) scaled rows; at2: their squares; vt: (n,) scaled fit variances; qidx: (n,)
            quantity index; nq: quantities; rt2: (n,) scaled squared residuals; weight: (n,) row
            weights summing to 1 of steps 1-3 (``U``'s fit); theta0: (1 + q + nq,) start; k: rank;
            max_iter: most iterations of each stage; weight_final: (n,) the weights of step 4 (None:
            ``weight``); the ``f`` returned is under them.

    Returns:
        ``(c, s2, fl, U, f, converged, message)`` in the scaled coordinates (``U``: (q, k)).
    """
    q = at.shape[1]
    theta, fval, _, _ = _newton_variances(at2, vt, qidx, nq, rt2, weight, theta0, max_iter)
    theta_ref = theta
    base = np.maximum(theta[0] * vt + at2 @ theta[1:1 + q] + theta[1 + q:][qidx], 1e-300)
    g_var = 0.5 * weight * (1.0 / base - rt2 / base**2)  # df/dv_i at U = 0
    at = at.astype(np.float32, copy=False)  # single-precision rows throughout (see step 3)
    f32 = np.float32
    lam, vec = np.linalg.eigh((at.T @ (g_var.astype(f32)[:, None] * at)).astype(float))
    u = np.zeros((q, k))
    for j in range(min(k, q)):
        if lam[j] >= 0.0:
            break  # extra variance along no other direction lowers f
        p = (at @ vec[:, j].astype(f32)).astype(float) ** 2
        unit = float(np.mean(base)) / max(float(np.mean(p)), 1e-300)  # p * unit ~ the variances

        def along(t: float, p: np.ndarray = p, unit: float = unit, base: np.ndarray = base) -> float:
            var = base + unit * np.exp(t) * p
            return 0.5 * float(weight @ (np.log(var) + rt2 / var))

        t = minimize_scalar(along, bounds=(-30.0, 10.0), method="bounded").x
        u[:, j] = np.sqrt(unit * np.exp(t)) * vec[:, j]
        base = base + unit * np.exp(t) * p
    notes = []
    n = at.shape[0]
    # Single-precision copies for the L-BFGS passes (memory-bound: half the bytes; on the W-Be rows
    # 11 s instead of 33 s, the same f to 1e-3); the Newton polish below is in double.
    at_l, at2_l = at, at2.astype(np.float32)
    if n > WARM_ROWS:
        sub = slice(None, None, 8)
        w8 = weight[sub] / weight[sub].sum()
        theta, u, _, nit, _ = _joint_lbfgs(at_l[sub], at2_l[sub], vt[sub], qidx[sub], nq, rt2[sub], w8,
                                           theta, u, max_iter, theta_ref)
        notes.append(f"{nit} L-BFGS iterations on every 8th row")
    theta, u, _, nit, why = _joint_lbfgs(at_l, at2_l, vt, qidx, nq, rt2, weight, theta, u, max_iter,
                                         theta_ref)
    notes.append(f"{nit} on all rows ({why})")
    au = (at @ u.astype(f32)).astype(float)
    theta, fval, converged, message = _newton_variances(
        at2, vt, qidx, nq, rt2, weight if weight_final is None else weight_final,
        np.maximum(theta, BOUNDS[0]), max_iter,
        np.einsum("ij,ij->i", au, au))
    return (theta[0], theta[1:1 + q], theta[1 + q:], u, float(fval), bool(converged),
            f"U U^T: {', '.join(notes)}; then the variances: {message}")


LOW_RANK_WINDOW = 100
""":func:`_joint_lbfgs` stops when ``LOW_RANK_WINDOW`` iterations lowered ``f`` by less than
:data:`LOW_RANK_RTOL` times what the low-rank part has gained so far (``f`` at the rank-0 optimum
minus ``f`` now)."""
LOW_RANK_RTOL = 0.01
"""See :data:`LOW_RANK_WINDOW`."""


def _joint_lbfgs(at: np.ndarray, at2: np.ndarray, vt: np.ndarray, qidx: np.ndarray, nq: int,
                 rt2: np.ndarray, weight: np.ndarray, theta: np.ndarray, u: np.ndarray,
                 max_iter: int, theta_ref: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, int, str]:
    """L-BFGS on ``(psi, U)``, ``theta = psi^2`` (arguments as :func:`_low_rank`; ``theta`` (1 + q +
    nq,), ``u`` (q, k): the start; ``theta_ref``: the rank-0 optimum, whose ``f`` (with ``U = 0``)
    measures the gain of :data:`LOW_RANK_WINDOW`'s stopping rule).

    The variance ``v = F psi^2 + |at U|^2`` with ``F = [vt, at2, one-hot quantity]``; the gradient
    ``df/dpsi = 2 psi F^T g``, ``df/dU = 2 at^T diag(g) at U`` (``g_i = df/dv_i``).

    Returns:
        ``(theta, U, f, iterations, why it stopped)``.
    """
    q, k = u.shape
    m = theta.size

    low = at.dtype  # the products over the rows in the rows' precision, the sums in double

    def fg(x: np.ndarray) -> tuple[float, np.ndarray]:
        psi = x[:m]
        z = (at @ x[m:].reshape(q, k).astype(low)).astype(float)
        var = psi[0] ** 2 * vt + (at2 @ (psi[1:1 + q] ** 2).astype(low)) + (psi[1 + q:] ** 2)[qidx]
        var = np.maximum(var + np.einsum("ij,ij->i", z, z), 1e-300)
        f = 0.5 * float(weight @ (np.log(var) + rt2 / var))
        g = 0.5 * weight * (1.0 / var - rt2 / var**2)
        grad = np.empty_like(x)
        grad[0] = 2.0 * psi[0] * float(g @ vt)
        grad[1:1 + q] = 2.0 * psi[1:1 + q] * (g.astype(low) @ at2)
        grad[1 + q:m] = 2.0 * psi[1 + q:] * np.bincount(qidx, weights=g, minlength=nq)
        grad[m:] = (2.0 * (at.T @ (g[:, None] * z).astype(low))).ravel()
        return f, grad

    history: list[float] = []
    f_ref = fg(np.concatenate([np.sqrt(theta_ref), np.zeros(q * k)]))[0]

    def stop(intermediate_result: OptimizeResult) -> None:
        history.append(float(intermediate_result.fun))
        if (len(history) > LOW_RANK_WINDOW and history[-1 - LOW_RANK_WINDOW] - history[-1]
                < LOW_RANK_RTOL * (f_ref - history[-1])):
            raise StopIteration

    res = minimize(fg, np.concatenate([np.sqrt(theta), u.ravel()]), jac=True, method="L-BFGS-B",
                   callback=stop, options={"maxiter": max_iter, "maxcor": LOW_RANK_MEMORY,
                                           "ftol": 1e-13, "gtol": 1e-10})
    why = (f"f fell by < {LOW_RANK_RTOL:g} of the gain in {LOW_RANK_WINDOW} iterations"
           if res.status == 99 or "callback" in str(res.message).lower() else str(res.message))
    return res.x[:m] ** 2, res.x[m:].reshape(q, k), float(res.fun), int(res.nit), why


LOW_RANK_MEMORY = 50
"""L-BFGS memory of :func:`_joint_lbfgs` (50 pairs reached a lower ``f`` than the default 10 in the
same 3000 iterations on the Ta rows: -1.873 vs -1.862)."""


MISFIT_LEVERAGE_PERCENTILE = 50.0
"""Rows whose leverage ``a^T S a`` is below this percentile of the rows' are left out of
:func:`misfit_covariance` (POPSRegression's default ``leverage_percentile``)."""


def misfit_covariance(a: np.ndarray, resid: np.ndarray, cov: np.ndarray,
                      percentile: float = MISFIT_LEVERAGE_PERCENTILE) -> np.ndarray:
    """(m, m) covariance of the pointwise corrections of held-out rows (POPS, Swinburne and Perez,
    Mach. Learn.: Sci. Technol. 6, 015008 (2025)): the smallest change of the coefficients, in the
    metric of the fit's covariance, that fits row i exactly is ``d_i = S a_i r_i / (a_i^T S a_i)``;
    returns the mean of ``d_i d_i^T`` over the rows whose leverage ``a_i^T S a_i`` is at or above
    ``percentile`` of the rows' (and nonzero). Its principal axes are the directions in which the
    fitted coefficients miss the data (used as the axes of the model error: only they matter, not
    its scale).

    Args:
        a: (n, m) held-out rows (unweighted, FitSNAP layout); resid: (n,) their residuals;
        cov: (m, m) the fit's coefficient covariance S (any positive scale).
    """
    a = np.asarray(a, float)
    sa = a @ np.asarray(cov, float)  # (n, m) S a_i
    lev = np.einsum("ij,ij->i", sa, a)
    ok = lev > 1e-14 * max(float(lev.max()), 1e-300) if lev.size else lev > 0
    if not ok.any():
        return np.asarray(cov, float).copy()
    keep = ok & (lev >= np.percentile(lev[ok], percentile))
    d = sa[keep] * (np.asarray(resid, float)[keep] / lev[keep])[:, None]
    return d.T @ d / d.shape[0]
