"""The LAMMPS uncertainty hook: correctness against LAMMPS and numpy, MPI, flagging, halting."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import make_cuag_dataset, run_cli, write_cu_input

from fitsnap_uq.errors import InputError
from fitsnap_uq.posterior import Posterior
from lammps_hooks.flagging import QueryStore
from lammps_hooks.snap_uq import SnapUQHook
from lammps_hooks.uq_math import CoefficientSpread, energy_rows, force_rows

CU_MD = """
units metal
lattice fcc 3.61
region b block 0 3 0 3 0 3
create_box {ntypes} b
create_atoms 1 box
{set_types}
mass * 63.5
pair_style snap
pair_coeff * * {coeff} {param} {elements}
velocity all create {temp} 87287 loop geom
fix nve all nve
"""


PLAIN = "[UQ]\natom_scale = no\nenergy_scale = no\n"
"""The plain predictive model (no per-atom or per-configuration scales: the hook's numbers are
checked against direct numpy here; the scaled path against Posterior.predict in test_atomscale,
test_energy_scale, test_plugin and test_chemflag)."""


def fit_posterior(folder: Path, solver_extra: str = PLAIN) -> Path:
    write_cu_input(folder, solver="BAYES", extra=solver_extra)
    proc = run_cli(["fit", "Cu.in", "--overwrite"], cwd=folder)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return folder / "Cu_pot.posterior.npz"


@pytest.fixture(scope="module")
def cu_posterior(tmp_path_factory, cu_data) -> Path:
    folder = tmp_path_factory.mktemp("cu_post")
    shutil.copytree(cu_data / "JSON", folder / "JSON")
    return fit_posterior(folder)


@pytest.fixture(params=["lammps", "native"])
def descriptors(request) -> str:
    """Where the hook takes its descriptors from: LAMMPS' sna/atom + snad/atom, or the plugin's
    one-pass compute snap/uq/atom (built for the session; skipped without a C++ compiler)."""
    if request.param == "native":
        request.getfixturevalue("built_plugin")
    return request.param


def new_md(posterior_path: Path, temp: float = 800.0, ntypes: int = 1, set_types: str = "",
           elements: str = "Cu", plugin: Path | None = None):
    from fitsnap_uq.compat import import_lammps

    stem = str(posterior_path)[: -len(".posterior.npz")]
    lmp = import_lammps().lammps(cmdargs=["-screen", "none", "-log", "none"])
    if plugin is not None:
        lmp.command(f"plugin load {plugin}")
    lmp.commands_string(CU_MD.format(coeff=f"{stem}.snapcoeff", param=f"{stem}.snapparam", temp=temp,
                                     ntypes=ntypes, set_types=set_types, elements=elements))
    return lmp


def max_rel(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300)))


def direct(lmp, hook: SnapUQHook, post: Posterior):
    """Per-atom energy/force std and total-energy std of the configuration, from
    ``Posterior.predict_raw`` (no noise) on its descriptor rows computed here from LAMMPS' computes."""
    n = lmp.get_natoms()
    b, d = (np.array(a) for a in hook.descriptor_arrays(n))
    types = np.array(lmp.numpy.extract_atom("type"))[:n]
    elems = hook.type_to_element[types - 1]
    x = energy_rows(b, elems, len(post.elements), post.block_size)
    fr = force_rows(d, hook.type_to_element, len(post.elements), post.block_size)
    # independent of the layout assumed above: the rows reproduce the snap pair style's forces
    f = np.array(lmp.numpy.extract_atom("f"))[:n]
    np.testing.assert_allclose(fr @ post.mean, f, rtol=0, atol=1e-9 * max(1.0, np.abs(f).max()))
    estd = post.predict_raw(x)[1]
    fstd = np.sqrt(np.sum(post.predict_raw(fr.reshape(-1, post.n_coefficients))[1].reshape(n, 3) ** 2,
                          axis=1))
    return x, estd, fstd, float(post.predict_raw(x.sum(0)[None, :])[1][0])


