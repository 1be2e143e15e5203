"""The Bayesian linear core: least-squares limit, learned noise per class, evidence, zero columns."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg as sla
from conftest import NEEDS_TA, SHARED_TA

from fitsnap_uq.errors import NumericalError
from fitsnap_uq.linear import noise as noise_model
from fitsnap_uq.linear.bayes import (
    cell_stats,
    class_stats,
    duplicate_columns,
    fit_bayes,
    log_evidence,
    merge_stats,
)


def synthetic(n=3000, p=12, sigmas=(0.05, 0.5), seed=0):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, p)) * np.logspace(0, 2, p)
    theta = rng.normal(size=p) / np.logspace(0, 2, p)
    labels = np.array(["lo", "hi"])[rng.integers(0, 2, size=n)]
    sd = np.where(labels == "lo", sigmas[0], sigmas[1])
    y = a @ theta + sd * rng.normal(size=n)
    return a, y, labels, theta


def test_one_class_no_prior_is_least_squares():
    a, y, _, _ = synthetic()
    w = np.random.default_rng(1).uniform(0.1, 10, size=y.size)
    ref = sla.lstsq(a * w[:, None], y * w)[0]
    res = fit_bayes({"all": class_stats(a, y, w, block_rows=700)}, prior="none")
    assert np.max(np.abs(res.mean - ref)) / np.max(np.abs(ref)) < 1e-8
    assert res.converged


@NEEDS_TA
def test_one_class_no_prior_equals_fitsnap_svd_on_ta():
    d = SHARED_TA / "reference_svd_fit"
    a, b, w = np.load(d / "Descriptors.npy"), np.load(d / "Truth-Ref.npy"), np.load(d / "Weights.npy")
    ref = sla.lstsq(w[:, None] * a, w * b, 1e-13)[0]
    res = fit_bayes({"All": class_stats(a, b, w)}, prior="none")
    assert np.max(np.abs(res.mean - ref)) / np.max(np.abs(ref)) < 1e-8


def test_learns_a_noise_level_per_class():
    a, y, labels, theta = synthetic(n=20000)
    stats = noise_model.stats_by_class(a, y, np.ones_like(y), labels)
    res = fit_bayes(stats, prior="isotropic")
    std = {k: np.sqrt(v) for k, v in res.noise_var.items()}
    assert std["lo"] == pytest.approx(0.05, rel=0.05)
    assert std["hi"] == pytest.approx(0.5, rel=0.05)
    assert res.converged and res.log_evidence is not None
    # The posterior covers the truth.
    z = (res.mean - theta) / np.sqrt(np.diag(res.cov))
    assert np.mean(np.abs(z) < 2) >= 0.8


def test_fixed_point_reaches_an_evidence_maximum():
    a, y, labels, _ = synthetic(n=2000)
    stats = noise_model.stats_by_class(a, y, np.ones_like(y), labels)
    names = list(stats)
    res = fit_bayes(stats, prior="isotropic", tol=1e-12)

    def ev(alpha, beta):
        return log_evidence(stats, np.full(a.shape[1], alpha), beta)

    best = ev(res.alpha[0], res.beta)
    assert best == pytest.approx(res.log_evidence, rel=1e-10)
    for factor in (0.5, 2.0):
        assert ev(res.alpha[0] * factor, res.beta) < best
        for k in range(len(names)):
            beta = res.beta.copy()
            beta[k] *= factor
            assert ev(res.alpha[0], beta) < best
    # Non-decreasing evidence along the iterations (up to rounding).
    hist = np.array(res.history)
    assert np.all(np.diff(hist) > -1e-8 * np.abs(hist[1:]))


def test_ard_prunes_irrelevant_coefficients():
    rng = np.random.default_rng(3)
    a = rng.normal(size=(400, 10))
    theta = np.zeros(10)
    theta[:3] = [1.0, -2.0, 0.5]
    y = a @ theta + 0.1 * rng.normal(size=400)
    res = fit_bayes({"all": class_stats(a, y)}, prior="ard")
    assert np.all(res.alpha[3:] > 10 * res.alpha[:3].max())
    np.testing.assert_allclose(res.mean[:3], theta[:3], atol=0.05)


def test_zero_columns_are_left_out():
    a, y, _, _ = synthetic(n=500, p=6)
    a0 = np.hstack([a[:, :3], np.zeros((500, 2)), a[:, 3:]])
    res = fit_bayes({"all": class_stats(a0, y)}, prior="isotropic")
    assert res.active.tolist() == [True] * 3 + [False] * 2 + [True] * 3
    assert np.all(res.mean[3:5] == 0) and np.all(res.cov[3:5] == 0) and np.all(res.cov[:, 3:5] == 0)
    ref = fit_bayes({"all": class_stats(a, y)}, prior="isotropic")
    np.testing.assert_allclose(res.mean[res.active], ref.mean, rtol=1e-9, atol=1e-12)


def test_underdetermined_without_prior_is_an_error():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(5, 8))
    with pytest.raises(NumericalError, match="singular"):
        fit_bayes({"all": class_stats(a, rng.normal(size=5))}, prior="none")
    res = fit_bayes({"all": class_stats(a, rng.normal(size=5))}, prior="isotropic")
    np.linalg.cholesky(res.cov)


def test_blocks_and_merge_match_one_pass():
    a, y, _, _ = synthetic(n=1000)
    one = class_stats(a, y, block_rows=10 ** 6)
    blocked = class_stats(a, y, block_rows=97)
    np.testing.assert_allclose(blocked.g, one.g, rtol=1e-10)
    np.testing.assert_allclose(blocked.g, a.T @ a, rtol=1e-10)
    merged = merge_stats([class_stats(a[:400], y[:400]), class_stats(a[400:], y[400:])])
    np.testing.assert_allclose(merged.g, one.g, rtol=1e-10)
    np.testing.assert_allclose(merged.h, a.T @ y, rtol=1e-10)
    m = np.linalg.lstsq(a, y, rcond=None)[0] * 1.01
    for s in (one, blocked, merged):
        assert s.res2(m) == pytest.approx(np.sum((y - a @ m) ** 2), rel=1e-10)
    assert merged.n == one.n == 1000
    assert merged.yy == pytest.approx(float(y @ y), rel=1e-12)


def test_residuals_keep_their_accuracy_beside_large_targets():
    """Targets with a large common offset (energies of -8 eV/atom fitted to meV): the residual of the
    fit from the statistics has the accuracy of a residual computed from the rows (no y^T y - 2 m^T h
    + m^T G m cancellation), and the mean agrees with least squares on the rows."""
    rng = np.random.default_rng(7)
    n, p = 4000, 20
    a = np.hstack([np.ones((n, 1)), rng.normal(size=(n, p - 1)) * np.logspace(0, 3, p - 1)])
    coef = np.concatenate([[-8.0], rng.normal(size=p - 1) * 1e-3 / np.logspace(0, 3, p - 1)])
    y = a @ coef + 1e-6 * rng.normal(size=n)
    ref = sla.lstsq(a, y)[0]
    st = class_stats(a, y, block_rows=333)
    exact = float(np.sum((y - a @ ref) ** 2))
    assert exact / float(y @ y) < 1e-12  # y^T y - 2 m^T h + m^T G m would have lost every digit
    assert st.res2(ref) == pytest.approx(exact, rel=1e-6)
    res = fit_bayes({"all": st}, prior="none")
    np.testing.assert_allclose(res.mean, ref, rtol=1e-9, atol=1e-12 * np.abs(ref).max())


def test_cells_equal_separate_passes():
    """The statistics of many cells from one pass equal each cell's own pass (on the same anchor)."""
    a, y, labels, _ = synthetic(n=3000)
    w = np.random.default_rng(2).uniform(0.5, 2.0, size=y.size)
    cell = np.random.default_rng(3).integers(-1, 6, size=y.size)
    cells = cell_stats(a, y, w, cell, 7)
    assert cells[6] is None
    for c in range(6):
        own = class_stats(a, y, w, index=np.flatnonzero(cell == c)).reanchored(cells[c].anchor)
        np.testing.assert_allclose(cells[c].g, own.g, rtol=1e-12)
        np.testing.assert_allclose(cells[c].h0, own.h0, rtol=1e-8, atol=1e-10 * np.abs(own.h0).max())
        assert cells[c].ee0 == pytest.approx(own.ee0, rel=1e-8)
        assert cells[c].n == own.n and cells[c].wref2 == own.wref2


