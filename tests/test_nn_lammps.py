"""NNENSEMBLE members in plain LAMMPS (ML-IAP ``model nn``) and the MD hook's force spread.

The references are FitSNAP's own: the members' predictions the fit wrote (FitSNAP's ``FitTorch`` forward
on FitSNAP's descriptors and per-pair derivatives, float64) and torch autograd on LAMMPS' ``compute snap
... dgradflag 1`` per-pair derivatives.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CU_LJ_MD, NEEDS_TA, ROOT, SHARED_TA, run_cli
from test_nnensemble import write_nn_input

from fitsnap_uq.errors import InputError
from fitsnap_uq.nn.fitsnap_mliap import (
    UnsupportedNetwork,
    dense_layers,
    evaluate_layers,
    mean_layers,
    model_nn_text,
    pair_lines,
)

BIN = Path(sys.executable).parent
LMP = str(BIN / "lmp") if (BIN / "lmp").exists() else "lmp"
MPIRUN = str(BIN / "mpirun") if (BIN / "mpirun").exists() else "mpirun"


# --------------------------------------------------------------------------------------- pure parts
def _net(sizes, act=torch.nn.Tanh, seed=0):
    torch.manual_seed(seed)
    layers = [torch.nn.Linear(sizes[0], sizes[0])]
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [torch.nn.Linear(a, b), act()]
    return torch.nn.Sequential(*layers[:-1]).double()


def test_layers_map_fitsnap_networks_and_their_mean():
    nets = [_net([6, 5, 4, 1], seed=s) for s in range(3)]
    x = np.random.default_rng(0).normal(size=(7, 6))
    layers = [dense_layers(n) for n in nets]
    assert [(lay.weight.shape, lay.activation) for lay in layers[0]] == [
        ((6, 6), "linear"), ((5, 6), "tanh"), ((4, 5), "tanh"), ((1, 4), "linear")]
    with torch.no_grad():
        direct = np.array([n(torch.tensor(x)).numpy()[:, 0] for n in nets])
    for lay, d in zip(layers, direct):
        np.testing.assert_allclose(evaluate_layers(lay, x), d, rtol=1e-13, atol=1e-14)
    mean = mean_layers(layers)
    assert [(lay.weight.shape, lay.activation) for lay in mean] == [
        ((15, 6), "tanh"), ((12, 15), "tanh"), ((3, 12), "linear"), ((1, 3), "linear")]
    np.testing.assert_allclose(evaluate_layers(mean, x), direct.mean(axis=0), rtol=1e-12, atol=1e-14)
    text = model_nn_text([layers[0]], "member 0")
    head = [ln for ln in text.splitlines() if not ln.startswith("#")][:2]
    assert head == ["1 106", "NET 6 4 linear 6 tanh 5 tanh 4 linear 1"]
    assert max(len(ln.split()) for ln in text.splitlines()) <= 30


def test_activations_and_outputs_ml_iap_lacks_are_refused():
    with pytest.raises(UnsupportedNetwork, match="Softplus"):
        dense_layers(_net([4, 3, 1], act=torch.nn.Softplus))
    with pytest.raises(UnsupportedNetwork, match="output"):
        dense_layers(torch.nn.Sequential(torch.nn.Linear(4, 2)))
    with pytest.raises(UnsupportedNetwork, match="architecture|layers"):
        mean_layers([dense_layers(_net([4, 3, 1])), dense_layers(_net([4, 5, 1]))])


def test_pair_lines_keep_the_reference_as_fitted():
    ref = {"pair_commands": ["pair_style hybrid/overlay zero 10.0 zbl 4.0 4.8", "pair_coeff * * zero",
                             "pair_coeff * * zbl 73 73"]}
    assert pair_lines(["Ta"], {"reference": ref}, "m.model", "d.desc") == [
        "pair_style hybrid/overlay zbl 4.0 4.8 mliap model nn m.model descriptor sna d.desc",
        "pair_coeff * * zbl 73 73", "pair_coeff * * mliap Ta"]
    single = {"pair_commands": ["pair_style zbl 4.0 4.8", "pair_coeff 1 1 73 73", "pair_coeff 1 2 73 4",
                                "pair_coeff 2 2 4 4"]}
    assert pair_lines(["Ta", "Be"], {"reference": single}, "m", "d") == [
        "pair_style hybrid/overlay zbl 4.0 4.8 mliap model nn m descriptor sna d",
        "pair_coeff 1 1 zbl 73 73", "pair_coeff 1 2 zbl 73 4", "pair_coeff 2 2 zbl 4 4",
        "pair_coeff * * mliap Ta Be"]
    zero = {"pair_commands": ["pair_style zero 10.0", "pair_coeff * *"]}
    for snap in ({"reference": zero}, {}):
        assert pair_lines(["Cu"], snap, "m", "d") == ["pair_style mliap model nn m descriptor sna d",
                                                      "pair_coeff * * Cu"]


# ------------------------------------------------------------------------------------ a tanh ensemble
@pytest.fixture(scope="module")
def tanh_fit(tmp_path_factory, cu_data) -> Path:
    folder = tmp_path_factory.mktemp("nn_tanh")
    shutil.copytree(cu_data / "JSON", folder / "JSON")
    write_nn_input(folder, members=3, uq="nn_activation = tanh")
    proc = run_cli(["fit", "Cu.in", "--overwrite"], cwd=folder)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "for plain LAMMPS (ML-IAP model nn): include Cu_pot.nnensemble.mean.pair.lmp" in proc.stdout
    return folder


def fitsnap_frame(record: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Cell (rows a, b, c; lower-triangular LAMMPS form), positions and forces of a FitSNAP JSON record in
    the frame FitSNAP computes in (its scraper's rotation of the cell to LAMMPS' form)."""
    cell = np.asarray(record["Lattice"], dtype=float)
    q, r = np.linalg.qr(cell.T)
    rot = np.diagflat(np.sign(np.diag(r))) @ q.T
    forces = np.asarray(record["Forces"], dtype=float) @ rot.T if "Forces" in record else None
    return (rot @ cell.T).T, np.asarray(record["Positions"], dtype=float) @ rot.T, forces


