"""Explicit multi-element SNAP (``chemflag = 1``) and quadratic SNAP (``quadraticflag = 1``) end to end:
``fitsnap-uq fit`` (BAYES) on two-element EMT data, the written ``.snapcoeff``/``.snapparam`` in LAMMPS'
``pair_style snap`` against FitSNAP's own model, and the per-atom and global uncertainty of the MD hook
(LAMMPS' computes and the plugin's) and of ``fix snap/uq`` (serial and ``mpirun -np 2``) against
``Posterior.predict`` on the configuration's descriptor rows; the refusals that go with them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import HAS_CXX, predicted_on, read_snapcoeff, run_cli, write_cu_input

from fitsnap_uq.errors import InputError
from fitsnap_uq.posterior import Posterior
from lammps_hooks.native import write_plugin_posterior
from lammps_hooks.snap_uq import SnapUQHook

RTOL = 1e-10
ELEMENTS = ["Cu", "Ag"]
FLAGS = {"chemflag": "chemflag = 1\nbnormflag = 1", "quadratic": "quadraticflag = 1"}

# 108 atoms of fcc Cu-Ag (40% Ag at random, displaced off the lattice: on it the force stds are round-off)
# read from a data file, so that atom ids and types are the same under mpirun (create_atoms numbers the
# atoms by domain, set type/fraction draws per domain)
SETUP = """
units metal
atom_style atomic
read_data {data}
pair_style snap
pair_coeff * * {stem}.snapcoeff {stem}.snapparam {elements}
"""
DUMP = "write_dump all custom peratom.txt id {cols} modify sort id format float %.17g\n"


def cuag_input(folder: Path, flags: str, extra: str = "") -> Path:
    """A FitSNAP input for the EMT Cu-Ag data in ``folder``: two elements, 2J = 4, solver BAYES, and
    the [BISPECTRUM] lines ``flags`` (``key = value``, replacing the defaults)."""
    text = write_cu_input(folder, solver="BAYES", extra=extra).read_text()
    values = {"numTypes": "2", "twojmax": "4 4", "radelem": "0.5 0.45", "wj": "1.0 0.9", "type": "Cu Ag"}
    values.update(tuple(x.strip() for x in line.split("=")) for line in flags.splitlines())
    lines = []
    for line in text.splitlines():  # these keys are all [BISPECTRUM]'s
        key = line.split("=")[0].strip()
        lines.append(f"{key} = {values.pop(key)}" if "=" in line and key in values else line)
    at = lines.index("[BISPECTRUM]") + 1
    lines[at:at] = [f"{k} = {v}" for k, v in values.items()]  # keys the template does not have
    text = "\n".join(lines).replace("Cu = 0.0", "Cu = 0.0\nAg = 0.0").replace(
        "Bulk     = 1.0 0.0 100 1 1e-6\nStrained = 1.0 0.0 100 1 1e-6", "Alloy = 1.0 0.0 100 1 1e-6")
    path = folder / "Cu.in"
    path.write_text(text + "\n")
    return path


def alloy(symbols_ag: int, reps: int, seed: int):
    """fcc Cu-Ag (a = 3.75 A, cubic cell repeated ``reps`` times) with ``symbols_ag`` Ag atoms at random,
    rattled by 0.1 A."""
    from ase.build import bulk

    rng = np.random.default_rng(seed)
    atoms = bulk("Cu", "fcc", a=3.75, cubic=True).repeat((reps, reps, reps))
    symbols = np.array(atoms.get_chemical_symbols())
    symbols[rng.permutation(len(atoms))[:symbols_ag]] = "Ag"
    atoms.set_chemical_symbols(symbols.tolist())
    atoms.rattle(stdev=0.1, seed=int(rng.integers(1 << 30)))
    return atoms


def make_alloy_dataset(folder: Path) -> None:
    """Five 32-atom Cu-Ag cells of 8 to 24 Ag atoms (EMT energies, forces, stresses), group Alloy: the
    composition varies, so each element's energy offset is determined by the data."""
    from ase.calculators.emt import EMT

    from fitsnap_uq.fitsnap_json import atoms_record, write_record

    for i, n_ag in enumerate((8, 12, 16, 20, 24)):
        atoms = alloy(n_ag, 2, seed=i)
        atoms.calc = EMT()
        write_record(atoms_record(atoms), folder / "JSON" / "Alloy" / f"Alloy_{i}.json")