def test_pooled_noise_for_new_data():
    a, y, labels, _ = synthetic(n=4000)
    w = np.ones_like(y)
    stats = noise_model.stats_by_class(a, y, w, labels)
    res = fit_bayes(stats)
    types = np.full(y.shape, "Force")
    pooled = noise_model.pooled_noise_var(res, list(stats), labels, types, w)
    n_lo, n_hi = np.sum(labels == "lo"), np.sum(labels == "hi")
    expect = (n_lo * res.noise_var["lo"] + n_hi * res.noise_var["hi"]) / (n_lo + n_hi)
    assert pooled["Force"] == pytest.approx(expect)


def test_class_labels():
    groups = np.array(["A", "A", "B"])
    types = np.array(["Energy", "Force", "Force"])
    assert noise_model.class_labels(groups, types, "one").tolist() == ["All"] * 3
    assert noise_model.class_labels(groups, types, "quantity").tolist() == ["Energy", "Force", "Force"]
    assert noise_model.class_labels(groups, types, "group").tolist() == ["A/Energy", "A/Force", "B/Force"]


def test_duplicate_columns_on_the_gram_ties_exact_multiples_only():
    """A column that is -2.5 x an earlier one is tied to it with its factor; a column that differs
    from another by 1e-4 relative on a few rows (correlation ~1 - 1e-9) is not."""
    rng = np.random.default_rng(3)
    a = rng.normal(size=(400, 5))
    a[:, 3] = -2.5 * a[:, 1]
    a[:, 4] = a[:, 0]
    a[:5, 4] *= 1.0 + 1e-4
    rep, factor = duplicate_columns(a.T @ a, np.ones(5, dtype=bool))
    assert rep.tolist() == [-1, -1, -1, 1, -1]
    assert abs(factor[3] + 2.5) < 1e-12


