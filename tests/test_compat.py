"""Each FitSNAP 3.1.0.4 adapter: the upstream incompatibility is real (checked in a clean
interpreter without fitsnap_uq), with ``activate()`` the FitSNAP call works, and each adapter's guard
skips it, with its reason, when what it patches is not there."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from fitsnap_uq import compat
from fitsnap_uq.fitsnap_plugin import activate

activate()  # applies the adapters


def run_clean(code: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter that has not imported fitsnap_uq."""
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, env=env, timeout=120)


def new_lammps():
    import lammps

    lmp = lammps.lammps(cmdargs=["-screen", "none", "-log", "none"])
    lmp.commands_string("""
        units metal
        region box block 0 4 0 4 0 4
        create_box 1 box
        mass 1 1.0
    """)
    return lmp


def test_apply_is_idempotent():
    before = list(compat.APPLIED)
    assert compat.apply() == before
    assert len(set(before)) == len(before)
    assert {"mpi_library", "create_atoms_keywords", "numpy_extract_atom", "bool_flags_as_int",
            "shuffle_random_argument", "lr_scheduler_verbose", "scalar_energy_accumulator",
            "default_sections", "input_paths", "nnensemble_pytorch_section",
            "nnensemble_descriptor_arrays"} <= set(before)
    assert compat.SKIPPED == {}  # every guard passes with FitSNAP 3.1.0.4 and LAMMPS 2025
    assert compat.fitsnap_version() == compat.FITSNAP_VERSION
    assert activate() == {"applied": before, "skipped": {}}


def test_a_failed_guard_skips_the_adapter_with_its_reason(monkeypatch):
    monkeypatch.setattr(compat, "SKIPPED", {})
    calls = []

    @compat._once("probe_adapter", lambda: "what it patches is gone")
    def probe() -> bool:
        calls.append(1)
        return True

    probe()
    probe()
    assert calls == [] and "probe_adapter" not in compat.APPLIED
    assert compat.SKIPPED == {"probe_adapter": "what it patches is gone"}


def _sabotage(monkeypatch, name):
    """Make what adapter ``name`` patches look unlike FitSNAP 3.1.0.4 / LAMMPS 2025 / torch 2.x."""
    import lammps
    import torch.optim.lr_scheduler as sched
    from fitsnap3lib.calculators.calculator import Calculator
    from fitsnap3lib.io.input import Config
    from fitsnap3lib.io.sections.sections import Section
    from fitsnap3lib.io.sections.solver_sections import pytorch as pytorch_section
    from fitsnap3lib.lib.neural_networks.pytorch import FitTorch
    from lammps.numpy_wrapper import numpy_wrapper

    if name == "mpi_library":
        monkeypatch.setattr(compat.importlib.util, "find_spec", lambda n, *a: None)
    elif name == "create_atoms_keywords":
        monkeypatch.setattr(lammps.lammps, "create_atoms", lambda self, n, id, type, x: None)
    elif name == "numpy_extract_atom":
        monkeypatch.delattr(numpy_wrapper, "extract_atom")
    elif name == "bool_flags_as_int":
        monkeypatch.setattr(Section, "get_value", lambda self, section, key: None)
    elif name == "shuffle_random_argument":
        for mod in compat.SHUFFLING_SCRAPERS:
            monkeypatch.setattr(sys.modules[mod], "shuffle", None)
    elif name == "lr_scheduler_verbose":
        monkeypatch.setattr(sched, "ReduceLROnPlateau",
                            type("ReduceLROnPlateau", (), {"__init__": lambda self, params: None}))
    elif name == "scalar_energy_accumulator":
        monkeypatch.setattr(FitTorch, "forward", lambda self, x: None)
    elif name == "default_sections":
        monkeypatch.delattr(Config, "set_sections")
    elif name == "input_paths":
        monkeypatch.delattr(Section, "_set_infile_directory")
    elif name == "nnensemble_pytorch_section":
        monkeypatch.setattr(pytorch_section.PYTORCH, "_check_if_used", lambda self, from_sec: None)
    elif name == "nnensemble_descriptor_arrays":
        monkeypatch.delattr(Calculator, "create_a")
    else:
        raise AssertionError(f"no sabotage for {name}")


