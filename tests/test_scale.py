"""The paths that make BAYES and MODELERROR scale (issue 17): fold statistics from one pass, accelerated
evidence iterations, the streamed model-error fit, the Newton fit of variances, and the memory bound.
Speed itself is measured in benchmarks/bench_scale.py, not here."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from scipy.optimize import minimize

from fitsnap_uq.linear import noise as noise_model
from fitsnap_uq.linear.bayes import cell_stats, fit_bayes
from fitsnap_uq.linear.merr import fit_model_error
from fitsnap_uq.linear.rows import (
    Rows,
    fit_and_recalibrate,
    fit_rows,
    fit_with_model_error,
    fold_fit,
    fold_stats,
)
from fitsnap_uq.linear.varfit import newton_variances


def grouped_rows(nconf: int = 300, p: int = 14, seed: int = 0) -> Rows:
    """FitSNAP-like rows: 3 groups with their own noise and weights, an energy row and 12 force rows
    per configuration, columns over 3 decades, an energy offset (large common part of the targets)."""
    rng = np.random.default_rng(seed)
    scales = np.logspace(0, 3, p)
    coef = rng.normal(size=p) / scales
    blocks = []
    for c in range(nconf):
        g = c % 3
        a = rng.normal(size=(13, p)) * scales
        a[0] = a[1:].mean(axis=0) + scales  # the energy row
        sd = np.array([1e-3] + [0.05] * 12) * (1 + g)
        b = a @ coef + sd * rng.normal(size=13) + np.r_[-8.0, np.zeros(12)]
        a[0, 0] = 1.0  # a constant column on energies only, as bzeroflag = 0
        a[1:, 0] = 0.0
        w = np.r_[100.0 / (1 + g), np.full(12, 1.0 / (1 + g))]
        blocks.append((a, b, w, ["Energy"] + ["Force"] * 12, f"G{g}", f"c{c}"))
    return Rows(a=np.vstack([x[0] for x in blocks]), b=np.concatenate([x[1] for x in blocks]),
                w=np.concatenate([x[2] for x in blocks]), testing=np.zeros(13 * nconf, dtype=bool),
                groups=np.repeat([x[4] for x in blocks], 13).astype(object),
                row_types=np.concatenate([x[3] for x in blocks]).astype(object),
                configs=np.repeat([x[5] for x in blocks], 13).astype(object))


@pytest.mark.parametrize("prior", ["g", "isotropic"])
def test_fold_statistics_equal_a_fit_of_that_fold_from_scratch(prior):
    """A fold's fit sums the other folds' statistics from the one pass: its Gram matrices, targets and
    residuals equal those of a pass over the fold's rows alone, and so does the fit (cold start)."""
    rows = grouped_rows()
    fs = fold_stats(rows, folds=5, seed=0, noise_classes="group", weights="ratios")
    full = fit_rows(rows, noise_classes="group", prior=prior)
    m = full.result.mean * 1.001
    for f in (0, 3):
        keep = fs.fold != f
        merged = fs.stats_without(f)
        labels = noise_model.class_labels(rows.groups, rows.row_types, "group")
        own = noise_model.stats_by_class(rows.a, rows.b, rows.w, labels, select=keep)
        assert list(merged) == list(own)
        for name in own:
            g_ref, h_ref = own[name].g, own[name].h
            np.testing.assert_allclose(merged[name].g, g_ref, rtol=1e-12, atol=1e-12 * np.abs(g_ref).max())
            np.testing.assert_allclose(merged[name].h, h_ref, rtol=1e-10, atol=1e-10 * np.abs(h_ref).max())
            assert merged[name].res2(m) == pytest.approx(own[name].res2(m), rel=1e-9)
            assert merged[name].n == own[name].n and merged[name].wref2 == own[name].wref2
        folded = fold_fit(fs, f, full, prior, 500, 1e-8, None)
        scratch = fit_rows(rows, noise_classes="group", keep=keep, prior=prior)
        np.testing.assert_allclose(folded.result.mean, scratch.result.mean, rtol=1e-8,
                                   atol=1e-10 * np.abs(scratch.result.mean).max())
        assert folded.result.log_evidence == pytest.approx(scratch.result.log_evidence, rel=1e-10)
        for name, var in scratch.noise_var.items():
            assert folded.noise_var[name] == pytest.approx(var, rel=1e-7)


def test_anderson_mixing_reaches_the_plain_iterations_optimum():
    """Anderson mixing changes the path, not the optimum (on the W-Be rows with a noise class per
    group it took 49 iterations instead of 123; these rows converge in ~10 either way)."""
    rows = grouped_rows(seed=1)
    labels = noise_model.class_labels(rows.groups, rows.row_types, "group")
    stats = noise_model.stats_by_class(rows.a, rows.b, rows.w, labels)
    plain = fit_bayes(stats, accelerate=False, tol=1e-11, max_iter=5000)
    fast = fit_bayes(stats, accelerate=True, tol=1e-11, max_iter=5000)
    print(f"iterations: plain {plain.iterations}, Anderson {fast.iterations}")
    assert plain.converged and fast.converged and fast.iterations <= plain.iterations + 2
    assert fast.log_evidence == pytest.approx(plain.log_evidence, rel=1e-12)
    np.testing.assert_allclose(fast.mean, plain.mean, rtol=1e-7, atol=1e-9 * np.abs(plain.mean).max())
    np.testing.assert_allclose(fast.beta, plain.beta, rtol=1e-7)
    hist = np.array(fast.history)
    assert np.all(np.diff(hist) > -1e-10 * np.abs(hist[1:]))  # never a step down


