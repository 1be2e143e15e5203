"""QBC with NN committees on test functions: the committee, the batch sharing, the benchmark machinery."""

from __future__ import annotations

import csv
import math
import re
import sys

import numpy as np
import pytest
import torch
from conftest import ROOT

from fitsnap_uq.active.committee import Committee, pick_from_pool, share_batch
from fitsnap_uq.nn import Ensemble

sys.path.insert(0, str(ROOT / "benchmarks"))
import al_testfunctions as bench  # noqa: E402

torch.set_num_threads(1)


def mlp() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(1, 16), torch.nn.Tanh(), torch.nn.Linear(16, 16),
                               torch.nn.Tanh(), torch.nn.Linear(16, 1))


def test_functions_known_values():
    x = np.zeros((1, 4))
    assert bench.griewank(x)[0] == pytest.approx(0.0, abs=1e-15)  # the global minimum
    x = np.array([[np.pi, np.pi * np.sqrt(2)]])
    expected = 1 + (np.pi**2 + 2 * np.pi**2) / 4000 - np.cos(np.pi) * np.cos(np.pi)
    assert bench.griewank(x)[0] == pytest.approx(expected, rel=1e-12)
    x = np.array([[0.25, 0.5, 0.75]])
    assert bench.sum_of_sines(x)[0] == pytest.approx(np.sin(1.5), rel=1e-12)
    p = bench.plan_for(32)
    assert (p.initial, p.batch, p.budget, p.pool) == (170, 85, 680, 6800)


def test_committee_disagrees_more_far_from_the_data():
    rng = np.random.default_rng(0)
    x = rng.uniform(-1.0, 0.0, size=(40, 1))
    y = np.sin(3 * x[:, 0])
    committee = Committee(lambda s: Ensemble(mlp, members=1, bootstrap=False, fraction=1.0, epochs=300,
                                             lr=1e-2, seed=s), members=4, fraction=0.8, seed=1)
    committee.start(len(x)).fit(x, y)
    near = np.linspace(-0.9, -0.1, 20)[:, None]
    far = np.linspace(2.0, 3.0, 20)[:, None]
    mean_near, std_near = committee.predict(near)
    _, std_far = committee.predict(far)
    assert np.sqrt(np.mean((mean_near - np.sin(3 * near[:, 0])) ** 2)) < 0.1  # it learned the data
    assert np.mean(std_far) > 5 * np.mean(std_near)
    assert committee.predictions(near).shape == (4, 20)
    # members differ because their bootstrap samples and seeds differ
    assert len({tuple(np.unique(i)) for i in committee.indices_}) == 4


def test_share_batch_spreads_each_cluster_over_every_learner():
    rng = np.random.default_rng(3)
    a = rng.normal(size=(6, 2)) * 0.01 + np.array([-5.0, 0.0])
    b = rng.normal(size=(4, 2)) * 0.01 + np.array([5.0, 0.0])
    feats = np.vstack([a, b])
    new = np.arange(100, 110)
    shares = share_batch(new, feats, members=5, fraction=0.2, seed=0)  # round(0.2 * 10) = 2 clusters
    assert len(shares) == 5
    for share in shares:
        assert share.size == 2
        assert sorted(share >= 106) == [False, True]  # one point of each cluster
    assert len({tuple(s) for s in shares}) > 1  # learners draw different points
    committee = Committee(lambda s: None, members=3, fraction=0.5, seed=0).start(10)
    assert all(i.size == 5 and i.max() < 10 for i in committee.indices_)
    committee.add(np.arange(10, 14), rng.normal(size=(4, 2)))
    assert all(i.size == 7 and set(i[5:]) <= set(range(10, 14)) for i in committee.indices_)


