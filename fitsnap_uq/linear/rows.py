"""From rows of a FitSNAP linear system to a fitted Bayesian model, and its cross-validated recalibration.

Pure numpy: the FitSNAP adapter (:mod:`fitsnap_uq.solvers`) and the benchmarks both build a
:class:`Rows` and call :func:`fit_rows` / :func:`cross_validated_ratios`, so the solver and what the
benchmarks measure are the same code.

Recalibration (``../design.md`` section 3): the errors of a fitted potential are heavy-tailed and
heteroscedastic, so no Gaussian sigma meets both the 68% and the 95% coverage. For each quantity we
learn, by K-fold cross-validation over training *configurations*, the distribution of
``|error| / sigma_raw``; the half-width of the central interval at coverage ``level`` is then its
``level``-quantile times ``sigma_raw`` (quantile recalibration; monotone in ``level`` by construction).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fitsnap_uq.linear import noise as noise_model
from fitsnap_uq.linear.bayes import BayesResult, ClassStats, fit_bayes, merge_stats

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
    """

    a: np.ndarray
    b: np.ndarray
    w: np.ndarray
    testing: np.ndarray
    groups: np.ndarray
    row_types: np.ndarray
    configs: np.ndarray

    def subset(self, keep: np.ndarray) -> Rows:
        """The rows where ``keep`` is True."""
        return Rows(self.a[keep], self.b[keep], self.w[keep], self.testing[keep], self.groups[keep],
                    self.row_types[keep], self.configs[keep])

    def training(self) -> Rows:
        """The rows of training configurations."""
        return self.subset(~self.testing)

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
        coef_var = np.einsum("ij,jk,ik->i", rows.a, self.result.cov, rows.a, optimize=True)
        names = self.noise_names(rows)
        noise = np.array([self.noise_var[n] for n in names])
        return mean, np.sqrt(np.maximum(coef_var, 0.0) + noise)


def fit_weights(rows: Rows, weights: str) -> np.ndarray:
    """Row weights as the fit uses them: FitSNAP's (``ratios``) or 1 for nonzero ones (``ignore``)."""
    if weights == "ratios":
        return rows.w
    if weights == "ignore":
        return (rows.w != 0).astype(float)
    raise ValueError(f"weights must be 'ratios' or 'ignore', not {weights!r}")


def fit_stats(stats: dict[str, ClassStats], labels: np.ndarray, row_types: np.ndarray, w: np.ndarray,
              mode: str, prior: str = "isotropic", max_iter: int = 500, tol: float = 1e-8,
              unpenalized: np.ndarray | None = None) -> RowsFit:
    """Fit from per-class statistics of some rows, given those rows' class labels, row types and
    weights as used for the statistics (for the pooled noise of new data)."""
    result = fit_bayes(stats, prior=prior, max_iter=max_iter, tol=tol, unpenalized=unpenalized)
    classes = list(stats)
    noise_var = dict(result.noise_var) if mode != "one" else {}
    noise_var.update(noise_model.pooled_noise_var(result, classes, labels, row_types, w))
    return RowsFit(result=result, classes=classes, noise_var=noise_var, mode=mode)


def fit_rows(rows: Rows, noise_classes: str = "group", prior: str = "isotropic", weights: str = "ratios",
             max_iter: int = 500, tol: float = 1e-8, unpenalized: np.ndarray | None = None) -> RowsFit:
    """Bayesian fit of all of ``rows`` (pass ``rows.training()`` to leave testing rows out)."""
    w = fit_weights(rows, weights)
    labels = noise_model.class_labels(rows.groups, rows.row_types, noise_classes)
    stats = noise_model.stats_by_class(rows.a, rows.b, w, labels)
    if not stats:
        raise ValueError("no rows with nonzero weight")
    return fit_stats(stats, labels, rows.row_types, w, noise_classes, prior, max_iter, tol, unpenalized)


def config_folds(rows: Rows, folds: int, seed: int) -> np.ndarray:
    """(n,) fold index of each row: configurations are shuffled (seeded) and dealt into folds."""
    keys = rows.config_keys()
    unique = np.unique(keys)
    order = np.random.default_rng(seed).permutation(unique.size)
    fold_of = np.empty(unique.size, dtype=int)
    fold_of[order] = np.arange(unique.size) % folds
    return fold_of[np.searchsorted(unique, keys)]


def _merged(per_fold: list[dict[str, ClassStats]], folds: list[int]) -> dict[str, ClassStats]:
    """Per-class statistics of the union of the given folds."""
    out: dict[str, ClassStats] = {}
    for name in sorted({k for f in folds for k in per_fold[f]}):
        parts = [per_fold[f][name] for f in folds if name in per_fold[f]]
        out[name] = parts[0] if len(parts) == 1 else merge_stats(parts)
    return out


def fit_and_recalibrate(rows: Rows, folds: int = 5, seed: int = 0, noise_classes: str = "group",
                        prior: str = "isotropic", weights: str = "ratios", max_iter: int = 500,
                        tol: float = 1e-8, max_scored_rows: int = 5000,
                        unpenalized: np.ndarray | None = None) -> tuple[RowsFit, dict[str, np.ndarray]]:
    """Fit all of ``rows`` and learn the recalibration by K-fold CV over configurations.

    The rows enter once: statistics are computed per (fold, class); the full fit merges all folds
    and each CV fit the others, so the K refits cost O(K * classes * p^3), not K passes over the rows.
    Each fold's ``|error| / sigma_raw`` is scored on at most ``max_scored_rows`` of its held-out rows
    (a seeded random subset: quantiles need no more, and scoring costs O(p^2) per row).

    Returns:
        The full fit, and ``{quantity: (n_q,) ratios}`` over the scored held-out rows.
    """
    if folds < 2:
        raise ValueError(f"need at least 2 folds, got {folds}")
    w = fit_weights(rows, weights)
    fold = config_folds(rows, folds, seed)
    labels = noise_model.class_labels(rows.groups, rows.row_types, noise_classes)
    per_fold = [noise_model.stats_by_class(rows.a, rows.b, w, labels, select=fold == f)
                for f in range(folds)]
    full_stats = _merged(per_fold, list(range(folds)))
    if not full_stats:
        raise ValueError("no rows with nonzero weight")
    full = fit_stats(full_stats, labels, rows.row_types, w, noise_classes, prior, max_iter, tol,
                     unpenalized)
    rng = np.random.default_rng(seed)
    ratios: dict[str, list[np.ndarray]] = {}
    for f in range(folds):
        others = [g for g in range(folds) if g != f]
        keep = fold != f
        model = fit_stats(_merged(per_fold, others), labels[keep], rows.row_types[keep], w[keep],
                          noise_classes, prior, max_iter, tol, unpenalized)
        held_idx = np.flatnonzero((fold == f) & (w != 0))
        if held_idx.size > max_scored_rows:
            held_idx = np.sort(rng.choice(held_idx, size=max_scored_rows, replace=False))
        held = rows.subset(held_idx)
        mean, std = model.predict_raw(held)
        for q in np.unique(held.row_types.astype(str)):
            sel = held.row_types.astype(str) == q
            ratios.setdefault(q, []).append(np.abs(held.b[sel] - mean[sel]) / std[sel])
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
