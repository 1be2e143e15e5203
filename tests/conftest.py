"""Shared fixtures: the Ta data of ../shared (skipped when absent) and a small EMT copper data set
that the tests make themselves, so that a machine without ../shared still runs the FitSNAP tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
# The MD hook uses a fitsnap-uq LAMMPS plugin it finds built (lammps_hooks.native.default_outdir):
# point that at an empty folder, so hook tests run on LAMMPS' own computes whatever this machine has
# built; the tests of the plugin's descriptors load the plugin they build themselves.
os.environ["FITSNAP_UQ_PLUGIN_DIR"] = tempfile.mkdtemp(prefix="fitsnap-uq-no-plugin-")
SHARED_TA = ROOT.parent / "shared" / "data" / "Ta_Linear_JCP2014"
NEEDS_TA = pytest.mark.skipif(not SHARED_TA.is_dir(),
                              reason=f"Ta DFT data not found at {SHARED_TA} (../shared/data is "
                                     "not beside this checkout)")

# A small copper MD driven by Lennard-Jones: for hooks whose model is not the pair style.
CU_LJ_MD = """
units metal
lattice fcc 3.61
region b block 0 2 0 2 0 2
create_box 1 b
create_atoms 1 box
mass * 63.5
displace_atoms all random 0.05 0.05 0.05 4321
pair_style lj/cut 5.0
pair_coeff * * 0.4 2.3
velocity all create 600 87287 loop geom
fix nve all nve
"""

CU_INPUT = """\
[BISPECTRUM]
numTypes = 1
twojmax = 4
rcutfac = 4.0
rfac0 = 0.99363
rmin0 = 0.0
wj = 1.0
radelem = 0.5
type = Cu
wselfallflag = 0
chemflag = 0
bzeroflag = 0
quadraticflag = 0

[CALCULATOR]
calculator = LAMMPSSNAP
energy = 1
force = 1
stress = 1

[ESHIFT]
Cu = 0.0

[SOLVER]
solver = {solver}

[SCRAPER]
scraper = JSON

[PATH]
dataPath = JSON

[OUTFILE]
metrics = Cu_metrics.md
potential = Cu_pot

[REFERENCE]
units = metal
atom_style = atomic
pair_style = zero 10.0
pair_coeff = * *

[GROUPS]
group_sections = name training_size testing_size eweight fweight vweight
group_types = str float float float float float
smartweights = 0
random_sampling = 0
Bulk     = 1.0 0.0 100 1 1e-6
Strained = 1.0 0.0 100 1 1e-6
{extra}
"""


def make_cu_dataset(folder: Path, n_per_group: int = 4, seed: int = 0) -> Path:
    """Rattled and strained fcc Cu cells labelled with ASE's EMT, as FitSNAP JSON groups."""
    from ase.build import bulk
    from ase.calculators.emt import EMT

    from fitsnap_uq.fitsnap_json import atoms_record, write_record

    rng = np.random.default_rng(seed)
    for group in ("Bulk", "Strained"):
        for i in range(n_per_group):
            atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 2))
            if group == "Strained":
                strain = np.eye(3) + rng.normal(scale=0.02, size=(3, 3))
                atoms.set_cell(np.asarray(atoms.cell) @ (0.5 * (strain + strain.T)), scale_atoms=True)
            atoms.rattle(stdev=0.05, seed=int(rng.integers(1 << 30)))
            atoms.calc = EMT()
            write_record(atoms_record(atoms), folder / "JSON" / group / f"{group}_{i}.json")
    return folder