def plugin_for(descriptors: str, request) -> Path | None:
    return request.getfixturevalue("built_plugin") if descriptors == "native" else None


def test_peratom_energies_equal_pe_atom(cu_posterior, descriptors, request):
    lmp = new_md(cu_posterior, plugin=plugin_for(descriptors, request))
    lmp.command("compute pe all pe/atom")
    hook = SnapUQHook(lmp, Posterior.load(cu_posterior), every=5, descriptors=descriptors).attach()
    assert hook.native == (descriptors == "native")
    lmp.command("run 10")
    n = lmp.get_natoms()
    pe = np.array(lmp.numpy.extract_compute("pe", 1, 1))[:n]
    x, *_ = direct(lmp, hook, hook.posterior)
    print(f"\n[{descriptors}] B_i . beta vs compute pe/atom: max relative difference "
          f"{max_rel(x @ hook.posterior.mean, pe):.1e}")
    np.testing.assert_allclose(x @ hook.posterior.mean, pe, rtol=1e-10, atol=0)
    lmp.close()


def test_hook_stds_equal_direct_numpy(cu_posterior, descriptors, request):
    lmp = new_md(cu_posterior, plugin=plugin_for(descriptors, request))
    post = Posterior.load(cu_posterior)
    hook = SnapUQHook(lmp, post, every=5, source="analytic", descriptors=descriptors).attach()
    assert hook.native == (descriptors == "native")
    lmp.command("run 10")
    n = lmp.get_natoms()
    _, estd, fstd, pe_std = direct(lmp, hook, post)
    got = {k: np.array(lmp.numpy.extract_atom(f"d_uq_{k}"))[:n] for k in ("estd", "fstd")}
    print(f"\n[{descriptors}] hook vs numpy: estd {max_rel(got['estd'], estd):.1e}"
          f", fstd {max_rel(got['fstd'], fstd):.1e}"
          f", pe_std {max_rel([hook.last['pe_std']], [pe_std]):.1e} (max relative difference)")
    np.testing.assert_allclose(np.array(lmp.numpy.extract_atom("d_uq_estd"))[:n], estd, rtol=1e-10)
    np.testing.assert_allclose(np.array(lmp.numpy.extract_atom("d_uq_fstd"))[:n], fstd, rtol=1e-10)
    assert hook.last["pe_std"] == pytest.approx(pe_std, rel=1e-10)
    assert hook.last["fstd_max"] == pytest.approx(fstd.max(), rel=1e-10)
    assert lmp.extract_variable("uq_pe_std") == pytest.approx(pe_std, rel=1e-10)
    assert [h["step"] for h in hook.history] == [0.0, 5.0, 10.0]
    lmp.command("run 5")  # starts where the last run ended: step 10 is not evaluated twice
    assert [h["step"] for h in hook.history] == [0.0, 5.0, 10.0, 15.0]
    lmp.command("displace_atoms all random 0.01 0.01 0.01 77")
    lmp.command("run 0")  # same step, moved atoms: evaluated again
    assert [h["step"] for h in hook.history] == [0.0, 5.0, 10.0, 15.0, 15.0]
    assert hook.history[-1]["fstd_max"] != hook.history[-2]["fstd_max"]
    lmp.close()


def test_sampled_stds_match_analytic(cu_posterior):
    fitted = Posterior.load(cu_posterior)
    # A Gaussian posterior whose covariance is the fit's predictive one (plus its posterior one: with
    # the low-rank model error and c at its bound the predictive covariance alone can be singular,
    # which a Posterior refuses), and 2000 samples of it.
    post = Posterior(fitted.mean, fitted.predictive_cov + fitted.cov, fitted.elements, fitted.snap)
    sampled = Posterior(post.mean, post.cov, post.elements, post.snap, samples=post.sample(2000, seed=3))
    out = {}
    for name, p in (("analytic", post), ("samples", sampled)):
        lmp = new_md(cu_posterior)
        hook = SnapUQHook(lmp, p, every=10).attach()
        assert hook.spread.source == name
        lmp.command("run 10")
        n = lmp.get_natoms()
        out[name] = (np.array(lmp.numpy.extract_atom("d_uq_estd"))[:n].copy(),
                     np.array(lmp.numpy.extract_atom("d_uq_fstd"))[:n].copy(), hook.last["pe_std"])
        lmp.close()
    for name, a, s in zip(("estd", "fstd", "pe_std"), out["analytic"], out["samples"]):
        print(f"\n2000 samples vs analytic, {name}: max relative difference {max_rel(s, a):.3f}")
        np.testing.assert_allclose(s, a, rtol=0.05)


