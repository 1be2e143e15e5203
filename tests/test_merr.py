"""Embedded model error: gradients, optimum, misspecification coverage, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import multivariate_normal

from fitsnap_uq.errors import InputError
from fitsnap_uq.linear import merr
from fitsnap_uq.linear.bayes import class_stats, fit_bayes


def toy(n=300, p=5, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, p))
    return a, a @ rng.normal(size=p) + 0.3 * rng.normal(size=n), rng


@pytest.mark.parametrize("likelihood", ["iid", "abc", "full"])
def test_gradients_match_finite_differences(likelihood):
    a, y, rng = toy()
    p = a.shape[1]
    emb = np.arange(p)
    x = np.concatenate([rng.normal(size=p), rng.uniform(0.01, 0.2, size=p)])
    st = merr.GramStats.of(a, y)

    def f(x):
        if likelihood == "full":
            return merr.nll_full(x, st, emb, 0.01)
        return merr.nll_iid(x, a, y, emb, 0.01, abc=likelihood == "abc")

    _, g = f(x)
    num = np.array([(f(x + e)[0] - f(x - e)[0]) / 2e-7 for e in np.eye(2 * p) * 1e-7])
    np.testing.assert_allclose(g, num, rtol=1e-5, atol=1e-6 * np.abs(g).max())


def test_full_likelihood_equals_the_dense_normal():
    a, y, rng = toy(n=120)
    p = a.shape[1]
    c, t = rng.normal(size=p), rng.uniform(0, 0.1, size=p)
    dense = -multivariate_normal.logpdf(y, mean=a @ c, cov=a @ np.diag(t) @ a.T + 0.01 * np.eye(120))
    val, _ = merr.nll_full(np.concatenate([c, t]), merr.GramStats.of(a, y), np.arange(p), 0.01)
    assert val == pytest.approx(dense, rel=1e-10)


def test_iid_fit_reaches_a_stationary_point_deterministically():
    a, y, _ = toy(n=2000)
    y = y + 0.2 * a[:, 0] * np.random.default_rng(5).normal(size=y.size)  # model error in coef 0
    r1 = merr.fit_model_error(a, y, likelihood="iid", data_var=0.09)
    r2 = merr.fit_model_error(a, y, likelihood="iid", data_var=0.09)
    assert r1.converged and r1.grad_norm < 1e-5  # scaled projected gradient, f ~ 700
    np.testing.assert_array_equal(r1.coef, r2.coef)  # deterministic start, same answer
    assert r1.sigma[0] == pytest.approx(0.2, rel=0.15)
    assert np.all(r1.sigma[1:] < 0.05)
    # Any nearby point has a higher negative log-likelihood.
    x = np.concatenate([r1.coef, r1.sigma**2])
    base = merr.nll_iid(x, a, y, r1.embed, 0.09)[0]
    for k in range(x.size):
        for step in (1e-3, -1e-3):
            z = x.copy()
            z[k] += step * max(abs(z[k]), 1e-2)
            if z[k] >= 0 or k < a.shape[1]:
                assert merr.nll_iid(z, a, y, r1.embed, 0.09)[0] >= base - 1e-9


def test_misspecified_model_keeps_its_uncertainty():
    """A cubic fitted by a quadratic with small noise and many points: the classical Gaussian
    posterior shrinks and misses the truth; the embedded model error covers it."""
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, size=4000)
    basis = np.stack([np.ones_like(x), x, x**2], axis=1)
    y = x**3 + 0.01 * rng.normal(size=x.size)
    xt = np.linspace(-0.98, 0.98, 400)
    bt = np.stack([np.ones_like(xt), xt, xt**2], axis=1)
    truth = xt**3
    fit = merr.fit_model_error(basis, y, likelihood="iid", data_var=1e-4)  # the known noise
    spread = np.sqrt((bt**2) @ (fit.sigma**2) + np.einsum("ij,jk,ik->i", bt, fit.coef_cov, bt))
    cover_merr = np.mean(np.abs(truth - bt @ fit.coef) <= 1.96 * spread)
    classical = fit_bayes({"all": class_stats(basis, y)}, prior="isotropic")
    sd = np.sqrt(np.einsum("ij,jk,ik->i", bt, classical.cov, bt))
    cover_classical = np.mean(np.abs(truth - bt @ classical.mean) <= 1.96 * sd)
    assert cover_merr >= 0.85
    assert cover_classical <= 0.25
    assert fit.sigma.max() > 10 * np.sqrt(np.diag(classical.cov)).max()


def test_embedding_index_out_of_range():
    a, y, _ = toy()
    with pytest.raises(InputError, match="index 7 is out of range.*5 coefficients") as err:
        merr.fit_model_error(a, y, embed=[0, 7])
    assert err.value.section == "UQ" and err.value.key == "embed"


def test_non_convergence_is_reported():
    a, y, _ = toy(n=2000)
    res = merr.fit_model_error(a, y, likelihood="abc", max_iter=2)
    assert not res.converged and res.message and res.grad_norm > 0


def test_multiplicative_is_the_same_optimum():
    a, y, _ = toy(n=1000)
    add = merr.fit_model_error(a, y, likelihood="iid")
    mult = merr.fit_model_error(a, y, likelihood="iid", multiplicative=True)
    np.testing.assert_allclose(mult.coef, add.coef)
    assert "multiplicative" in mult.message


@pytest.mark.parametrize("fix_mean", [True, False])
def test_duplicate_columns_are_tied_to_the_same_fit(fix_mean):
    """A column that is a multiple of an earlier one (chemflag's duplicates) is tied to it as in BAYES:
    the fit of the rows with the duplicate equals the fit without it (the duplicate's mean, model
    error and covariance 0, its share on the earlier column), and the tie is reported."""
    rng = np.random.default_rng(3)
    n, p = 400, 4
    a = rng.normal(size=(n, p)) * [1.0, 2.0, 0.5, 1.5]
    y = a @ rng.normal(size=p) + (a[:, 1] * 0.3 + 0.1) * rng.normal(size=n)
    dup = np.column_stack([a, -2.0 * a[:, 1]])
    ref = merr.fit_model_error(a, y, fix_mean=fix_mean)
    got = merr.fit_model_error(dup, y, fix_mean=fix_mean)
    assert got.ties == [(p, 1, pytest.approx(-2.0, rel=1e-12))] and ref.ties == []
    assert got.coef[p] == 0.0 and got.sigma[p] == 0.0 and np.all(got.coef_cov[p] == 0.0)
    np.testing.assert_allclose(got.coef[:p], ref.coef, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(got.sigma[:p], ref.sigma, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(got.coef_cov[:p, :p], ref.coef_cov, rtol=1e-6, atol=1e-12)
    assert got.nll == pytest.approx(ref.nll, rel=1e-10)
