"""BLAS thread limits of the numerical core (fitsnap_uq.linear.threads): in effect where intended, and
no change of any result. Speed is measured in benchmarks/bench_threads.py, not here."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg as sla
from threadpoolctl import threadpool_info, threadpool_limits

from fitsnap_uq.linear import bayes, threads
from fitsnap_uq.linear.rows import Rows, fit_and_recalibrate, fit_with_model_error


def blas_threads_now() -> set[int]:
    return {lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"}


@pytest.fixture
def two_threads(monkeypatch):
    """BLAS at 2 threads outside our limits (as OpenBLAS's default on 2 cores); no environment override."""
    monkeypatch.delenv(threads.ENV, raising=False)
    monkeypatch.setattr(threads, "_budget", None)
    with threadpool_limits(limits=2, user_api="blas"):
        if blas_threads_now() != {2}:
            pytest.skip("this BLAS cannot run 2 threads here")
        yield


def test_small_matrices_run_single_threaded(two_threads):
    with threads.blas_threads(threads.PARALLEL_MIN_COLS - 1) as n:
        assert n == 1
        assert blas_threads_now() == {1}
    assert blas_threads_now() == {2}


def test_large_matrices_use_the_budget(two_threads):
    threads.set_budget(2)
    try:
        with threads.blas_threads(threads.PARALLEL_MIN_COLS), threads.blas_threads(10):
            assert blas_threads_now() == {1}  # nested: the small block is single-threaded
        with threads.blas_threads(threads.PARALLEL_MIN_COLS) as n:
            assert n == 2 and blas_threads_now() == {2}
    finally:
        threads.set_budget(None)


def test_environment_override(two_threads, monkeypatch):
    monkeypatch.setenv(threads.ENV, "none")
    with threads.blas_threads(5) as n:
        assert n is None and blas_threads_now() == {2}
    monkeypatch.setenv(threads.ENV, "3")
    assert threads.threads_for(threads.PARALLEL_MIN_COLS) == 3
    assert threads.threads_for(5) == 1
    monkeypatch.setenv(threads.ENV, "many")
    with pytest.raises(ValueError, match=threads.ENV):
        threads.budget()


def test_passes_factorizations_and_newton_run_limited(two_threads, monkeypatch):
    """The blocked passes over the rows, each Cholesky factorization of the evidence iterations and
    the CV refits, and the predictive model's Newton iterations run with one BLAS thread (the Ta-sized
    problem: 31 columns)."""
    seen: list[set[int]] = []
    potrf = sla.lapack.dpotrf
    eigh = np.linalg.eigh
    blocks = bayes._blocks

    def spy(func):
        def inner(*args, **kwargs):
            seen.append(blas_threads_now())
            return func(*args, **kwargs)
        return inner

    monkeypatch.setattr(sla.lapack, "dpotrf", spy(potrf))
    monkeypatch.setattr(np.linalg, "eigh", spy(eigh))
    monkeypatch.setattr(bayes, "_blocks", spy(blocks))
    rows = _rows()
    fit_with_model_error(rows, folds=3, seed=0)
    assert len(seen) > 10
    assert all(s == {1} for s in seen)
    seen.clear()
    bayes.class_stats(rows.a, rows.b, rows.w, block_rows=50)
    assert seen and all(s == {1} for s in seen)
    assert blas_threads_now() == {2}


def _rows(n_conf: int = 24, atoms: int = 4, p: int = 31, seed: int = 1) -> Rows:
    rng = np.random.default_rng(seed)
    coef = rng.standard_normal(p)
    blocks = []
    for c in range(n_conf):
        for kind, count in (("Energy", 1), ("Force", 3 * atoms)):
            a = rng.standard_normal((count, p)) * (1.0 + c % 3)
            b = a @ coef + 0.05 * (1 + c % 4) * rng.standard_normal(count)
            blocks.append((a, b, kind, f"G{c % 3}", f"conf{c}"))
    a = np.vstack([x[0] for x in blocks])
    b = np.concatenate([x[1] for x in blocks])
    n_rows = [x[0].shape[0] for x in blocks]
    rep = lambda i: np.concatenate([[x[i]] * k for x, k in zip(blocks, n_rows)])  # noqa: E731
    return Rows(a=a, b=b, w=np.ones(b.size), testing=np.zeros(b.size, dtype=bool), groups=rep(3),
                row_types=rep(2), configs=rep(4))


def test_results_identical_with_and_without_limits(two_threads, monkeypatch):
    rows = _rows()
    limited_fit, limited_pm, _ = fit_with_model_error(rows, folds=3, seed=0)
    limited_recal = fit_and_recalibrate(rows, folds=3, seed=0, noise_classes="group")
    monkeypatch.setenv(threads.ENV, "none")  # the behaviour before: OpenBLAS's threads everywhere
    free_fit, free_pm, _ = fit_with_model_error(rows, folds=3, seed=0)
    free_recal = fit_and_recalibrate(rows, folds=3, seed=0, noise_classes="group")
    np.testing.assert_allclose(limited_fit.result.mean, free_fit.result.mean, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(limited_fit.result.cov, free_fit.result.cov, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(limited_pm.coef_var, free_pm.coef_var, rtol=1e-10, atol=1e-14)
    assert limited_pm.cov_scale == pytest.approx(free_pm.cov_scale, rel=1e-10)
    np.testing.assert_allclose(limited_recal[0].result.mean, free_recal[0].result.mean, rtol=1e-10,
                               atol=1e-12)
    for q in limited_recal[1]:
        np.testing.assert_allclose(limited_recal[1][q], free_recal[1][q], rtol=1e-10)


class _FakeRequest:
    def __init__(self, ready_after: int) -> None:
        self.tests, self.ready_after = 0, ready_after

    def Test(self) -> bool:  # noqa: N802  (mpi4py's name)
        self.tests += 1
        return self.tests > self.ready_after


class _FakeComm:
    """Two ranks; the barrier completes after a few tests; a blocking Barrier is an error."""

    def __init__(self) -> None:
        self.request = _FakeRequest(5)

    def Get_size(self) -> int:  # noqa: N802
        return 2

    def Ibarrier(self) -> _FakeRequest:  # noqa: N802
        return self.request

    def Barrier(self) -> None:  # noqa: N802
        raise AssertionError("blocking barrier")

    def bcast(self, obj, root=0):
        return obj


def test_waiting_ranks_sleep_between_tests(monkeypatch):
    from fitsnap_uq import parallel

    monkeypatch.delenv(parallel.WAIT_ENV, raising=False)
    sleeps: list[float] = []
    monkeypatch.setattr(parallel.time, "sleep", sleeps.append)
    comm = _FakeComm()
    assert parallel.sleeping_bcast(comm, "x") == "x"
    assert comm.request.tests == 6 and len(sleeps) == 5
    assert sleeps == sorted(sleeps) and sleeps[-1] <= parallel.LONGEST_SLEEP
    parallel.sleeping_barrier(None)  # serial: nothing to wait for
    monkeypatch.setenv(parallel.WAIT_ENV, "block")
    with pytest.raises(AssertionError, match="blocking"):
        parallel.sleeping_barrier(comm)
    assert parallel.rank_thread_budget(threads.available_cores() * 2) == 1
    assert parallel.rank_thread_budget(1) == threads.available_cores()


def test_row_passes_spread_over_threads_give_the_one_thread_result(monkeypatch):
    """The variance fit's passes (objective, gradient, Hessian, Gram) and the model-error curvature
    spread their row blocks over the thread budget: the same numbers as one thread, to rounding."""
    import threading

    from fitsnap_uq.linear import merr, varfit

    rng = np.random.default_rng(3)
    n, m = 3000, 40
    f = np.abs(rng.standard_normal((n, m)))
    rt2 = rng.standard_normal(n) ** 2 * (f @ np.full(m, 0.1) + 0.2)
    weight = rng.uniform(0.5, 1.5, n)
    theta = np.full(m, 0.05)
    cols = np.ones(m, dtype=bool)
    cols[::5] = False

    def block(rows):
        return f[rows]

    def passes():
        colsq = np.zeros(m)
        point = varfit._point(block, n, m, theta, 0.3, rt2, weight, 128, 1, cols, colsq)
        gram = varfit.weighted_gram(block, n, m, weight, block_rows=128)
        v = varfit.variances(block, n, theta, 0.3, block_rows=128)
        rb = merr.RowBlocks(f, rt2)
        tsc, prec = merr._fixed_mean_sums(rb, np.arange(m), v, True, 128)
        return point, colsq, gram, v, tsc, prec

    seen, chunks = set(), []
    real = threads.map_row_chunks

    def spy(fn, n_, block_rows, workers):
        def wrapped(lo, hi):
            seen.add(threading.get_ident())
            chunks.append((lo, hi))
            return fn(lo, hi)
        return real(wrapped, n_, block_rows, workers)

    monkeypatch.setattr(threads, "PARALLEL_MIN_FLOPS", float("inf"))
    one = passes()
    monkeypatch.setattr(threads, "PARALLEL_MIN_FLOPS", 0.0)
    monkeypatch.setattr(threads, "_budget", 3)
    monkeypatch.delenv(threads.ENV, raising=False)
    monkeypatch.setattr(varfit, "map_row_chunks", spy)
    three = passes()
    # each pass in three chunks of whole blocks, on pool threads
    assert len(chunks) == 3 * 3 and (0, 1024) in chunks and threading.get_ident() not in seen
    assert one[0][0] == pytest.approx(three[0][0], rel=1e-12)
    for a, b in zip(one[0][1:] + one[1:], three[0][1:] + three[1:]):
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-12)
    chunks = threads.map_row_chunks(lambda lo, hi: (lo, hi), 1000, 128, 3)
    assert chunks == [(0, 256), (256, 640), (640, 1000)]  # whole blocks of 128 rows