def lammps_energy_forces(cell: np.ndarray, positions: np.ndarray, types: list[int], ntypes: int,
                         lines: list[str], cwd: Path) -> tuple[float, np.ndarray]:
    """Total energy (eV) and forces (N, 3) in input order of one configuration under ``lines``."""
    import os

    from fitsnap_uq.compat import import_lammps

    old = os.getcwd()
    os.chdir(cwd)
    try:
        lmp = import_lammps().lammps(cmdargs=["-screen", "none", "-log", "none"])
        a, b, c = np.asarray(cell, dtype=float).tolist()
        lmp.commands_string(f"""
units metal
atom_modify map array
boundary p p p
region box prism 0 {a[0]!r} 0 {b[1]!r} 0 {c[2]!r} {b[0]!r} {c[0]!r} {c[1]!r} units box
create_box {ntypes} box
mass * 1.0
""")
        lmp.create_atoms(len(positions), list(range(1, len(positions) + 1)), types,
                         positions.ravel().tolist())
        lmp.commands_string("\n".join(lines) + "\nrun 0 post no")
        energy = float(lmp.get_thermo("pe"))
        n = len(positions)
        forces = np.ctypeslib.as_array(lmp.gather_atoms("f", 1, 3)).reshape(n, 3).copy()
        lmp.close()
    finally:
        os.chdir(old)
    return energy, forces


def compare_with_fit(folder: Path, data: Path, stem: str, keys: list[str]) -> dict[str, tuple[float, float]]:
    """Largest relative energy and force differences, LAMMPS vs the fit's predictions, per model key
    (``member<m>`` or ``mean``), over every configuration the fit predicted.

    A configuration's force difference is relative to its largest force, or to the RMS force of the model
    over all configurations where that is larger (symmetric cells have forces of rounding size, 1e-20 to
    1e-7 eV/A, whose relative differences mean nothing)."""
    pred = np.load(folder / f"{stem}.nnensemble.predictions.npz")
    desc = json.loads((folder / f"{stem}.nnensemble.json").read_text())
    elements = desc["elements"]
    lines = {k: (folder / f"{stem}.nnensemble.{k}.pair.lmp").read_text().splitlines() for k in keys}
    lines = {k: [ln for ln in v if ln.startswith("pair_")] for k, v in lines.items()}
    # only the network: the reference potential is not in the predictions
    lines = {k: [re.sub(r"pair_style hybrid/overlay .* mliap", "pair_style mliap", v[0])]
             + [f"pair_coeff * * {' '.join(elements)}"] for k, v in lines.items()}
    worst = {k: (0.0, 0.0) for k in keys}
    forces = pred["row_types"] == "Force"
    scale = {k: float(np.sqrt(np.mean((pred["mean"] if k == "mean" else
                                       pred["members"][int(k[len("member"):])])[forces] ** 2))) for k in keys}
    for group, name in sorted(set(zip(pred["groups"].tolist(), pred["configs"].tolist()))):
        text = (data / group / name).read_text()
        record = json.loads(text[text.index("{"):])["Dataset"]["Data"][0]
        cell, pos, _ = fitsnap_frame(record)
        types = [elements.index(t) + 1 for t in record["AtomTypes"]]
        rows = (pred["groups"] == group) & (pred["configs"] == name)
        kinds = pred["row_types"][rows]
        for k in keys:
            ref = pred["mean"] if k == "mean" else pred["members"][int(k[len("member"):])]
            e_ref = ref[rows][kinds == "Energy"][0] * len(pos)
            f_ref = ref[rows][kinds == "Force"].reshape(-1, 3)
            e, f = lammps_energy_forces(cell, pos, types, len(elements), lines[k], folder)
            de = abs(e - e_ref) / abs(e_ref)
            df = np.abs(f - f_ref).max() / max(np.abs(f_ref).max(), scale[k])
            worst[k] = (max(worst[k][0], de), max(worst[k][1], df))
    return worst