def g_problem(n=300, seed=0, const=True):
    """Rows with columns over 7 orders of magnitude (and a constant column), FitSNAP-like weights."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 5)) * np.logspace(-3, 4, 5)
    x[:, 1] += 0.9 * x[:, 0] * 1e-3 / 1e-2  # correlated columns
    a = np.hstack([np.ones((n, 1)), x]) if const else x
    theta = rng.normal(size=a.shape[1]) / np.concatenate([[1.0], np.logspace(-3, 4, 5)])[-a.shape[1]:]
    w = rng.choice([0.5, 2.0, 30.0], size=n)
    y = a @ theta + rng.normal(size=n) / w
    return a, y, w


def test_g_prior_mean_is_weighted_least_squares_shrunk_by_c():
    """Prior g (alpha M, M the weighted Gram matrix of the penalized columns with the constant column
    projected out): the penalized coefficients are c times least squares', c = beta / (alpha + beta),
    the constant re-fits to them, and at the evidence's fixed point 1 - c = p_P / (beta m^T M m);
    the posterior covariance is (alpha M + beta G)^-1."""
    a, y, w = g_problem()
    flat = np.array([True] + [False] * 5)
    res = fit_bayes({"all": class_stats(a, y, w)}, prior="g", unpenalized=flat, tol=1e-12)
    assert res.converged and res.prior_precision is not None
    ls = sla.lstsq(a * w[:, None], y * w)[0]
    g = (a * w[:, None] ** 2).T @ a
    alpha, beta = res.alpha[1], res.beta[0]
    c = beta / (alpha + beta)
    assert 1e-6 < 1 - c < 0.1  # a prior that does something, on 300 rows
    np.testing.assert_allclose(res.mean[1:], c * ls[1:], rtol=1e-8)
    b = g[0, 1:] / g[0, 0]
    assert res.mean[0] == pytest.approx(ls[0] + (1 - c) * b @ ls[1:], rel=1e-8)
    m = g[1:, 1:] - np.outer(g[1:, 0], b)
    assert 1 - c == pytest.approx(5 / (beta * ls[1:] @ m @ ls[1:]), rel=1e-6)
    prec = np.zeros((6, 6))
    prec[1:, 1:] = alpha * m
    np.testing.assert_allclose(res.prior_precision[1:, 1:], prec[1:, 1:], rtol=1e-7)
    cov = np.linalg.inv(beta * g + res.prior_precision)
    np.testing.assert_allclose(res.cov, cov, rtol=1e-6, atol=1e-9 * np.abs(cov).max())


def test_g_prior_evidence_is_the_marginal_likelihood_and_maximal():
    """Without flat columns the g-prior is proper: the log evidence is that of the weighted rows,
    log N(W y; 0, I / beta + W A (alpha G)^-1 A^T W), and changing alpha or beta lowers it."""
    a, y, w = g_problem(n=120, seed=1, const=False)
    res = fit_bayes({"all": class_stats(a, y, w)}, prior="g", tol=1e-12)
    aw, yw = a * w[:, None], y * w
    g = aw.T @ aw

    def ev(alpha, beta):
        cov = np.eye(y.size) / beta + aw @ np.linalg.solve(alpha * g, aw.T)
        return float(sla.cho_solve(sla.cho_factor(cov), yw) @ yw * -0.5
                     - 0.5 * np.linalg.slogdet(cov)[1] - 0.5 * y.size * np.log(2 * np.pi))

    alpha, beta = res.alpha[0], res.beta[0]
    assert res.log_evidence == pytest.approx(ev(alpha, beta), rel=1e-9)
    for fa, fb in ((1.3, 1.0), (0.7, 1.0), (1.0, 1.05), (1.0, 0.95)):
        assert ev(alpha * fa, beta * fb) < ev(alpha, beta)


def test_g_prior_does_not_depend_on_the_columns_scales_or_bzero():
    """Any invertible map of the penalized columns, and a shift of them by the constant column (as
    bzero), leave the g-prior's predictions, noise and evidence unchanged; the isotropic prior's
    predictions change."""
    a, y, w = g_problem(seed=2)
    flat = np.array([True] + [False] * 5)
    # new columns mixing the old ones (of scales 1e-3 .. 1e4) into scales 1e-2 .. 1e3
    r = np.diag(np.logspace(3, -4, 5)) @ np.random.default_rng(5).normal(size=(5, 5)) @ np.diag(
        np.logspace(-2, 3, 5))
    b = a.copy()
    b[:, 1:] = a[:, 1:] @ r + a[:, :1] * np.arange(1.0, 6.0)[None, :]
    fits = {}
    for prior in ("g", "isotropic"):
        fits[prior] = [fit_bayes({"all": class_stats(x, y, w)}, prior=prior, unpenalized=flat, tol=1e-12)
                       for x in (a, b)]
    (ga, gb), (ia, ib) = fits["g"], fits["isotropic"]
    np.testing.assert_allclose(b @ gb.mean, a @ ga.mean, rtol=1e-10, atol=1e-10 * np.abs(y).max())
    assert gb.beta[0] == pytest.approx(ga.beta[0], rel=1e-10)
    assert gb.log_evidence == pytest.approx(ga.log_evidence, abs=1e-6)
    pv = np.einsum("ij,jk,ik->i", a, ga.cov, a)
    np.testing.assert_allclose(np.einsum("ij,jk,ik->i", b, gb.cov, b), pv, rtol=1e-6)
    assert np.max(np.abs(b @ ib.mean - a @ ia.mean)) > 0.1 * np.std(y)


def test_g_prior_where_the_rows_do_not_determine_every_coefficient_is_isotropic():
    rng = np.random.default_rng(0)
    a, y = rng.normal(size=(5, 8)), rng.normal(size=5)
    res = fit_bayes({"all": class_stats(a, y)}, prior="g")
    ref = fit_bayes({"all": class_stats(a, y)}, prior="isotropic")
    assert "isotropic prior was used" in res.message and res.prior_precision is None
    np.testing.assert_allclose(res.mean, ref.mean, rtol=1e-12)
    np.linalg.cholesky(res.cov)


@pytest.mark.parametrize("prior", ["none", "g", "isotropic"])
def test_a_duplicate_column_keeps_the_fit(prior):
    """With a column that is 2 x an earlier one (left out of the fit, its share of the anchor folded
    into the earlier column) the predictions are least squares' (up to the prior)."""
    rng = np.random.default_rng(0)
    a = rng.normal(size=(200, 5))
    a = np.hstack([a, 2.0 * a[:, 1:2]])
    y = a[:, :5] @ rng.normal(size=5) + 0.01 * rng.normal(size=200)
    res = fit_bayes({"all": class_stats(a, y)}, prior=prior)
    assert res.ties == [(5, 1, 2.0)] and res.mean[5] == 0
    ls = sla.lstsq(a, y)[0]
    assert np.max(np.abs(a @ res.mean - a @ ls)) < 1e-4 * np.std(y)