def make_cuag_dataset(folder: Path, n: int = 4, seed: int = 1) -> Path:
    """Rattled fcc Cu-Ag cells (EMT) in one group ``Alloy``, for two-element fits."""
    from ase.build import bulk
    from ase.calculators.emt import EMT

    from fitsnap_uq.fitsnap_json import atoms_record, write_record

    rng = np.random.default_rng(seed)
    for i in range(n):
        atoms = bulk("Cu", "fcc", a=3.75, cubic=True).repeat((2, 2, 2))
        symbols = np.array(atoms.get_chemical_symbols())
        symbols[rng.permutation(len(atoms))[: len(atoms) // 2]] = "Ag"
        atoms.set_chemical_symbols(symbols.tolist())
        atoms.rattle(stdev=0.05, seed=int(rng.integers(1 << 30)))
        atoms.calc = EMT()
        write_record(atoms_record(atoms), folder / "JSON" / "Alloy" / f"Alloy_{i}.json")
    return folder


@pytest.fixture(scope="session")
def cu_data(tmp_path_factory) -> Path:
    """A folder with JSON/Bulk and JSON/Strained (4 EMT Cu configurations of 32 atoms each)."""
    return make_cu_dataset(tmp_path_factory.mktemp("cu_data"))


def write_cu_input(folder: Path, solver: str = "SVD", extra: str = "", name: str = "Cu.in") -> Path:
    """Write a FitSNAP input for the Cu data into ``folder`` (which must hold JSON/)."""
    path = folder / name
    path.write_text(CU_INPUT.format(solver=solver, extra=extra))
    return path


@pytest.fixture
def cu_run(cu_data, tmp_path) -> Path:
    """A scratch copy of the Cu data set to run fits in."""
    shutil.copytree(cu_data / "JSON", tmp_path / "JSON")
    return tmp_path


@pytest.fixture
def ta_run(tmp_path) -> Path:
    """A scratch copy of ../shared/data/Ta_Linear_JCP2014 (tests using it carry NEEDS_TA)."""
    dest = tmp_path / "Ta"
    shutil.copytree(SHARED_TA, dest)
    for p in [dest, *dest.rglob("*")]:
        p.chmod(p.stat().st_mode | 0o200)
    return dest


def read_snapcoeff(path: Path) -> np.ndarray:
    """Coefficients of a .snapcoeff file (all element blocks, in order)."""
    lines = [ln.split("#")[0].split() for ln in Path(path).read_text().splitlines()]
    lines = [ln for ln in lines if ln]
    nelem, ncoeff = int(lines[0][0]), int(lines[0][1])
    out, i = [], 1
    for _ in range(nelem):
        i += 1  # element line
        out.extend(float(x[0]) for x in lines[i:i + ncoeff])
        i += ncoeff
    return np.array(out)


def run_cli(args: list[str], cwd: Path, mpi: int = 0, timeout: int = 600,
            extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m fitsnap_uq ARGS`` (under ``mpirun -np MPI`` if mpi > 0) in ``cwd``."""
    cmd = [sys.executable, "-m", "fitsnap_uq", *args]
    if mpi:
        mpirun = Path(sys.executable).parent / "mpirun"
        cmd = [str(mpirun) if mpirun.exists() else "mpirun", "-np", str(mpi), *cmd]
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    env.update(extra_env or {})
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def assert_al_refuses(folder: Path, config: str, section: str, key: str) -> None:
    """``fitsnap-uq al CONFIG`` in ``folder`` exits with status 2 and one line of stderr naming the
    config file, its ``[section]`` and ``key``."""
    proc = run_cli(["al", config, "--no-progress"], cwd=folder)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr[-2000:]
    assert config in proc.stderr and f"[{section}]" in proc.stderr and f"'{key}'" in proc.stderr


HAS_CXX = shutil.which(os.environ.get("CXX") or "c++") is not None or shutil.which("g++") is not None


@pytest.fixture(scope="session")
def built_plugin(tmp_path_factory) -> Path:
    """The fitsnap-uq LAMMPS plugin (fix snap/uq, compute snap/uq/atom), built once per session."""
    if not HAS_CXX:
        pytest.skip("no C++ compiler to build the fitsnap-uq LAMMPS plugin")
    from lammps_hooks.native import build_plugin

    return build_plugin(tmp_path_factory.mktemp("plugin"))


def predicted_on(lmp, post, noise: bool = False) -> tuple[np.ndarray, np.ndarray, float]:
    """Per-atom energy and force sigma (atom-id order; eV, eV/A) and the total-energy sigma (eV) of the
    configuration in ``lmp`` (box, atoms and snap pair style defined), from ``Posterior.predict`` on its
    descriptor rows (LAMMPS' sna/atom and snad/atom, serial), each force row labelled with its atom and
    element (the per-atom force scale, if the posterior has one); the total energy's sigma is ``N`` times
    that of the configuration's per-atom energy row, given its ``N`` atoms (the per-configuration
    energy scale, if the posterior has one). With ``noise``, the Energy and Force floors are included
    and the sigma is ``predict_raw``'s (the Gaussian sigma the hook and the plugin give; ``predict``
    would also apply the stored recalibration). With ``pair_style snap`` alone, checks first that the
    rows reproduce its per-atom energies and forces, so the rows' layout is LAMMPS' (in
    ``hybrid/overlay`` the hook's check of the snap energy is what there is). Closes ``lmp``."""
    from lammps_hooks.snap_uq import SnapUQHook
    from lammps_hooks.uq_math import energy_rows, force_rows

    lmp.command("compute predicted_pe all pe/atom")
    hook = SnapUQHook(lmp, post, every=1, descriptors="lammps").attach()
    lmp.command("run 0")
    n = lmp.get_natoms()
    b, d = (np.array(a) for a in hook.descriptor_arrays(n))
    types = np.array(lmp.numpy.extract_atom("type"))[:n]
    ids = np.array(lmp.numpy.extract_atom("id"))[:n]
    f = np.array(lmp.numpy.extract_atom("f"))[:n]
    pe = np.array(lmp.numpy.extract_compute("predicted_pe", 1, 1))[:n]
    snap_alone = lmp.extract_global("pair_style") == "snap"
    lmp.close()
    nelem = len(post.elements)
    elem = hook.type_to_element[types - 1]
    x = energy_rows(b, elem, nelem, post.block_size)
    fr = force_rows(d, hook.type_to_element, nelem, post.block_size)
    if snap_alone:
        np.testing.assert_allclose(x @ post.mean, pe, rtol=1e-10)
        np.testing.assert_allclose(fr @ post.mean, f, rtol=0, atol=1e-10 * np.abs(f).max())
    labels = {"atom": np.repeat(np.arange(n), 3), "element": np.repeat(elem, 3)}
    # the configuration's energy row per atom, with its number of atoms (the per-configuration
    # energy scale, if the posterior has one); the total energy's sigma is N times its sigma
    config = {"natoms": np.array([n])}
    if noise:
        _, estd = post.predict_raw(x, "Energy")
        _, fcomp = post.predict_raw(fr.reshape(-1, post.n_coefficients), "Force", **labels)
        pe_std = n * post.predict_raw(x.mean(axis=0)[None, :], "Energy", **config)[1]
    else:
        _, estd = post.predict(x)
        _, fcomp = post.predict(fr.reshape(-1, post.n_coefficients), **labels)
        pe_std = n * post.predict(x.mean(axis=0)[None, :], **config)[1]
    fstd = np.sqrt(np.sum(fcomp.reshape(n, 3) ** 2, axis=1))
    order = np.argsort(ids)
    assert np.all(fstd > 1e-6) and np.ptp(fstd) > 0  # off the lattice: not round-off
    return estd[order], fstd[order], float(pe_std[0])
