"""From rows of a FitSNAP linear system to a fitted Bayesian model, and its cross-validated recalibration.

Pure numpy: the FitSNAP adapter (:mod:`fitsnap_uq.solvers`) and the benchmarks both build a
:class:`Rows` and call :func:`fit_rows` / :func:`cross_validated_ratios`, so the solver and what the
benchmarks measure are the same code.

Recalibration (``../design.md`` section 3): the errors of a fitted potential are heavy-tailed and
heteroscedastic, so no Gaussian sigma meets both the 68% and the 95% coverage. For each quantity we
learn, by K-fold cross-validation over training *configurations*, the distribution of
``|error| / sigma_raw``; the half-width of the central interval at coverage ``level`` is then its
``level``-quantile times ``sigma_raw`` (quantile recalibration; monotone in ``level`` by construction).

Scale: the rows are read in place, in blocks, once for the statistics of every (fold, noise class)
cell (:class:`FoldStats`, :func:`~fitsnap_uq.linear.bayes.cell_stats`); a fold's fit sums the other
folds' statistics. Training rows are selected by masks (``keep``), not copies; class and configuration
labels are integer codes (hashing, no sort of n strings). Memory: the rows plus O(cells p^2) and the
scored held-out rows of the predictive model. The passes run under :mod:`fitsnap_uq.linear.threads`'s
limits (one BLAS thread for fewer than ``PARALLEL_MIN_COLS`` columns), the evidence iterations with one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from fitsnap_uq.linear import noise as noise_model
from fitsnap_uq.linear.atomscale import atom_sums, energy_features, fit_atom_scale
from fitsnap_uq.linear.bayes import (
    BayesResult,
    ClassStats,
    cell_stats,
    fit_bayes,
    least_squares,
    merge_stats,
)
from fitsnap_uq.linear.gaussian import row_variance
from fitsnap_uq.linear.predictive import SHARED, PredictiveModel, fit_predictive, misfit_covariance
from fitsnap_uq.linear.threads import limited

RECAL_LEVELS = np.unique(np.concatenate([np.linspace(0.01, 0.99, 99), [0.682689492, 0.954499736]]))
"""Coverage levels at which the recalibration map is stored."""


@dataclass
class Rows:
    """A linear system, unweighted, one entry per row.

    Attributes:
        a: (n, m) descriptors in FitSNAP's column layout (energy rows per atom).
        b: (n,) truths minus the reference potential (eV/atom, eV/A, bar).
        w: (n,) FitSNAP weights.
        testing: (n,) bool, row of a testing configuration.
        groups, row_types, configs: (n,) group name, ``Energy``/``Force``/``Stress``, config file.
        atom: optional (n,) int, index within its configuration of the atom a force row belongs to
            (FitSNAP's force rows run atom by atom, x/y/z), -1 on other rows.
        element: optional (n,) int, element index of that atom (the potential's element order), -1
            on other rows. With both, :func:`fit_with_model_error` learns a per-atom force scale
            (:mod:`fitsnap_uq.linear.atomscale`).
        natoms: optional (n,) int, number of atoms of each row's configuration (needed by the
            per-configuration energy scale).
    """

    a: np.ndarray
    b: np.ndarray
    w: np.ndarray
    testing: np.ndarray
    groups: np.ndarray
    row_types: np.ndarray
    configs: np.ndarray
    atom: np.ndarray | None = None
    element: np.ndarray | None = None
    natoms: np.ndarray | None = None

    def subset(self, keep: np.ndarray) -> Rows:
        """The rows where ``keep`` (bool mask or indices) selects; ``self`` (no copy) when a mask keeps
        every row."""
        keep = np.asarray(keep)
        if keep.dtype == bool and keep.shape == self.b.shape and keep.all():
            return self
        return Rows(self.a[keep], self.b[keep], self.w[keep], self.testing[keep], self.groups[keep],
                    self.row_types[keep], self.configs[keep],
                    None if self.atom is None else self.atom[keep],
                    None if self.element is None else self.element[keep],
                    None if self.natoms is None else self.natoms[keep])

    def atom_ids(self) -> np.ndarray:
        """(n,) an integer id per atom of the force rows (same on its rows), -1 elsewhere; needs
        :attr:`atom`."""
        if self.atom is None:
            raise ValueError("rows carry no atom index")
        _, code = noise_model.pair_codes(self.groups, self.configs)
        atom = np.asarray(self.atom, dtype=np.int64)
        return np.where(atom >= 0, code.astype(np.int64) * (int(atom.max()) + 2) + atom, -1)

    def training(self) -> Rows:
        """The rows of training configurations."""
        return self.subset(~self.testing)

    def weighted(self) -> tuple[np.ndarray, np.ndarray]:
        """The weighted system ``(w_i a_i, w_i b_i)``: (n, m), (n,)."""
        return self.w[:, None] * self.a, self.w * self.b

    def ncols(self) -> int:
        """Columns of the weighted system with its target (what sets the BLAS threads)."""
        return int(self.a.shape[1]) + 1

    def config_keys(self) -> np.ndarray:
        """(n,) identifier of each row's configuration (group and file)."""
        return np.char.add(np.char.add(self.groups.astype(str), "/"), self.configs.astype(str))


@dataclass
class RowsFit:
    """A Bayesian fit of :class:`Rows`.

    Attributes:
        result: the :class:`~fitsnap_uq.linear.bayes.BayesResult` (FitSNAP's column layout).
        classes: noise-class names in the order of ``result.beta``.
        noise_var: {class: physical variance}, including the pooled ``Energy``/``Force``/``Stress``.
        mode: the noise-class mode (``one``, ``quantity``, ``group``).
    """

    result: BayesResult
    classes: list[str]
    noise_var: dict[str, float]
    mode: str

    def noise_names(self, rows: Rows) -> np.ndarray:
        """(n,) the noise class each row is predicted with: its own class if fitted, else pooled."""
        labels = noise_model.class_labels(rows.groups, rows.row_types, self.mode)
        own = np.isin(labels, list(self.noise_var))
        return np.where(own, labels, rows.row_types.astype(object))

    def predict_raw(self, rows: Rows) -> tuple[np.ndarray, np.ndarray]:
        """Mean (n,) and raw Gaussian std (n,) (coefficients + class noise) for ``rows``."""
        mean = rows.a @ self.result.mean
        coef_var = row_variance(rows.a, self.result.cov)
        names = self.noise_names(rows)
        noise = np.array([self.noise_var[n] for n in names])
        return mean, np.sqrt(np.maximum(coef_var, 0.0) + noise)


def _rows_cols(rows: Rows, *args: object, **kwargs: object) -> int:
    return rows.ncols()


def fit_weights(rows: Rows, weights: str) -> np.ndarray:
    """Row weights as the fit uses them: FitSNAP's (``ratios``) or 1 for nonzero ones (``ignore``)."""
    if weights == "ratios":
        return rows.w
    if weights == "ignore":
        return (rows.w != 0).astype(float)
    raise ValueError(f"weights must be 'ratios' or 'ignore', not {weights!r}")


@dataclass
class _Design:
    """Integer codes of the rows of a fit (computed once, shared by the full fit and the folds).

    Attributes:
        w: (n,) weights as the fit uses them; use: (n,) bool, rows that enter the fit.
        names: noise-class names; code: (n,) class of each row (-1: not used).
        qnames: quantities; qcode: (n,) quantity of each row.
    """

    w: np.ndarray
    use: np.ndarray
    names: list[str]
    code: np.ndarray
    qnames: list[str]
    qcode: np.ndarray


def _design(rows: Rows, noise_classes: str, weights: str, keep: np.ndarray | None = None) -> _Design:
    w = fit_weights(rows, weights)
    use = w != 0 if keep is None else (w != 0) & np.asarray(keep, dtype=bool)
    names, code = noise_model.class_codes(rows.groups, rows.row_types, noise_classes, use)
    qnames, qcode = noise_model.label_codes(rows.row_types)
    return _Design(w=w, use=use, names=names, code=code, qnames=qnames, qcode=qcode)


def fit_stats(stats: dict[str, ClassStats], design: _Design, mode: str, prior: str = "isotropic",
              max_iter: int = 500, tol: float = 1e-8, unpenalized: np.ndarray | None = None,
              select: np.ndarray | None = None, start: RowsFit | None = None) -> RowsFit:
    """Fit from per-class statistics of some rows (``select``: (n,) bool, those rows of ``design``;
    None: all its used rows), with the pooled noise of new data from those rows' weights.

    ``start``: a fit of the same classes (e.g. the full fit, for a cross-validation fold) whose
    hyperparameters start the evidence iteration (a warm start; same optimum).
    """
    alpha0 = beta0 = None
    if start is not None:
        alpha0 = start.result.alpha if prior != "none" else None
        beta0 = dict(zip(start.classes, start.result.beta))
    result = fit_bayes(stats, prior=prior, max_iter=max_iter, tol=tol, unpenalized=unpenalized,
                       alpha0=alpha0, beta0=beta0)
    classes = list(stats)
    noise_var = dict(result.noise_var) if mode != "one" else {}
    index = {name: i for i, name in enumerate(design.names)}
    beta = np.full(len(design.names), np.nan)
    for name, b in zip(classes, result.beta):
        beta[index[name]] = b
    code = np.where(np.isnan(beta[design.code]) | (design.code < 0), -1, design.code)
    sel = design.use if select is None else design.use & select
    noise_var.update(noise_model.pooled_from_codes(np.nan_to_num(beta), code, design.qnames, design.qcode,
                                                   design.w, sel))
    return RowsFit(result=result, classes=classes, noise_var=noise_var, mode=mode)


@limited(_rows_cols)
def fit_rows(rows: Rows, noise_classes: str = "group", prior: str = "isotropic", weights: str = "ratios",
             max_iter: int = 500, tol: float = 1e-8, unpenalized: np.ndarray | None = None,
             keep: np.ndarray | None = None) -> RowsFit:
    """Bayesian fit of ``rows`` (all, or those where ``keep`` (n,) is True: e.g. ``~rows.testing``;
    rows of weight 0 never count). One pass over the rows (:func:`~fitsnap_uq.linear.bayes.cell_stats`)."""
    design = _design(rows, noise_classes, weights, keep)
    cells = cell_stats(rows.a, rows.b, design.w, design.code, len(design.names))
    stats = {name: s for name, s in zip(design.names, cells) if s is not None}
    if not stats:
        raise ValueError("no rows with nonzero weight")
    return fit_stats(stats, design, noise_classes, prior, max_iter, tol, unpenalized)


def config_folds(rows: Rows, folds: int, seed: int, keep: np.ndarray | None = None) -> np.ndarray:
    """(n,) fold index of each row: configurations are shuffled (seeded) and dealt into folds.
    With ``keep`` (n,) bool: over the kept rows only (as on ``rows.subset(keep)``), -1 elsewhere."""
    unique, code = noise_model.pair_codes(rows.groups, rows.configs, use=keep)
    order = np.random.default_rng(seed).permutation(len(unique))
    fold_of = np.empty(len(unique), dtype=int)
    fold_of[order] = np.arange(len(unique)) % folds
    return np.where(code >= 0, fold_of[code], -1)


def _merged(per_fold: list[dict[str, ClassStats]], folds: list[int]) -> dict[str, ClassStats]:
    """Per-class statistics of the union of the given folds (sums of the folds' statistics)."""
    out: dict[str, ClassStats] = {}
    for name in sorted({k for f in folds for k in per_fold[f]}):
        parts = [per_fold[f][name] for f in folds if name in per_fold[f]]
        out[name] = parts[0] if len(parts) == 1 else merge_stats(parts)
    return out


@dataclass
class FoldStats:
    """The one pass over the rows of a K-fold cross-validation: per-(fold, class) statistics.

    Attributes:
        design: the rows' codes and weights; fold: (n,) fold of each used row (-1: not used).
        per_fold: per fold, {class: statistics of the fold's rows}.
    """

    design: _Design
    fold: np.ndarray
    per_fold: list[dict[str, ClassStats]]

    @property
    def nfold(self) -> int:
        return len(self.per_fold)

    def stats_without(self, f: int | None) -> dict[str, ClassStats]:
        """Per-class statistics of every fold but ``f`` (None: of all folds)."""
        return _merged(self.per_fold, [g for g in range(self.nfold) if g != f])


@limited(_rows_cols)
def fold_stats(rows: Rows, folds: int, seed: int, noise_classes: str, weights: str,
               keep: np.ndarray | None = None, fold_over: np.ndarray | None = None) -> FoldStats:
    """Per-(fold, class) statistics in one pass over the rows (see :class:`FoldStats`).

    ``keep``: (n,) bool, the rows to fit (default all; weight-0 rows never count). ``fold_over``:
    (n,) bool, the rows whose configurations are dealt into folds (default ``keep``)."""
    if folds < 2:
        raise ValueError(f"need at least 2 folds, got {folds}")
    design = _design(rows, noise_classes, weights, keep)
    fold = config_folds(rows, folds, seed, keep=keep if fold_over is None else fold_over)
    fold = np.where(design.use, fold, -1)
    k = len(design.names)
    cell = np.where(design.code >= 0, fold * k + design.code, -1)
    cells = cell_stats(rows.a, rows.b, design.w, cell, folds * k)
    per_fold = [{design.names[c]: cells[f * k + c] for c in range(k) if cells[f * k + c] is not None}
                for f in range(folds)]
    if not any(per_fold):
        raise ValueError("no rows with nonzero weight")
    return FoldStats(design=design, fold=fold, per_fold=per_fold)


def _folds_and_full_fit(rows: Rows, folds: int, seed: int, noise_classes: str, prior: str, weights: str,
                        max_iter: int, tol: float, unpenalized: np.ndarray | None,
                        keep: np.ndarray | None = None, fold_over: np.ndarray | None = None
                        ) -> tuple[FoldStats, RowsFit]:
    """The one pass over the rows of a K-fold CV and the fit of all folds."""
    fs = fold_stats(rows, folds, seed, noise_classes, weights, keep, fold_over)
    full = fit_stats(fs.stats_without(None), fs.design, noise_classes, prior, max_iter, tol, unpenalized)
    return fs, full


def fold_fit(fs: FoldStats, f: int, full: RowsFit, prior: str, max_iter: int, tol: float,
             unpenalized: np.ndarray | None, warm_start: bool = False) -> RowsFit:
    """The fit of every fold but ``f`` from the folds' statistics (no pass over the rows).

    ``warm_start``: start the evidence iteration at the full fit's hyperparameters instead of the
    fold's own least-squares residuals. Off by default: with one noise class it saves half the (few)
    iterations and reaches the same optimum, but with a noise class per group the evidence can have
    several local maxima and the warm start lands on a lower one in some folds (Ta data, fold 1 of 5:
    log evidence 111454 instead of 111498; W-Be, fold 3 of 5: -215110 instead of -214626), for ~30%
    fewer iterations (Anderson mixing already makes a cold start short). Cold, each fold's fit is the
    fit of that fold's rows from scratch."""
    return fit_stats(fs.stats_without(f), fs.design, full.mode, prior, max_iter, tol, unpenalized,
                     select=fs.fold != f, start=full if warm_start else None)


@limited(_rows_cols)
def fit_and_recalibrate(rows: Rows, folds: int = 5, seed: int = 0, noise_classes: str = "group",
                        prior: str = "isotropic", weights: str = "ratios", max_iter: int = 500,
                        tol: float = 1e-8, max_scored_rows: int = 5000,
                        unpenalized: np.ndarray | None = None, keep: np.ndarray | None = None,
                        on_fold: Callable[[int], None] | None = None
                        ) -> tuple[RowsFit, dict[str, np.ndarray]]:
    """Fit ``rows`` (those where ``keep`` is True, if given) and learn the recalibration by K-fold CV
    over configurations.

    The rows enter once: statistics are computed per (fold, class) in one pass; the full fit sums all
    folds and each CV fit the others, starting its evidence iteration at the full fit's
    hyperparameters, so the K refits cost O(K * classes * p^2 + p^3) per iteration, not K passes over
    the rows. Each fold's ``|error| / sigma_raw`` is scored on at most ``max_scored_rows`` of its
    held-out rows (a seeded random subset: quantiles need no more, and scoring costs O(p^2) per row).
    ``on_fold(f)`` is called after fold f is scored (progress reporting).

    Returns:
        The full fit, and ``{quantity: (n_q,) ratios}`` over the scored held-out rows.
    """
    fs, full = _folds_and_full_fit(rows, folds, seed, noise_classes, prior, weights, max_iter, tol,
                                   unpenalized, keep)
    rng = np.random.default_rng(seed)
    ratios: dict[str, list[np.ndarray]] = {}
    for f in range(folds):
        model = fold_fit(fs, f, full, prior, max_iter, tol, unpenalized)
        held_idx = np.flatnonzero(fs.fold == f)
        if held_idx.size > max_scored_rows:
            held_idx = np.sort(rng.choice(held_idx, size=max_scored_rows, replace=False))
        held = rows.subset(held_idx)
        mean, std = model.predict_raw(held)
        for q in np.unique(held.row_types.astype(str)):
            sel = held.row_types.astype(str) == q
            ratios.setdefault(q, []).append(np.abs(held.b[sel] - mean[sel]) / std[sel])
        if on_fold is not None:
            on_fold(f)
    return full, {q: np.concatenate(v) for q, v in ratios.items()}


def cross_validated_ratios(rows: Rows, folds: int = 5, seed: int = 0, **kwargs: object
                           ) -> dict[str, np.ndarray]:
    """``|error| / sigma_raw`` of held-out rows by K-fold CV (see :func:`fit_and_recalibrate`)."""
    return fit_and_recalibrate(rows, folds=folds, seed=seed, **kwargs)[1]  # type: ignore[arg-type]


def recalibration_map(ratios: dict[str, np.ndarray], levels: np.ndarray = RECAL_LEVELS
                      ) -> dict[str, np.ndarray]:
    """Quantile recalibration: {"levels": (L,), quantity: (L,) multipliers of sigma_raw}."""
    out: dict[str, np.ndarray] = {"levels": np.asarray(levels, dtype=float)}
    for q, r in ratios.items():
        r = r[np.isfinite(r)]
        if r.size >= 10:
            out[q] = np.quantile(r, levels)
    return out


@dataclass
class CrossValidated:
    """Held-out rows of a K-fold cross-validation over configurations.

    Attributes:
        index: (n,) positions of the rows in the :class:`Rows` given.
        resid: (n,) truth minus the prediction of the fold's fit that did not see the row.
        post_var: (n,) ``a^T S_f a`` of that fit (physical units squared).
    """

    index: np.ndarray
    resid: np.ndarray
    post_var: np.ndarray


@limited(_rows_cols)
def fit_with_model_error(rows: Rows, folds: int = 5, seed: int = 0, noise_classes: str = "one",
                         prior: str = "isotropic", weights: str = "ratios", max_iter: int = 500,
                         tol: float = 1e-8, max_rows: int = 50000,
                         unpenalized: np.ndarray | None = None, rank: int = 3,
                         basis: str = "posterior", keep: np.ndarray | None = None,
                         on_fold: Callable[[int], None] | None = None, atom_floor: str = "constant",
                         energy_scale: bool = False, scale_weights: str = "rows"
                         ) -> tuple[RowsFit, PredictiveModel, dict[str, np.ndarray]]:
    """Fit the mean of ``rows`` and learn the predictive model of new configurations by K-fold CV.

    The mean is :func:`fit_rows`'s (with ``noise_classes = one``: FitSNAP's weights as fixed
    relative precisions, up to the evidence-optimized prior, as SVD/ANL). Each fold's fit predicts
    its held-out configurations; their residuals and fit variances train the
    :class:`~fitsnap_uq.linear.predictive.PredictiveModel` (model error shared by energies and
    forces, a floor per quantity). The rows enter once (statistics per fold and class, summed; each
    fold's fit warm-started at the full fit's hyperparameters).

    Args:
        rows: the training rows (weight-0 rows are left out).
        max_rows: most held-out rows per quantity that train the predictive model (a seeded random
            subset; the model has m (rank + 1) + 4 parameters).
        rank: rank of the correlated part of the model error (0: diagonal only; default 3, README
            "model_error_rank"; fitted with every held-out row counting once, the rest balanced:
            :func:`~fitsnap_uq.linear.predictive.fit_predictive`'s ``factor_balance``).
        basis: the axes on which the model error is diagonal: ``posterior`` (default), the
            eigenvectors of the mean fit's posterior covariance S (so each principal direction of
            the fit, well or poorly determined by the weighted data, gets its own model error; this
            contains ``c S`` as the case of equal variances), or ``coefficients`` (each SNAP
            coefficient its own, the embedded model error of Sargsyan et al. as written), or
            ``misfit``: the principal axes of the held-out rows' misfit covariance
            (:func:`~fitsnap_uq.linear.predictive.misfit_covariance`, the axes of POPS).
        keep: optional (n,) bool, the rows to use (as ``rows.subset(keep)``, without copying them).
        on_fold: called with f after the fit of fold f (progress reporting).
        atom_floor: how the per-atom force scale's floor depends on the atom (rows with atom and
            element labels only): ``fit_atom_scale``'s ``floor_model``. Default ``constant``: a
            floor per element or per atom lowered the force Spearman and the recalibrated NLL on
            held-out Ta and W-Be configurations (``benchmarks/calibration_newdata.py``).
        energy_scale: also learn a per-configuration scale of the energy variance
            (:attr:`~fitsnap_uq.linear.predictive.PredictiveModel.energy_scale`; its intercepts are
            weighted by the element fractions of :func:`composition`).
        scale_weights: how the held-out force rows count in the per-atom scale's likelihood and
            its inner cross-validation (one of :data:`SCALE_WEIGHTS`): ``rows`` (default) each
            row once; ``group`` each training group equally (a row weighs 1 / its group's scored
            force rows), so that the largest groups do not set the scale and the floor for all.
            Training labels only: a prediction uses no group. Measured on held-out W-Be
            configurations (3 split seeds, ``benchmarks/calibration_newdata.py --scale-weights
            group``): groups with force cov95 outside [0.85, 0.99] 9/7/10 -> 7/6/8 of 32, force NLL
            lower on every seed; on Ta no group changed side (README, "Group-weighted scale fit").

    Returns:
        The full fit, the predictive model (with ``basis = posterior`` its ``factor`` holds the
        rotated model error), and ``{quantity: |residual| / sigma}`` of the scored held-out rows
        under that model (for the quantile recalibration).
    """
    if basis not in BASES:
        raise ValueError(f"basis must be one of {BASES}, not {basis!r}")
    if scale_weights not in SCALE_WEIGHTS:
        raise ValueError(f"scale_weights must be one of {SCALE_WEIGHTS}, not {scale_weights!r}")
    nonzero = rows.w != 0 if keep is None else (rows.w != 0) & np.asarray(keep, dtype=bool)
    fs, full = _folds_and_full_fit(rows, folds, seed, noise_classes, prior, weights, max_iter, tol,
                                   unpenalized, keep=nonzero, fold_over=nonzero)
    rng = np.random.default_rng(seed)
    types = rows.row_types.astype(str)
    scored = np.zeros(rows.b.shape[0], dtype=bool)
    for q in np.unique(types[fs.design.use]):
        idx = np.flatnonzero((types == q) & fs.design.use)
        scored[idx if idx.size <= max_rows else rng.choice(idx, size=max_rows, replace=False)] = True
    cv = cross_validate(rows, fs, full, prior, max_iter, tol, unpenalized, scored, on_fold=on_fold)
    a = rows.a[cv.index]
    t = types[cv.index]
    if energy_scale and rows.natoms is None:
        raise ValueError("energy_scale needs the rows' numbers of atoms (Rows.natoms)")
    comp_cols = composition_columns(a, t) if energy_scale else None
    if basis == "coefficients":
        model = fit_predictive(a, cv.resid, cv.post_var, t, rank=rank, seed=seed)
        var = model.variance(a, cv.post_var, t)
    else:
        # (m, m) orthonormal principal axes of S (or of the misfit covariance) over the active
        # columns; the columns the fit leaves out (all-zero descriptors) keep their own unit axes,
        # so they get no model error.
        act = full.result.active
        axes = np.eye(a.shape[1])
        cov_act = full.result.cov[np.ix_(act, act)]
        if basis == "misfit":
            shared = np.isin(t, SHARED)
            cov_act = misfit_covariance(a[np.ix_(shared, act)], cv.resid[shared], cov_act)
        axes[np.ix_(act, act)] = np.linalg.eigh(cov_act)[1]
        a = a @ axes  # the held-out rows on the axes (the unrotated copy is not needed again)
        rotated = fit_predictive(a, cv.resid, cv.post_var, t, rank=rank, seed=seed)
        # diag(s^2) on the axes is the covariance axes diag(s^2) axes^T: a factor of the coefficients.
        factor = np.hstack([axes * np.sqrt(rotated.coef_var), axes @ rotated.factor])
        model = replace(rotated, coef_var=np.zeros(a.shape[1]), factor=factor)
        # variance(a_rot) under the rotated model equals variance(a) under the coefficient-axes one
        var = rotated.variance(a, cv.post_var, t)
    if rows.atom is not None and rows.element is not None and np.any(t == "Force"):
        model, var = _with_atom_scale(rows, fs.design.use, full, model, cv, t, var, folds, seed,
                                      atom_floor, scale_weights)
    if energy_scale and np.any(t == "Energy"):
        model, var = _with_energy_scale(rows, full, model, cv, t, var, comp_cols, folds, seed)
    std = np.sqrt(var)
    ratios = {q: np.abs(cv.resid[t == q]) / std[t == q] for q in np.unique(t)}
    return full, model, ratios


BASES = ("posterior", "coefficients", "misfit")
"""Axes on which :func:`fit_with_model_error`'s model error is diagonal."""
SCALE_WEIGHTS = ("rows", "group")
"""How the held-out force rows count in the per-atom scale's fit (:func:`fit_with_model_error`)."""
ATOM_BLOCK = 20000
"""Force rows per block when the per-atom features of every training atom are computed."""


def _with_atom_scale(rows: Rows, use: np.ndarray, full: RowsFit, model: PredictiveModel,
                     cv: CrossValidated, types: np.ndarray, var: np.ndarray, folds: int, seed: int,
                     floor_model: str = "constant", weights: str = "rows"
                     ) -> tuple[PredictiveModel, np.ndarray]:
    """Learn the per-atom force scale (:mod:`fitsnap_uq.linear.atomscale`) on the cross-validated
    force rows; returns the model with it and the scored rows' variances (n,) under it.
    ``weights``: one of :data:`SCALE_WEIGHTS` (:func:`group_weights` for ``group``).

    The features of an atom sum over its three force rows (all of them, scored or not), with the
    full fit's ``S`` and the learned model error, as a prediction computes them."""
    atom = rows.atom_ids()
    idx = np.flatnonzero(use & (atom >= 0))
    me, fitvar, norm2 = np.empty(idx.size), np.empty(idx.size), np.empty(idx.size)
    for s in range(0, idx.size, ATOM_BLOCK):
        blk = rows.a[idx[s:s + ATOM_BLOCK]]
        me[s:s + ATOM_BLOCK] = model.model_error_var(blk)
        fitvar[s:s + ATOM_BLOCK] = row_variance(blk, full.result.cov)
        norm2[s:s + ATOM_BLOCK] = np.einsum("ij,ij->i", blk, blk)
    feats_all = atom_sums(me, fitvar, norm2, atom[idx])
    pos = np.full(rows.b.shape[0], -1)
    pos[idx] = np.arange(idx.size)
    scored = (types == "Force") & (pos[cv.index] >= 0)
    held = cv.index[scored]
    floor = float(model.floor_var.get("Force", 0.0))
    base = np.maximum(var[scored] - floor, 0.0)
    _, config = noise_model.pair_codes(rows.groups, rows.configs)
    element = np.asarray(rows.element, dtype=int)
    weight = group_weights(rows.groups[held]) if weights == "group" else None
    scale = fit_atom_scale(feats_all[pos[held]], element[held], base, cv.resid[scored], floor,
                           int(element.max()) + 1, config[held], folds=folds, seed=seed,
                           floor_model=floor_model, weight=weight)
    var = var.copy()
    var[scored] = scale.variance(base, feats_all[pos[held]], element[held])
    return replace(model, atom_scale=scale, floor_var={**model.floor_var, "Force": scale.floor_var}), var


def group_weights(groups: np.ndarray) -> np.ndarray:
    """(n,) weights that give each group the same total: 1 / (rows of the row's group), scaled to
    mean 1 (``groups``: (n,) the group label of each row)."""
    _, inv = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    w = 1.0 / np.bincount(inv)[inv]
    return w / w.mean()


def composition_columns(a: np.ndarray, row_types: np.ndarray) -> np.ndarray | None:
    """Indices of the per-element constant columns of FitSNAP's layout in rows ``a`` (n, m): zero on
    every force and stress row, nonzero on some energy row, and summing to 1 on every energy row (an
    energy row per atom holds each element's fraction there). None if the rows show no such columns
    (no force or stress rows, or another layout)."""
    types = np.asarray(row_types).astype(str)
    energy = types == "Energy"
    if not energy.any() or energy.all():
        return None
    nz_other = np.zeros(a.shape[1], dtype=bool)
    for s in range(0, energy.size, ATOM_BLOCK):  # blocks: no copy of the rows
        blk, e = a[s:s + ATOM_BLOCK], energy[s:s + ATOM_BLOCK]
        nz_other |= np.any(blk[~e] != 0, axis=0)
    a_e = a[energy]
    cols = np.flatnonzero(~nz_other & np.any(a_e != 0, axis=0))
    frac = a_e[:, cols]
    if cols.size == 0 or not np.allclose(frac.sum(axis=1), 1.0, atol=1e-8) or np.any(frac < -1e-12):
        return None
    return cols


def composition(a: np.ndarray, cols: np.ndarray | None) -> np.ndarray:
    """(n, k) element fractions of energy rows ``a`` (n, m) from their constant columns ``cols``
    (:func:`composition_columns`); (n, 1) ones when ``cols`` is None (one intercept)."""
    if cols is None:
        return np.ones((np.shape(a)[0], 1))
    return np.clip(np.asarray(a)[:, cols], 0.0, 1.0)


def _with_energy_scale(rows: Rows, full: RowsFit, model: PredictiveModel, cv: CrossValidated,
                       types: np.ndarray, var: np.ndarray, comp_cols: np.ndarray | None, folds: int,
                       seed: int) -> tuple[PredictiveModel, np.ndarray]:
    """Learn the per-configuration energy scale on the cross-validated energy rows; returns the
    model with it and the scored rows' variances (n,) under it. Features from the full fit's ``S``
    and the learned model error (as a prediction computes them); floor model ``features``."""
    scored = types == "Energy"
    held = cv.index[scored]
    a_e = rows.a[held]
    feats = energy_features(model.model_error_var(a_e), row_variance(a_e, full.result.cov), a_e,
                            np.asarray(rows.natoms)[held])
    comp = composition(a_e, comp_cols)
    floor = float(model.floor_var.get("Energy", 0.0))
    base = np.maximum(var[scored] - floor, 0.0)
    _, config = noise_model.pair_codes(rows.groups, rows.configs)
    scale = fit_atom_scale(feats, comp, base, cv.resid[scored], floor, comp.shape[1], config[held],
                           folds=folds, seed=seed, floor_model="features")
    var = var.copy()
    var[scored] = scale.variance(base, feats, comp)
    return replace(model, energy_scale=scale, energy_columns=comp_cols,
                   floor_var={**model.floor_var, "Energy": scale.floor_var}), var


@limited(_rows_cols)
def cross_validate(rows: Rows, fs: FoldStats, full: RowsFit, prior: str, max_iter: int, tol: float,
                   unpenalized: np.ndarray | None, scored: np.ndarray,
                   on_fold: Callable[[int], None] | None = None) -> CrossValidated:
    """Residuals and fit variances of the ``scored`` rows, each from the fold fit that left its
    configuration out (see :func:`fit_with_model_error`); ``on_fold(f)`` after fold f."""
    index, resid, post_var = [], [], []
    for f in range(fs.nfold):
        held = np.flatnonzero((fs.fold == f) & scored)
        if held.size == 0:
            if on_fold is not None:
                on_fold(f)
            continue
        model = fold_fit(fs, f, full, prior, max_iter, tol, unpenalized)
        a = rows.a[held]
        index.append(held)
        resid.append(rows.b[held] - a @ model.result.mean)
        post_var.append(row_variance(a, model.result.cov))
        if on_fold is not None:
            on_fold(f)
    return CrossValidated(np.concatenate(index), np.concatenate(resid), np.concatenate(post_var))


@limited(_rows_cols)
def group_rmse_against(rows: Rows, mean: np.ndarray) -> list[dict[str, object]]:
    """Each group's RMSE of predictions ``mean`` (n,) beside weighted least squares (FitSNAP's SVD
    with its weights) fitted on the training rows of nonzero weight.

    Returns:
        One record per (group, quantity, Training/Testing): ``rmse``, ``rmse_svd`` and their
        ``ratio`` (eV/atom, eV/A, bar).
    """
    use = ~rows.testing & (rows.w != 0)
    # Weighted least squares from one pass of Gram statistics and one of residuals (no weighted copy
    # of the rows; equal to an SVD solve to ~1e-12 relative where the scaled Gram matrix is regular).
    st = cell_stats(rows.a, rows.b, rows.w, np.where(use, 0, -1), 1)[0]
    coef = least_squares(st) if st is not None else np.zeros(rows.a.shape[1])
    svd = rows.a @ coef
    err, err_svd = rows.b - np.asarray(mean), rows.b - svd
    groups, types = rows.groups.astype(str), rows.row_types.astype(str)
    out: list[dict[str, object]] = []
    for g in sorted(set(groups.tolist())):
        for q in ("Energy", "Force", "Stress"):
            for label, test in (("Training", False), ("Testing", True)):
                sel = (groups == g) & (types == q) & (rows.testing == test) & (rows.w != 0)
                if not sel.any():
                    continue
                r, r_svd = float(np.sqrt(np.mean(err[sel] ** 2))), float(np.sqrt(np.mean(err_svd[sel] ** 2)))
                out.append({"group": g, "quantity": q, "set": label, "rmse": r, "rmse_svd": r_svd,
                            "ratio": r / r_svd if r_svd > 0 else float("nan")})
    return out
