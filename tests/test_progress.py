"""Progress on stderr (fitsnap_uq.progress): bars on a terminal, plain lines otherwise, nothing with
--no-progress or on MPI ranks other than 0; the solvers' progress hooks change no result."""

from __future__ import annotations

import io
import os
import pty
import subprocess
import sys
import threading

import numpy as np
import pytest
from conftest import ROOT, run_cli, write_cu_input

from fitsnap_uq import progress


class Terminal(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def fresh_settings(monkeypatch):
    for name in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "MV2_COMM_WORLD_RANK", "SLURM_PROCID"):
        monkeypatch.delenv(name, raising=False)
    progress.reset()
    yield
    progress.reset()


def run_bar(stream, n=5, **kwargs):
    progress.configure(stream=stream, **kwargs)
    progress.stage("stage line")
    out = list(progress.bar(range(n), desc="items", unit="things"))
    assert out == list(range(n))  # the bar never changes what it iterates
    with progress.bar(total=3, desc="manual", leave=False) as bar:
        for _ in range(3):
            bar.update(1)
    return stream.getvalue()


def test_a_terminal_gets_bars():
    text = run_bar(Terminal())
    assert "stage line\n" in text
    assert "\r" in text and "items: 100%" in text and "5/5" in text and "things/s" in text


def test_a_file_or_pipe_gets_plain_lines_not_bars():
    text = run_bar(io.StringIO())
    assert "\r" not in text
    lines = text.splitlines()
    assert lines[0] == "stage line" and lines[1].startswith("items: 5/5 things done in ")
    assert len(lines) == 2  # a leave=False bar says nothing at its end (its stage line does)


def test_plain_lines_while_a_long_step_runs(monkeypatch):
    """At most one line per LINE_INTERVAL (30 s) while it runs, none at the last item, one at the end."""
    clock = iter([0.0, 10.0, 40.0, 50.0, 75.0, 80.0, 100.0])
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    stream = io.StringIO()
    progress.configure(stream=stream)
    for _ in progress.bar(range(5), desc="slow"):
        pass
    assert stream.getvalue().splitlines() == ["slow: 2/5 it, 40 s", "slow: 4/5 it, 75 s",
                                              "slow: 5/5 it done in 100.0 s"]


@pytest.mark.parametrize("settings", [{"enabled": False}, {"rank": 1}], ids=["--no-progress", "rank 1"])
def test_nothing_when_off_or_not_rank_zero(settings):
    assert run_bar(Terminal(), **settings) == ""
    assert run_bar(io.StringIO(), **settings) == ""


def test_rank_from_the_mpi_launcher(monkeypatch):
    monkeypatch.setenv("PMI_RANK", "1")
    assert progress.rank() == 1 and not progress.enabled()
    monkeypatch.setenv("PMI_RANK", "0")
    assert progress.enabled()
    progress.configure(rank=3)  # set by the command line from its communicator: wins
    assert not progress.enabled()


def test_mcmc_progress_hook_changes_no_draw():
    from test_mcmc import gaussian_problem

    from fitsnap_uq.linear import mcmc

    target, mean, cov = gaussian_problem()
    kw = dict(nwalkers=16, nsteps=120, burn=20, nchains=2, seed=5)
    steps = []
    a = mcmc.sample(target, mean, np.linalg.cholesky(cov), **kw)
    b = mcmc.sample(target, mean, np.linalg.cholesky(cov), on_step=lambda: steps.append(1), **kw)
    np.testing.assert_array_equal(a.samples, b.samples)
    assert len(steps) == 2 * 120


def cli_on_a_terminal(args, cwd):
    """Run ``python -m fitsnap_uq ARGS`` with stderr on a pseudo-terminal; (returncode, stderr text)."""
    master, slave = pty.openpty()
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "fitsnap_uq", *args], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    chunks = []

    def read():
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:  # EIO: the child closed the terminal
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=read)
    reader.start()
    code = proc.wait(timeout=600)
    reader.join(timeout=30)
    os.close(master)
    return code, b"".join(chunks).decode(errors="replace")


def test_fit_shows_stages_and_a_bar_on_a_terminal(cu_run):
    write_cu_input(cu_run, solver="BAYES")
    code, text = cli_on_a_terminal(["fit", "Cu.in", "--overwrite"], cu_run)
    assert code == 0, text[-3000:]
    for stage in ("fitsnap-uq fit: reading the configurations", "fitsnap-uq fit: descriptors of 8 "
                  "configurations", "fitsnap-uq BAYES: mean fit (evidence), 5-fold cross-validation",
                  "fitsnap-uq BAYES: evidence optimization:", "fitsnap-uq fit: fit (BAYES)"):
        assert stage in text, stage
    # tqdm's bars over the configurations and the folds (erased at their end: leave=False)
    assert "\rdescriptors:   0%|" in text and "0/8 [" in text
    assert "\rBAYES: cross-validation folds:   0%|" in text and "0/5 [" in text


@pytest.mark.parametrize("where", ["before", "after"])
def test_no_progress_silences_the_fit(cu_run, where):
    write_cu_input(cu_run, solver="BAYES")
    args = ["fit", "Cu.in", "--overwrite"]
    args = ["--no-progress", *args] if where == "before" else [*args, "--no-progress"]
    proc = run_cli(args, cwd=cu_run)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "fitsnap-uq fit:" not in proc.stderr and "BAYES:" not in proc.stderr
    assert "descriptors" not in proc.stderr and "\r" not in proc.stderr
    assert "log evidence" in proc.stdout  # results are still printed


@pytest.mark.mpi
def test_only_rank_zero_reports_under_mpirun(cu_run):
    write_cu_input(cu_run, solver="BAYES")
    proc = run_cli(["fit", "Cu.in", "--overwrite"], cwd=cu_run, mpi=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stderr.splitlines()
    assert lines.count("fitsnap-uq fit: reading the configurations") == 1
    assert lines.count("fitsnap-uq fit: descriptors of 8 configurations (rank 0 computes 4 of them; "
                       "2 ranks)") == 1
    assert sum(ln.startswith("fitsnap-uq BAYES: evidence optimization") for ln in lines) == 1
