"""Noise classes of the rows of a linear fit, and the pooled per-quantity noise for new data.

Pure numpy; the FitSNAP adapter passes per-row group names, row types and weights.
"""

from __future__ import annotations

import numpy as np

from fitsnap_uq.linear.bayes import BayesResult, ClassStats, class_stats

MODES = ("one", "quantity", "group")
ALL = "All"


def class_labels(groups: np.ndarray, row_types: np.ndarray, mode: str) -> np.ndarray:
    """Noise-class name of each row.

    Args:
        groups: (n,) FitSNAP group name per row.
        row_types: (n,) ``Energy``, ``Force`` or ``Stress`` per row.
        mode: ``one`` -> ``All``; ``quantity`` -> ``Force``; ``group`` -> ``GROUP/Force``.

    Returns:
        (n,) array of class names (str).
    """
    groups = np.asarray(groups).astype(str)
    row_types = np.asarray(row_types).astype(str)
    if mode == "one":
        return np.full(groups.shape, ALL, dtype=object)
    if mode == "quantity":
        return row_types.astype(object)
    if mode == "group":
        return np.char.add(np.char.add(groups, "/"), row_types).astype(object)
    raise ValueError(f"noise class mode must be one of {MODES}, not {mode!r}")


def stats_by_class(a: np.ndarray, y: np.ndarray, w: np.ndarray, labels: np.ndarray,
                   select: np.ndarray | None = None) -> dict[str, ClassStats]:
    """Per-class sufficient statistics (one pass over each class's rows).

    Args:
        a, y, w, labels: (n, p), (n,), (n,), (n,) rows, targets, weights and class names.
        select: optional (n,) bool, only these rows (gathered block by block, not copied whole).
    """
    out: dict[str, ClassStats] = {}
    for name in sorted(set(labels.tolist() if select is None else labels[select].tolist())):
        mask = labels == name if select is None else (labels == name) & select
        if np.any(w[mask] != 0):
            out[name] = class_stats(a, y, w, index=np.flatnonzero(mask))
    return out


def row_noise_var(result: BayesResult, class_names: list[str], labels: np.ndarray,
                  w: np.ndarray) -> np.ndarray:
    """Physical noise variance (n,) of each row under the fitted model, ``1 / (beta_k w_i^2)``.

    Rows of classes the fit has no precision for, or of zero weight, get ``inf``.
    """
    beta = dict(zip(class_names, result.beta))
    out = np.full(labels.shape[0], np.inf)
    for name, b in beta.items():
        rows = (labels == name) & (w != 0)
        out[rows] = 1.0 / (b * w[rows] ** 2)
    return out


def pooled_noise_var(result: BayesResult, class_names: list[str], labels: np.ndarray,
                     row_types: np.ndarray, w: np.ndarray) -> dict[str, float]:
    """Noise variance per quantity for rows outside the training groups (new data, MD frames).

    For each quantity Q: the row-count-weighted mean, over the noise classes that hold rows of Q,
    of the class's noise variance at the median weight of its Q rows. With per-group classes this
    is the mean physical noise of the training rows of Q; with weights as ratios it is the noise of a
    row of typical weight (rows weighted far below the rest, which FitSNAP uses to leave data out,
    do not swamp it).
    """
    beta = dict(zip(class_names, result.beta))
    row_types = np.asarray(row_types).astype(str)
    out: dict[str, float] = {}
    for q in sorted(set(row_types.tolist())):
        total, count = 0.0, 0
        for name, b in beta.items():
            rows = (labels == name) & (row_types == q) & (w != 0)
            n = int(rows.sum())
            if n:
                total += n / (b * float(np.median(np.abs(w[rows]))) ** 2)
                count += n
        if count:
            out[q] = total / count
    return out


def quantity_noise_var(data_var: float, row_types: np.ndarray, w: np.ndarray) -> dict[str, float]:
    """Physical noise variance per quantity of a weighted-row data variance ``data_var``: the variance
    of a row of the quantity's median weight (rows of weight 0 left out).

    Args:
        data_var: noise variance of the weighted rows ``w_i y_i`` (e.g. the model-error fit's).
        row_types: (n,) quantity of each row; w: (n,) FitSNAP weights.
    """
    row_types = np.asarray(row_types)
    w = np.asarray(w)
    out = {}
    for q in sorted(set(row_types.astype(str).tolist())):
        wq = np.abs(w[(row_types == q) & (w != 0)])
        if wq.size:
            out[q] = data_var / float(np.median(wq)) ** 2
    return out