@pytest.fixture(scope="module", params=list(FLAGS))
def fitted(request, tmp_path_factory) -> tuple[str, Path]:
    """(flag, stem) of a BAYES fit with chemflag 1 (and bnormflag 1) or quadraticflag 1, the per-atom
    force scale and the per-configuration energy scale on; FitSNAP's descriptors and truths dumped
    beside it, and the MD configuration of SETUP (``md.data``)."""
    folder = tmp_path_factory.mktemp(request.param)
    make_alloy_dataset(folder)
    alloy(43, 3, seed=99).write(folder / "md.data", format="lammps-data", specorder=ELEMENTS,
                                masses=True)
    cuag_input(folder, FLAGS[request.param], extra="[UQ]\natom_scale = yes\nenergy_scale = yes\n"
                                                   "[EXTRAS]\ndump_descriptors = 1\ndump_truth = 1\n")
    proc = run_cli(["fit", "Cu.in", "--overwrite"], cwd=folder)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return request.param, folder / "Cu_pot"


def posterior(stem: Path) -> Posterior:
    return Posterior.load(f"{stem}.posterior.npz")


def max_rel(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300)))


def setup(stem: Path, elements: str = "Cu Ag") -> str:
    """SETUP for the fit ``stem``, pair_coeff's elements ``elements``."""
    return SETUP.format(data=stem.parent / "md.data", stem=stem, elements=elements)


def new_lammps(stem: Path, plugin: Path | None = None, elements: str = "Cu Ag"):
    from fitsnap_uq.compat import import_lammps

    lmp = import_lammps().lammps(cmdargs=["-screen", "none", "-log", "none"])
    if plugin is not None:
        lmp.command(f"plugin load {plugin}")
    lmp.commands_string(setup(stem, elements))
    return lmp


def test_fit_writes_a_potential_that_lammps_runs_as_fitsnap_fitted(fitted):
    flag, stem = fitted
    post = posterior(stem)
    assert post.elements == ELEMENTS and int(post.snap[flag.replace("quadratic", "quadraticflag")]) == 1
    ncoeff = 14 * (8 if flag == "chemflag" else 1)  # 2J = 4: 14 triples; chemflag: x 2^3 elements
    if flag == "quadratic":
        ncoeff += ncoeff * (ncoeff + 1) // 2
    assert post.block_size == ncoeff + 1 and post.snap["ncoeff"] == ncoeff
    np.testing.assert_allclose(read_snapcoeff(f"{stem}.snapcoeff"), post.mean, rtol=1e-12)
    param = Path(f"{stem}.snapparam").read_text()
    assert f"{'chemflag' if flag == 'chemflag' else 'quadraticflag'} 1" in param
    # FitSNAP's own model of each training configuration: its energy row (Descriptors.npy, FitSNAP's
    # column layout) times the fitted coefficients; LAMMPS' pair_style snap on the same atoms.
    from ase import Atoms

    from fitsnap_uq.compat import import_lammps

    a, truth = np.load(stem.parent / "Descriptors.npy"), np.load(stem.parent / "Truth-Ref.npy")
    worst = 0.0
    for path in sorted((stem.parent / "JSON" / "Alloy").glob("*.json")):
        data = json.loads(path.read_text())["Dataset"]["Data"][0]
        row = np.flatnonzero(np.abs(truth - data["Energy"] / data["NumAtoms"]) < 1e-12)
        assert row.size == 1
        fitsnap_energy = float(a[row[0]] @ post.mean[post.fit_columns])
        assert post.predict(a[row])[0][0] == pytest.approx(fitsnap_energy, rel=1e-12)
        atoms = Atoms(data["AtomTypes"], positions=data["Positions"], cell=data["Lattice"], pbc=True)
        atoms.write(stem.parent / "config.data", format="lammps-data", specorder=ELEMENTS, masses=True)
        lmp = import_lammps().lammps(cmdargs=["-screen", "none", "-log", "none"])
        lmp.commands_string(f"""
            units metal
            atom_style atomic
            read_data {stem.parent / 'config.data'}
            pair_style snap
            pair_coeff * * {stem}.snapcoeff {stem}.snapparam Cu Ag
            run 0
        """)
        lammps_energy = lmp.get_thermo("pe") / lmp.get_natoms()
        lmp.close()
        worst = max(worst, max_rel([lammps_energy], [fitsnap_energy]))
    print(f"\n[{flag}] pair_style snap vs FitSNAP's model, energy per atom: max relative difference "
          f"{worst:.1e}")
    assert worst <= RTOL