def test_members_and_mean_in_lammps_are_fitsnaps_networks(tanh_fit):
    """Each member's energy and forces by ML-IAP in LAMMPS equal FitSNAP's PyTorch evaluation of the same
    configurations (the fit's predictions) to 1e-8 relative; the mean network equals the mean."""
    worst = compare_with_fit(tanh_fit, tanh_fit / "JSON", "Cu_pot", ["member0", "member1", "member2", "mean"])
    for key, (de, df) in worst.items():
        assert de < 1e-8 and df < 1e-8, (key, de, df)


def test_hybrid_scaled_members_equal_the_mean_network(tanh_fit):
    cell = np.eye(3) * 7.3
    pos = np.random.default_rng(1).uniform(0, 7.3, size=(20, 3))
    desc = "Cu_pot.nnensemble.mliap.descriptor"
    styles = " ".join(f"{1 / 3!r} mliap model nn Cu_pot.nnensemble.member{m}.mliap.model descriptor sna "
                      f"{desc}" for m in range(3))
    scaled = [f"pair_style hybrid/scaled {styles}"] + [f"pair_coeff * * mliap {m + 1} Cu" for m in range(3)]
    mean = [f"pair_style mliap model nn Cu_pot.nnensemble.mean.mliap.model descriptor sna {desc}",
            "pair_coeff * * Cu"]
    e1, f1 = lammps_energy_forces(cell, pos, [1] * 20, 1, scaled, tanh_fit)
    e2, f2 = lammps_energy_forces(cell, pos, [1] * 20, 1, mean, tanh_fit)
    assert e1 == pytest.approx(e2, rel=1e-12)
    np.testing.assert_allclose(f1, f2, rtol=0, atol=1e-12 * np.abs(f2).max())


def test_nn_export_cli_writes_the_lines_of_a_member(tanh_fit, tmp_path, monkeypatch, capsys):
    from fitsnap_uq.cli import main

    monkeypatch.chdir(tmp_path)
    desc = str(tanh_fit / "Cu_pot.nnensemble.json")
    assert main(["nn-export", desc, "--member", "2", "--outdir", "out"]) == 0
    out = capsys.readouterr().out
    assert "pair_style mliap model nn out/Cu_pot.nnensemble.member2.mliap.model descriptor sna " \
           "out/Cu_pot.nnensemble.mliap.descriptor" in out
    assert (tmp_path / "out" / "Cu_pot.nnensemble.member2.pair.lmp").is_file()
    text = (tmp_path / "out" / "Cu_pot.nnensemble.mliap.descriptor").read_text()
    assert "bzeroflag 0" in text and "switchflag 1" in text
    assert main(["nn-export", desc, "--member", "3"]) == 2
    assert "--member 3" in capsys.readouterr().err
    assert main(["nn-export", "missing.nnensemble.json"]) == 2
    assert "missing.nnensemble.json" in capsys.readouterr().err


NVE = """
units metal
lattice fcc 3.61
region b block 0 3 0 3 0 3
create_box 1 b
create_atoms 1 box
mass 1 63.5
displace_atoms all random 0.05 0.05 0.05 4321
include {pair}
velocity all create 300 87287 loop geom
timestep 0.001
fix nve all nve
thermo_style custom step pe ke etotal
thermo_modify format float %20.15g
thermo 100
run {steps}
"""


