"""Calibration metrics of predictive uncertainties, per group and quantity, raw and recalibrated.

The metrics take plain arrays (truth, predicted mean, raw Gaussian sigma) and a ``multiplier(level,
quantity)`` giving the half-width of the central interval at ``level`` in units of the raw sigma
(Gaussian: ``Phi^-1((1 + level) / 2)``; recalibrated: a :class:`~fitsnap_uq.posterior.Posterior`'s
:meth:`~fitsnap_uq.posterior.Posterior.multiplier`). So they apply to any of our posteriors and to
FitSNAP ANL's ``covariance.npy`` alike (:func:`anl_sigma`).

Per block of rows (a group and quantity, training or testing):

* ``cov68``/``cov95``: fraction of errors inside the 68.27% / 95.45% interval (ideal 0.683 / 0.954);
* ``miscal_area``: mean over levels 0.01..0.99 of |observed coverage - level| (ideal 0);
* ``nll``: mean Gaussian negative log-likelihood with the (calibrated) 1-sigma;
* ``zms``: mean of (error / sigma)^2 (ideal 1);
* ``spearman``: rank correlation of |error| and sigma (higher: sigma ranks the errors);
* ``rmse`` and ``rms_sigma`` in physical units (eV/atom, eV/A, bar).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from fitsnap_uq.linear.gaussian import ONE_SIGMA, TWO_SIGMA, gaussian_multiplier, row_variance

Multiplier = Callable[[float, "str | None"], float]
CURVE_LEVELS = np.linspace(0.01, 0.99, 99)
UNITS = {"Energy": "eV/atom", "Force": "eV/A", "Stress": "bar"}


def observed_coverage(abs_err: np.ndarray, sigma: np.ndarray, quantity: str | None,
                      multiplier: Multiplier, levels: np.ndarray = CURVE_LEVELS) -> np.ndarray:
    """(L,) fraction of rows whose |error| is inside the interval at each level."""
    mult = np.array([multiplier(float(p), quantity) for p in levels])
    return np.mean(abs_err[None, :] <= mult[:, None] * sigma[None, :], axis=1)


def block_metrics(err: np.ndarray, sigma: np.ndarray, quantity: str | None,
                  multiplier: Multiplier = gaussian_multiplier) -> dict[str, float]:
    """Metrics of one block of rows (see the module docstring).

    Args:
        err: (n,) truth minus prediction.
        sigma: (n,) raw Gaussian std of the prediction (same units).
        quantity: ``Energy``/``Force``/``Stress`` (selects the recalibration).
        multiplier: interval half-width in raw sigmas, by level and quantity.
    """
    err = np.asarray(err, dtype=float)
    sigma = np.asarray(sigma, dtype=float)
    abs_err = np.abs(err)
    s1 = multiplier(ONE_SIGMA, quantity) * sigma
    s2 = multiplier(TWO_SIGMA, quantity) * sigma
    curve = observed_coverage(abs_err, sigma, quantity, multiplier)
    rho = spearmanr(abs_err, sigma).statistic if err.size > 2 and np.ptp(sigma) > 0 else np.nan
    return {
        "n": int(err.size),
        "cov68": float(np.mean(abs_err <= s1)),
        "cov95": float(np.mean(abs_err <= s2)),
        "miscal_area": float(np.mean(np.abs(curve - CURVE_LEVELS))),
        "nll": float(np.mean(0.5 * np.log(2 * np.pi * s1**2) + 0.5 * (err / s1) ** 2)),
        "zms": float(np.mean((err / s1) ** 2)),
        "spearman": float(rho),
        "rmse": float(np.sqrt(np.mean(err**2))),
        "rms_sigma": float(np.sqrt(np.mean(s1**2))),
    }


def metrics_table(truth: np.ndarray, mean: np.ndarray, sigma: np.ndarray, groups: np.ndarray,
                  row_types: np.ndarray, testing: np.ndarray,
                  multiplier: Multiplier = gaussian_multiplier, keep: np.ndarray | None = None
                  ) -> pd.DataFrame:
    """Metrics per (group, quantity, Training/Testing), plus ``*ALL`` per quantity.

    Args:
        truth, mean, sigma: (n,) truths, predicted means, raw Gaussian stds.
        groups, row_types: (n,) group names and ``Energy``/``Force``/``Stress``.
        testing: (n,) bool.
        multiplier: interval half-width in raw sigmas by level and quantity.
        keep: (n,) bool, rows to score (default: all); e.g. leave out zero-weight rows.

    Returns:
        A DataFrame indexed by (Group, Subsystem, Set) with the columns of :func:`block_metrics`.
    """
    keep = np.ones(len(truth), dtype=bool) if keep is None else np.asarray(keep, dtype=bool)
    err = np.asarray(truth) - np.asarray(mean)
    groups = np.asarray(groups).astype(str)
    row_types = np.asarray(row_types).astype(str)
    testing = np.asarray(testing, dtype=bool)
    records = []
    for q in sorted(set(row_types[keep].tolist())):
        for is_test in (False, True):
            base = keep & (row_types == q) & (testing == is_test)
            if not base.any():
                continue
            label = "Testing" if is_test else "Training"
            for g in ["*ALL", *sorted(set(groups[base].tolist()))]:
                sel = base if g == "*ALL" else base & (groups == g)
                rec = block_metrics(err[sel], np.asarray(sigma)[sel], q, multiplier)
                records.append({"Group": g, "Subsystem": q, "Set": label, **rec})
    return pd.DataFrame.from_records(records).set_index(["Group", "Subsystem", "Set"])


def markdown(raw: pd.DataFrame, recal: pd.DataFrame | None = None, title: str = "",
             recalibration: str = "cross-validated quantile recalibration") -> str:
    """A Markdown report of one or two metric tables (raw posterior, recalibrated); ``recalibration``
    says how the recalibration was learned (the heading of its table)."""
    parts = [f"# {title}".rstrip() if title else "# Calibration of predictive uncertainties", "",
             "Units: energy eV/atom, force eV/A, stress bar. cov68/cov95: fraction of errors inside "
             "the 68.3%/95.4% interval (ideal 0.683/0.954); miscal_area: mean |observed - nominal| "
             "coverage over levels 0.01-0.99 (ideal 0); zms: mean (error/sigma)^2 (ideal 1); nll: "
             "Gaussian negative log-likelihood; spearman: rank correlation of |error| and sigma.", ""]
    for name, table in (("Raw posterior (Gaussian intervals)", raw),
                        (f"Recalibrated ({recalibration})", recal)):
        if table is None:
            continue
        parts += [f"## {name}", "", table.reset_index().to_markdown(index=False, floatfmt=".4g"), ""]
    return "\n".join(parts)


def coverage_curves(truth: np.ndarray, mean: np.ndarray, sigma: np.ndarray, row_types: np.ndarray,
                    testing: np.ndarray, keep: np.ndarray, multiplier: Multiplier | None = None
                    ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Calibration curves per quantity and training/testing set, raw and (with ``multiplier``)
    recalibrated, for :func:`calibration_plot`.

    Args:
        truth, mean, sigma: (n,) truths, predicted means, raw Gaussian stds.
        row_types, testing, keep: (n,) quantity, testing flag, rows to score.
        multiplier: the recalibrated interval half-width in raw sigmas (None: raw curves only).

    Returns:
        ``{"<quantity> train|test raw|recal": (levels (L,), observed coverage (L,))}``.
    """
    keep = np.asarray(keep, dtype=bool)
    row_types = np.asarray(row_types).astype(str)
    testing = np.asarray(testing, dtype=bool)
    sigma = np.asarray(sigma)
    abs_err = np.abs(np.asarray(truth) - np.asarray(mean))
    curves = {}
    for q in sorted(set(row_types[keep].tolist())):
        for is_test in (False, True):
            sel = keep & (row_types == q) & (testing == is_test)
            if not sel.any():
                continue
            label = f"{q} {'test' if is_test else 'train'}"
            curves[f"{label} raw"] = (CURVE_LEVELS, observed_coverage(abs_err[sel], sigma[sel], q,
                                                                      gaussian_multiplier))
            if multiplier is not None:
                curves[f"{label} recal"] = (CURVE_LEVELS, observed_coverage(abs_err[sel], sigma[sel], q,
                                                                            multiplier))
    return curves


