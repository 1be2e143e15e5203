"""``[select] balance = "runs"``: each pick of a batch from the strata (MD runs) with the fewest labels
so far, the strategy choosing within them; the loop's strata and earlier counts; config errors."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from conftest import ROOT, assert_al_refuses
from test_al_select import TWO, blocks

from fitsnap_uq.active import strategies as S
from fitsnap_uq.active.loop import ALConfig, Loop
from fitsnap_uq.active.query import QuerySettings, choose
from fitsnap_uq.errors import InputError

sys.path.insert(0, str(ROOT / "benchmarks"))

COV, NOISE = np.eye(4), {"Force": 1.0, "Energy": np.inf}
STRATA = (np.arange(12) >= 6).astype(int)  # candidates 0-5: stratum 0, 6-11: stratum 1 (larger stds)


def test_least_used_keeps_the_strata_with_fewest_picks_that_have_candidates():
    strata = np.array([0, 0, 1, 1, 2])
    available = np.ones(5, dtype=bool)
    assert S.least_used(strata, np.array([1, 0, 0]), available).tolist() == [False, False, True, True, True]
    assert S.least_used(strata, np.array([0, 1, 1]), available).tolist() == [True, True, False, False, False]
    # stratum 0 has no candidate left: the next fewest
    available[:2] = False
    assert S.least_used(strata, np.array([0, 2, 1]), available).tolist() == [False, False, False, False, True]
    assert not S.least_used(strata, np.zeros(3, int), np.zeros(5, bool)).any()


def test_balanced_max_std_takes_the_least_labelled_run_first():
    cands = blocks(12, 6, 4, seed=0)
    plain = choose(cands, 2, QuerySettings("max_std"), COV, NOISE)
    assert list(plain) == [11, 10]  # the two largest stds, both of stratum 1
    both = choose(cands, 3, QuerySettings("max_std"), COV, NOISE, strata=STRATA)
    assert list(both) == [11, 5, 10]  # best overall, best of the other stratum, then best of the rest
    earlier = choose(cands, 2, QuerySettings("max_std"), COV, NOISE, strata=STRATA, counts=np.array([0, 3]))
    assert list(earlier) == [5, 4]  # stratum 1 already has 3 labels: both picks from stratum 0
    cheap = choose(cands, 2, QuerySettings("max_std", cost_gamma=1.0), COV, NOISE, strata=STRATA)
    assert sorted(STRATA[cheap].tolist()) == [0, 1]


@pytest.mark.parametrize("name", ["d_optimal", "variance_reduction", "random", "qbc"])
def test_every_batch_strategy_balances(name):
    cands = blocks(12, 6, 4, seed=0)
    train = None
    if name == "qbc":
        from test_query_strategies import synthetic_rows

        rows = synthetic_rows(n_conf=12, p=4, seed=3)
        train = rows.subset(rows.row_types.astype(str) == "Force")
    picked = choose(cands, 4, QuerySettings(name), COV, NOISE, seed=1, train=train, strata=STRATA,
                    counts=np.array([2, 0]))
    assert len(set(picked.tolist())) == 4
    # stratum 1 is 2 behind: its picks come first, then the strata alternate
    assert STRATA[picked].tolist() == [1, 1, 0, 1] or STRATA[picked].tolist() == [1, 1, 1, 0]
    assert STRATA[picked[:2]].tolist() == [1, 1] and sorted(STRATA[picked[2:]].tolist()) == [0, 1]


def test_balanced_d_optimal_still_absorbs_each_pick():
    """Within a stratum the greedy D-optimal pick accounts for the earlier picks of the batch: two
    identical candidates are never both taken while a different one is left."""
    rng = np.random.default_rng(5)
    p = 4
    x = rng.normal(size=(6, p))
    rows = [x, x.copy(), rng.normal(size=(6, p)), 0.1 * rng.normal(size=(6, p))]
    grams = np.stack([r.T @ r for r in rows])
    picked = S.greedy_d_optimal(grams, np.eye(p), 3, strata=np.zeros(4, int))
    assert not {0, 1} <= set(picked[:2].tolist())
    np.testing.assert_array_equal(S.greedy_d_optimal(grams, np.eye(p), 4),
                                  S.greedy_d_optimal(grams, np.eye(p), 4, strata=np.zeros(4, int)))


def test_std_sampling_refuses_balance():
    with pytest.raises(ValueError, match="no balanced form"):
        choose(blocks(4, 6, 4, seed=0), 2, QuerySettings("std_sampling"), COV, NOISE, strata=np.zeros(4, int))


def test_balance_config_and_errors(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(TWO.replace("batch = 2", 'batch = 2\nbalance = "runs"'))
    assert ALConfig.read(path).balance == "runs"
    assert ALConfig().balance == "none"
    for old, new, what in [("batch = 2", 'batch = 2\nbalance = "md"',
                            "unknown balance; known: none, runs, cost"),
                           ('strategy = "max_std"', 'strategy = "threshold"\nbalance = "runs"',
                            "balance = 'runs' needs a strategy that chooses a batch")]:
        path.write_text(TWO.replace(old, new))
        with pytest.raises(InputError, match=rf"section \[select\], key 'balance': {what}"):
            ALConfig.read(path)
    path.write_text(TWO.replace("batch = 2", 'batch = 2\nbalance = "md"'))
    assert_al_refuses(tmp_path, "c.toml", "select", "balance")


def test_loop_strata_and_earlier_counts(tmp_path):
    """Runs at 1 and 10 bar (md_1200K_1bar is a prefix of md_1200K_10bar's name); earlier labels are
    counted per run from ``data/JSON/Flagged<j>``."""
    path = tmp_path / "c.toml"
    path.write_text(TWO.replace("[md]\n", "[md]\npressures = [1.0, 10.0]\n"))
    loop = Loop(ALConfig.read(path), tmp_path / "w", progress=False)
    runs = [loop.md_folder(2, t, p, s).name for t, p, s in loop.conditions()]
    assert runs == ["md_1200K_1bar", "md_1200K_10bar"]
    for j, name in [(0, "md_1200K_10bar_frame1.json"), (1, "md_1200K_10bar_frame3.json"),
                    (1, "md_1200K_1bar_frame2.json"), (2, "md_1200K_1bar_frame9.json")]:
        f = loop.work / "data" / "JSON" / f"Flagged{j}" / name
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text("{}")
    frames = [loop.work / "iter2" / run / "flagged" / "json" / "Flagged" / f"frame{i}.json"
              for i, run in enumerate(["md_1200K_10bar", "md_1200K_1bar", "md_1200K_10bar"])]
    strata, counts = loop.run_strata(2, frames)
    assert strata.tolist() == [1, 0, 1]
    assert counts.tolist() == [1, 2]  # Flagged2 is this iteration's own group: not counted


def test_cost_balance_spends_evenly_over_strata():
    """With weights (QM cost) a stratum's use is the cost spent on it: a pick goes to the stratum that
    has spent the least once the pick is paid for (stratum 1's candidates cost 10x)."""
    cands = blocks(12, 6, 4, seed=0)
    weights = np.where(STRATA == 1, 10.0, 1.0)
    cheap_first = choose(cands, 4, QuerySettings("max_std"), COV, NOISE, strata=STRATA, weights=weights)
    assert list(cheap_first) == [5, 4, 3, 2]  # stratum 0 until it has spent as much as one costly pick
    spent = choose(cands, 3, QuerySettings("max_std"), COV, NOISE, strata=STRATA,
                   counts=np.array([20.0, 0.0]), weights=weights)
    assert list(spent) == [11, 10, 5]  # stratum 0 spent 20 already: two costly picks (10, 20) first
    greedy = choose(cands, 4, QuerySettings("d_optimal"), COV, NOISE, strata=STRATA, weights=weights)
    assert STRATA[greedy].tolist() == [0, 0, 0, 0]


def test_cost_balance_config(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(TWO.replace("batch = 2", 'batch = 2\nbalance = "cost"'))
    assert ALConfig.read(path).balance == "cost"


def test_loop_cost_strata_sum_atoms_cubed(tmp_path):
    from ase.build import bulk

    path = tmp_path / "c.toml"
    path.write_text(TWO.replace("[md]\n", "[md]\npressures = [1.0, 10.0]\n"))
    loop = Loop(ALConfig.read(path), tmp_path / "w", progress=False)
    data = loop.work / "data" / "JSON"
    for j, name, repeat in [(0, "md_1200K_10bar_frame1.json", 1), (0, "md_1200K_1bar_frame2.json", 2),
                            (1, "md_1200K_10bar_frame3.json", 2)]:
        assert loop.label(bulk("Cu", "fcc", a=3.6, cubic=True).repeat(repeat), data / f"Flagged{j}" / name)
    frames = [loop.work / "iter2" / "md_1200K_1bar" / "flagged" / "json" / "Flagged" / "frame0.json"]
    strata, counts = loop.run_strata(2, frames, cost=True)
    assert strata.tolist() == [0] and counts.tolist() == [32.0**3, 4.0**3 + 32.0**3]
