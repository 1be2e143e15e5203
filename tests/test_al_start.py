"""``fitsnap-uq al`` started from what a user has (issue 18, acceptance 2): a two-element FitSNAP project
(input + JSON training set labelled with the same oracle, EMT), extra structures and test structures in
extxyz, and the user's own LAMMPS template running NPT at two pressures; QM calls on two worker
processes; scored on the user's test structures and on frames of an independent MD at the hottest
condition."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

from fitsnap_uq.active.loop import ALConfig, Loop
from fitsnap_uq.active.project import read_project
from fitsnap_uq.errors import InputError

PROJECT_INPUT = """[BISPECTRUM]
numTypes = 2
twojmax = 4 4
rcutfac = 4.9
rfac0 = 0.99363
rmin0 = 0.0
wj = 1.0 0.9
radelem = 0.5 0.55
type = Cu Au
bzeroflag = 0

[CALCULATOR]
calculator = LAMMPSSNAP
energy = 1
force = 1
stress = 1

[SOLVER]
solver = SVD

[SCRAPER]
scraper = JSON

[PATH]
dataPath = JSON

[GROUPS]
group_sections = name training_size testing_size eweight fweight vweight
group_types = str float float float float float
smartweights = 0
random_sampling = 0
Bulk     = 1.0 0.0 1.0 1.0 1e-6
Strained = 1.0 0.0 2.0 0.5 1e-6
"""

TEMPLATE = """# the user's NPT run; the loop fills in its placeholders
units metal
atom_style atomic
boundary p p p
read_data ${data_file}
include ${potential}
velocity all create $(2*${temperature}) ${seed} loop geom
fix 1 all npt temp ${temperature} ${temperature} 0.1 iso ${pressure} ${pressure} 1.0
timestep ${timestep}
thermo 20
run ${steps}
"""

CONFIG = """
[system]
initial = 0
seed = 2
[start]
fitsnap_input = "project/cuau.in"
structures = ["extra.extxyz"]
test_files = ["mytest.extxyz"]
[oracle]
name = "emt"
executor = "processes"
workers = 2
[md]
template = "in.npt"
md_data = "start.extxyz"
temperatures = [1000.0]
pressures = [0.0, 20000.0]
md_steps = 60
flag_above = 0.005
max_flags = 1
[loop]
iterations = 2
qm_budget = 6
test_structures = 2
"""


def cuau_cells(n: int, seed: int, rattle: float = 0.08, strain: float = 0.0) -> list:
    """Cu3Au-like fcc 2x2x2 cells (32 atoms), Au on random sites, rattled (and strained)."""
    from ase.build import bulk

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        atoms = bulk("Cu", "fcc", a=3.75, cubic=True).repeat((2, 2, 2))
        symbols = np.array(["Cu"] * 24 + ["Au"] * 8)[rng.permutation(32)]
        atoms.set_chemical_symbols(list(symbols))
        atoms.set_cell(np.asarray(atoms.cell) * (1 + rng.normal(scale=strain) if strain else 1.0),
                       scale_atoms=True)
        atoms.rattle(stdev=rattle, seed=int(rng.integers(1 << 30)))
        out.append(atoms)
    return out


def make_user_folder(folder: Path) -> None:
    """The user's FitSNAP project (EMT-labelled JSON), structures, template and config."""
    import ase.io
    from ase.calculators.emt import EMT

    from fitsnap_uq.fitsnap_json import atoms_record, write_record

    for group, seed, strain in (("Bulk", 0, 0.0), ("Strained", 1, 0.02)):
        for i, atoms in enumerate(cuau_cells(3, seed, strain=strain)):
            atoms.calc = EMT()
            write_record(atoms_record(atoms), folder / "project" / "JSON" / group / f"{group}_{i}.json")
    (folder / "project" / "cuau.in").write_text(PROJECT_INPUT)
    ase.io.write(folder / "extra.extxyz", cuau_cells(2, 5, rattle=0.12))
    ase.io.write(folder / "mytest.extxyz", cuau_cells(2, 6, rattle=0.15))
    ase.io.write(folder / "start.extxyz", cuau_cells(1, 7, rattle=0.0)[0])
    (folder / "in.npt").write_text(TEMPLATE)
    (folder / "al.toml").write_text(CONFIG)


