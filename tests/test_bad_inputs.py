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


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes everywhere: no read-only folder for root")
def test_flag_dir_not_writable(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    proc = run_cli(["md", "in.md", "--posterior", "p.npz", "--flag-dir", "ro/flags"], cwd=tmp_path)
    refused(proc, "--flag-dir ro/flags", "not writable")