def test_one_pass_cells_match_a_dense_least_squares_fit():
    """One class, no prior: the mean from the Gram statistics (with the anchor's refinement step)
    equals a dense least-squares solve of the weighted rows to rounding."""
    rows = grouped_rows(seed=2)
    cells = cell_stats(rows.a, rows.b, rows.w, np.zeros(rows.b.size, dtype=int), 1, block_rows=333)
    res = fit_bayes({"All": cells[0]}, prior="none")
    ref = np.linalg.lstsq(rows.a * rows.w[:, None], rows.b * rows.w, rcond=None)[0]
    np.testing.assert_allclose(res.mean, ref, rtol=1e-9, atol=1e-12 * np.abs(ref).max())


def test_weighted_model_error_streams_the_same_fit():
    """fit_model_error(a, y, w=w) (weights applied block by block) is the fit of the weighted rows."""
    rng = np.random.default_rng(4)
    n, p = 3000, 6
    a = rng.normal(size=(n, p)) * np.logspace(0, 2, p)
    y = a @ rng.normal(size=p) + 0.05 * a[:, 1] * rng.normal(size=n) + 0.1 * rng.normal(size=n)
    w = rng.uniform(0.5, 2.0, size=n)
    for fix_mean in (True, False):
        dense = fit_model_error(a * w[:, None], y * w, likelihood="iid", fix_mean=fix_mean)
        streamed = fit_model_error(a, y, w=w, likelihood="iid", fix_mean=fix_mean)
        assert dense.converged and streamed.converged
        np.testing.assert_allclose(streamed.coef, dense.coef, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(streamed.sigma, dense.sigma, rtol=1e-8, atol=1e-10 * dense.sigma.max())
        assert streamed.nll == pytest.approx(dense.nll, rel=1e-12)


def test_newton_variances_reach_a_kkt_point_no_worse_than_lbfgs():
    """The projected Newton fit of variances linear in their parameters ends at a KKT point of the
    bounded problem whose objective is no higher than L-BFGS-B's in log coordinates (the method it
    replaced in the predictive model), with or without the start on every 8th row."""
    rng = np.random.default_rng(5)
    n, m = 40000, 8
    f = rng.uniform(0, 1, size=(n, m)) ** 2
    truth = np.array([0.5, 0.0, 0.2, 0.0, 0.0, 1.0, 0.0, 0.05])
    rt2 = (f @ truth + 0.1) * rng.standard_normal(n) ** 2
    weight = np.full(n, 1.0 / n)

    def block(rows: slice) -> np.ndarray:
        return f[rows]

    lo = np.exp(-40.0)
    fits = [newton_variances(block, n, m, rt2, weight, np.full(m, 0.3), (lo, np.exp(40.0)), offset=0.1,
                             warm=warm) for warm in (False, True)]

    def objective(x: np.ndarray) -> tuple[float, np.ndarray]:
        th = np.exp(x)
        v = f @ th + 0.1
        gv = 0.5 * weight * (1 / v - rt2 / v**2)
        return 0.5 * float(np.sum(weight * (np.log(v) + rt2 / v))), (gv @ f) * th

    ref = minimize(objective, np.log(np.full(m, 0.3)), jac=True, method="L-BFGS-B",
                   bounds=[(-40.0, 40.0)] * m, options={"maxiter": 3000, "ftol": 1e-13, "gtol": 1e-10})
    for fit in fits:
        print(fit.message, fit.f, ref.fun)
        assert fit.converged
        assert np.all(fit.theta >= lo)  # in the box (a step to the bound from 0.3 once rounded to 0)
        assert fit.f <= ref.fun + 1e-12 * abs(ref.fun)
        v = f @ fit.theta + 0.1
        grad = (0.5 * weight * (1 / v - rt2 / v**2)) @ f
        at_bound = fit.theta <= lo * (1 + 1e-9)
        assert np.all(grad[at_bound] >= -1e-9)  # a bound variable would not lower f by leaving it
        assert np.max(np.abs(grad[~at_bound] * fit.theta[~at_bound])) <= 1e-9
        np.testing.assert_allclose(fit.theta[~at_bound], truth[~at_bound], rtol=0.3)
    np.testing.assert_allclose(fits[0].theta, fits[1].theta, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("which", ["recalibration", "predictive", "modelerror"])
def test_peak_memory_is_below_twice_the_descriptors(which):
    """tracemalloc's peak of what each fit allocates stays below 2x the descriptor matrix (the bound of
    issue 17; the rows are read in blocks, never copied whole)."""
    rows = grouped_rows(nconf=1500, p=40, seed=6)
    calls = {
        "recalibration": lambda: fit_and_recalibrate(rows, folds=5, noise_classes="group"),
        "predictive": lambda: fit_with_model_error(rows, folds=5, max_rows=4000),
        "modelerror": lambda: fit_model_error(rows.a, rows.b, w=rows.w, likelihood="iid", fix_mean=True),
    }
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        calls[which]()
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    print(f"{which}: peak {peak / rows.a.nbytes:.2f} x the descriptors ({rows.a.nbytes / 2**20:.1f} MiB)")
    assert peak <= 2.0 * rows.a.nbytes
