"""``fitsnap-uq demo`` end to end on its quick, QM-free variant (EMT copper), resume and refusals."""

from __future__ import annotations

import json
import re

import pytest
from conftest import run_cli

QUICK = ["demo", "--element", "Cu", "--cells", "2", "--iterations", "1", "--samples", "2",
         "--md-steps", "100", "--ensemble-steps", "200", "--outdir", "out", "--no-progress"]


def journal_lines(out):
    return (out / "al" / "journal.jsonl").read_text().splitlines()


@pytest.mark.slow  # guards a landed feature; CI runs it (.ci/run), the default run stays < 5 min
def test_demo_writes_report_with_plots_and_resumes(tmp_path):
    proc = run_cli(QUICK, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "out"
    assert "report:" in proc.stdout
    md = (out / "report.md").read_text()
    html = (out / "report.html").read_text()
    for png in ("learning_curve.png", "parity.png", "calibration.png", "md_uncertainty.png",
                "ensemble_volume.png"):
        assert (out / png).stat().st_size > 10_000, png
        assert f"({png})" in md and f"src='{png}'" in html
    info = json.loads((out / "demo.json").read_text())
    curve = info["summary"]["curve"]
    assert [c["iteration"] for c in curve] == [0, 1]
    assert curve[1]["qm_calls"] > curve[0]["qm_calls"] == 6  # flagged frames were labelled
    # the calibration table of the test set has energy and force rows with finite coverages
    table = (out / "calibration_test.md").read_text()
    cov = [float(x) for x in re.findall(r"\| Force\s*\|\s*\d+\s*\|\s*([0-9.]+)", table)]
    assert cov and 0.0 < cov[0] <= 1.0
    assert "volume per atom" in md and "Largest per-atom force std" in md

    calls = journal_lines(out)
    outputs = [out / "report.md", out / "demo.json", out / "ensemble" / "ensemble.json",
               out / "al" / "iter1" / "fit" / "pot.posterior.npz", out / "md" / "iter1" / "uq.dump"]
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in outputs}

    # A finished demo: the same command says so and does nothing.
    again = run_cli(QUICK, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "already done" in again.stdout and "report:" in again.stdout
    assert journal_lines(out) == calls
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in outputs} == before
    stages = info["stages"]
    assert list(stages) == ["active learning (QM, fits, MD)", "test-set predictions",
                            "MD with the uncertainty hook", "posterior ensemble of MD", "report"]
    assert all(v["seconds"] > 0 and v["cpu_seconds"] >= 0 for v in stages.values()) and info["complete"]

    # Killed during the ensemble: a rerun redoes the ensemble and the report only.
    info["complete"] = False
    for name in ("posterior ensemble of MD", "report"):
        del info["stages"][name]
    (out / "demo.json").write_text(json.dumps(info))
    (out / "ensemble" / "ensemble.json").unlink()
    resumed = run_cli(QUICK[:-1], cwd=tmp_path)  # with progress: stage lines on stderr
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "[1/5] active learning (QM, fits, MD): done earlier" in resumed.stderr
    assert "[3/5] MD with the uncertainty hook: done earlier" in resumed.stderr
    assert "[4/5] posterior ensemble" in resumed.stderr and "[5/5] report" in resumed.stderr
    for p in outputs[3:]:  # fits and MD untouched
        assert (p.stat().st_mtime_ns, p.read_bytes()) == before[p], p
    resumed_info = json.loads((out / "demo.json").read_text())
    assert resumed_info["complete"] and (out / "ensemble" / "ensemble.json").exists()
    name = "active learning (QM, fits, MD)"
    assert resumed_info["stages"][name] == stages[name]

    # Killed in the active-learning stage after its last fit: the loop resumes without repeating a QM
    # call, a fit or an MD run; the stages after it run again.
    (out / "al" / "summary.json").unlink()
    resumed_info["stages"], resumed_info["complete"] = {}, False
    (out / "demo.json").write_text(json.dumps(resumed_info))
    resumed = run_cli(QUICK[:-1], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for point in curve:  # each fit's count as the finished run recorded it
        assert (f"fitsnap-uq al: fit {point['iteration']} on {point['configurations']} configurations: "
                "done earlier") in resumed.stderr
    assert "QM calls done" not in resumed.stderr and "MD 0 at" not in resumed.stderr
    assert journal_lines(out) == calls
    post = out / "al" / "iter1" / "fit" / "pot.posterior.npz"
    assert (post.stat().st_mtime_ns, post.read_bytes()) == before[post]
    assert json.loads((out / "demo.json").read_text())["complete"]


def test_demo_refuses_other_settings_in_same_folder(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "demo.json").write_text(json.dumps({"settings": {"element": "Ta"}}))
    proc = run_cli(QUICK, cwd=tmp_path)
    assert proc.returncode == 2
    assert "other settings" in proc.stderr and "demo.json" in proc.stderr and "--" in proc.stderr
    (tmp_path / "notdemo").mkdir()
    (tmp_path / "notdemo" / "precious.txt").write_text("keep")
    proc = run_cli([*QUICK[:-3], "--outdir", "notdemo", "--overwrite", "--no-progress"], cwd=tmp_path)
    assert proc.returncode == 2 and "refusing to delete" in proc.stderr
    assert (tmp_path / "notdemo" / "precious.txt").exists()


def test_demo_rejects_unknown_element(tmp_path):
    proc = run_cli(["demo", "--element", "Xx", "--outdir", "o", "--no-progress"], cwd=tmp_path)
    assert proc.returncode == 2 and "unknown element 'Xx'" in proc.stderr and "--element" in proc.stderr
    assert not (tmp_path / "o").exists()
