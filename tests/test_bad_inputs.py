"""Bad inputs a newcomer meets: one clear line naming the file, section and key (or the option), exit
status 2, no traceback, and checked before the expensive work."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
from conftest import run_cli, write_cu_input

from fitsnap_uq.errors import InputError
from fitsnap_uq.posterior import Posterior


def refused(proc, *words: str) -> None:
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    for word in words:
        assert word in proc.stderr, proc.stderr[-2000:]


def test_more_folds_than_configurations_is_refused(cu_run):
    write_cu_input(cu_run, solver="BAYES", extra="[UQ]\ncv_folds = 10000\n")
    proc = run_cli(["fit", "Cu.in", "--overwrite"], cwd=cu_run)
    refused(proc, "Cu.in", "[UQ]", "cv_folds", "10000 folds")
    assert "'process_configs' took" not in proc.stdout  # no hang: refused before any work


def test_uq_section_with_a_solver_that_ignores_it(cu_run):
    write_cu_input(cu_run, solver="SVD", extra="[UQ]\nnsamples = 3\n")
    proc = run_cli(["fit", "Cu.in", "--overwrite"], cwd=cu_run)
    refused(proc, "Cu.in", "[SOLVER]", "solver", "[UQ] section has no effect with solver SVD")
    assert "'process_configs' took" not in proc.stdout  # refused before any descriptor


def test_empty_group_folder(cu_run):
    empty = cu_run / "JSON" / "Bulk"
    shutil.rmtree(empty)
    empty.mkdir()
    write_cu_input(cu_run, solver="BAYES")
    proc = run_cli(["fit", "Cu.in", "--overwrite"], cwd=cu_run)
    refused(proc, "Cu.in", "[GROUPS]", "Bulk", "holds no configuration")


def test_truncated_posterior_file(tmp_path):
    post = Posterior(np.zeros(3), np.eye(3), ["Ta"], {"twojmax": 2, "bzeroflag": 0})
    path = post.save(tmp_path / "p.posterior.npz")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="not a fitsnap-uq posterior file"):
        Posterior.load(path)
    proc = run_cli(["md", "in.md", "--posterior", str(path)], cwd=tmp_path)
    refused(proc, str(path), "not a fitsnap-uq posterior file")


@pytest.mark.parametrize("args, option", [
    (["--every", "0"], "--every"), (["--every", "-5"], "--every"), (["--every", "x"], "--every"),
    (["--max-flags", "-1"], "--max-flags"),
])
def test_md_options_out_of_range(tmp_path, args, option):
    proc = run_cli(["md", "in.md", "--posterior", "p.npz", *args], cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"argument {option}" in proc.stderr


def test_ensemble_options_out_of_range(tmp_path):
    for args, option in ((["--every", "0"], "--every"), (["--samples", "0"], "--samples")):
        proc = run_cli(["ensemble", "in.npt", "--posterior", "p.npz", *args], cwd=tmp_path)
        assert proc.returncode == 2 and f"argument {option}" in proc.stderr


def test_flag_dir_that_is_a_file(tmp_path):
    (tmp_path / "flags").write_text("not a folder")
    proc = run_cli(["md", "in.md", "--posterior", "p.npz", "--flag-dir", "flags"], cwd=tmp_path)
    refused(proc, "--flag-dir flags is a file")



def _edit_configuration(path, edit) -> None:
    """Apply ``edit`` to the configuration dict of a FitSNAP JSON file (which may start with a comment
    line) and write it back."""
    import json

    text = path.read_text()
    head, body = ("", text) if text.lstrip().startswith("{") else text.split("\n", 1)
    record = json.loads(body)
    edit(record["Dataset"]["Data"][0])
    path.write_text((head + "\n" if head else "") + json.dumps(record))


def _without_key(path, key: str) -> None:
    """Remove ``key`` from the configuration in a FitSNAP JSON file."""
    _edit_configuration(path, lambda data: data.pop(key))


def test_json_without_forces(cu_run):
    victim = sorted((cu_run / "JSON").rglob("*.json"))[0]
    _without_key(victim, "Forces")
    write_cu_input(cu_run, solver="BAYES")
    proc = run_cli(["fit", "Cu.in", "--overwrite"], cwd=cu_run)
    refused(proc, "Cu.in", "[PATH]", "dataPath", victim.name, "no 'Forces'", "[CALCULATOR] force = 0")
    assert "'process_configs' took" not in proc.stdout


def test_json_forces_of_the_wrong_shape(cu_run):
    victim = sorted((cu_run / "JSON").rglob("*.json"))[0]
    _edit_configuration(victim, lambda data: data.update(Forces=data["Forces"][:-1]))
    write_cu_input(cu_run, solver="BAYES")
    proc = run_cli(["fit", "Cu.in", "--overwrite"], cwd=cu_run)
    refused(proc, victim.name, "'Forces' has shape")


def test_json_without_forces_is_fine_for_an_energy_only_fit(cu_run):
    from fitsnap_uq.fitting import validate_input

    victim = sorted((cu_run / "JSON").rglob("*.json"))[0]
    _without_key(victim, "Forces")
    path = write_cu_input(cu_run, solver="BAYES")
    path.write_text(path.read_text().replace("force = 1", "force = 0"))
    validate_input(str(path))  # no error: forces are not fitted


@pytest.fixture
def read_only_folder(tmp_path):
    """A folder nobody, root included, can create files in (``chattr +i`` as root, mode 0500 else)."""
    import subprocess

    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() == 0:
        if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(folder)]).returncode:
            pytest.skip("running as root without chattr +i: no read-only folder can be made here")
        yield folder
        subprocess.run(["chattr", "-i", str(folder)], check=True)
    else:
        folder.chmod(0o500)
        yield folder
        folder.chmod(0o700)


def test_fit_into_a_read_only_folder(cu_run, read_only_folder):
    rel = os.path.relpath(read_only_folder, cu_run)
    path = write_cu_input(cu_run, solver="BAYES")
    path.write_text(path.read_text().replace("potential = Cu_pot", f"potential = {rel}/Cu_pot"))
    proc = run_cli(["fit", "Cu.in", "--overwrite"], cwd=cu_run)
    refused(proc, "Cu.in", "[OUTFILE]", "potential", "not writable")
    assert "'process_configs' took" not in proc.stdout  # refused before any descriptor


def test_metrics_path_that_is_a_folder(cu_run):
    (cu_run / "Cu_metrics.md").mkdir()
    write_cu_input(cu_run, solver="BAYES")
    proc = run_cli(["fit", "Cu.in", "--overwrite"], cwd=cu_run)
    refused(proc, "Cu.in", "[OUTFILE]", "metrics", "is a folder")


def test_posterior_path_in_a_read_only_folder(cu_run, read_only_folder):
    write_cu_input(cu_run, solver="BAYES", extra=f"[UQ]\nposterior = {read_only_folder}/p.posterior.npz\n")
    proc = run_cli(["fit", "Cu.in", "--overwrite"], cwd=cu_run)
    refused(proc, "Cu.in", "[UQ]", "posterior", "not writable")


def test_flag_dir_in_a_read_only_folder(tmp_path, read_only_folder):
    proc = run_cli(["md", "in.md", "--posterior", "p.npz", "--flag-dir", "ro/flags"], cwd=tmp_path)
    refused(proc, "--flag-dir ro/flags", "not writable")


def test_gross_outlier_is_named_in_log_and_report(cu_run):
    """Forces given in the wrong unit (x50) in one configuration: fitted, but named."""
    victim = cu_run / "JSON" / "Strained" / "Strained_1.json"
    _edit_configuration(victim, lambda data: data.update(Forces=(50 * np.asarray(data["Forces"])).tolist()))
    write_cu_input(cu_run, solver="BAYES")
    proc = run_cli(["fit", "Cu.in", "--overwrite"], cwd=cu_run)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [ln for ln in proc.stdout.splitlines() if "gross outlier" in ln]
    assert len(lines) == 1 and "Strained_1.json" in lines[0] and "Force" in lines[0], proc.stdout[-3000:]
    report = (cu_run / "Cu_metrics.uq.md").read_text()
    assert "Gross outliers" in report and "Strained_1.json" in report


def test_clean_fit_names_no_outlier(cu_run):
    write_cu_input(cu_run, solver="BAYES")
    proc = run_cli(["fit", "Cu.in", "--overwrite"], cwd=cu_run)
    assert proc.returncode == 0 and "gross outlier" not in proc.stdout
    assert "Gross outliers" not in (cu_run / "Cu_metrics.uq.md").read_text()


def test_energy_of_a_larger_cell_on_a_one_atom_configuration_is_named(cu_run):
    """The issue's example: a configuration holding 1 atom with the energy of the cell it was cut from."""
    victim = cu_run / "JSON" / "Bulk" / "Bulk_1.json"

    def one_atom(data: dict) -> None:
        for key in ("Positions", "Forces", "AtomTypes"):
            data[key] = data[key][:1]
        data["NumAtoms"] = 1

    _edit_configuration(victim, one_atom)
    write_cu_input(cu_run, solver="BAYES")
    proc = run_cli(["fit", "Cu.in", "--overwrite"], cwd=cu_run)
    assert proc.returncode == 0, proc.stderr[-2000:]
    named = [ln for ln in proc.stdout.splitlines() if "gross outlier" in ln]
    assert named and all("Bulk_1.json" in ln for ln in named), proc.stdout[-3000:]
    assert "Bulk_1.json" in (cu_run / "Cu_metrics.uq.md").read_text()



@pytest.mark.parametrize("values, words", [
    ({"scale_weights": "groups"}, ["'groups' is not one of: rows, group"]),
    ({"scale_weights": "group", "atom_scale": "no"}, ["needs predictive = model_error"]),
    ({"scale_weights": "group", "predictive": "noise_classes"}, ["needs predictive = model_error"]),
])
def test_scale_weights_value_or_combination_refused(values, words):
    """Checked when the [UQ] section is parsed (the command line then exits 2 with this one line, as
    the other [UQ] keys above)."""
    from fitsnap_uq.options import parse_uq

    with pytest.raises(InputError) as err:
        parse_uq(values, file="Cu.in")
    for word in ["Cu.in", "[UQ]", "scale_weights", *words]:
        assert word in str(err.value), str(err.value)