def reference(stem: Path) -> tuple[np.ndarray, np.ndarray, float]:
    """:func:`conftest.predicted_on` SETUP's configuration: per-atom energy and force sigma (id order) and
    the total-energy sigma from ``Posterior.predict`` on its descriptor rows."""
    return predicted_on(new_lammps(stem), posterior(stem))


def report(label: str, got: tuple, want: tuple) -> None:
    rel = {name: max_rel(g, w) for name, g, w in zip(("estd", "fstd", "pe_std"), got, want)}
    print(f"\n{label} vs Posterior.predict: max relative difference "
          + ", ".join(f"{k} {v:.1e}" for k, v in rel.items()))
    assert max(rel.values()) <= RTOL, rel


@pytest.mark.parametrize("descriptors", ["lammps", "native"])
def test_hook_equals_posterior_predict(fitted, descriptors, request):
    flag, stem = fitted
    plugin = request.getfixturevalue("built_plugin") if descriptors == "native" else None
    want = reference(stem)
    lmp = new_lammps(stem, plugin)
    hook = SnapUQHook(lmp, posterior(stem), every=1, descriptors=descriptors).attach()
    assert hook.native == (descriptors == "native")
    lmp.command("run 0")
    n = lmp.get_natoms()
    order = np.argsort(np.array(lmp.numpy.extract_atom("id"))[:n])
    got = (np.array(lmp.numpy.extract_atom("d_uq_estd"))[:n][order],
           np.array(lmp.numpy.extract_atom("d_uq_fstd"))[:n][order], [hook.last["pe_std"]])
    lmp.close()
    report(f"[{flag}] hook ({descriptors} descriptors), serial", got, (want[0], want[1], [want[2]]))


def plugin_run(stem: Path, plugin: Path, folder: Path, ranks: int = 0) -> tuple:
    from test_plugin import run_lmp

    uq = write_plugin_posterior(f"{stem}.posterior.npz", folder / "pot.uq")
    script = (f"plugin load {plugin}\n" + setup(stem)
              + f"fix uq all snap/uq 1 {uq}\nrun 0\n" + DUMP.format(cols="f_uq[1] f_uq[2]")
              + 'print "PESTD $(f_uq[1]:%.17g)"\n')
    proc = run_lmp(script, folder, ranks=ranks)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    if ranks:
        assert "by 2 MPI" in proc.stdout, proc.stdout[:2000]
    rows = np.loadtxt(folder / "peratom.txt", skiprows=9)
    pe = float([ln for ln in proc.stdout.splitlines() if ln.startswith("PESTD ")][-1].split()[1])
    return rows[:, 1], rows[:, 2], [pe]


@pytest.mark.skipif(not HAS_CXX, reason="no C++ compiler")
def test_fix_snap_uq_equals_posterior_predict(fitted, built_plugin, tmp_path):
    flag, stem = fitted
    want = reference(stem)
    got = plugin_run(stem, built_plugin, tmp_path)
    report(f"[{flag}] fix snap/uq, serial lmp -in", got, (want[0], want[1], [want[2]]))


@pytest.mark.mpi
@pytest.mark.skipif(not HAS_CXX, reason="no C++ compiler")
def test_fix_snap_uq_under_mpirun_equals_posterior_predict(fitted, built_plugin, tmp_path):
    flag, stem = fitted
    want = reference(stem)
    got = plugin_run(stem, built_plugin, tmp_path, ranks=2)
    report(f"[{flag}] fix snap/uq, mpirun -np 2 lmp -in", got, (want[0], want[1], [want[2]]))