def calibration_plot(path: str | Path, curves: dict[str, tuple[np.ndarray, np.ndarray]],
                     title: str = "Calibration") -> Path:
    """Write a calibration-curve PNG: observed vs nominal coverage, one line per label.

    Args:
        curves: {label: (levels (L,), observed coverage (L,))}.
    """
    from fitsnap_uq.plotting import pyplot, save

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], color="0.5", lw=1, ls="--", label="ideal")
    for label, (levels, observed) in curves.items():
        ax.plot(levels, observed, lw=1.8, label=label)
    ax.set_xlabel("nominal coverage of the central interval")
    ax.set_ylabel("observed fraction of errors inside")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return save(fig, path, dpi=120)


def anl_sigma(a: np.ndarray, cov: np.ndarray, noise_var: np.ndarray | float = 0.0) -> np.ndarray:
    """Raw std (n,) of rows ``a`` (n, p) under a coefficient covariance, e.g. FitSNAP ANL's
    ``covariance.npy`` (FitSNAP's column layout), plus an optional noise variance per row."""
    return np.sqrt(np.maximum(row_variance(a, cov), 0.0) + noise_var)


def _sigma_bins(sigma: np.ndarray, bins: int) -> list[np.ndarray]:
    """Indices of rows in ``bins`` equal-count bins of increasing ``sigma`` (ties broken stably)."""
    sigma = np.asarray(sigma, dtype=float)
    if sigma.ndim != 1 or sigma.size == 0:
        raise ValueError("sigma must be a non-empty 1-D array")
    if bins < 1:
        raise ValueError(f"need at least one bin, got {bins}")
    order = np.argsort(sigma, kind="stable")
    return [part for part in np.array_split(order, min(int(bins), sigma.size)) if part.size]


