"""Layers (design.md section 1 and 4): the core imports neither FitSNAP, LAMMPS nor MPI and has no import
side effects; the command line's --help loads none of the heavy stacks; imports point one way
(import-linter contracts in pyproject.toml)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_clean(code: str, *args: str) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter (nothing imported yet) with this checkout first on the path."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=300)


def test_core_imports_no_fitsnap_lammps_or_mpi():
    proc = run_clean("""
        import sys, fitsnap_uq.linear, fitsnap_uq.posterior, fitsnap_uq.calibration
        print(sorted(m for m in sys.modules if m.split('.')[0] in ('fitsnap3lib', 'lammps', 'mpi4py')))
    """)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "[]"


def test_import_fitsnap_uq_changes_nothing_in_fitsnap():
    """Without activate(), FitSNAP sees neither our section nor our solvers, and no adapter is applied;
    activate() registers them (and is idempotent)."""
    proc = run_clean("""
        import sys
        import fitsnap_uq, fitsnap_uq.nn, fitsnap_uq.active.query, fitsnap_uq.active.committee
        import fitsnap_uq.compat, fitsnap_uq.fitsnap_plugin, fitsnap_uq.io
        assert not [m for m in sys.modules if m.split('.')[0] in ('fitsnap3lib', 'lammps', 'mpi4py')]
        assert fitsnap_uq.compat.APPLIED == [] and not fitsnap_uq.fitsnap_plugin.is_active()
        assert fitsnap_uq.Posterior is fitsnap_uq.posterior.Posterior and fitsnap_uq.FITSNAP_AVAILABLE
        import mpi4py.MPI
        import fitsnap3lib.io.sections.section_factory
        import fitsnap3lib.solvers.solver_factory
        from fitsnap3lib.io.sections.sections import Section
        from fitsnap3lib.solvers.solver import Solver
        def names():
            return ({c.__name__ for c in Section.__subclasses__()},
                    {c.__name__ for c in Solver.__subclasses__()})
        sections, solvers = names()
        assert "UQ" not in sections and not set(fitsnap_uq.SOLVERS) & solvers, (sections, solvers)
        from fitsnap_uq.fitsnap_plugin import activate
        state = activate()
        assert activate() == state and state["skipped"] == {}, state
        sections, solvers = names()
        assert "UQ" in sections and set(fitsnap_uq.SOLVERS) <= solvers, (sections, solvers)
        print("ok")
    """)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("ok")


HEAVY = ("fitsnap3lib", "lammps", "mpi4py", "torch")


def cli_command() -> list[str]:
    script = Path(sys.executable).parent / "fitsnap-uq"
    return [str(script)] if script.exists() else [sys.executable, "-m", "fitsnap_uq"]


@pytest.mark.parametrize("sub", ["", "fit", "md", "ensemble", "al", "demo", "build-plugin"])
def test_help_loads_no_engine(sub):
    """``fitsnap-uq [COMMAND] --help`` imports none of FitSNAP, LAMMPS, MPI or torch (that is what keeps
    it instant); the modules are read from Python's own import log (-X importtime)."""
    env = dict(os.environ, PYTHONPROFILEIMPORTTIME="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([*cli_command(), *([sub] if sub else []), "--help"], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "usage: fitsnap-uq" in proc.stdout
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines()
                if line.startswith("import time:")}
    assert "fitsnap_uq.cli" in imported
    heavy = sorted(m for m in imported if m.split(".")[0] in HEAVY)
    assert heavy == [], heavy


def lint_imports_command() -> list[str]:
    script = Path(sys.executable).parent / "lint-imports"
    if script.exists():
        return [str(script)]
    found = shutil.which("lint-imports")
    return [found] if found else [sys.executable, "-c", "from importlinter.cli import lint_imports_command; "
                                  "lint_imports_command()"]


def test_imports_point_one_way():
    """The import-linter contracts of pyproject.toml: the core imports no FitSNAP/LAMMPS/MPI, layers
    (orchestration -> LAMMPS side -> FitSNAP adapters -> core) and no cycles among a package's modules."""
    pytest.importorskip("importlinter", reason="import-linter is in the test extra: pip install -e '.[test]'")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([*lint_imports_command(), "--config", "pyproject.toml", "--no-cache", "--no-logo"],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout
