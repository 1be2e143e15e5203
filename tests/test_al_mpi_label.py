"""QM labelling spread over MPI ranks: ``label_folder`` under ``mpirun -np 2`` equals the serial labelling,
both ranks make calls, a failed call is recorded and skipped; the loop under mpirun (slow)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, make_cu_dataset, run_cli
from test_al_loop import CU_TOML

from fitsnap_uq.active.oracles import distribute, is_labelled, label_folder, main, oracle_from_name
from fitsnap_uq.fitsnap_json import fitsnap_record, write_record

MPIRUN = Path(sys.executable).parent / "mpirun"


def unlabelled_folder(folder: Path) -> Path:
    """6 EMT Cu cells as unlabelled frames (placeholders, ``labelled: false``) and one Ta frame that EMT
    cannot label (it fails on every attempt)."""
    make_cu_dataset(folder, n_per_group=3, seed=3)
    for path in sorted(folder.rglob("*.json")):
        record = json.loads(path.read_text())
        record["Dataset"]["fitsnap_uq"] = {"labelled": False, "source": "test"}
        data = record["Dataset"]["Data"][0]
        data["Energy"], data["Forces"] = 0.0, np.zeros_like(data["Forces"]).tolist()
        write_record(record, path)
    from ase.build import bulk

    ta = bulk("Ta", "bcc", a=3.3, cubic=True)
    bad = fitsnap_record(ta.get_chemical_symbols(), ta.get_positions(), np.asarray(ta.cell), 0.0,
                         np.zeros((len(ta), 3)))
    bad["Dataset"]["fitsnap_uq"] = {"labelled": False}
    write_record(bad, folder / "JSON" / "Bad" / "Ta_0.json")
    return folder


def mpi_env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env["OMP_NUM_THREADS"] = "1"
    return env


def relative(paths, root: Path) -> list[str]:
    return sorted(str(Path(p).relative_to(root)) for p in paths)


SCRIPT = """
import json, sys
from fitsnap_uq.active.oracles import label_folder, oracle_from_name, world_comm
comm = world_comm()
out = {}
for folder, schedule in zip(sys.argv[1::2], sys.argv[2::2]):
    out[schedule] = label_folder(folder, oracle_from_name("emt"), schedule=schedule)
out["size"] = comm.Get_size() if comm is not None else 1
rank = comm.Get_rank() if comm is not None else 0
with open(f"result{rank}.json", "w") as fh:  # a file per rank: mpirun may interleave stdout lines
    fh.write(json.dumps(out))