def test_refuses_a_posterior_that_is_not_the_pair_style(cu_posterior):
    post = Posterior.load(cu_posterior)
    other = Posterior(post.mean * 1.01, post.cov, post.elements, post.snap)
    lmp = new_md(cu_posterior)
    lmp.command("reset_timestep 1")  # the run starts between the hook's steps: first one is 3
    hook = SnapUQHook(lmp, other, every=3).attach()  # checked at its first evaluation of a run
    with pytest.raises(Exception, match="halt"):
        lmp.command("run 5")
    assert "does not match the running snap pair style" in hook.mismatch
    assert lmp.extract_global("ntimestep") == 3  # stopped at its first evaluation
    lmp.close()
    lmp = new_md(cu_posterior)
    with pytest.raises(InputError, match="does not match the running snap pair style"):
        SnapUQHook(lmp, other).attach(verify=False).verify()  # the immediate check
    lmp.close()
    lmp = new_md(cu_posterior)
    hook = SnapUQHook(lmp, post).attach()
    lmp.command("run 2")
    assert hook.checked and hook.mismatch is None
    hook.end_check()
    lmp.command("run 2")  # the check's fixes are gone
    lmp.close()
    lmp = new_md(cu_posterior)
    lmp.command("pair_style zero 4.0")
    lmp.command("pair_coeff * *")
    with pytest.raises(InputError, match="pair_style snap"):
        SnapUQHook(lmp, post).attach()
    lmp.close()


def test_two_elements_with_types_in_another_order(tmp_path):
    make_cuag_dataset(tmp_path)
    text = write_cu_input(tmp_path, solver="BAYES", extra=PLAIN).read_text()
    text = (text.replace("numTypes = 1", "numTypes = 2").replace("twojmax = 4", "twojmax = 4 4")
            .replace("radelem = 0.5", "radelem = 0.5 0.45")
            .replace("wj = 1.0", "wj = 1.0 0.9").replace("type = Cu", "type = Cu Ag")
            .replace("Cu = 0.0", "Cu = 0.0\nAg = 0.0")
            .replace("Bulk     = 1.0 0.0 100 1 1e-6\nStrained = 1.0 0.0 100 1 1e-6",
                     "Alloy = 1.0 0.0 100 1 1e-6"))
    (tmp_path / "Cu.in").write_text(text)
    assert run_cli(["fit", "Cu.in", "--overwrite"], cwd=tmp_path).returncode == 0
    path = tmp_path / "Cu_pot.posterior.npz"
    post = Posterior.load(path)
    # LAMMPS type 1 = Ag, type 2 = Cu: the reverse of the posterior's element order.
    lmp = new_md(path, ntypes=2, set_types="set type 1 type/fraction 2 0.5 1234", elements="Ag Cu")
    lmp.command("compute pe all pe/atom")
    hook = SnapUQHook(lmp, post, every=5, type_elements=["Ag", "Cu"]).attach()
    lmp.command("run 5")
    n = lmp.get_natoms()
    x, estd, fstd, _ = direct(lmp, hook, post)
    pe = np.array(lmp.numpy.extract_compute("pe", 1, 1))[:n]
    np.testing.assert_allclose(x @ post.mean, pe, rtol=1e-10)
    np.testing.assert_allclose(np.array(lmp.numpy.extract_atom("d_uq_fstd"))[:n], fstd, rtol=1e-10)
    np.testing.assert_allclose(np.array(lmp.numpy.extract_atom("d_uq_estd"))[:n], estd, rtol=1e-10)
    lmp.close()


