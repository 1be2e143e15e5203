"""QM labelling behind one executor interface (:mod:`fitsnap_uq.active.executors`): real EMT calls in this
process, in a pool of worker processes and on a local Dask cluster give the same files and outcomes; the
loop journals each call when it completes; bad executor settings name the config key."""

from __future__ import annotations

import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from conftest import ROOT

from fitsnap_uq.active.executors import FuturesExecutor, SerialExecutor, make_executor
from fitsnap_uq.active.loop import ALConfig, Loop, spread_frames
from fitsnap_uq.active.oracles import ASEOracle, oracle_from_name
from fitsnap_uq.errors import InputError

sys.path.insert(0, str(ROOT / "benchmarks"))
from _cuau import cuau_toml  # noqa: E402

TWO = cuau_toml(system={"seed": 4}, md={"temperatures": [1200.0]})


def cells() -> list:
    """Three EMT copper cells and a Ta cell, which EMT cannot label (a failed call)."""
    from ase.build import bulk

    out = []
    for i in range(3):
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 1, 1))
        atoms.rattle(0.05, seed=i)
        out.append(atoms)
    out.insert(2, bulk("Ta", "bcc", a=3.3, cubic=True))
    return out


def label_all(executor, folder) -> dict[int, tuple]:
    tasks = [(atoms, folder / f"c{i}.json") for i, atoms in enumerate(cells())]
    try:
        got = {i: (outcome.ok, outcome.energy, (outcome.error or "").split(":")[0], worker)
               for i, worker, outcome in executor.label(tasks)}
    finally:
        executor.close()
    return got


@pytest.mark.parametrize("kind", ["processes", "dask"])
def test_executors_label_like_serial(tmp_path, kind):
    if kind == "dask":
        pytest.importorskip("distributed")
    emt = oracle_from_name("emt", retries=0)
    serial = label_all(SerialExecutor(emt), tmp_path / "serial")
    assert [serial[i][0] for i in range(4)] == [True, True, False, True]
    assert serial[2][2] == "NotImplementedError"  # EMT has no Ta: recorded, not raised
    executor = make_executor(kind, emt, workers=1)
    assert executor.name.startswith(kind)
    assert label_all(executor, tmp_path / kind) == serial
    for path in sorted((tmp_path / "serial").glob("*.json")):
        assert json.loads((tmp_path / kind / path.name).read_text()) == json.loads(path.read_text())
    assert not (tmp_path / kind / "c2.json").exists() and not list((tmp_path / kind).glob(".*"))


class SlowEMT:
    """EMT that takes ``delay`` seconds for cells of ``slow_atoms`` atoms."""

    def __init__(self, slow_atoms: int, delay: float) -> None:
        self.slow_atoms, self.delay = slow_atoms, delay

    def __call__(self):
        from ase.calculators.emt import EMT

        slow_atoms, delay = self.slow_atoms, self.delay

        class Slow(EMT):
            def calculate(self, atoms=None, properties=("energy",), system_changes=()):
                if atoms is not None and len(atoms) == slow_atoms:
                    time.sleep(delay)
                super().calculate(atoms, properties, system_changes)

        return Slow()


def threads(stack) -> ThreadPoolExecutor:
    return stack.enter_context(ThreadPoolExecutor(2))


def test_loop_journals_each_call_when_it_completes(tmp_path):
    """On worker processes: a failed call is journalled and not retried, a rerun makes no call. On any
    concurrent.futures pool (two threads): a slow call is journalled after the fast ones that completed
    before it."""
    from ase.build import bulk

    path = tmp_path / "c.toml"
    path.write_text(TWO.replace('name = "emt"', 'name = "emt"\nexecutor = "processes"\nworkers = 1'))
    loop = Loop(ALConfig.read(path), tmp_path / "w", progress=False)
    fast = loop.structures(3, seed=0)  # 32 atoms
    group = loop.work / "data" / "JSON" / "Initial"
    tasks = [(fast[0], group / "f0.json"), (bulk("Ta", "bcc", a=3.3, cubic=True), group / "bad.json"),
             (fast[1], group / "f1.json")]
    try:
        loop.label_batch(tasks)
        lines = loop.qm_calls()
        assert {c["file"].split("/")[-1]: c["ok"] for c in lines} == {"f0.json": True, "bad.json": False,
                                                                      "f1.json": True}
        assert all(c["set"] == "train" and c["fit"] == 0 and "rank" not in c for c in lines if c["ok"])
        assert "NotImplementedError" in next(c["error"] for c in lines if not c["ok"])
        assert loop._budget_left() == loop.cfg.qm_budget - 3  # the failed call counts
        stamps = {p.name: p.stat().st_mtime_ns for p in group.glob("*.json")}
        loop.label_batch(tasks)  # resumed: labelled files and the failed call are not redone
        assert loop.qm_calls() == lines
        assert {p.name: p.stat().st_mtime_ns for p in group.glob("*.json")} == stamps
    finally:
        loop.executor.close()
    slow_oracle = ASEOracle(SlowEMT(slow_atoms=16, delay=1.0), name="slow EMT", retries=0)
    loop.executor = FuturesExecutor(slow_oracle, threads, "two threads")
    slow = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 1))  # 16 atoms
    loop.label_batch([(slow, group / "slow.json"), (fast[2], group / "f2.json")])
    loop.executor.close()
    assert [c["file"].split("/")[-1] for c in loop.qm_calls()[3:]] == ["f2.json", "slow.json"]


