"""Clear errors for a user's mistakes: each names the file, the section and the key."""

from __future__ import annotations

import shutil

import pytest
from conftest import run_cli, write_cu_input

from fitsnap_uq.errors import InputError
from fitsnap_uq.fitting import validate_input
from fitsnap_uq.options import parse_uq


def test_missing_input_file(tmp_path):
    proc = run_cli(["fit", "nothere.in"], cwd=tmp_path)
    assert proc.returncode == 2
    assert "nothere.in" in proc.stderr and "input file not found" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_unknown_solver_lists_available_ones(cu_run):
    write_cu_input(cu_run, solver="BAYESIAN")
    proc = run_cli(["fit", "Cu.in"], cwd=cu_run)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    msg = proc.stderr
    assert "Cu.in" in msg and "[SOLVER]" in msg and "'solver'" in msg and "'BAYESIAN'" in msg
    for name in ("BAYES", "SVD", "ANL"):
        assert name in msg.split("available solvers:")[1]


def test_unknown_uq_key(cu_run):
    write_cu_input(cu_run, solver="BAYES", extra="[UQ]\nnoise_class = group\n")
    proc = run_cli(["fit", "Cu.in"], cwd=cu_run)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "Cu.in" in proc.stderr and "[UQ]" in proc.stderr and "'noise_class'" in proc.stderr
    assert "noise_classes" in proc.stderr  # the accepted keys are listed


def test_bad_uq_value(cu_run):
    path = write_cu_input(cu_run, solver="BAYES", extra="[UQ]\nprior = gaussian\n")
    with pytest.raises(InputError) as err:
        validate_input(str(path))
    assert err.value.section == "UQ" and err.value.key == "prior" and "isotropic" in str(err.value)


def test_uq_section_itself_rejects_unknown_key():
    with pytest.raises(InputError, match=r"section \[UQ\], key 'colour'"):
        parse_uq({"colour": "blue"}, file="x.in")


def test_missing_data_directory(cu_run):
    write_cu_input(cu_run)
    shutil.rmtree(cu_run / "JSON")
    proc = run_cli(["fit", "Cu.in"], cwd=cu_run)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "Cu.in" in proc.stderr and "[PATH]" in proc.stderr and "'dataPath'" in proc.stderr


def test_missing_group_folder(cu_run):
    write_cu_input(cu_run)
    shutil.rmtree(cu_run / "JSON" / "Strained")
    proc = run_cli(["fit", "Cu.in"], cwd=cu_run)
    assert proc.returncode == 2
    assert "[GROUPS]" in proc.stderr and "'Strained'" in proc.stderr


def test_unknown_section(cu_run):
    write_cu_input(cu_run, extra="[UQX]\nprior = ard\n")
    proc = run_cli(["fit", "Cu.in"], cwd=cu_run)
    assert proc.returncode == 2 and "[UQX]" in proc.stderr and "unknown section" in proc.stderr


def test_existing_posterior_needs_overwrite(cu_run):
    write_cu_input(cu_run, solver="BAYES", extra="[UQ]\nposterior = mine.npz\n")
    (cu_run / "mine.npz").write_text("precious")
    proc = run_cli(["fit", "Cu.in"], cwd=cu_run)
    assert proc.returncode == 2 and "--overwrite" in proc.stderr and "'posterior'" in proc.stderr
    assert (cu_run / "mine.npz").read_text() == "precious"


def test_per_element_keys_need_one_value_per_type(cu_run):
    path = write_cu_input(cu_run)
    path.write_text(path.read_text().replace("numTypes = 1", "numTypes = 2"))
    with pytest.raises(InputError) as err:
        validate_input(str(path))
    assert err.value.section == "BISPECTRUM" and err.value.key in ("twojmax", "radelem", "wj", "type")


@pytest.mark.parametrize("key, bad", [("rcutfac", "-4.7"), ("rcutfac", "abc"), ("radelem", "0")])
def test_cutoff_and_radius_must_be_positive(cu_run, key, bad):
    # FitSNAP fits a negative cutoff without a word: every descriptor is zero
    path = write_cu_input(cu_run)
    lines = [f"{key} = {bad}" if line.split("=")[0].strip() == key else line
             for line in path.read_text().splitlines()]
    assert any(line == f"{key} = {bad}" for line in lines)
    path.write_text("\n".join(lines) + "\n")
    proc = run_cli(["fit", "Cu.in"], cwd=cu_run)
    assert proc.returncode == 2
    assert "[BISPECTRUM]" in proc.stderr and f"'{key}'" in proc.stderr and "positive" in proc.stderr