def test_two_types_of_one_element(cu_posterior):
    post = Posterior.load(cu_posterior)
    one = new_md(cu_posterior)
    SnapUQHook(one, post, every=5).attach()
    one.command("run 5")
    two = new_md(cu_posterior, ntypes=2, set_types="set type 1 type/fraction 2 0.5 1234", elements="Cu Cu")
    hook = SnapUQHook(two, post, every=5, type_elements=["Cu", "Cu"]).attach()
    two.command("run 5")
    n = two.get_natoms()
    # also checks D . mean = the pair style's forces
    x, estd, fstd, _ = direct(two, hook, post)
    got = np.array(two.numpy.extract_atom("d_uq_fstd"))[:n]
    np.testing.assert_allclose(got, fstd, rtol=1e-10)
    # the same physical system as with one type: the same stds
    np.testing.assert_allclose(got, np.array(one.numpy.extract_atom("d_uq_fstd"))[:n], rtol=1e-10)
    one.close()
    two.close()


def test_flagging_dedup_cap_and_files(cu_posterior, tmp_path):
    import ase.io

    store = QueryStore(tmp_path / "flags", max_frames=3)
    lmp = new_md(cu_posterior, temp=1500)
    hook = SnapUQHook(lmp, Posterior.load(cu_posterior), every=5, store=store, flag_above=0.0).attach()
    lmp.command("run 40")
    assert store.added == 3 and hook.last["nflagged"] == 3  # capped
    frames = ase.io.read(tmp_path / "flags" / "flagged.extxyz", ":")
    assert len(frames) == 3 and frames[0].arrays["uq_fstd"].shape == (108,)
    assert [f.info["step"] for f in frames] == [0, 5, 10]
    # extxyz stores ~8 significant digits
    np.testing.assert_allclose(frames[2].arrays["uq_fstd"].max(), hook.history[2]["fstd_max"], rtol=1e-6)
    files = store.json_files()
    assert len(files) == 3
    rec = json.loads(files[0].read_text())
    assert rec["Dataset"]["fitsnap_uq"]["labelled"] is False
    # The same configuration again is a near-duplicate; the index survives a new store object.
    again = QueryStore(tmp_path / "flags")
    from lammps_hooks.flagging import Frame

    f0 = frames[0]
    fp = np.asarray(again.index["frames"][0]["fingerprint"])
    dup = Frame(f0.get_chemical_symbols(), f0.positions, np.asarray(f0.cell), f0.pbc, 0.0,
                np.zeros((108, 3)), np.zeros(108), np.zeros(108), fp * (1 + 1e-6), {"step": 99})
    assert again.add(dup) is None and again.skipped_duplicates == 1
    lmp.close()


def test_md_command_halts_cleanly_and_skips_the_rest(cu_posterior, tmp_path):
    folder = cu_posterior.parent
    (folder / "in.md").write_text(CU_MD.format(coeff="Cu_pot.snapcoeff", param="Cu_pot.snapparam",
                                               temp=2000, ntypes=1, set_types="", elements="Cu")
                                  + "thermo_style custom step temp v_uq_fstd_max\nthermo 5\n"
                                  "dump d all custom 5 dump.uq id d_uq_estd d_uq_fstd\n"
                                  "run 50\nprint AFTER_FIRST_RUN\nrun 50\n")
    proc = run_cli(["md", "in.md", "--posterior", "Cu_pot.posterior.npz", "--every", "5",
                    "--halt-above", "0.0", "--summary", str(tmp_path / "s.json")], cwd=folder)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "fitsnap-uq: stopped at step 5: uq_fstd_max" in proc.stdout  # step 0: perfect lattice
    assert "AFTER_FIRST_RUN" not in proc.stdout
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["halted"] and summary["last"]["step"] <= 5
    assert "d_uq_fstd" in (folder / "dump.uq").read_text()
    log = (folder / "log.lammps").read_text()
    assert log.count("Loop time") == 1  # the user's run only: the hook checks at its first step
    assert "run 0" not in log


