"""The on-the-fly active-learning loop: end to end with EMT copper, and kill -9 / resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, run_cli

from fitsnap_uq.active.loop import ALConfig
from fitsnap_uq.errors import InputError

CU_TOML = """
[system]
element = "Cu"
lattice = "fcc"
a = 3.61
supercell = [2, 2, 2]
initial = 4
[oracle]
name = "emt"
[snap]
twojmax = 6
rcutfac = 4.9
[md]
temperatures = [1200.0]
md_cells = [3, 3, 3]
md_steps = 100
flag_above = 0.005
max_flags = 2
[loop]
iterations = 2
qm_budget = 20
test_structures = 2
"""


def completed_calls(workdir: Path) -> list[dict]:
    return [json.loads(ln) for ln in (workdir / "journal.jsonl").read_text().splitlines() if ln.strip()]


@pytest.mark.slow  # ~1 min quiet; CI runs it (.ci/run runs the slow tests too)
def test_loop_end_to_end(tmp_path):
    (tmp_path / "cu.toml").write_text(CU_TOML)
    proc = run_cli(["al", "cu.toml", "--no-progress"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    work = tmp_path / "cu_al"
    summary = json.loads((work / "summary.json").read_text())
    curve = summary["curve"]
    assert [c["iteration"] for c in curve] == [0, 1, 2]
    assert curve[-1]["qm_calls"] > curve[0]["qm_calls"] == 4
    assert curve[-1]["force_rmse"] < curve[0]["force_rmse"]  # flagged frames improved the fit
    assert (work / "learning_curve.png").exists() and "test force RMSE" in (work / "report.md").read_text()
    groups = sorted(p.name for p in (work / "data" / "JSON").iterdir())
    assert groups == ["Flagged0", "Flagged1", "Initial"]


@pytest.mark.slow  # ~1 min quiet; CI runs it (.ci/run runs the slow tests too)
def test_kill_and_resume_repeats_no_qm_call(tmp_path):
    (tmp_path / "cu.toml").write_text(CU_TOML)
    work = tmp_path / "cu_al"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "fitsnap_uq", "al", "cu.toml", "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline:  # kill once the first flagged frame has been labelled
        if (work / "journal.jsonl").exists() and len(completed_calls(work)) >= 7:
            break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = completed_calls(work)
    assert 7 <= len(before)
    resumed = run_cli(["al", "cu.toml", "--no-progress"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    calls = completed_calls(work)
    files = [c["file"] for c in calls if c["ok"]]
    assert len(files) == len(set(files)), "a completed QM call was repeated"
    assert calls[: len(before)] == before  # nothing lost or rewritten
    labelled = sorted(str(p.relative_to(work)) for p in (work / "data" / "JSON").rglob("*.json"))
    assert labelled == sorted(f for f in files if f.startswith("data/"))
    assert json.loads((work / "summary.json").read_text())["curve"][-1]["iteration"] == 2


def test_config_errors(tmp_path):
    (tmp_path / "bad.toml").write_text(CU_TOML.replace("[md]", "[md]\nsteps = 5"))
    with pytest.raises(InputError, match=r"section \[md\], key 'steps'"):
        ALConfig.read(tmp_path / "bad.toml")
    (tmp_path / "bad2.toml").write_text("[mdx]\nsteps = 1\n")
    with pytest.raises(InputError, match="unknown table"):
        ALConfig.read(tmp_path / "bad2.toml")
    proc = run_cli(["al", "missing.toml"], cwd=tmp_path)
    assert proc.returncode == 2 and "missing.toml" in proc.stderr


def test_journal_recovers_a_labelled_file_and_a_torn_line(tmp_path):
    """Killed after a QM result's file was written but before its journal line (or mid-line): the
    rerun journals the file without a new QM call, and a torn line does not swallow the next one."""
    from fitsnap_uq.active.loop import Loop
    from fitsnap_uq.active.oracles import oracle_from_name

    (tmp_path / "cu.toml").write_text(CU_TOML)
    cfg = ALConfig.read(tmp_path / "cu.toml")
    emt = oracle_from_name("emt")
    calls = []

    class Counting:
        name = emt.name

        def label(self, atoms):
            calls.append(1)
            return emt.label(atoms)

    loop = Loop(cfg, tmp_path / "work", oracle=Counting(), progress=False)
    a, b = loop.structures(2, seed=0)
    first, second = (loop.work / "data" / "JSON" / "Initial" / f"{n}.json" for n in "ab")
    assert loop.label(a, first) and len(calls) == 1
    loop.journal.write_text('{"file": "data/JSON/Init')  # the line was cut; the file is there
    assert loop.label(a, first) and len(calls) == 1  # no new QM call
    assert loop.label(b, second) and len(calls) == 2
    lines = loop.qm_calls()
    assert [c["file"] for c in lines] == ["data/JSON/Initial/a.json", "data/JSON/Initial/b.json"]
    # the recovered line is the one an uninterrupted run writes (a faithful journal)
    assert lines[0] == {"file": "data/JSON/Initial/a.json", "set": "train", "ok": True,
                        "energy": json.loads(first.read_text())["Dataset"]["Data"][0]["Energy"],
                        "natoms": len(a), "fit": 0}
    assert loop.label(a, first) and len(loop.qm_calls()) == 2  # journalled once only
