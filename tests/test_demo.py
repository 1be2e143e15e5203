"""``fitsnap-uq demo`` end to end on its quick, QM-free variant (EMT copper), resume and refusals."""

from __future__ import annotations

import json
import re

from conftest import run_cli

QUICK = ["demo", "--element", "Cu", "--cells", "2", "--iterations", "1", "--samples", "2",
         "--md-steps", "100", "--ensemble-steps", "200", "--outdir", "out", "--no-progress"]


def journal_lines(out):
    return (out / "al" / "journal.jsonl").read_text().splitlines()


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
    again = run_cli(QUICK, cwd=tmp_path)  # same command: resumes, no QM call repeated
    assert again.returncode == 0, again.stderr[-3000:]
    assert journal_lines(out) == calls


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