def test_pick_from_pool_strategies():
    rng = np.random.default_rng(0)
    pool = rng.uniform(-1, 1, size=(300, 2))
    dis = np.linalg.norm(pool - 1.0, axis=1) ** -2  # disputed near the corner (1, 1)
    top = set(np.argsort(-dis)[:30])
    qbc = pick_from_pool("qbc", dis, pool, 10, seed=0)  # the seed's: the M most disputed
    assert set(qbc) == set(np.argsort(-dis)[:10])
    np.testing.assert_array_equal(qbc, pick_from_pool("max_std", dis, pool, 10, seed=0))
    spread = pick_from_pool("qbc_kmeans", dis, pool, 10, seed=0)
    assert len(set(spread)) == 10 and set(spread) <= top  # the 3 M most disputed, spread by K-means
    radius = lambda i: np.mean(np.linalg.norm(pool[i] - pool[i].mean(axis=0), axis=1))  # noqa: E731
    assert radius(spread) > radius(qbc)
    rand = pick_from_pool("random", None, pool, 10, seed=0)
    assert len(set(rand)) == 10 and not set(rand) <= top
    np.testing.assert_array_equal(rand, pick_from_pool("random", None, pool, 10, seed=0))
    with pytest.raises(ValueError, match="unknown pool strategy"):
        pick_from_pool("magic", dis, pool, 3, seed=0)


def test_pick_diagnostics():
    err = np.array([4.0, 3.0, 2.0, 1.0])
    x = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.5], [0.0, 0.5]])
    d = bench.pick_diagnostics(err, np.array([0.4, 0.3, 0.2, 0.1]), x, np.array([0, 1]))
    assert d["rho"] == pytest.approx(1.0)
    assert d["err_ratio"] == pytest.approx(3.5 / 2.5)
    assert d["top_overlap"] == 1.0
    assert d["radius_ratio"] == pytest.approx(1.0 / 0.75)
    d = bench.pick_diagnostics(err, np.array([0.1, 0.2, 0.3, 0.4]), x, np.array([3, 2]))
    assert d["rho"] == pytest.approx(-1.0) and d["top_overlap"] == 0.0
    assert d["err_ratio"] == pytest.approx(1.5 / 2.5)
    test = np.array([[0.0, 0.0], [3.0, 4.0]])
    labelled = np.array([[0.0, 1.0], [3.0, 0.0], [10.0, 10.0]])
    assert bench.fill_distance(test, labelled) == pytest.approx((1.0 + 4.0) / 2)


def test_quick_benchmark_writes_table_curves_and_plots(tmp_path, capsys):
    assert bench.main(["--quick", "--dims", "2", "--seeds", "0", "--functions", "sines",
                       "--strategies", "qbc", "oracle", "--outdir", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    table = (tmp_path / "table.md").read_text()
    main_table, diagnostics = table.split("Pick diagnostics")
    rows = [ln for ln in main_table.splitlines() if ln.startswith("| sines")]
    assert len(rows) == 2 and all(r in printed for r in rows)  # qbc, oracle
    for row in rows:
        ratio = float(re.search(r"\| ([0-9.]+) \+- ", row).group(1))
        assert math.isfinite(ratio) and 0.05 < ratio < 20
    diag = [ln for ln in diagnostics.splitlines() if ln.startswith("| sines")]
    assert len(diag) == 2
    for row in diag:
        rho = float(row.split("|")[6])
        assert -1.0 <= rho <= 1.0
    with open(tmp_path / "learning_curves.csv") as fh:
        curves = list(csv.DictReader(fh))
    plan = bench.plan_for(2, quick=True)
    assert len(curves) == 3 * (plan.rounds + 1)
    for fn in ("sines",):
        qbc = [r for r in curves if r["function"] == fn and r["strategy"] == "qbc"]
        rnd = [r for r in curves if r["function"] == fn and r["strategy"] == "random"]
        oracle = [r for r in curves if r["function"] == fn and r["strategy"] == "oracle"]
        sizes = [plan.initial + k * plan.batch for k in range(plan.rounds + 1)]
        assert [int(r["n_labelled"]) for r in qbc] == sizes
        assert qbc[0]["test_rmse"] == rnd[0]["test_rmse"]  # paired: same pool, initial points, learners
        assert qbc[-1]["test_rmse"] != rnd[-1]["test_rmse"]
        assert all(math.isfinite(float(r["test_rmse"])) for r in qbc + rnd)
        # the oracle picks where the committee mean is most wrong: all its picks are the M largest errors
        assert all(float(r["top_overlap"]) == 1.0 for r in oracle[:-1])
        assert all(float(r["err_ratio"]) > 1.0 for r in oracle[:-1])
        fill = [float(r["fill"]) for r in rnd]  # the labelled set only grows: coverage only improves
        assert all(b <= a + 1e-12 for a, b in zip(fill, fill[1:]))
    assert (tmp_path / "learning_curves.png").stat().st_size > 1000
    assert (tmp_path / "ratios.png").stat().st_size > 1000
