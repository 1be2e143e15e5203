"""Query strategies: the p x p identities, choices on a synthetic pool, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from fitsnap_uq.active import strategies as S
from fitsnap_uq.active.query import QuerySettings, candidates_of, select
from fitsnap_uq.linear.rows import Rows, fit_rows


def synthetic_rows(n_conf=40, p=6, seed=0, far=()):
    """Configurations of 1 energy + 9 force rows; those in ``far`` lie far from the others."""
    rng = np.random.default_rng(seed)
    theta = rng.normal(size=p)
    blocks, types, configs = [], [], []
    for c in range(n_conf):
        a = rng.normal(size=(10, p)) * (6.0 if c in far else 1.0)
        blocks.append(a)
        types += ["Energy"] + ["Force"] * 9
        configs += [f"c{c:03d}.json"] * 10
    a = np.vstack(blocks)
    y = a @ theta + 0.05 * rng.normal(size=a.shape[0])
    n = a.shape[0]
    return Rows(a=a, b=y, w=np.ones(n), testing=np.zeros(n, dtype=bool), groups=np.array(["G"] * n),
                row_types=np.array(types), configs=np.array(configs))


def test_pxp_identities_match_brute_force():
    rng = np.random.default_rng(1)
    p = 5
    m = rng.normal(size=(p, p))
    s = m @ m.T / p
    ac = rng.normal(size=(12, p))
    g = ac.T @ ac
    assert np.linalg.slogdet(np.eye(p) + g @ s)[1] == pytest.approx(
        np.linalg.slogdet(np.eye(12) + ac @ s @ ac.T)[1], rel=1e-10)
    np.testing.assert_allclose(S._absorb(s, g), np.linalg.inv(np.linalg.inv(s) + g), rtol=1e-8, atol=1e-12)
    pool = rng.normal(size=(50, p))
    gp = pool.T @ pool
    brute = np.trace(pool @ s @ ac.T @ np.linalg.solve(np.eye(12) + ac @ s @ ac.T, ac @ s @ pool.T))
    fast = np.trace(np.linalg.solve(np.eye(p) + g @ s, g @ s @ gp @ s))
    assert fast == pytest.approx(brute, rel=1e-10)
    # ... and the variance reduction equals the drop of the pool's summed variance after absorbing.
    after = np.trace(pool @ S._absorb(s, g) @ pool.T)
    assert np.trace(pool @ s @ pool.T) - after == pytest.approx(brute, rel=1e-8)


@pytest.mark.parametrize("strategy", ["max_std", "d_optimal", "variance_reduction"])
def test_uncertainty_strategies_pick_the_unexplored(strategy):
    rows = synthetic_rows(far=(31, 35))
    keys = rows.config_keys()
    train = rows.subset(np.isin(keys, np.unique(keys)[:10]))
    pool = rows.subset(~np.isin(keys, np.unique(keys)[:10]))
    settings = QuerySettings(strategy=strategy, fit={"noise_classes": "quantity"})
    picked = select(train, pool, 2, settings, seed=0)
    assert set(picked) == {"G/c031.json", "G/c035.json"}


def test_committee_disagrees_most_on_the_unexplored():
    from fitsnap_uq.active.query import committee_scores

    rows = synthetic_rows(far=(31, 35))
    keys = rows.config_keys()
    train = rows.subset(np.isin(keys, np.unique(keys)[:10]))
    pool = rows.subset(~np.isin(keys, np.unique(keys)[:10]))
    settings = QuerySettings(strategy="qbc", fit={"noise_classes": "quantity"})
    model = fit_rows(train, noise_classes="quantity")
    cands, pool_keys = candidates_of(pool)
    scores = committee_scores(train, cands, model.noise_var, settings, np.random.default_rng(0))
    assert set(pool_keys[S.pick_top(scores, 2)]) == {"G/c031.json", "G/c035.json"}
    picked = select(train, pool, 2, settings, model=model, seed=0)  # spread by K-means
    assert len(set(picked)) == 2 and {"G/c031.json", "G/c035.json"} & set(picked)


def test_random_and_sampling_are_seeded():
    rows = synthetic_rows()
    keys = rows.config_keys()
    train = rows.subset(np.isin(keys, np.unique(keys)[:10]))
    pool = rows.subset(~np.isin(keys, np.unique(keys)[:10]))
    for name in ("random", "std_sampling", "qbc"):
        st = QuerySettings(strategy=name, fit={"noise_classes": "quantity"})
        a, b = select(train, pool, 5, st, seed=4), select(train, pool, 5, st, seed=4)
        assert list(a) == list(b) and len(set(a)) == 5


def test_cost_weighting_prefers_small_cells():
    rows = synthetic_rows(n_conf=3)
    cands, _ = candidates_of(rows)
    cands.natoms = np.array([3, 3, 30])
    scores = np.array([1.0, 1.0, 2.0])
    assert S.pick_top(S.cost_weighted(scores, cands.natoms, 1.0), 1)[0] != 2
    assert S.pick_top(S.cost_weighted(scores, cands.natoms, 0.0), 1)[0] == 2


def test_unknown_strategy():
    rows = synthetic_rows(n_conf=12)
    with pytest.raises(ValueError, match="unknown strategy"):
        select(rows, rows, 2, QuerySettings(strategy="magic"), model=fit_rows(rows, noise_classes="quantity"))