@pytest.mark.slow  # guards a landed feature; CI runs it (.ci/run), the default run stays < 5 min
@pytest.mark.mpi
@pytest.mark.parametrize("ranks", [0, 2], ids=["serial", "mpirun -np 2"])
@pytest.mark.parametrize("descriptors", ["lammps", "native"])
def test_md_cli_equals_posterior_predict(fitted, descriptors, ranks, request, tmp_path):
    flag, stem = fitted
    env = None
    if descriptors == "native":
        env = {"FITSNAP_UQ_PLUGIN_DIR": str(request.getfixturevalue("built_plugin").parent)}
    want = reference(stem)
    (tmp_path / "in.md").write_text(setup(stem) + "run 0\n" + DUMP.format(cols="d_uq_estd d_uq_fstd"))
    proc = run_cli(["md", "in.md", "--posterior", f"{stem}.posterior.npz", "--every", "1",
                    "--summary", "s.json", "--log", "none", "--descriptors", descriptors],
                   cwd=tmp_path, mpi=ranks, extra_env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = np.loadtxt(tmp_path / "peratom.txt", skiprows=9)
    pe = json.loads((tmp_path / "s.json").read_text())["last"]["pe_std"]
    report(f"[{flag}] fitsnap-uq md ({descriptors} descriptors), {'mpirun -np 2' if ranks else 'serial'}",
           (rows[:, 1], rows[:, 2], [pe]), (want[0], want[1], [want[2]]))


def test_ensemble_runs_the_sampled_potentials(fitted, tmp_path):
    flag, stem = fitted
    (tmp_path / "in.nvt").write_text(setup(stem) + """
        velocity all create 300 4928459 loop geom
        fix nvt all nvt temp 300 300 0.1
        run 20
    """)
    proc = run_cli(["ensemble", "in.nvt", "--posterior", f"{stem}.posterior.npz", "--samples", "2",
                    "--every", "10", "--observables", "pe/atoms", "--outdir", "ens"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "ens" / "ensemble.json").read_text())
    assert summary["kept"] == [0, 1] and not summary["excluded"]
    pe = np.array(summary["values"])[:, :, 0]
    assert np.all(np.isfinite(pe)) and not np.allclose(pe[0], pe[1])


@pytest.mark.parametrize("fitted", ["chemflag"], indirect=True)
def test_tied_coefficients_are_spread_for_lammps(fitted, tmp_path):
    """chemflag SNAP has pairs of descriptor columns that agree on every row (30 per element block
    at 2J = 4 with two elements). The fit carries each pair's spread on one column; a posterior sample
    written for LAMMPS spreads the pair's combination evenly, and LAMMPS' forces are then D . theta;
    written as drawn, LAMMPS' energies are right but its forces are not their gradient."""
    from lammps_hooks.uq_math import energy_rows, force_rows

    flag, stem = fitted
    post = posterior(stem)
    assert len(post.ties) == 60 and post.info["tied_columns"] == 60
    assert all(abs(abs(f) - 1.0) < 1e-9 for _, _, f in post.ties)
    theta = post.sample(1, seed=11)[0]
    dup = [j for j, _, _ in post.ties]
    # the spread of a pair is on its earlier column: a draw is not spread evenly over the pair
    assert np.all(theta[dup] == post.mean[dup]) and not np.allclose(post.tied(theta), theta)
    np.testing.assert_allclose(post.tied(post.mean), post.mean, rtol=1e-12)
    raw = Posterior(post.mean, post.cov, post.elements, post.snap)  # no ties: writes theta as it is
    out = {}
    for name, writer in (("tied", post), ("as_drawn", raw)):
        writer.write_snapcoeff(tmp_path / f"{name}.snapcoeff", theta)
        lmp = new_lammps(stem)
        lmp.command(f"pair_coeff * * {tmp_path / (name + '.snapcoeff')} {stem}.snapparam Cu Ag")
        lmp.command("compute pe all pe/atom")
        hook = SnapUQHook(lmp, post, every=1, descriptors="lammps")
        hook._map_types()
        lmp.command(f"compute sna all sna/atom {hook._descriptor_args()}")
        lmp.command(f"compute snad all snad/atom {hook._descriptor_args()}")
        lmp.command("run 0")
        n = lmp.get_natoms()
        types = np.array(lmp.numpy.extract_atom("type"))[:n]
        x = energy_rows(np.array(lmp.numpy.extract_compute("sna", 1, 2))[:n], types - 1, 2,
                        post.block_size)
        fr = force_rows(np.array(lmp.numpy.extract_compute("snad", 1, 2))[:n], np.array([0, 1]), 2,
                        post.block_size)
        f = np.array(lmp.numpy.extract_atom("f"))[:n]
        pe = np.array(lmp.numpy.extract_compute("pe", 1, 1))[:n]
        lmp.close()
        out[name] = (max_rel(pe, x @ theta), np.abs(f - fr @ theta).max() / np.abs(f).max())
    print(f"\nposterior sample in pair_style snap, relative difference of energies and forces to "
          f"x . theta and D . theta: {out}")
    assert out["tied"][0] < 1e-10 and out["tied"][1] < 1e-10
    assert out["as_drawn"][0] < 1e-10 and out["as_drawn"][1] > 1e-3


# ------------------------------------------------------------------------------------- refusals
CHEM_ORDER = "numbers the elements in the order they first appear in pair_coeff"


@pytest.mark.parametrize("fitted", ["chemflag"], indirect=True)
def test_chemflag_element_order_other_than_the_fit_is_refused_everywhere(fitted, built_plugin, tmp_path):
    """LAMMPS numbers a chemflag potential's elements by their first appearance in pair_coeff: 'Ag Cu'
    (type 1 = Ag) would run the Cu-Ag fit with its element columns swapped. Each command refuses it,
    naming the posterior file and [BISPECTRUM] chemflag."""
    from test_plugin import run_lmp

    flag, stem = fitted
    path = f"{stem}.posterior.npz"
    swapped = setup(stem, "Ag Cu")
    (tmp_path / "in.md").write_text(swapped + "run 0\n")
    messages = []
    for args in (["md", "in.md", "--posterior", path],
                 ["ensemble", "in.md", "--posterior", path, "--samples", "2"]):
        proc = run_cli(args, cwd=tmp_path)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        messages.append(proc.stderr)
    lmp = new_lammps(stem, elements="Ag Cu")
    with pytest.raises(InputError) as err:
        SnapUQHook(lmp, posterior(stem), type_elements=["Ag", "Cu"]).attach()
    lmp.close()
    messages.append(str(err.value))
    uq = write_plugin_posterior(path, tmp_path / "pot.uq")
    proc = run_lmp(f"plugin load {built_plugin}\n" + swapped + f"fix uq all snap/uq 1 {uq}\n", tmp_path)
    assert proc.returncode != 0
    messages.append(proc.stdout + proc.stderr)
    for text, name in zip(messages, ("md", "ensemble", "hook", "fix")):
        where = str(uq) if name == "fix" else path
        assert f"file {where}" in text and "section [BISPECTRUM], key 'chemflag'" in text, (name, text)
        assert CHEM_ORDER in text, (name, text)


@pytest.mark.parametrize("fitted", ["chemflag"], indirect=True)
def test_unsupported_switchinnerflag_is_refused_with_one_message(fitted, tmp_path):
    flag, stem = fitted
    post = posterior(stem)
    inner = Posterior(post.mean, post.cov, post.elements, dict(post.snap, switchinnerflag=1))
    path = inner.save(tmp_path / "inner.posterior.npz")
    lmp = new_lammps(stem)
    with pytest.raises(InputError) as hook_err:
        SnapUQHook(lmp, Posterior.load(path)).attach()
    lmp.close()
    with pytest.raises(InputError) as plugin_err:
        write_plugin_posterior(path, tmp_path / "inner.uq")
    assert str(hook_err.value) == str(plugin_err.value)
    assert f"file {path}, section [BISPECTRUM], key 'switchinnerflag'" in str(hook_err.value)
    assert not (tmp_path / "inner.uq").exists()


@pytest.mark.parametrize("flags, solver, key", [
    ("chemflag = 1\nquadraticflag = 1", "BAYES", "quadraticflag"),  # FitSNAP has no quadratic chemflag
    ("chemflag = 1\ntwojmax = 4 2", "BAYES", "twojmax"),
])
def test_fit_refuses_what_chemflag_does_not_support_in_one_line(tmp_path, flags, solver, key):
    make_alloy_dataset(tmp_path)
    path = cuag_input(tmp_path, flags)
    path.write_text(path.read_text().replace("solver = BAYES", f"solver = {solver}"))
    proc = run_cli(["fit", "Cu.in", "--overwrite"], cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert f"file Cu.in, section [BISPECTRUM], key '{key}'" in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "Cu_pot.posterior.npz").exists()


@pytest.mark.slow
@pytest.mark.parametrize("solver, uq", [
    ("MODELERROR", ""),
    ("BAYESMCMC", "mcmc_walkers = 32\nmcmc_steps = 60\nmcmc_burn = 20\nmcmc_chains = 2\n"),
])
def test_modelerror_and_bayesmcmc_tie_the_duplicate_columns_as_bayes(tmp_path, solver, uq):
    """chemflag = 1 with MODELERROR and BAYESMCMC through ``fitsnap-uq fit``: the 60 duplicate columns
    are tied as BAYES ties them (header ``ties``), their coefficients spread over each pair, the
    covariance finite and 0 on the tied columns, the written potential the posterior's mean."""
    make_alloy_dataset(tmp_path)
    path = cuag_input(tmp_path, FLAGS["chemflag"], extra=f"[UQ]\n{uq}" if uq else "")
    path.write_text(path.read_text().replace("solver = BAYES", f"solver = {solver}"))
    proc = run_cli(["fit", "Cu.in", "--overwrite"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    post = posterior(tmp_path / "Cu_pot")
    assert len(post.ties) == 60 and all(abs(abs(f) - 1.0) < 1e-9 for _, _, f in post.ties)
    dup = [j for j, _, _ in post.ties]
    assert np.all(np.isfinite(post.cov)) and np.all(post.cov[dup] == 0.0)
    np.testing.assert_allclose(post.tied(post.mean), post.mean, rtol=1e-12)
    np.testing.assert_allclose(read_snapcoeff(tmp_path / "Cu_pot.snapcoeff"), post.mean, rtol=1e-12)


@pytest.mark.skipif(not HAS_CXX, reason="no C++ compiler")
@pytest.mark.parametrize("ranks", [0, pytest.param(2, marks=pytest.mark.mpi)], ids=["serial", "mpirun"])
@pytest.mark.parametrize("noise", [pytest.param(False, marks=pytest.mark.slow), True],
                         ids=["coefficients", "noise"])  # noise covers both parts: the default run
def test_energy_and_atom_scales_hook_and_plugin_equal_posterior_predict(fitted, built_plugin, tmp_path,
                                                                        ranks, noise):
    """Two elements, both scales: the fit's (``[UQ] atom_scale = yes``, ``energy_scale = yes``) and
    one set by hand (every weight nonzero; the energy scale's intercepts on the composition columns,
    the Cu and Ag constant columns): the hook's (``fitsnap-uq md``) and the plugin's per-atom sigma and
    configuration energy sigma equal Posterior.predict to 1e-10, serial and under mpirun -np 2."""
    from test_plugin import both_scales, md_cli_values, plugin_run_values, three_way

    from fitsnap_uq.linear.atomscale import AtomScale

    flag, stem = fitted
    fit = posterior(stem)
    assert fit.atom_scale is not None and fit.atom_scale.nelem == 2
    assert fit.energy_scale is not None and fit.energy_scale.nelem == 2
    block = fit.block_size
    np.testing.assert_array_equal(fit.energy_columns, [0, block])
    atom = AtomScale(theta=np.array([0.3, -0.2, 0.4, -0.3, 0.2]), mu=np.array([-12.0, -13.0, 0.0]),
                     sd=np.full(3, 6.0), nelem=2, lam=0.01, floor_var=0.04, eps=np.full(3, 1e-300),
                     phi=np.array([-0.3, 0.2, 0.5, -0.2, 0.3]))
    by_hand = both_scales(fit, [0, block], theta=np.array([0.4, -0.5, 0.3, -0.4, 0.5, 0.6]),
                          phi=np.array([-0.3, 0.4, 0.6, 0.3, -0.5, 0.7]), atom=atom,
                          floors={"Energy": 1e-4, "Force": 0.04})
    for label, post in (("fitted scales", fit), ("scales by hand", by_hand)):
        folder = tmp_path / label.replace(" ", "_")
        path = post.save(folder / "pot.posterior.npz") if post is by_hand else Path(f"{stem}.posterior.npz")
        uq = write_plugin_posterior(path, tmp_path / f"{label.replace(' ', '_')}.uq")
        assert "\natom_scale 2\n" in uq.read_text()
        assert f"\nenergy_scale 2\nescale_cols 2 0 {block}\n" in uq.read_text()
        want = predicted_on(new_lammps(stem), post, noise=noise)
        pe, pf, ppe, out = plugin_run_values(built_plugin, setup(stem), uq, folder / "plugin", ranks, noise)
        assert "per-configuration energy scale" in out
        hook = md_cli_values(setup(stem), path, folder / "hook", ranks, noise)
        three_way(f"[Cu-Ag {flag}, {label}, {'noise' if noise else 'coefficients'}, "
                  f"{'mpirun -np 2' if ranks else 'serial'}]", want, plugin=(pe, pf, ppe), hook=hook)
        if post is by_hand:  # the energy scale changes the configuration's energy sigma
            plain = predicted_on(new_lammps(stem), posterior_without_energy_scale(post), noise=noise)[2]
            assert abs(ppe / plain - 1) > 1e-3


def posterior_without_energy_scale(post: Posterior) -> Posterior:
    me = {k: v for k, v in post.model_error.items() if k not in ("atom_scale", "energy_scale",
                                                                  "energy_columns")}
    return Posterior(post.mean, post.cov, post.elements, post.snap, noise_var=post.noise_var,
                     model_error={**me, "atom_scale": post.atom_scale.to_dict()}, ties=post.ties)
