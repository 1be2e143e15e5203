"""Selection in the active-learning loop: every evaluated MD frame is a candidate, a strategy of
:mod:`fitsnap_uq.active` chooses the batch on the posterior (K-means spread, cost weighting), and the
calibrated force interval against a per-element tolerance decides candidates and stopping."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from conftest import ROOT, assert_al_refuses, run_cli

from fitsnap_uq.active.loop import ALConfig, Loop
from fitsnap_uq.active.query import QuerySettings, choose
from fitsnap_uq.active.strategies import Candidates
from fitsnap_uq.errors import InputError

sys.path.insert(0, str(ROOT / "benchmarks"))
from _cuau import cuau_toml  # noqa: E402

TWO = cuau_toml(system={"seed": 4}, md={"temperatures": [1200.0]})


def blocks(m: int, rows: int, p: int, seed: int) -> Candidates:
    """m candidates of ``rows`` force rows and one energy row each, p columns: candidate i's force rows
    are (1 + 0.2 i) times one pattern (its coefficient std grows with i); its energy row (the K-means
    fingerprint) puts the candidates with i % 3 == 0 in one cluster, the others in another."""
    rng = np.random.default_rng(seed)
    pattern = rng.normal(size=(rows, p))
    a, owner, types = [], [], []
    for i in range(m):
        energy = np.full((1, p), 10.0 if i % 3 == 0 else -10.0) + 0.01 * rng.normal(size=(1, p))
        a.append(np.vstack([energy, (1 + 0.2 * i) * pattern]))
        owner += [i] * (rows + 1)
        types += ["Energy"] + ["Force"] * rows
    return Candidates(a=np.vstack(a), owner=np.array(owner), row_types=np.array(types),
                      natoms=np.full(m, rows // 3))


def test_choose_spreads_max_std_over_clusters_and_weighs_cost():
    cands = blocks(12, 6, 4, seed=0)
    cov, noise = np.eye(4), {"Force": 1.0, "Energy": np.inf}
    top = choose(cands, 2, QuerySettings("max_std"), cov, noise)
    assert list(top) == [11, 10]  # the two largest stds, both in the same cluster
    spread = choose(cands, 2, QuerySettings("max_std", spread=True), cov, noise, seed=1)
    assert list(spread) == [11, 9]  # the best of each cluster among the 6 best
    cheap = Candidates(cands.a, cands.owner, cands.row_types, np.where(np.arange(12) == 11, 100, 2))
    weighted = choose(cheap, 1, QuerySettings("max_std", cost_gamma=1.0), cov, noise)
    assert weighted[0] != 11  # the costly one loses its lead
    for name in ("random", "std_sampling", "d_optimal", "variance_reduction"):
        picked = choose(cands, 3, QuerySettings(name), cov, noise, seed=2)
        assert len(set(picked.tolist())) == 3 and picked.max() < 12


def test_spread_cost_gamma_takes_the_cheapest_member_of_each_cluster():
    cands = blocks(12, 6, 4, seed=0)
    cov, noise = np.eye(4), {"Force": 1.0, "Energy": np.inf}

    def sized(big: list[int]) -> Candidates:  # 100 atoms for the candidates in big, 2 for the others
        natoms = np.where(np.isin(np.arange(12), big), 100, 2)
        return Candidates(cands.a, cands.owner, cands.row_types, natoms)

    # the shortlist is the 6 best (6..11), clusters {6, 9} and {7, 8, 10, 11}: their best two made costly

    costly = sized([9, 11])
    weigh = QuerySettings("max_std", spread=True, spread_cost_gamma=1.0)
    plain = choose(costly, 2, QuerySettings("max_std", spread=True), cov, noise, seed=1)
    assert list(plain) == [11, 9]  # cost ignored: the best of each cluster
    cheap = choose(costly, 2, weigh, cov, noise, seed=1)
    assert list(cheap) == [10, 6]  # the cheapest well-scored member of each cluster, best first
    # a cluster whose shortlisted members all cost the same keeps its best: a kind of frame is not dropped
    assert list(choose(sized([7, 8, 10, 11]), 2, weigh, cov, noise, seed=1)) == [11, 9]


def test_spread_cost_gamma_config_and_errors(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(TWO.replace("batch = 2", "batch = 2\nspread_cost_gamma = 1"))
    assert ALConfig.read(path).spread_cost_gamma == 1
    assert ALConfig().spread_cost_gamma == 0.0
    b = "batch = 2\nspread_cost_gamma"
    for old, new, what in [("batch = 2", f"{b} = -1", "a number >= 0"),
                           ("batch = 2", f'{b} = "cheap"', "a number >= 0"),
                           ("batch = 2", f"{b} = 1\nspread = false", "needs strategy"),
                           ('strategy = "max_std"', 'strategy = "d_optimal"\nspread_cost_gamma = 1',
                            "needs strategy"),
                           ("batch = 2", f'{b} = 1\nbalance = "runs"', "needs strategy")]:
        path.write_text(TWO.replace(old, new))
        with pytest.raises(InputError, match=rf"section \[select\], key 'spread_cost_gamma': {what}"):
            ALConfig.read(path)
    path.write_text(TWO.replace("batch = 2", "batch = 2\ncost_gamma = -0.5"))
    with pytest.raises(InputError, match=r"section \[select\], key 'cost_gamma': a number >= 0"):
        ALConfig.read(path)
    path.write_text(TWO.replace("batch = 2", "batch = 2\nspread_cost_gamma = -1"))
    assert_al_refuses(tmp_path, "c.toml", "select", "spread_cost_gamma")


def test_select_config_and_errors(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(TWO.replace("tolerance = 0.0", "tolerance = {Cu = 0.2, '*' = 0.4}"))
    cfg = ALConfig.read(path)
    assert (cfg.tolerance_of("Cu"), cfg.tolerance_of("Au"), cfg.strategy) == (0.2, 0.4, "max_std")
    assert cfg.shortlist == 3
    path.write_text(TWO.replace("batch = 2", "batch = 2\nshortlist = 10"))
    assert ALConfig.read(path).shortlist == 10
    for old, new, key in [('strategy = "max_std"', 'strategy = "best"', "strategy"),
                          ("tolerance = 0.0", "tolerance = {Ta = 0.1}", "tolerance"),
                          ("batch = 2", "batch = 0", "batch"),
                          ("batch = 2", "batch = 2\nshortlist = 0", "shortlist")]:
        path.write_text(TWO.replace(old, new))
        with pytest.raises(InputError, match=rf"section \[select\], key '{key}'"):
            ALConfig.read(path)


@pytest.mark.slow  # ~1 min on 2 quiet cores
def test_loop_selects_by_strategy_and_stops_on_the_calibrated_tolerance(tmp_path):
    (tmp_path / "d.toml").write_text(TWO.replace('strategy = "max_std"', 'strategy = "d_optimal"'))
    proc = run_cli(["al", "d.toml", "--no-progress"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    chosen = json.loads((tmp_path / "d_al" / "iter0" / "select" / "chosen.json").read_text())
    assert chosen["strategy"] == "d_optimal" and chosen["candidates"] == 11  # 100 steps, every 10
    assert len(chosen["chosen"]) == 2 and len(set(chosen["chosen"])) == 2
    flagged = sorted(p.name for p in (tmp_path / "d_al" / "data" / "JSON" / "Flagged0").glob("*.json"))
    assert flagged == sorted(f"md_1200K_{c.split('/')[-1]}" for c in chosen["chosen"])
    # a tolerance wider than every calibrated interval: nothing to label, the loop stops
    widest = max(chosen["widest_half_width"].values())
    (tmp_path / "t.toml").write_text(TWO.replace("tolerance = 0.0", f"tolerance = {2 * widest + 10}"))
    proc = run_cli(["al", "t.toml", "--no-progress"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((tmp_path / "t_al" / "summary.json").read_text())
    assert summary["stopped"] == "no frame above the tolerance" and len(summary["curve"]) == 1


def test_oracle_named_module_factory(tmp_path):
    """Any ASE calculator as module:factory, a module beside the config included; errors name the key."""
    from ase.calculators.emt import EMT

    (tmp_path / "mycalc.py").write_text("from ase.calculators.emt import EMT\n\n\ndef make():\n"
                                        "    return EMT()\n")
    path = tmp_path / "c.toml"
    path.write_text(TWO.replace('name = "emt"', 'name = "mycalc:make"'))
    loop = Loop(ALConfig.read(path), tmp_path / "w", progress=False)
    atoms = loop.structures(1, seed=0)[0]
    ours = loop.oracle.label(atoms).atoms.get_potential_energy()
    atoms.calc = EMT()
    assert ours == atoms.get_potential_energy() and loop.oracle.name == "mycalc:make"
    path.write_text(TWO.replace('name = "emt"', 'name = "nosuchmodule:make"'))
    with pytest.raises(InputError, match=r"section \[oracle\], key 'name': oracle 'nosuchmodule:make'"):
        Loop(ALConfig.read(path), tmp_path / "w2", progress=False)


def test_repeated_md_frames_are_candidates_once(tmp_path):
    """Every MD run starts from the same structure: its first frame is dropped when an earlier condition
    or iteration already has it."""
    from ase.calculators.singlepoint import SinglePointCalculator

    from fitsnap_uq.fitsnap_json import atoms_record, write_record

    path = tmp_path / "c.toml"
    path.write_text(TWO)
    loop = Loop(ALConfig.read(path), tmp_path / "w", progress=False)
    a, b = loop.structures(2, seed=1)
    files = []
    for i, atoms in enumerate([a, b, a.copy()]):
        atoms.calc = SinglePointCalculator(atoms, energy=0.0, forces=np.zeros((len(atoms), 3)))
        files.append(write_record(atoms_record(atoms), tmp_path / f"md_{i}" / "f.json"))
    assert loop._new_frames(0, files) == files[:2]
    (loop.work / "data" / "JSON" / "Flagged0").mkdir(parents=True)
    (loop.work / "data" / "JSON" / "Flagged0" / "x.json").write_bytes(files[0].read_bytes())
    assert loop._new_frames(0, files[1:]) == files[1:]  # iteration 0 looks at no earlier group
    assert loop._new_frames(1, files[1:]) == files[1:2]  # labelled in iteration 0: dropped