def error_based_curve(err: np.ndarray, sigma: np.ndarray, bins: int = 10
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Error-based calibration curve (Levi et al. 2022): rows binned by ``sigma`` into ``bins``
    equal-count bins; per bin the RMS of ``sigma`` and the RMSE of ``err``.

    Args:
        err: (n,) truth minus prediction.
        sigma: (n,) predicted 1-sigma (same units; pass the calibrated one to score intervals).
        bins: number of bins (at most n).

    Returns:
        (rms_sigma (B,), rmse (B,)), in order of increasing sigma; ideal: equal.
    """
    err = np.asarray(err, dtype=float)
    sigma = np.asarray(sigma, dtype=float)
    if err.shape != sigma.shape:
        raise ValueError(f"err and sigma differ in shape: {err.shape} vs {sigma.shape}")
    parts = _sigma_bins(sigma, bins)
    rms_sigma = np.array([np.sqrt(np.mean(sigma[p] ** 2)) for p in parts])
    rmse = np.array([np.sqrt(np.mean(err[p] ** 2)) for p in parts])
    return rms_sigma, rmse


def ence(err: np.ndarray, sigma: np.ndarray, bins: int = 10) -> float:
    """Expected normalized calibration error: mean over equal-count bins of increasing ``sigma`` of
    ``|RMS sigma - RMSE| / RMS sigma`` (ideal 0; a sigma 2x too large gives 0.5, 2x too small 1.0).

    Args as :func:`error_based_curve`.
    """
    rms_sigma, rmse = error_based_curve(err, sigma, bins)
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.mean(np.abs(rms_sigma - rmse) / rms_sigma))