"""


@pytest.mark.mpi
def test_label_folder_under_mpirun_equals_serial(tmp_path):
    base = unlabelled_folder(tmp_path / "base")
    folders = {name: tmp_path / name for name in ("serial", "round_robin", "dynamic")}
    for folder in folders.values():
        shutil.copytree(base, folder)
    serial = label_folder(folders["serial"], oracle_from_name("emt"))
    assert len(serial["labelled"]) == 6 and len(serial["failed"]) == 1
    assert set(serial["ranks"].values()) == {0}

    (tmp_path / "label.py").write_text(SCRIPT)
    cmd = [str(MPIRUN) if MPIRUN.exists() else "mpirun", "-np", "2", sys.executable,
           str(tmp_path / "label.py"), str(folders["round_robin"]), "round_robin", str(folders["dynamic"]),
           "dynamic"]
    proc = subprocess.run(cmd, env=mpi_env(), capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    texts = [(tmp_path / f"result{rank}.json").read_text() for rank in (0, 1)]
    assert texts[0] == texts[1]  # both ranks return the same gathered outcome
    out = json.loads(texts[0])
    assert out["size"] == 2
    ranks_rr = out["round_robin"]["ranks"]
    assert sorted(set(ranks_rr.values())) == [0, 1]  # both ranks made QM calls
    assert [ranks_rr[p] for p in sorted(ranks_rr)] == [i % 2 for i in range(7)]
    for schedule in ("round_robin", "dynamic"):
        done, root = out[schedule], folders[schedule]
        assert set(done["ranks"].values()) <= {0, 1} and len(done["ranks"]) == 7
        for key in ("labelled", "failed", "skipped"):
            assert relative(done[key], root) == relative(serial[key], folders["serial"]), (schedule, key)
        assert "NotImplementedError" in next(iter(done["errors"].values()))
        # every file equals the serial labelling's: labels, metadata, and the failed frame left untouched
        for path in sorted(folders["serial"].rglob("*.json")):
            twin = root / path.relative_to(folders["serial"])
            assert json.loads(twin.read_text()) == json.loads(path.read_text()), twin
        assert not is_labelled(json.loads((root / "JSON" / "Bad" / "Ta_0.json").read_text()))
        assert not list(root.rglob("*.tmp"))  # atomic writes leave no temp files


def test_label_folder_serial_cli_and_rerun(tmp_path, capsys):
    folder = unlabelled_folder(tmp_path / "f")
    assert main([str(folder), "--oracle", "emt", "--retries", "0"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["ranks_used"] == 1 and len(first["labelled"]) == 6 and len(first["failed"]) == 1
    from ase.calculators.emt import EMT

    from fitsnap_uq.active.oracles import read_fitsnap_json

    record, atoms = read_fitsnap_json(folder / "JSON" / "Bulk" / "Bulk_0.json")
    atoms.calc = EMT()
    assert record["Dataset"]["Data"][0]["Energy"] == pytest.approx(atoms.get_potential_energy(), abs=1e-9)
    assert abs(atoms.get_potential_energy()) > 1e-3  # not the placeholder 0
    again = label_folder(folder, oracle_from_name("emt"))  # labelled files are skipped, the bad one retried
    assert len(again["skipped"]) == 6 and len(again["failed"]) == 1 and not again["labelled"]
    assert main([str(tmp_path / "missing"), "--oracle", "emt"]) == 2


def test_distribute_serial_order_and_bad_schedule():
    assert distribute(4, lambda i: i * i) == [(0, 0), (0, 1), (0, 4), (0, 9)]
    with pytest.raises(ValueError, match="schedule"):
        distribute(2, lambda i: i, schedule="static")


LOOP_TOML = CU_TOML.replace("iterations = 2", "iterations = 1")


@pytest.mark.slow
@pytest.mark.mpi
def test_loop_under_mpirun_matches_serial(tmp_path):
    """``mpirun -np 2 fitsnap-uq al``: both ranks label, rank 0 fits and runs MD, same result as serial."""
    for name in ("serial", "mpi"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "cu.toml").write_text(LOOP_TOML)
    serial = run_cli(["al", "cu.toml", "--no-progress"], cwd=tmp_path / "serial")
    assert serial.returncode == 0, serial.stderr[-2000:]
    par = run_cli(["al", "cu.toml", "--no-progress"], cwd=tmp_path / "mpi", mpi=2)
    assert par.returncode == 0, par.stderr[-3000:]
    s = json.loads((tmp_path / "serial" / "cu_al" / "summary.json").read_text())
    p = json.loads((tmp_path / "mpi" / "cu_al" / "summary.json").read_text())
    assert [c["qm_calls"] for c in p["curve"]] == [c["qm_calls"] for c in s["curve"]]
    for a, b in zip(p["curve"], s["curve"]):
        assert a["force_rmse"] == pytest.approx(b["force_rmse"], rel=1e-6)
    calls = [json.loads(ln) for ln in (tmp_path / "mpi" / "cu_al" / "journal.jsonl").read_text().splitlines()]
    serial_calls = [json.loads(ln) for ln in
                    (tmp_path / "serial" / "cu_al" / "journal.jsonl").read_text().splitlines()]
    assert [c["file"] for c in calls] == [c["file"] for c in serial_calls]  # same calls, same order
    assert {c["rank"] for c in calls} == {0, 1}
    assert all("rank" not in c for c in serial_calls)


class _SleepyComm:
    """Rank 0 of two: the other rank finishes its tasks late; a blocking Barrier is an error (MPICH's
    blocking calls spin), the non-blocking barrier is polled."""

    def __init__(self) -> None:
        self.tests = 0

    def Get_size(self) -> int:  # noqa: N802  (mpi4py's names)
        return 2

    def Get_rank(self) -> int:  # noqa: N802
        return 0

    def Barrier(self) -> None:  # noqa: N802
        raise AssertionError("blocking barrier: the rank would spin while the other labels")

    def Ibarrier(self):  # noqa: N802
        comm = self

        class Request:
            def Test(self) -> bool:  # noqa: N802
                comm.tests += 1
                return comm.tests > 3

        return Request()

    def allgather(self, local):
        return [local, [(i, f"task {i}") for i in range(1, 5, 2)]]

    def bcast(self, obj, root=0):
        return obj


def test_labelling_ranks_wait_asleep(monkeypatch):
    """A rank whose QM calls are done waits for the others in a sleeping barrier (polled with
    time.sleep), not in MPI's spinning collective; the results are gathered as before."""
    from fitsnap_uq import parallel

    naps: list[float] = []
    monkeypatch.setattr(parallel.time, "sleep", naps.append)
    comm = _SleepyComm()
    out = distribute(5, lambda i: f"task {i}", comm=comm)
    assert out == [(i % 2, f"task {i}") for i in range(5)]
    assert comm.tests == 4 and len(naps) == 3 and naps == sorted(naps)