@pytest.mark.slow  # ~1 min on 2 quiet cores
def test_al_from_a_fitsnap_project_and_an_npt_template(tmp_path):
    make_user_folder(tmp_path)
    proc = run_cli(["al", "al.toml", "--no-progress"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    work = tmp_path / "al_al"
    summary = json.loads((work / "summary.json").read_text())
    curve = summary["curve"]
    assert summary["elements"] == ["Cu", "Au"]
    assert curve[0]["configurations"] == 6 + 2 and curve[0]["qm_calls"] == 2  # project + extxyz
    assert curve[-1]["qm_calls"] > curve[0]["qm_calls"]
    # both test sets scored at every fit: 2 frames of the independent MD (the first set), the user's 2
    assert all(c["test_configurations"] == 2 and c["by_test_set"]["user"]["test_configurations"] == 2
               and c["by_test_set"]["md"]["force_rmse"] == c["force_rmse"] for c in curve)
    assert summary["qm_calls_test"] == {"md": 2, "user": 2}  # outside the training budget
    assert summary["qm_calls_training"] == curve[-1]["qm_calls"] <= 6
    # the test MD: the hottest condition (1000 K, 20000 bar) in the user's template, its own seed
    script = (work / "testmd" / "in.md").read_text()
    assert "iso 20000 20000 1.0" in script and "${" not in script and " 30002 loop geom" in script
    chosen = json.loads((work / "testmd" / "done.json").read_text())["chosen"]
    assert len(chosen) == 2 and not any(c.endswith("_step0.json") for c in chosen)
    assert sorted(p.name for p in (work / "testset").glob("*.json")) == sorted(
        f"md_{Path(c).stem}.json" for c in chosen)
    fit_input = (work / "iter0" / "fit" / "al.in").read_text()
    assert "Bulk = 1.0 0.0 1.0 1.0 1e-6" in fit_input and "Strained = 1.0 0.0 2.0 0.5 1e-6" in fit_input
    assert "type = Cu Au" in fit_input and "radelem = 0.5 0.55" in fit_input
    # the template ran as NPT at both pressures, with the loop's values filled in
    for name, bar in (("md_1000K_0bar", "0"), ("md_1000K_20000bar", "20000")):
        script = (work / "iter0" / name / "in.md").read_text()
        assert f"iso {bar} {bar} 1.0" in script and "${" not in script
        assert (work / "iter0" / name / "done.json").exists()
    journal = [json.loads(line) for line in (work / "journal.jsonl").read_text().splitlines()]
    assert {c["file"].split("/")[2] for c in journal if c["set"] == "train"} >= {"Initial", "Flagged0"}
    report = (work / "report.md").read_text()
    assert "test force RMSE" in report and "QM cost" in report and "95% bootstrap" in report
    assert "## Test set: md" in report and "## Test set: user" in report and "executor processes" in report
    assert (work / "learning_curve.png").exists()
    # the project's files were copied once, unchanged
    src = sorted((tmp_path / "project" / "JSON").rglob("*.json"))
    assert [p.read_bytes() for p in src] == [(work / "data" / "JSON" / p.relative_to(
        tmp_path / "project" / "JSON")).read_bytes() for p in src]


def test_project_and_start_errors(tmp_path):
    make_user_folder(tmp_path)
    project = read_project(tmp_path / "project" / "cuau.in")
    assert project.elements == ["Cu", "Au"] and project.groups["Strained"] == "1.0 0.0 2.0 0.5 1e-6"
    text = PROJECT_INPUT.replace("Strained = 1.0 0.0 2.0 0.5 1e-6", "Missing = 1.0 0.0 1.0 1.0 1e-6")
    (tmp_path / "project" / "bad.in").write_text(text)
    with pytest.raises(InputError, match=r"section \[GROUPS\], key 'Missing': no JSON files"):
        read_project(tmp_path / "project" / "bad.in")
    (tmp_path / "project" / "neg.in").write_text(PROJECT_INPUT.replace("rcutfac = 4.9", "rcutfac = -4.9"))
    with pytest.raises(InputError, match=r"section \[BISPECTRUM\], key 'rcutfac': must be a positive"):
        read_project(tmp_path / "project" / "neg.in")
    cfg = ALConfig.read(tmp_path / "al.toml")
    loop = Loop(cfg, tmp_path / "w", progress=False)
    assert loop.elements == ["Cu", "Au"]
    script = loop.md_script(1000.0, 0, 20000.0, folder=tmp_path / "w" / "md")
    assert "fix 1 all npt temp 1000 1000 0.1 iso 20000 20000 1.0" in script
    assert f"include {tmp_path / 'w' / 'md' / 'potential.mod'}" in script
    assert "pair_coeff 1 2 zbl 29 79" in (tmp_path / "w" / "md" / "potential.mod").read_text()
    (tmp_path / "al.toml").write_text(CONFIG.replace("[md]", "[md]\nbarostat = 1"))
    proc = run_cli(["al", "al.toml"], cwd=tmp_path)
    assert proc.returncode == 2 and "section [md], key 'barostat'" in proc.stderr
    (tmp_path / "al.toml").write_text(CONFIG.replace('template = "in.npt"', 'template = "in.none"'))
    proc = run_cli(["al", "al.toml"], cwd=tmp_path)
    assert proc.returncode == 2 and "key 'template'" in proc.stderr and "in.none" in proc.stderr


@pytest.mark.slow  # ~10 s quiet, but it launches two Python processes and FitSNAP
def test_a_failed_fit_ends_the_loop_with_its_message_and_exit_1(tmp_path):
    """The user's project passes the loop's checks but the fit refuses its data (a training energy that
    is NaN): the loop stops with the fit's error (no traceback of the loop) and keeps the folder for a
    rerun."""
    make_user_folder(tmp_path)
    bad = sorted((tmp_path / "project" / "JSON").rglob("*.json"))[0]
    bad.write_text(re.sub(r'"Energy": *[-+0-9.eE]+', '"Energy": NaN', bad.read_text(), count=1))
    (tmp_path / "al.toml").write_text(CONFIG.replace('structures = ["extra.extxyz"]', "")
                                      .replace('test_files = ["mytest.extxyz"]', ""))
    proc = run_cli(["al", "al.toml", "--no-progress"], cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert proc.stderr.startswith("fitsnap-uq: error: fit 0 failed:")
    assert "the work folder al_al is kept" in proc.stderr
    assert (tmp_path / "al_al" / "iter0" / "fit" / "al.in").exists()


def test_several_md_start_structures_each_run_at_every_condition(tmp_path):
    """``[md] md_data`` as a list: every temperature x pressure from each structure, in folders named by
    the file stems, each structure's LAMMPS data written once (types in element order); one structure
    keeps the folder names of a single ``md_data``; a value that is not file names is refused."""
    import ase.io
    from ase.build import bulk

    big = bulk("Cu", "fcc", a=3.75, cubic=True).repeat((2, 2, 2))
    big.symbols[:8] = "Au"
    ase.io.write(tmp_path / "bulk.extxyz", big)
    ase.io.write(tmp_path / "vac.extxyz", big[1:])
    base = ('[system]\nelements = ["Cu", "Au"]\n[oracle]\nname = "emt"\n'
            "[md]\ntemperatures = [600.0, 1200.0]\n")
    (tmp_path / "al.toml").write_text(base + 'md_data = ["bulk.extxyz", "vac.extxyz"]\n')
    loop = Loop(ALConfig.read(tmp_path / "al.toml"), tmp_path / "w", progress=False)
    assert loop.conditions() == [(600.0, None, 0), (1200.0, None, 0), (600.0, None, 1), (1200.0, None, 1)]
    assert [loop.md_folder(0, t, p, s).name for t, p, s in loop.conditions()] == [
        "md_bulk_600K", "md_bulk_1200K", "md_vac_600K", "md_vac_1200K"]
    script = loop.md_script(600.0, 0, start=1)
    assert f"read_data {tmp_path / 'w' / 'md_start_vac.data'}" in script
    data = (tmp_path / "w" / "md_start_vac.data").read_text()
    assert "31 atoms" in data and "2 atom types" in data
    body = data.split("Atoms")[1].split("\n\n")[1].splitlines()
    assert sorted(int(line.split()[1]) for line in body).count(2) == 7  # Au is type 2
    (tmp_path / "al.toml").write_text(base + 'md_data = ["bulk.extxyz"]\n')
    one = Loop(ALConfig.read(tmp_path / "al.toml"), tmp_path / "w1", progress=False)
    assert [one.md_folder(0, t, p, s).name for t, p, s in one.conditions()] == ["md_600K", "md_1200K"]
    assert "md_start.data" in one.md_script(600.0, 0)
    (tmp_path / "al.toml").write_text(base + "md_data = [1, 2]\n")
    with pytest.raises(InputError, match=r"section \[md\], key 'md_data': a file name or a list"):
        ALConfig.read(tmp_path / "al.toml")
