"""The NNENSEMBLE solver (FitSNAP PyTorch networks on resampled configurations) and its MD hook."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import CU_LJ_MD, NEEDS_TA, SHARED_TA, run_cli, write_cu_input

from fitsnap_uq.nn.fitsnap_ensemble import (
    NNEnsemble,
    ensemble_moments,
    members_of_rank,
    out_of_bag_ratios,
    plan_members,
)

NN_SECTIONS = """[PYTORCH]
layer_sizes = num_desc 12 12 1
learning_rate = 5e-3
num_epochs = 25
batch_size = 2
energy_weight = 1.0
force_weight = 1.0

[UQ]
nn_members = {members}
seed = 3
{uq}
"""


def write_nn_input(folder: Path, members: int = 3, uq: str = "", torch_extra: str = "") -> Path:
    """The Cu input of conftest as a nonlinear NNENSEMBLE fit (one Bulk configuration held out)."""
    text = write_cu_input(folder, solver="NNENSEMBLE",
                          extra=NN_SECTIONS.format(members=members, uq=uq)).read_text()
    text = (text.replace("stress = 1", "stress = 0\nnonlinear = 1\nper_atom_energy = 1")
            .replace("quadraticflag = 0", "quadraticflag = 0\nbikflag = 1\ndgradflag = 1")
            .replace("Bulk     = 1.0 0.0 100 1 1e-6", "Bulk     = 0.75 0.25 100 1 1e-6")
            .replace("num_epochs = 25", "num_epochs = 25\n" + torch_extra))
    path = folder / "Cu.in"
    path.write_text(text)
    return path


def canonical(pred) -> tuple[np.ndarray, np.ndarray]:
    """Members (K, n) and truths (n,) with rows ordered by configuration (rank-independent)."""
    keys = np.char.add(np.char.add(pred["groups"], "/"), pred["configs"])
    order = np.lexsort((np.arange(keys.size), keys))
    return pred["members"][:, order], pred["truth"][order]


# ------------------------------------------------------------------------------------------ pure parts
def test_plans_are_seeded_resamples_of_training_configurations():
    train = np.array([0, 2, 3, 5, 7, 8, 9, 11])
    boot = plan_members(train, 4, "bootstrap", seed=1)
    assert [p.index for p in boot] == [0, 1, 2, 3] and len({p.seed for p in boot}) == 4
    for p in boot:
        assert p.train.size == train.size and set(p.train) <= set(train)
        assert set(p.validation) == set(train) - set(p.train)  # out of bag
    assert any(np.unique(p.train).size < p.train.size for p in boot)  # draws with replacement
    again = plan_members(train, 4, "bootstrap", seed=1)
    assert all(np.array_equal(a.train, b.train) and a.seed == b.seed for a, b in zip(boot, again))
    other = plan_members(train, 4, "bootstrap", seed=2)
    assert any(not np.array_equal(a.train, b.train) for a, b in zip(boot, other))
    frac = plan_members(train, 3, "fraction", fraction=0.5, seed=0)
    assert all(np.unique(p.train).size == p.train.size == 4 and p.validation.size == 4 for p in frac)
    full = plan_members(train, 2, "none", seed=0)
    assert all(np.array_equal(p.train, train) and p.validation.size == 0 for p in full)
    with pytest.raises(ValueError):
        plan_members(train, 2, "jackknife")


def test_members_of_rank_and_moments():
    assert members_of_rank(5, 0, 2) == [0, 2, 4] and members_of_rank(5, 1, 2) == [1, 3]
    assert sorted(sum((members_of_rank(7, r, 3) for r in range(3)), [])) == list(range(7))
    preds = np.array([[1.0, 2.0], [3.0, 2.0]])
    mean, std = ensemble_moments(preds)
    np.testing.assert_allclose(mean, [2.0, 2.0])
    np.testing.assert_allclose(std, [1.0, 0.0])


def test_floored_sigma_keeps_a_scale():
    from fitsnap_uq.nn.fitsnap_ensemble import floored_sigma

    std = np.array([0.0, 1e-20, 0.3, 0.4, 0.0, 2.0])
    types = np.array(["Force"] * 4 + ["Energy"] * 2)
    out = floored_sigma(std, types, np.ones(6, dtype=bool), floor=1e-3)
    f_scale = np.sqrt(np.mean(std[:4] ** 2))
    np.testing.assert_allclose(out[:2], 1e-3 * f_scale)
    np.testing.assert_allclose(out[2:4], std[2:4])
    np.testing.assert_allclose(out[4], 1e-3 * np.sqrt(2.0))


def test_out_of_bag_ratios():
    truth = np.array([0.0, 0.0, 1.0])
    preds = np.array([[1.0, 2.0, 1.0], [3.0, 4.0, 1.0]])
    in_bag = np.array([[True, False, True], [False, False, True]])
    r = out_of_bag_ratios(truth, preds, np.array([1.0, 2.0, 1.0]), in_bag)
    np.testing.assert_allclose(r[:2], [3.0, 1.5])  # row 0: member 1 only; row 1: mean of both
    assert np.isnan(r[2])  # no member left it out


# ------------------------------------------------------------------------------ through fitsnap-uq fit
@pytest.fixture(scope="module")
def serial_fit(tmp_path_factory, cu_data) -> Path:
    folder = tmp_path_factory.mktemp("nnens_serial")
    shutil.copytree(cu_data / "JSON", folder / "JSON")
    write_nn_input(folder)
    proc = run_cli(["fit", "Cu.in", "--overwrite"], cwd=folder)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "3 members on 1 rank(s)" in proc.stdout
    return folder


def test_nnensemble_writes_members_description_and_calibration(serial_fit):
    desc = json.loads((serial_fit / "Cu_pot.nnensemble.json").read_text())
    assert desc["solver"] == "NNENSEMBLE" and desc["elements"] == ["Cu"] and desc["snap"]["twojmax"] == 4
    assert desc["network"]["layer_sizes"] == ["14", "12", "12", "1"]
    assert len(desc["members"]) == 3 and len({m["seed"] for m in desc["members"]}) == 3
    for m in desc["members"]:
        assert (serial_fit / m["file"]).is_file() and (serial_fit / m["loss_file"]).is_file()
        assert len(m["train_configs"]) == 7  # bootstrap: as many draws as training configurations
        assert set(m["train_configs"]).isdisjoint(m["validation_configs"])
        assert m["epochs"] == 25
    pred = np.load(serial_fit / "Cu_pot.nnensemble.predictions.npz")
    members = pred["members"]
    assert members.shape == (3, pred["truth"].size)
    np.testing.assert_allclose(pred["mean"], members.mean(axis=0), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(pred["std"], members.std(axis=0), rtol=1e-12, atol=1e-15)
    assert np.all(pred["std"] > 0)
    assert not np.allclose(members[0], members[1]) and not np.allclose(members[1], members[2])
    assert pred["testing"].any() and set(pred["row_types"].tolist()) == {"Energy", "Force"}
    # the held-out configuration is never trained on
    test_files = set(pred["configs"][pred["testing"]].tolist())
    assert all(test_files.isdisjoint(m["train_configs"]) for m in desc["members"])
    # the ensemble mean fits the training forces better than a zero model
    f = (pred["row_types"] == "Force") & ~pred["testing"]
    rmse = np.sqrt(np.mean((pred["mean"] - pred["truth"])[f] ** 2))
    assert rmse < 0.5 * np.sqrt(np.mean(pred["truth"][f] ** 2))
    report = (serial_fit / "Cu_metrics.uq.md").read_text()
    assert "Calibration of NNENSEMBLE" in report
    assert "Recalibrated (quantile recalibration on out-of-bag errors)" in report
    assert "Testing" in report and "inf" not in report
    metrics = (serial_fit / "Cu_metrics.md").read_text()  # FitSNAP's table, of the ensemble mean
    row = re.search(r"Bulk\s+Train\s+Force\s+\d+\s+(\S+)\s+(\S+)", metrics)
    sel = f & (pred["groups"] == "Bulk")
    assert float(row.group(2)) == pytest.approx(
        np.sqrt(np.mean((pred["mean"] - pred["truth"])[sel] ** 2)), rel=1e-3)


def test_member_files_load_and_evaluate(serial_fit):
    ens = NNEnsemble(serial_fit / "Cu_pot.nnensemble.json")
    assert len(ens) == 3
    x = np.random.default_rng(0).normal(size=(5, 14))
    e = ens.per_atom_energies(x, np.zeros(5, dtype=int))
    assert e.shape == (3, 5) and np.all(np.isfinite(e)) and e.std(axis=0).min() > 0


def test_softplus_members_are_not_exported(serial_fit, tmp_path):
    """FitSNAP's softplus has no ML-IAP counterpart: nn-export says so and how to refit."""
    proc = run_cli(["nn-export", str(serial_fit / "Cu_pot.nnensemble.json"), "--outdir", "x"], cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "Softplus" in proc.stderr and "[UQ]" in proc.stderr and "nn_activation" in proc.stderr
    assert "Cu_pot.nnensemble.json" in proc.stderr
    assert not (tmp_path / "x" / "Cu_pot.nnensemble.member0.mliap.model").exists()


@pytest.mark.mpi  # kept out of the default run (< 5 min); CI runs it
def test_mpi_spreads_members_and_matches_serial(serial_fit, tmp_path):
    shutil.copytree(serial_fit / "JSON", tmp_path / "JSON")
    write_nn_input(tmp_path)
    proc = run_cli(["fit", "Cu.in", "--overwrite"], cwd=tmp_path, mpi=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "3 members on 2 rank(s)" in proc.stdout
    # progress on stderr, from rank 0 only: a stage line and its bar's end line (stderr is a pipe)
    lines = proc.stderr.splitlines()
    assert lines.count("fitsnap-uq NNENSEMBLE: training 3 members on 2 ranks (rank 0 trains 2)") == 1
    assert sum(ln.startswith("NNENSEMBLE: members: 2/2 members done in") for ln in lines) == 1
    desc = json.loads((tmp_path / "Cu_pot.nnensemble.json").read_text())
    assert [m["rank"] for m in desc["members"]] == [0, 1, 0]
    serial = json.loads((serial_fit / "Cu_pot.nnensemble.json").read_text())
    assert [m["seed"] for m in desc["members"]] == [m["seed"] for m in serial["members"]]
    assert [m["train_configs"] for m in desc["members"]] == [m["train_configs"] for m in serial["members"]]
    a, ta = canonical(np.load(serial_fit / "Cu_pot.nnensemble.predictions.npz"))
    b, tb = canonical(np.load(tmp_path / "Cu_pot.nnensemble.predictions.npz"))
    np.testing.assert_array_equal(ta, tb)
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)  # same seeds, same members


@pytest.mark.parametrize("uq, torch_extra, needle", [
    ("", "training_fraction = 0.8", "training_fraction"),
    ("nn_resample = jackknife", "", "nn_resample"),
    ("nn_fraction = 1.5", "", "nn_fraction"),
])
def test_bad_options_name_section_and_key(cu_run, uq, torch_extra, needle):
    write_nn_input(cu_run, members=2, uq=uq, torch_extra=torch_extra)
    proc = run_cli(["fit", "Cu.in", "--overwrite"], cwd=cu_run)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert needle in proc.stderr and "Cu.in" in proc.stderr


@pytest.mark.slow  # kept out of the default run (< 5 min); CI runs it
def test_one_member_and_linear_calculator_are_refused(cu_run):
    write_nn_input(cu_run, members=1)
    proc = run_cli(["fit", "Cu.in", "--overwrite"], cwd=cu_run)
    assert proc.returncode == 2 and "nn_members" in proc.stderr and "[UQ]" in proc.stderr
    path = write_nn_input(cu_run, members=2)
    path.write_text(path.read_text().replace("nonlinear = 1", "nonlinear = 0"))
    proc = run_cli(["fit", "Cu.in", "--overwrite"], cwd=cu_run)
    assert proc.returncode == 2 and "nonlinear" in proc.stderr and "[CALCULATOR]" in proc.stderr


# ----------------------------------------------------------------------------------------- MD hook
def test_hook_spread_equals_direct_torch_evaluation(serial_fit, tmp_path):
    import torch

    from fitsnap_uq.compat import import_lammps
    from lammps_hooks.nn_uq import NNEnsembleHook

    ens = NNEnsemble(serial_fit / "Cu_pot.nnensemble.json")
    lmp = import_lammps().lammps(cmdargs=["-screen", "none", "-log", "none"])
    lmp.commands_string(CU_LJ_MD)  # any pair style drives the MD (here LJ); the hook reports the ensemble
    hook = NNEnsembleHook(lmp, ens, every=5, forces=False).attach()  # softplus: no ML-IAP forces
    lmp.command("run 10")
    n = lmp.get_natoms()
    b = np.array(lmp.numpy.extract_compute("nnuq_sna", 1, 2))[:n]
    assert b.shape == (n, 14)
    direct = []
    for m in ens.info["members"]:
        wrapper = torch.load(serial_fit / m["file"], weights_only=False)
        x = torch.tensor(b, dtype=next(wrapper.parameters()).dtype)
        direct.append(wrapper.model(x, torch.zeros(n, dtype=torch.long)).detach().numpy().reshape(-1))
    direct = np.array(direct, dtype=float)
    estd = np.array(lmp.numpy.extract_atom("d_nnuq_estd"))[:n]
    np.testing.assert_allclose(estd, direct.std(axis=0), rtol=1e-10, atol=1e-12)
    assert estd.min() > 0
    assert lmp.extract_variable("nnuq_estd_max") == pytest.approx(estd.max(), rel=1e-12)
    assert lmp.extract_variable("nnuq_pe_std") == pytest.approx(direct.sum(axis=1).std(), rel=1e-10)
    assert len(hook.history) == 3  # steps 0, 5, 10
    hook.detach()
    lmp.close()


def test_hook_energies_match_the_fit_predictions(serial_fit, cu_data):
    """The hook's descriptors are FitSNAP's: the ensemble's energy of a training configuration in LAMMPS
    equals the fit's prediction of it."""
    from fitsnap_uq.compat import import_lammps
    from lammps_hooks.nn_uq import NNEnsembleHook

    record = json.loads((cu_data / "JSON" / "Bulk" / "Bulk_0.json").read_text())["Dataset"]["Data"][0]
    cell = np.array(record["Lattice"])
    pos = np.array(record["Positions"])
    lmp = import_lammps().lammps(cmdargs=["-screen", "none", "-log", "none"])
    lmp.command("units metal")
    lmp.command("atom_modify map array")
    lmp.command("boundary p p p")
    a, b, c = cell
    lmp.command(f"region box prism 0 {a[0]} 0 {b[1]} 0 {c[2]} {b[0]} {c[0]} {c[1]} units box")
    lmp.command("create_box 1 box")
    for x in pos:
        lmp.command(f"create_atoms 1 single {x[0]} {x[1]} {x[2]} remap yes units box")
    lmp.command("mass 1 63.5")
    lmp.command("pair_style zero 6.0")
    lmp.command("pair_coeff * *")
    ens = NNEnsemble(serial_fit / "Cu_pot.nnensemble.json")
    hook = NNEnsembleHook(lmp, ens, every=1, forces=False).attach()
    lmp.command("run 0")
    n = lmp.get_natoms()
    e = hook.member_energies(n)  # (K, n)
    pred = np.load(serial_fit / "Cu_pot.nnensemble.predictions.npz")
    row = (pred["configs"] == "Bulk_0.json") & (pred["row_types"] == "Energy")
    assert n == len(pos)
    np.testing.assert_allclose(e.sum(axis=1) / n, pred["members"][:, row][:, 0], rtol=1e-9, atol=1e-12)
    lmp.close()


# --------------------------------------------------------------------------------------------- Ta
@NEEDS_TA
@pytest.mark.slow
def test_ta_nnensemble_example_runs(tmp_path):
    example = Path(__file__).resolve().parents[1] / "examples" / "ta_nnensemble" / "Ta-nnensemble.in"
    text = re.sub(r"dataPath = .*", f"dataPath = {SHARED_TA / 'JSON'}", example.read_text())
    text = re.sub(r"num_epochs = \d+", "num_epochs = 20", text)
    (tmp_path / "Ta.in").write_text(text)
    proc = run_cli(["fit", "Ta.in", "--overwrite"], cwd=tmp_path, mpi=2, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    desc = json.loads((tmp_path / "Ta_pot.nnensemble.json").read_text())
    assert len(desc["members"]) == 4 and {m["rank"] for m in desc["members"]} == {0, 1}
    pred = np.load(tmp_path / "Ta_pot.nnensemble.predictions.npz")
    f = (pred["row_types"] == "Force") & pred["testing"]
    assert np.sqrt(np.mean((pred["mean"] - pred["truth"])[f] ** 2)) < 0.5  # eV/A
    assert "Testing" in (tmp_path / "Ta_metrics.uq.md").read_text()