def run_lmp(folder: Path, pair: str, steps: int, mpi: int = 0, name: str = "in.nve") -> np.ndarray:
    """Run ``lmp -in`` (under ``mpirun -np mpi``) on :data:`NVE`; the thermo rows (step pe ke etotal)."""
    (folder / name).write_text(NVE.format(pair=pair, steps=steps))
    cmd = [LMP, "-in", name, "-log", f"{name}.log", "-screen", "none"]
    if mpi:
        cmd = [MPIRUN, "-np", str(mpi), *cmd]
    proc = subprocess.run(cmd, cwd=folder, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    return thermo_rows((folder / f"{name}.log").read_text())


def thermo_rows(log: str) -> np.ndarray:
    rows = []
    for line in log.splitlines():
        words = line.split()
        if len(words) == 4 and all(re.match(r"^-?[\d.]+(e[-+]?\d+)?$", w) for w in words):
            rows.append([float(w) for w in words])
    return np.array(rows)


def test_plain_lmp_runs_nve_with_the_mean_and_a_member(tanh_fit):
    mean = run_lmp(tanh_fit, "Cu_pot.nnensemble.mean.pair.lmp", 200)
    member = run_lmp(tanh_fit, "Cu_pot.nnensemble.member1.pair.lmp", 0, name="in.m1")
    assert mean.shape == (3, 4) and np.all(np.isfinite(mean))
    drift = np.abs(mean[:, 3] - mean[0, 3]).max() / 108
    assert drift < 1e-4, drift  # eV/atom over 0.2 ps
    assert member[0, 1] != pytest.approx(mean[0, 1], rel=1e-6)  # a member is not the mean


@pytest.mark.mpi
def test_plain_lmp_under_mpirun_matches_serial(tanh_fit):
    serial = run_lmp(tanh_fit, "Cu_pot.nnensemble.mean.pair.lmp", 100, name="in.s")
    parallel = run_lmp(tanh_fit, "Cu_pot.nnensemble.mean.pair.lmp", 100, mpi=2, name="in.p")
    np.testing.assert_allclose(parallel, serial, rtol=1e-9, atol=1e-9)


# ------------------------------------------------------------------------------- the hook's force spread
# The reference of the check scripts (after 10 steps): every member's forces by torch autograd on LAMMPS'
# per-pair descriptor derivatives (compute snap dgradflag 1) and energies, for the local atoms `ids`.
REFERENCE = """s = ens.snap
lmp.command(f"compute ref all snap {{s['rcutfac']}} {{s['rfac0']}} {{s['twojmax']}} 0.5 1.0 rmin0 0 "
            f"bzeroflag {{s['bzeroflag']}} bikflag 1 dgradflag 1")
lmp.command("run 10")
n = lmp.get_natoms()
a = np.array(lmp.numpy.extract_compute("ref", 0, 2))
g = a[n:n + 3 * n * n]
forces = ens.member_forces(a[:n, 3:], np.zeros(n, int), g[:, 3:], g[:, :3].astype(int))
nlocal = lmp.extract_global("nlocal")
ids = np.array(lmp.numpy.extract_atom("id"))[:nlocal]
energies = np.array([m.model(torch.tensor(a[:n, 3:]), None).detach().numpy().ravel() for m in ens.members])
"""
HOOK_CHECK = """
import json, sys
import numpy as np
import torch
from mpi4py import MPI
from fitsnap_uq.compat import import_lammps
from fitsnap_uq.nn.fitsnap_ensemble import NNEnsemble
from lammps_hooks.nn_uq import NNEnsembleHook, force_spread
ens = NNEnsemble(sys.argv[1])
lmp = import_lammps().lammps(cmdargs=["-screen", "none", "-log", "none"])
lmp.commands_string('''{md}''')
hook = NNEnsembleHook(lmp, ens, every=5, descriptors=sys.argv[3]).attach()
""" + REFERENCE + """fstd = np.array(lmp.numpy.extract_atom("d_nnuq_fstd"))[:nlocal]
estd = np.array(lmp.numpy.extract_atom("d_nnuq_estd"))[:nlocal]
out = {{"fstd": fstd.tolist(), "ref": force_spread(forces)[ids - 1].tolist(),
       "estd": estd.tolist(), "eref": energies.std(axis=0)[ids - 1].tolist(),
       "members": hook.member_forces().tolist(), "members_ref": forces[:, ids - 1].tolist(),
       "last": hook.last, "evaluations": hook.cost["evaluations"], "nlocal": int(nlocal)}}
parts = MPI.COMM_WORLD.gather(out, root=0)
if MPI.COMM_WORLD.rank == 0:
    json.dump(parts, open(sys.argv[2], "w"))
hook.detach()
lmp.close()
"""


# The same copper in a triclinic cell whose shape NPT changes between the hook's evaluations (the force
# probes must follow the box).
CU_LJ_TRICLINIC_NPT = CU_LJ_MD.replace("create_atoms 1 box", "create_atoms 1 box\nchange_box all triclinic\n"
                                       "change_box all xy final 0.4 xz final -0.3 remap units box").replace(
    "fix nve all nve", "fix npt all npt temp 600 600 0.05 tri 0 0 0.2")


def check_hook(folder: Path, out: Path, mpi: int = 0, md: str = CU_LJ_MD, plugin: Path | None = None,
               script_text: str = HOOK_CHECK, args: tuple[str, ...] = ()) -> list[dict]:
    """Run a check script (serial or under mpirun) and read the per-rank parts it wrote to ``out``;
    ``plugin``: the built plugin, for the hook's native contraction (else K helper instances)."""
    script = folder / f"check_{out.stem}.py"
    script.write_text(script_text.format(md=md))
    cmd = [sys.executable, str(script), str(folder / "Cu_pot.nnensemble.json"), str(out),
           *(args or ("native" if plugin else "lammps",))]
    if mpi:
        cmd = [MPIRUN, "-np", str(mpi), *cmd]
    env = {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    if plugin is not None:
        env["FITSNAP_UQ_PLUGIN_DIR"] = str(plugin.parent)
    import os

    proc = subprocess.run(cmd, cwd=folder, capture_output=True, text=True, timeout=600,
                          env={**os.environ, **env})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Exception ignored" not in proc.stderr, proc.stderr[-3000:]
    return json.loads(out.read_text())


def assert_hook_parts(parts: list[dict]) -> None:
    assert sum(p["nlocal"] for p in parts) == 32
    fstd = np.concatenate([p["fstd"] for p in parts])
    ref = np.concatenate([p["ref"] for p in parts])
    assert ref.min() > 0
    np.testing.assert_allclose(fstd, ref, rtol=1e-8, atol=0)
    np.testing.assert_allclose(np.concatenate([p["estd"] for p in parts]),
                               np.concatenate([p["eref"] for p in parts]), rtol=1e-8, atol=0)
    members = np.concatenate([p["members"] for p in parts], axis=1)
    members_ref = np.concatenate([p["members_ref"] for p in parts], axis=1)
    np.testing.assert_allclose(members, members_ref, rtol=0, atol=1e-8 * np.abs(members_ref).max())
    for p in parts:
        assert p["evaluations"] == 3  # steps 0, 5, 10
        assert p["last"]["fstd_max"] == pytest.approx(ref.max(), rel=1e-12)
        assert p["last"]["fstd_mean"] == pytest.approx(ref.mean(), rel=1e-12)


@pytest.mark.parametrize("route", ["native", "probes"])
def test_hook_force_spread_equals_torch_autograd(tanh_fit, tmp_path, route, request):
    """d_nnuq_fstd = std over members of the forces torch autograd gives on LAMMPS' per-pair derivatives
    (compute snap dgradflag 1) of the same configuration, to 1e-8 relative (a triclinic cell under NPT);
    with the plugin's contraction of dE/dB (native) and with K helper ML-IAP instances (probes)."""
    plugin = request.getfixturevalue("built_plugin") if route == "native" else None
    assert_hook_parts(check_hook(tanh_fit, tmp_path / "hook.json", md=CU_LJ_TRICLINIC_NPT, plugin=plugin))


@pytest.mark.mpi
@pytest.mark.parametrize("route", ["native", "probes"])
def test_hook_force_spread_under_mpirun(tanh_fit, tmp_path, route, request):
    plugin = request.getfixturevalue("built_plugin") if route == "native" else None
    parts = check_hook(tanh_fit, tmp_path / "hook.json", mpi=2, plugin=plugin)
    assert len(parts) == 2 and all(p["nlocal"] > 0 for p in parts)
    assert_hook_parts(parts)


def test_hook_refuses_forces_of_a_softplus_ensemble_and_an_energy_only_hook_has_none(tanh_fit, tmp_path):
    from fitsnap_uq.compat import import_lammps
    from fitsnap_uq.nn.fitsnap_ensemble import NNEnsemble
    from lammps_hooks.nn_uq import NNEnsembleHook

    ens = NNEnsemble(tanh_fit / "Cu_pot.nnensemble.json")
    for wrapper in ens.members:  # FitSNAP's default activation
        net = wrapper.model.subnet
        for i, layer in enumerate(net):
            if isinstance(layer, torch.nn.Tanh):
                net[i] = torch.nn.Softplus()
    lmp = import_lammps().lammps(cmdargs=["-screen", "none", "-log", "none"])
    lmp.commands_string(CU_LJ_MD)
    with pytest.raises(InputError, match=r"nn_activation = tanh.*forces=False"):
        NNEnsembleHook(lmp, ens, every=5, descriptors="lammps").attach()
    lmp.close()
    lmp = import_lammps().lammps(cmdargs=["-screen", "none", "-log", "none"])
    lmp.commands_string(CU_LJ_MD)
    hook = NNEnsembleHook(lmp, ens, every=5, forces=False).attach()
    lmp.command("run 5")
    assert hook.last["fstd_max"] == 0.0 and hook.last["estd_max"] > 0
    with pytest.raises(ValueError, match="measure"):
        NNEnsembleHook(lmp, ens, every=5, forces=False, measure="fstd_max", prefix="x")
    lmp.close()


# ------------------------------------------------------------------- the plugin's fix snap/uq for networks
PLUGIN_CHECK = """
import json, sys
import numpy as np
import torch
from mpi4py import MPI
from fitsnap_uq.compat import import_lammps
from fitsnap_uq.nn.fitsnap_ensemble import NNEnsemble
from lammps_hooks.nn_uq import force_spread
ens = NNEnsemble(sys.argv[1])
out, plugin, uqfile, pair = sys.argv[2:6]
md = '''{md}'''
lmp = import_lammps().lammps(cmdargs=["-screen", "none", "-log", "none"])
lmp.commands_string(md)
lmp.command(f"plugin load {{plugin}}")
lmp.commands_string(open(pair).read() if pair.endswith(".lmp") else pair)
lmp.command(f"fix uq all snap/uq 5 {{uqfile}} " + " ".join(sys.argv[6:]))
""" + REFERENCE + """uq = np.array(lmp.numpy.extract_fix("uq", 1, 2))[:nlocal]
part = {{"fstd": uq[:, 1].tolist(), "ref": force_spread(forces)[ids - 1].tolist(),
        "estd": uq[:, 0].tolist(), "eref": energies.std(axis=0)[ids - 1].tolist(),
        "pe_std": float(energies.sum(axis=1).std()), "nlocal": int(nlocal),
        "glob": [lmp.extract_fix("uq", 0, 1, k) for k in range(11)], "step": lmp.get_thermo("step")}}
parts = MPI.COMM_WORLD.gather(part, root=0)
if MPI.COMM_WORLD.rank == 0:
    json.dump(parts, open(out, "w"))
lmp.close()
"""


def check_plugin(folder: Path, out: Path, plugin: Path, uq: Path, pair: str, mpi: int = 0,
                 md: str = CU_LJ_TRICLINIC_NPT, keywords: tuple[str, ...] = ()) -> list[dict]:
    """Run :data:`PLUGIN_CHECK`: ``fix snap/uq`` with the network file ``uq`` under ``pair`` (an include
    file or the lines themselves), and the reference on the same configuration; per-rank parts."""
    return check_hook(folder, out, mpi=mpi, md=md, script_text=PLUGIN_CHECK,
                      args=(str(plugin), str(uq), pair, *keywords))


def assert_plugin_parts(parts: list[dict], evaluations: int = 3) -> None:
    """fix snap/uq's per-atom and global values against torch autograd on LAMMPS' per-pair
    derivatives of the same configuration (1e-8 relative)."""
    assert sum(p["nlocal"] for p in parts) == 32
    fstd = np.concatenate([p["fstd"] for p in parts])
    ref = np.concatenate([p["ref"] for p in parts])
    estd = np.concatenate([p["estd"] for p in parts])
    eref = np.concatenate([p["eref"] for p in parts])
    assert ref.min() > 0 and eref.min() > 0
    np.testing.assert_allclose(fstd, ref, rtol=1e-8, atol=0)
    np.testing.assert_allclose(estd, eref, rtol=1e-8, atol=0)
    g = parts[0]["glob"]  # pe_std pe_atom_std estd_max estd_mean fstd_max fstd_mean nflagged halt n ..
    np.testing.assert_allclose(g[:6], [parts[0]["pe_std"], parts[0]["pe_std"] / 32, eref.max(),
                                       eref.mean(), ref.max(), ref.mean()], rtol=1e-8)
    assert g[8] == evaluations


@pytest.fixture(scope="module")
def tanh_uq(tanh_fit) -> Path:
    from lammps_hooks.native import write_plugin_ensemble

    return write_plugin_ensemble(tanh_fit / "Cu_pot.nnensemble.json", tanh_fit / "Cu.nn.uq")


LJ = "pair_style lj/cut 5.0\npair_coeff * * 0.4 2.3"


def test_build_plugin_cli_writes_the_network_file(tanh_fit, tanh_uq, tmp_path):
    proc = run_cli(["build-plugin", "--ensemble", str(tanh_fit / "Cu_pot.nnensemble.json"), "--out",
                    str(tmp_path / "x.uq"), "--no-build"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "x.uq").read_text() == tanh_uq.read_text()
    assert "members 3" in tanh_uq.read_text() and "model nn" in tanh_uq.read_text()
    proc = run_cli(["build-plugin", "--ensemble", "a.json", "--posterior", "b.npz", "--no-build"],
                   cwd=tmp_path)
    assert proc.returncode == 2 and "--ensemble" in proc.stderr and len(proc.stderr.splitlines()) == 1


def test_plugin_force_spread_equals_torch_autograd(tanh_fit, tanh_uq, built_plugin, tmp_path):
    """fix snap/uq with the ensemble's networks, the mean driving the MD through ML-IAP (and checked
    against it): per-atom energy and force std over members equal torch autograd's (triclinic, NPT)."""
    assert_plugin_parts(check_plugin(tanh_fit, tmp_path / "p.json", built_plugin, tanh_uq,
                                     "Cu_pot.nnensemble.mean.pair.lmp"))


@pytest.mark.mpi
def test_plugin_force_spread_under_mpirun(tanh_fit, tanh_uq, built_plugin, tmp_path):
    """The same under mpirun -np 2 (ghost contributions by reverse communication), member 1 driving."""
    parts = check_plugin(tanh_fit, tmp_path / "p.json", built_plugin, tanh_uq,
                         "Cu_pot.nnensemble.member1.pair.lmp", mpi=2, md=CU_LJ_MD)
    assert len(parts) == 2 and all(p["nlocal"] > 0 for p in parts)
    assert_plugin_parts(parts)


def test_plugin_softplus_ensemble_flags_and_halts(tanh_fit, built_plugin, tmp_path):
    """FitSNAP's default softplus (which ML-IAP cannot run) in the plugin, under another pair style
    (so not checked against it): equal to torch autograd; flag and halt as for a linear posterior."""
    from fitsnap_uq.nn.fitsnap_ensemble import NNEnsemble
    from lammps_hooks.native import write_plugin_ensemble

    ens = NNEnsemble(tanh_fit / "Cu_pot.nnensemble.json")
    folder = tmp_path / "softplus"
    folder.mkdir()
    for m, wrapper in enumerate(ens.members):
        net = wrapper.model.subnet
        for i, layer in enumerate(net):
            if isinstance(layer, torch.nn.Tanh):
                net[i] = torch.nn.Softplus()
        torch.save(wrapper, folder / f"Cu_pot.nnensemble.member{m}.pt")
    shutil.copy(tanh_fit / "Cu_pot.nnensemble.json", folder)
    uq = write_plugin_ensemble(folder / "Cu_pot.nnensemble.json", folder / "Cu.softplus.uq")
    assert " softplus" in uq.read_text() and " tanh" not in uq.read_text()
    parts = check_plugin(folder, tmp_path / "p.json", built_plugin, uq, LJ, md=CU_LJ_MD)
    assert_plugin_parts(parts)
    assert parts[0]["glob"][6] == 0 and parts[0]["glob"][7] == 0  # nothing flagged, no halt
    threshold = 0.5 * parts[0]["glob"][4]
    parts = check_plugin(folder, tmp_path / "h.json", built_plugin, uq, LJ, md=CU_LJ_MD,
                         keywords=("flag", str(threshold), "flagged.xyz", "halt", str(threshold)))
    assert parts[0]["glob"][6] == 1 and parts[0]["glob"][7] == 1 and parts[0]["step"] == 0
    frames = (folder / "flagged.xyz").read_text().splitlines()
    assert frames[0] == "32" and "uq_fstd:R:1" in frames[1] and "step=0" in frames[1]


def test_plugin_refuses_a_bad_file_and_an_ensemble_that_is_not_the_running_network(tanh_fit, tanh_uq,
                                                                                  built_plugin, tmp_path):
    script = (f"plugin load {built_plugin}\n{CU_LJ_MD}\ninclude Cu_pot.nnensemble.mean.pair.lmp\n"
              "fix uq all snap/uq 5 {uq}\nrun 0\n")

    def run(text: str, name: str) -> subprocess.CompletedProcess:
        (tmp_path / name).write_text(text)
        (tanh_fit / f"in.{name}").write_text(script.format(uq=tmp_path / name))
        return subprocess.run([LMP, "-in", f"in.{name}", "-log", "none"], cwd=tanh_fit, capture_output=True,
                              text=True, timeout=300)

    proc = run(tanh_uq.read_text().replace("network 0 0 4", "network 9 0 4"), "bad.uq")
    assert proc.returncode != 0
    assert f"{tmp_path / 'bad.uq'}: 'network 9 0 4': member, element or layer count out of range" in \
        proc.stdout, proc.stdout[-2000:]
    proc = run(tanh_uq.read_text().replace(" tanh", " sigmoid"), "other.uq")  # other networks
    assert proc.returncode != 0
    assert "does not match the running mliap pair style" in proc.stdout, proc.stdout[-2000:]


# -------------------------------------------------------- fitsnap-uq ensemble and md over the NN members
NN_SCRIPT = CU_LJ_MD.replace("pair_style lj/cut 5.0\npair_coeff * * 0.4 2.3",
                             "include Cu_pot.nnensemble.mean.pair.lmp") + "thermo 5\nrun 40\n"
assert "include" in NN_SCRIPT


@pytest.mark.slow
def test_ensemble_cli_runs_one_replica_per_member(tanh_fit, tmp_path):
    """`fitsnap-uq ensemble --nnensemble`: replica k is driven by member k (its step-0 energy is member
    k's, computed by LAMMPS with member k's own exported lines), error bars over the members."""
    (tanh_fit / "in.nnens").write_text(NN_SCRIPT)
    out = tmp_path / "ens"
    proc = run_cli(["ensemble", "in.nnens", "--nnensemble", "Cu_pot.nnensemble.json", "--every", "5",
                    "--observables", "pe/atoms", "temp", "--outdir", str(out)], cwd=tanh_fit)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "3 replicas run, 3 kept" in proc.stdout
    from lammps_hooks.ensemble import EnsembleResult

    res = EnsembleResult.load(out)
    assert res.samples == 3 and res.values.shape[0] == 3 and res.steps[0] == 0
    setup = NN_SCRIPT.split("include")[0]
    for k in range(3):
        lines = (tanh_fit / f"Cu_pot.nnensemble.member{k}.pair.lmp").read_text()
        lmp_pe = single_point(tanh_fit, setup + lines)
        assert res.values[k, 0, 0] == pytest.approx(lmp_pe / 32, rel=1e-9)
    assert np.ptp(res.values[:, 0, 0]) > 1e-6  # the members differ
    for k in range(3):
        assert f"replica.member{k}.mliap.model" in (out / f"replica{k}.log").read_text()
    proc = run_cli(["ensemble", "in.nnens", "--nnensemble", "Cu_pot.nnensemble.json", "--posterior", "x"],
                   cwd=tanh_fit)
    assert proc.returncode == 2 and "not allowed with argument" in proc.stderr
    (tanh_fit / "in.lj").write_text(CU_LJ_MD + "run 10\n")
    proc = run_cli(["ensemble", "in.lj", "--nnensemble", "Cu_pot.nnensemble.json"], cwd=tanh_fit)
    assert proc.returncode == 2 and "in.lj" in proc.stderr and "mliap model nn" in proc.stderr


@pytest.mark.mpi
def test_ensemble_cli_over_members_under_mpirun_equals_serial(tanh_fit, tmp_path):
    """The members' replicas as 3 partitions of one rank under mpirun -np 3: the same time series."""
    (tanh_fit / "in.nnens").write_text(NN_SCRIPT)
    series = []
    for mpi, out in ((0, tmp_path / "serial"), (3, tmp_path / "mpi")):
        proc = run_cli(["ensemble", "in.nnens", "--nnensemble", "Cu_pot.nnensemble.json", "--every", "10",
                        "--observables", "pe/atoms", "--outdir", str(out)], cwd=tanh_fit, mpi=mpi)
        assert proc.returncode == 0, proc.stderr[-3000:]
        data = json.loads((out / "ensemble.json").read_text())
        series.append(np.asarray(data["values"]))
        if mpi:
            assert sorted(t["partition"] for t in data["timings"]) == [0, 1, 2]
    np.testing.assert_allclose(series[1], series[0], rtol=1e-10)


def single_point(folder: Path, script: str) -> float:
    """Potential energy (eV) of ``script`` (setup and pair lines) by ``run 0`` in ``folder``."""
    import os

    from fitsnap_uq.compat import import_lammps

    old = os.getcwd()
    os.chdir(folder)
    try:
        lmp = import_lammps().lammps(cmdargs=["-screen", "none", "-log", "none"])
        lmp.commands_string(script + "\nrun 0 post no")
        pe = float(lmp.get_thermo("pe"))
        lmp.close()
    finally:
        os.chdir(old)
    return pe


def test_md_cli_with_an_nn_ensemble(tanh_fit, tmp_path):
    """`fitsnap-uq md --nnensemble`: the NN hook on a script the mean drives: evaluations every 5 steps,
    per-atom columns the script dumps, global values that summarize them; the halt threshold stops it."""
    script = NN_SCRIPT.replace("thermo 5", "thermo_style custom step pe v_nnuq_fstd_max\nthermo 5")
    (tanh_fit / "in.nnmd").write_text(script + f"write_dump all custom {tmp_path / 'uq.txt'} id d_nnuq_estd "
                                      "d_nnuq_fstd modify sort id format float %.17g\n")
    summary = tmp_path / "s.json"
    proc = run_cli(["md", "in.nnmd", "--nnensemble", "Cu_pot.nnensemble.json", "--every", "5",
                    "--descriptors", "lammps", "--summary", str(summary), "--log", "none"], cwd=tanh_fit)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(summary.read_text())
    assert len(data["history"]) == 9 and data["cost"]["evaluations"] == 9
    per_atom = np.loadtxt(tmp_path / "uq.txt", skiprows=9)
    assert per_atom.shape == (32, 3) and per_atom[:, 1:].min() > 0
    assert data["last"]["estd_max"] == pytest.approx(per_atom[:, 1].max(), rel=1e-12)
    assert data["last"]["fstd_max"] == pytest.approx(per_atom[:, 2].max(), rel=1e-12)
    assert data["last"]["fstd_mean"] == pytest.approx(per_atom[:, 2].mean(), rel=1e-12)
    proc = run_cli(["md", "in.nnmd", "--nnensemble", "Cu_pot.nnensemble.json", "--every", "5",
                    "--descriptors", "lammps", "--halt-above", "1e-6", "--log", "none"], cwd=tanh_fit)
    assert proc.returncode == 0 and "stopped" in proc.stdout, proc.stdout[-2000:]


# --------------------------------------------------------------------------------------------- Ta
@NEEDS_TA
@pytest.mark.slow
@pytest.mark.mpi
def test_ta_nnensemble_in_plain_lammps(tmp_path):
    """The example's 4-member Ta ensemble (tanh): members in LAMMPS equal FitSNAP's evaluation on all Ta
    configurations to 1e-8; 10 ps NVE of the mean with 'lmp -in' and 'mpirun -np 2 lmp -in'."""
    example = ROOT / "examples" / "ta_nnensemble_lammps"
    text = re.sub(r"dataPath = .*", f"dataPath = {SHARED_TA / 'JSON'}",
                  (example / "Ta-nnensemble-tanh.in").read_text())
    (tmp_path / "Ta.in").write_text(text)
    proc = run_cli(["fit", "Ta.in", "--overwrite"], cwd=tmp_path, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    worst = compare_with_fit(tmp_path, SHARED_TA / "JSON", "Ta_pot",
                             ["member0", "member1", "member2", "member3", "mean"])
    print("largest relative differences (energy, force):", worst)
    for key, (de, df) in worst.items():
        assert de < 1e-8 and df < 1e-8, (key, de, df)
    shutil.copy(example / "in.nve", tmp_path / "in.nve")
    logs = {}
    for name, cmd in (("serial", [LMP]), ("mpi2", [MPIRUN, "-np", "2", LMP])):
        proc = subprocess.run([*cmd, "-in", "in.nve", "-var", "steps", "10000", "-log", f"{name}.log",
                               "-screen", "none"], cwd=tmp_path, capture_output=True, text=True,
                              timeout=1800)
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
        rows = []
        for line in (tmp_path / f"{name}.log").read_text().splitlines():
            words = line.split()
            if len(words) == 6 and words[0].isdigit():
                rows.append([float(w) for w in words])
        logs[name] = np.array(rows)  # step temp pe ke etotal press
    natoms = 128
    for name, rows in logs.items():
        assert rows[-1, 0] == 10000 and np.all(np.isfinite(rows))
        etot = rows[:, 4]
        slope = np.polyfit(rows[:, 0] * 1e-3, etot / natoms, 1)[0]  # eV/atom/ps
        print(f"{name}: E_tot {etot[0]:.6f} -> {etot[-1]:.6f} eV, max |dE| "
              f"{np.abs(etot - etot[0]).max() / natoms:.2e} eV/atom, drift {slope:.2e} eV/atom/ps, "
              f"T {rows[:, 1].mean():.0f} K")
        assert np.abs(etot - etot[0]).max() / natoms < 1e-3
    np.testing.assert_allclose(logs["mpi2"][0], logs["serial"][0], rtol=1e-10)