def test_futures_executor_yields_in_completion_order(tmp_path):
    from ase.build import bulk

    oracle = ASEOracle(SlowEMT(slow_atoms=4, delay=1.0), name="slow EMT", retries=0)
    executor = FuturesExecutor(oracle, threads, "two threads")
    slow = bulk("Cu", "fcc", a=3.61, cubic=True)  # 4 atoms
    tasks = [(slow, tmp_path / "slow.json"), (slow.repeat((2, 1, 1)), tmp_path / "fast.json")]
    order = [i for i, _, _ in executor.label(tasks)]
    executor.close()
    assert order == [1, 0]
    assert not list(executor.label([]))  # after close, the next step opens a new pool
    executor.close()


def test_executor_settings_and_their_errors(tmp_path, monkeypatch):
    path = tmp_path / "c.toml"
    for setting, key, text in [
            ('executor = "threads"', "executor",
             "unknown executor; known: auto, serial, mpi, processes, dask"),
            ("workers = -1", "workers", "must be at least 0"),
            ('executor = "processes"\ndask_scheduler = "tcp://localhost:8786"', "dask_scheduler",
             'a Dask scheduler needs executor = "dask"')]:
        path.write_text(TWO.replace('name = "emt"', f'name = "emt"\n{setting}'))
        with pytest.raises(InputError, match=rf"section \[oracle\], key '{key}': {text}"):
            ALConfig.read(path)
    import fitsnap_uq.active.loop as loop_module

    monkeypatch.setattr(loop_module, "dask_available", lambda: False)
    path.write_text(TWO.replace('name = "emt"', 'name = "emt"\nexecutor = "dask"'))
    with pytest.raises(InputError, match=r"key 'executor': executor = dask needs dask.distributed, which is "
                                         r"not installed: pip install 'fitsnap-uq\[dask\]'"):
        ALConfig.read(path)
    path.write_text(TWO.replace('name = "emt"', 'name = "emt"\nexecutor = "processes"'))
    from ase.calculators.emt import EMT

    unpicklable = ASEOracle(lambda: EMT(), name="lambda EMT")
    with pytest.raises(InputError, match=r"key 'executor': executor = processes: the oracle 'lambda EMT' "
                                         "cannot be sent to worker processes"):
        Loop(ALConfig.read(path), tmp_path / "w", oracle=unpicklable, progress=False)

    class TwoRanks:
        def Get_size(self) -> int:  # noqa: N802  (mpi4py's name)
            return 2

    with pytest.raises(InputError, match="executor = processes under mpirun with 2 ranks: use executor = "
                                         "mpi"):
        make_executor("processes", oracle_from_name("emt"), TwoRanks())
    assert make_executor("mpi", oracle_from_name("emt")).name == "serial"  # one rank
    assert make_executor("auto", oracle_from_name("emt")).name == "serial"


def test_test_md_frames_are_spread_over_the_second_half():
    assert spread_frames(10, 3) == [5, 7, 9]
    assert spread_frames(10, 1) == [9]
    assert spread_frames(4, 3) == [0, 2, 3]  # the second half is too short: the whole run
    assert spread_frames(2, 3) == [0, 1]
    for m, n in [(7, 2), (30, 6), (11, 11)]:
        got = spread_frames(m, n)
        assert len(got) == n and got == sorted(set(got)) and got[-1] == m - 1
        assert np.all(np.asarray(got) >= (m // 2 if m - m // 2 >= n else 0))
