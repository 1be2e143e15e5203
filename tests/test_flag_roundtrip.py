"""A posterior fitted only on bcc Ta data flags hot, strained MD frames; labelled, they go back
into a fit (the MD -> flagged configurations -> QM -> refit round trip).

The labels come from ASE's LAMMPSlib calculator running the reference SNAP fitted to all the Ta DFT
data (``reference_svd_fit``): the stand-in for DFT that is on the DFT energy scale."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import NEEDS_TA, SHARED_TA, run_cli

from fitsnap_uq.posterior import Posterior

HOT_MD = """
units metal
lattice bcc 3.316
region b block 0 3 0 3 0 3
create_box 1 b
create_atoms 1 box
mass 1 180.88
pair_style hybrid/overlay zbl 4.0 4.8 snap
pair_coeff * * zbl 73 73
pair_coeff * * snap Ta_pot.snapcoeff Ta_pot.snapparam Ta
velocity all create 6000 2
fix nve all nve
thermo 50
run 200
change_box all x scale 1.08 y scale 1.08 z scale 1.08 remap
run 100
"""
LEFT_OUT = ("Displaced_A15", "Displaced_FCC", "Elastic_FCC", "GSF_110", "GSF_112", "Liquid", "Surface",
            "Volume_A15", "Volume_BCC", "Volume_FCC")


def check_flag_file_matches_json_and_plugin(folder):
    """The hook's flagged.extxyz holds, per frame, the forces of its JSON file (the MD's forces) and the
    same columns and info keys as the native plugin's flag file (fix snap/uq)."""
    import re

    import ase.io
    from conftest import ROOT

    frames = ase.io.read(folder / "flagged.extxyz", ":")
    files = sorted((folder / "json" / "Flagged").glob("*.json"))
    assert frames and len(frames) == len(files)
    for atoms, path in zip(frames, files):
        data = json.loads(path.read_text())["Dataset"]["Data"][0]
        assert atoms.info["step"] == json.loads(path.read_text())["Dataset"]["fitsnap_uq"]["step"]
        forces = atoms.get_forces()  # extxyz keeps 8 decimals
        np.testing.assert_allclose(forces, np.asarray(data["Forces"]), atol=1e-7)
        assert np.abs(forces).max() > 0.1
        assert {"step", "measure", "value"} <= set(atoms.info)
    header = (folder / "flagged.extxyz").read_text().splitlines()[1]
    ours = set(re.search(r"Properties=(\S+)", header).group(1).split(":")[0::3])
    source = (ROOT / "lammps_hooks" / "native" / "fix_snap_uq.cpp").read_text()
    plugin = set(re.search(r"Properties=(\S+) ", source).group(1).split(":")[0::3])
    assert ours == plugin == {"species", "pos", "forces", "uq_estd", "uq_fstd"}, (ours, plugin)


def reference_oracle():
    from ase.calculators.lammpslib import LAMMPSlib

    from fitsnap_uq.active.oracles import ASEOracle

    ref = SHARED_TA / "reference_svd_fit"
    cmds = ["pair_style hybrid/overlay zbl 4.0 4.8 snap", "pair_coeff * * zbl 73 73",
            f"pair_coeff * * snap {ref / 'Ta_pot.snapcoeff'} {ref / 'Ta_pot.snapparam'} Ta"]
    return ASEOracle(lambda: LAMMPSlib(lmpcmds=cmds, atom_types={"Ta": 1}, log_file=None,
                                       keep_alive=False), name="reference Ta SNAP (LAMMPSlib)")


@pytest.mark.slow  # guards a landed feature; CI runs it (.ci/run), the default run stays < 5 min
@NEEDS_TA
def test_flagged_frames_go_back_into_a_fit(ta_run):
    lines = (ta_run / "Ta-example.in").read_text().replace("solver = SVD", "solver = BAYES").splitlines()
    lines = [ln for ln in lines if ln.split("=")[0].strip() not in LEFT_OUT]
    (ta_run / "Ta-bcc.in").write_text("\n".join(lines))
    assert run_cli(["fit", "Ta-bcc.in", "--overwrite"], cwd=ta_run).returncode == 0
    (ta_run / "in.hot").write_text(HOT_MD)
    proc = run_cli(["md", "in.hot", "--posterior", "Ta_pot.posterior.npz", "--every", "20",
                    "--flag-dir", "flagged", "--flag-above", "0.1", "--max-flags", "4",
                    "--summary", "md.json"], cwd=ta_run)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((ta_run / "md.json").read_text())
    assert 1 <= summary["nflagged"] <= 4
    flagged_steps = [h["step"] for h in summary["history"] if h["fstd_max"] > 0.1]
    fstd = [h["fstd_max"] for h in summary["history"]]
    print(f"\nbcc-only posterior, hot/strained MD: fstd_max at step 0 {fstd[0]:.3f} eV/A, max "
          f"{max(fstd):.3f} eV/A; above 0.1 at steps {[int(s) for s in flagged_steps]}; "
          f"{summary['nflagged']} frames flagged")
    assert flagged_steps and min(flagged_steps) > 0
    check_flag_file_matches_json_and_plugin(ta_run / "flagged")

    # Unlabelled frames are refused by the fit.
    group = ta_run / "JSON" / "Flagged"
    shutil.copytree(ta_run / "flagged" / "json" / "Flagged", group)
    text = (ta_run / "Ta-bcc.in").read_text().replace(
        "Elastic_BCC   =", "Flagged       =  1.0    0.0       100             1               1.00E-08\n"
        "Elastic_BCC   =")
    (ta_run / "Ta-refit.in").write_text(text)
    refused = run_cli(["fit", "Ta-refit.in", "--overwrite"], cwd=ta_run)
    assert refused.returncode == 2 and "unlabelled" in refused.stderr

    from fitsnap_uq.active.oracles import label_folder

    done = label_folder(group, reference_oracle())
    assert len(done["labelled"]) == summary["nflagged"] and not done["failed"], done
    refit = run_cli(["fit", "Ta-refit.in", "--overwrite"], cwd=ta_run)
    assert refit.returncode == 0, refit.stderr[-2000:]
    post = Posterior.load(ta_run / "Ta_pot.posterior.npz")
    assert post.model_error is not None and np.all(np.isfinite(post.mean))
    report = (ta_run / "Ta_metrics.uq.md").read_text()
    flagged = [ln for ln in report.splitlines() if ln.startswith("| Flagged ") and "| Force " in ln]
    assert flagged, "the labelled frames' group is missing from the calibration report"
    print(f"refit with the {len(done['labelled'])} labelled frames: force floor "
          f"{post.noise_std['Force']:.3g} eV/A; report row: {flagged[0]}")