@pytest.mark.mpi
def test_global_std_under_mpirun_equals_serial(cu_posterior, tmp_path, descriptors, request):
    folder = cu_posterior.parent
    (folder / "in.mpi").write_text(CU_MD.format(coeff="Cu_pot.snapcoeff", param="Cu_pot.snapparam",
                                                temp=900, ntypes=1, set_types="", elements="Cu")
                                   + "run 20\n")
    out = {}
    for ranks in (0, 2):
        plugin = plugin_for(descriptors, request)
        proc = run_cli(["md", "in.mpi", "--posterior", "Cu_pot.posterior.npz", "--every", "10",
                        "--summary", str(tmp_path / f"s{ranks}.json"), "--log", "none",
                        "--descriptors", descriptors], cwd=folder, mpi=ranks,
                       extra_env={"FITSNAP_UQ_PLUGIN_DIR": str(plugin.parent)} if plugin else None)
        assert proc.returncode == 0, proc.stderr[-2000:]
        summary = json.loads((tmp_path / f"s{ranks}.json").read_text())
        assert summary["descriptors"] == descriptors
        assert summary["cost"]["evaluations"] == 3 and summary["cost"]["descriptors_s"] > 0
        assert "fitsnap-uq md: 3 evaluations: descriptors" in proc.stdout
        out[ranks] = summary["history"]
    assert len(out[0]) == len(out[2]) == 3
    # (at step 0 the lattice is perfect and the force stds are round-off, ~1e-16: compared absolutely)
    worst = max(max_rel([p[k]], [s[k]]) for s, p in zip(out[0], out[2])
                for k in ("pe_std", "pe_atom_std", "estd_max", "fstd_max", "estd_mean", "fstd_mean")
                if abs(s[k]) > 1e-9)
    print(f"\n[{descriptors}] mpirun -np 2 vs serial globals: max relative difference {worst:.1e}")
    for serial, parallel in zip(out[0], out[2]):
        for key in ("pe_std", "pe_atom_std", "estd_max", "fstd_max", "estd_mean", "fstd_mean"):
            assert parallel[key] == pytest.approx(serial[key], rel=1e-12), key


def test_coefficient_spread_from_samples_is_the_sample_variance():
    rng = np.random.default_rng(0)
    samples = rng.normal(size=(50, 4))
    spread = CoefficientSpread.from_samples(samples)
    x = rng.normal(size=(7, 4))
    np.testing.assert_allclose(spread.std(x), np.std(samples @ x.T, axis=0, ddof=1), rtol=1e-12)


def test_md_checks_at_the_first_evaluation_across_timestep_resets(cu_posterior):
    """The first run ends before the hook's first step; reset_timestep still works; the check runs
    in the next run, and a wrong posterior is refused there."""
    from lammps_hooks.md import run_md

    folder = cu_posterior.parent
    (folder / "in.reset").write_text(CU_MD.format(coeff="Cu_pot.snapcoeff", param="Cu_pot.snapparam",
                                                  temp=300, ntypes=1, set_types="", elements="Cu")
                                     + "reset_timestep 5\nrun 2\nreset_timestep 0\nrun 10\n")
    result = run_md(folder / "in.reset", cu_posterior, every=10, log=None, screen=False)
    assert result.hook.checked and result.hook.mismatch is None
    assert [h["step"] for h in result.hook.history] == [0.0, 10.0]
    post = Posterior.load(cu_posterior)
    other = Posterior(post.mean * 1.01, post.cov, post.elements, post.snap)
    with pytest.raises(InputError, match="does not match the running snap pair style"):
        run_md(folder / "in.reset", other, every=10, log=None, screen=False)