ALL_ADAPTERS = compat.ADAPTERS + compat.NNENSEMBLE_ADAPTERS


@pytest.mark.parametrize("adapter", ALL_ADAPTERS, ids=[a.adapter_name for a in ALL_ADAPTERS])
def test_each_adapter_has_a_guard(adapter, monkeypatch):
    assert adapter.guard is not None
    assert adapter.guard() is None  # passes here (the adapter is in effect)
    _sabotage(monkeypatch, adapter.adapter_name)
    reason = adapter.guard()
    assert isinstance(reason, str) and reason, adapter.adapter_name


def test_activation_survives_failed_guards():
    """A FitSNAP/LAMMPS that differs from the one the adapters were written for: activate() skips the
    adapters that do not fit, names them with their reasons, and does not raise."""
    proc = run_clean("""
        import mpi4py.MPI, lammps
        from lammps.numpy_wrapper import numpy_wrapper
        lammps.lammps.create_atoms = lambda self, n, id, type, x: None  # the 2023 signature
        del numpy_wrapper.extract_atom
        from fitsnap3lib.calculators.calculator import Calculator
        del Calculator.create_a
        from fitsnap_uq.fitsnap_plugin import activate
        state = activate()
        print(sorted(state["skipped"]))
        print(state["skipped"]["create_atoms_keywords"])
        print(state["skipped"]["nnensemble_descriptor_arrays"])
        assert "nnensemble_pytorch_section" in state["applied"], state
    """, {"PYTHONPATH": os.pathsep.join(sys.path)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()[-3:]
    assert lines[0] == "['create_atoms_keywords', 'nnensemble_descriptor_arrays', 'numpy_extract_atom']"
    assert lines[1] == "lammps.create_atoms takes (self, n, id, type, x), not atomid=/atype= (LAMMPS 2025)"
    assert "Calculator.create_a does not exist" in lines[2]


def test_pytorch_section_is_read_for_nnensemble():
    from fitsnap3lib.io.sections.solver_sections.pytorch import PYTORCH

    def probe(solver):
        import configparser

        cfg = configparser.ConfigParser()
        cfg.read_dict({"SOLVER": {"solver": solver}})
        sec = PYTORCH.__new__(PYTORCH)
        sec._args, sec.name, sec._config = None, "PYTORCH", cfg
        return sec

    assert probe("NNENSEMBLE")._check_if_used("SOLVER", "solver", "SVD") is None
    assert probe("PYTORCH")._check_if_used("SOLVER", "solver", "SVD") is None
    with pytest.raises(UserWarning, match="PYTORCH solver section is in input"):
        probe("SVD")._check_if_used("SOLVER", "solver", "SVD")


def test_descriptor_arrays_allocated_as_pytorch_for_nnensemble():
    from types import SimpleNamespace

    from fitsnap3lib.calculators.calculator import Calculator

    class Stop(Exception):
        pass

    seen = []

    def calculator(solver):
        solver_section = SimpleNamespace(solver=solver)

        def sub_barrier():
            seen.append(solver_section.solver)  # the name FitSNAP's create_a sees
            raise Stop

        return SimpleNamespace(pt=SimpleNamespace(sub_barrier=sub_barrier),
                               config=SimpleNamespace(sections={"SOLVER": solver_section}))

    for name in ("NNENSEMBLE", "BAYES"):
        calc = calculator(name)
        with pytest.raises(Stop):
            Calculator.create_a(calc)
        assert calc.config.sections["SOLVER"].solver == name  # restored
    assert seen == ["PYTORCH", "BAYES"]


def test_import_lammps_needs_mpi_library_first():
    plain = run_clean("import lammps; lammps.lammps(cmdargs=['-screen','none','-log','none'])")
    assert plain.returncode != 0 and "libmpi" in plain.stderr
    ours = run_clean("from fitsnap_uq.fitsnap_plugin import activate; activate(); import lammps; "
                     "l = lammps.lammps(cmdargs=['-screen','none','-log','none']); print(l.version())")
    assert ours.returncode == 0, ours.stderr
    assert int(ours.stdout.split()[-1]) >= 20250722


def test_create_atoms_accepts_fitsnap_keywords():
    plain = run_clean("""
        import mpi4py.MPI, lammps, ctypes
        l = lammps.lammps(cmdargs=['-screen','none','-log','none'])
        l.commands_string('region b block 0 4 0 4 0 4\\ncreate_box 1 b')
        l.create_atoms(n=1, id=None, type=(ctypes.c_int*1)(1), x=(ctypes.c_double*3)(1,1,1))
    """)
    assert plain.returncode != 0 and "unexpected keyword argument 'id'" in plain.stderr
    lmp = new_lammps()
    lmp.create_atoms(n=2, id=None, type=(2 * ctypes.c_int)(1, 1),
                     x=(6 * ctypes.c_double)(1, 1, 1, 2, 2, 2), v=None, image=None, shrinkexceed=False)
    assert lmp.get_natoms() == 2
    lmp.close()


def test_numpy_extract_atom_arrays():
    plain = run_clean("import mpi4py.MPI; from lammps.numpy_wrapper import numpy_wrapper; "
                      "assert not hasattr(numpy_wrapper, 'extract_atom_iarray')")
    assert plain.returncode == 0, plain.stderr
    lmp = new_lammps()
    lmp.command("create_atoms 1 single 1 1 1")
    lmp.command("create_atoms 1 single 2 2 3")
    ids = lmp.numpy.extract_atom_iarray("id", 2).ravel()
    x = lmp.numpy.extract_atom_darray(name="x", nelem=2, dim=3)
    assert ids.tolist() == [1, 2]
    np.testing.assert_allclose(x, [[1, 1, 1], [2, 2, 3]])
    lmp.close()


def test_bool_flags_are_integers_for_compute_snap():
    plain = run_clean("""
        from distutils.util import strtobool
        print(repr(strtobool('0')))
    """)
    assert plain.returncode == 0 and plain.stdout.strip() == "False"  # setuptools' distutils
    from fitsnap3lib.io.sections.sections import Section

    probe = Section.__new__(Section)
    probe._args, probe.name = None, "BISPECTRUM"
    probe._config = {}
    for text, expected in (("0", 0), ("1", 1), ("True", 1), ("false", 0)):
        value = probe.get_value("BISPECTRUM", "bzeroflag", text, "bool")
        assert value == expected and type(value) is int and f"bzeroflag {value}" == f"bzeroflag {expected}"


def test_shuffle_with_random_argument_matches_python310():
    plain = run_clean("import random; random.shuffle([1, 2, 3], random.random)")
    assert plain.returncode != 0 and "TypeError" in plain.stderr
    from fitsnap3lib.scrapers import scrape

    assert scrape.shuffle is compat.shuffle_with_random
    values = iter([0.9, 0.1, 0.5, 0.0])
    items = list("abcde")
    scrape.shuffle(items, lambda: next(values))
    # Python <= 3.10: for i = 4..1, j = int(random() * (i + 1)); swap x[i], x[j].
    assert items == ["c", "d", "b", "a", "e"]


def test_reduce_lr_on_plateau_accepts_verbose():
    torch = pytest.importorskip("torch")
    plain = run_clean("""
        import torch
        opt = torch.optim.Adam([torch.zeros(1, requires_grad=True)])
        torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode='min', verbose=True)
    """)
    assert plain.returncode != 0 and "verbose" in plain.stderr
    opt = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=0.5, patience=0,
                                                       verbose=True, threshold=1e-4,
                                                       threshold_mode="abs")
    sched.step(1.0)
    sched.step(2.0)
    assert opt.param_groups[0]["lr"] == 0.5


def test_network_forward_with_one_configuration():
    torch = pytest.importorskip("torch")
    from fitsnap3lib.lib.neural_networks.pytorch import FitTorch

    net = FitTorch.__new__(FitTorch)
    torch.nn.Module.__init__(net)
    net.multi_element_option, net.energy_bool, net.force_bool = 1, True, False
    net.network_architecture0 = torch.nn.Linear(3, 1, dtype=torch.float64)
    x = torch.ones((4, 3), dtype=torch.float64)
    atoms_per_structure = torch.tensor(4)  # a batch of one configuration: a 0-d tensor
    indices = torch.zeros(4, dtype=torch.long)
    energy, _ = net(x, None, indices, atoms_per_structure, torch.zeros(4, dtype=torch.long), None,
                    None, None, "cpu", dtype=torch.float64)
    assert energy.shape == (1,)
    assert torch.allclose(energy, net.network_architecture0(x).sum().reshape(1))
    # Without the adapter, index_add_ into the 0-d accumulator fails in torch 2.x:
    acc = torch.zeros(atoms_per_structure.size(), dtype=torch.float64)
    with pytest.raises((IndexError, RuntimeError)):
        acc.index_add_(0, indices, torch.ones(4, dtype=torch.float64))


@pytest.mark.slow  # kept out of the default run (< 5 min); CI runs it
def test_input_file_without_extras_section(cu_run):
    from conftest import run_cli, write_cu_input

    path = write_cu_input(cu_run)
    assert "[EXTRAS]" not in path.read_text()
    plain = run_clean(f"""
        import mpi4py.MPI, os, sys
        os.chdir({str(cu_run)!r})
        from fitsnap3lib.fitsnap import FitSnap
        import importlib.util
        spec = importlib.util.spec_from_file_location("compat_alone", {str(compat.__file__)!r})
        compat = importlib.util.module_from_spec(spec); spec.loader.exec_module(compat)
        for a in compat.ADAPTERS:
            if a.adapter_name != "default_sections":
                a()
        s = FitSnap(arglist=["Cu.in", "--overwrite"])
        s.scrape_configs(); s.process_configs(); s.perform_fit()
    """, {"PYTHONPATH": os.pathsep.join(sys.path)})
    assert plain.returncode != 0 and "KeyError: 'EXTRAS'" in plain.stderr
    proc = run_cli(["fit", "Cu.in", "--overwrite"], cwd=cu_run)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_absolute_input_paths_and_two_runs_in_one_process(cu_data, tmp_path, monkeypatch):
    import shutil

    from conftest import write_cu_input

    from fitsnap_uq.fitting import descriptor_rows

    first, second = tmp_path / "one", tmp_path / "two"
    shutil.copytree(cu_data / "JSON", first / "JSON")
    (second / "JSON").mkdir(parents=True)
    shutil.copytree(cu_data / "JSON" / "Bulk", second / "JSON" / "Bulk")
    shutil.copytree(cu_data / "JSON" / "Bulk", second / "JSON" / "Strained")  # different data
    monkeypatch.chdir(first)
    rows1, _ = descriptor_rows(str(write_cu_input(first)))  # absolute path inside the cwd
    monkeypatch.chdir(tmp_path)
    rows2, _ = descriptor_rows(str(write_cu_input(second)))
    assert rows1.b.shape == rows2.b.shape
    strained = rows1.groups == "Strained"
    assert not np.allclose(rows1.b[strained], rows2.b[strained])  # each read its own data
    np.testing.assert_allclose(rows1.b[~strained], rows2.b[~strained])
