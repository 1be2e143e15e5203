"""The per-configuration energy scale (``[UQ] energy_scale = yes``) stored in the Posterior: the
fitted model and ``Posterior.predict`` give the same energy sigma, the Posterior file keeps it, the MD
hook's configuration energy sigma is ``Posterior.predict``'s, the plugin file carries it (version 3),
the solver fits it and a bad value is one clear error. The LAMMPS parity (hook and plugin, serial and
``mpirun -np 2``) is in tests/test_plugin.py (Ta) and tests/test_chemflag.py (Cu-Ag)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import run_cli, write_cu_input

from fitsnap_uq.errors import InputError
from fitsnap_uq.linear.atomscale import AtomScale
from fitsnap_uq.linear.rows import Rows, composition, fit_with_model_error
from fitsnap_uq.posterior import Posterior, posterior_from_fit

SNAP = {"bzeroflag": 0, "twojmax": 2, "rcutfac": 4.0, "rfac0": 0.99, "radelem": [0.5, 0.4],
        "wj": [1.0, 0.9], "rmin0": 0.0, "quadraticflag": 0}


def _alloy_rows(rng: np.random.Generator, n_conf: int = 160, k: int = 4) -> Rows:
    """Toy rows in FitSNAP's two-element layout with constant columns (``[frac_A, B_A (k), frac_B,
    B_B (k)]`` on energy rows, 0 in the constant columns of force rows); energy errors grow with
    the number of atoms and the fraction of element B, force errors with the atom's element."""
    m = 2 * (k + 1)
    coef = rng.standard_normal(m)
    recs = []
    for c in range(n_conf):
        nat = int(rng.integers(2, 60))
        frac = float(rng.random())
        e_row = np.r_[frac, rng.standard_normal(k), 1 - frac, rng.standard_normal(k)]
        err = 0.002 * np.sqrt(nat) * (1 + 3 * frac)
        recs.append((e_row, e_row @ coef + err * rng.standard_normal(), "Energy", f"c{c}", -1, -1, nat))
        for j in range(3):
            el = int(rng.integers(0, 2))
            for _ in range(3):
                row = np.r_[0.0, rng.standard_normal(k), 0.0, rng.standard_normal(k)]
                noise = 0.03 * (1 + 2 * el)
                recs.append((row, row @ coef + noise * rng.standard_normal(), "Force", f"c{c}", j, el,
                             nat))
    a, b, types, cfg, atom, elem, nat = (list(x) for x in zip(*recs))
    n = len(b)
    return Rows(np.array(a), np.array(b), np.ones(n), np.zeros(n, bool), np.full(n, "g", dtype=object),
                np.array(types, dtype=object), np.array(cfg, dtype=object), np.array(atom),
                np.array(elem), np.array(nat))


@pytest.fixture(scope="module", params=[0, 3], ids=["rank0", "rank3"])
def fitted_alloy(request):
    rows = _alloy_rows(np.random.default_rng(11))
    full, model, _ = fit_with_model_error(rows, folds=5, seed=0, energy_scale=True, rank=request.param)
    return rows, full, model


def _posterior_of(full, model) -> Posterior:
    """The Posterior the BAYES solver stores for ``model`` (:func:`fitsnap_uq.solvers.energy_scale_dict`)."""
    from fitsnap_uq.solvers import energy_scale_dict

    return posterior_from_fit(full.result.mean, full.result.cov, ["A", "B"], {**SNAP, "ncoeff": 4},
                              noise_var=dict(model.floor_var),
                              model_error={"cov_scale": model.cov_scale, "coef_var": model.coef_var,
                                           "factor": model.factor,
                                           "atom_scale": model.atom_scale.to_dict(),
                                           "energy_scale": energy_scale_dict(model)})


def test_posterior_predict_equals_the_fitted_model_and_round_trips(fitted_alloy, tmp_path):
    """Posterior.predict_raw with atom labels and natoms equals PredictiveModel.variance with its
    per-atom and per-configuration log scales (energy rows per atom, composition from the constant
    columns); the Posterior file keeps the energy scale; without natoms the energy rows are unscaled."""
    rows, full, model = fitted_alloy
    assert model.energy_scale is not None and model.atom_scale is not None
    np.testing.assert_array_equal(model.energy_columns, [0, 5])
    assert model.energy_scale.theta.size == 2 + 4
    post = _posterior_of(full, model)
    np.testing.assert_array_equal(post.energy_columns, [0, 5])
    types = rows.row_types.astype(str)
    energy = types == "Energy"
    natoms = np.where(energy, rows.natoms, 0)
    pv = np.einsum("ij,jk,ik->i", rows.a, full.result.cov, rows.a)
    ls, lf = model.log_scales(rows.a, pv, types, rows.atom_ids(), rows.element,
                              composition(rows.a, model.energy_columns), rows.natoms)
    assert np.ptp(ls[energy]) > 0.1
    if model.factor.shape[1] == rows.a.shape[1]:  # rank 0 (the rotated diagonal part only)
        assert np.ptp(lf[energy]) > 0.1
    else:  # rank 3: the model error takes the energies' spread, their floor (and its scale) goes to ~0
        assert model.floor_var["Energy"] < 1e-12 * np.mean(model.model_error_var(rows.a[energy]))
    want = model.variance(rows.a, pv, types, ls, lf)
    labels = {"atom": rows.atom_ids(), "element": rows.element, "natoms": natoms}
    _, std = post.predict_raw(rows.a, list(types), **labels)
    rel = np.max(np.abs(std**2 / want - 1))
    print(f"\nPosterior.predict_raw vs PredictiveModel.variance: max relative difference {rel:.1e}")
    assert rel < 1e-8
    back = Posterior.load(post.save(tmp_path / "p.posterior.npz"))
    assert back.energy_scale is not None
    np.testing.assert_array_equal(back.energy_scale.theta, post.energy_scale.theta)
    np.testing.assert_array_equal(back.energy_scale.phi, post.energy_scale.phi)
    np.testing.assert_array_equal(back.energy_columns, post.energy_columns)
    _, std2 = back.predict_raw(rows.a, list(types), **labels)
    np.testing.assert_allclose(std2, std, rtol=1e-14)
    # predict (calibrated) and interval take natoms too; without it the energy rows are unscaled
    _, unscaled = back.predict_raw(rows.a, list(types), atom=rows.atom_ids(), element=rows.element)
    assert np.all(unscaled[~energy] == std2[~energy])
    assert np.min(np.abs(unscaled[energy] / std2[energy] - 1)) > 1e-6
    _, calibrated = back.predict(rows.a, list(types), **labels)
    assert np.all(np.isfinite(calibrated)) and not np.allclose(calibrated, back.predict(
        rows.a, list(types), atom=rows.atom_ids(), element=rows.element)[1])


def _scaled_posterior(noise_var: dict[str, float] | None = None) -> Posterior:
    """A synthetic two-element posterior (5 descriptors) with a model error, noise floors, a per-atom
    force scale and a per-configuration energy scale set by hand (composition: the constant columns)."""
    rng = np.random.default_rng(5)
    ncoeff, nel = 5, 2
    p = nel * (ncoeff + 1)
    g = rng.standard_normal((p, p))
    atom = AtomScale(theta=np.array([0.3, -0.4, 0.5, -0.2, 0.1]), mu=np.zeros(3), sd=np.full(3, 3.0),
                     nelem=nel, lam=0.01, floor_var=1e-4, eps=np.full(3, 1e-12),
                     phi=np.array([-0.5, 0.6, 0.3, -0.4, 0.2]))
    energy = AtomScale(theta=np.array([0.2, -0.6, 0.4, -0.3, 0.25, 0.5]), mu=np.array([-6, -7, 1, 3.0]),
                       sd=np.full(4, 2.0), nelem=nel, lam=0.01, floor_var=4e-6, eps=np.full(4, 1e-12),
                       phi=np.array([-0.3, 0.5, 0.2, 0.35, -0.25, 0.6]))
    return Posterior(rng.standard_normal(p), 1e-3 * g @ g.T, ["W", "Be"], SNAP,
                     noise_var=noise_var or {"Energy": 4e-6, "Force": 3e-3},
                     model_error={"cov_scale": 2.0, "coef_var": rng.random(p) * 1e-3,
                                  "factor": 0.01 * rng.standard_normal((p, 2)),
                                  "atom_scale": atom.to_dict(),
                                  "energy_scale": {**energy.to_dict(),
                                                   "composition_columns": [0, ncoeff + 1]}})


@pytest.mark.parametrize("noise", [False, True], ids=["coefficients", "noise"])
def test_hook_model_total_equals_posterior_predict(noise):
    """LinearSnapModel.total (the MD hook's configuration energy sigma, from the summed row) equals N
    times Posterior.predict_raw of the configuration's energy row per atom with natoms = N; the scale
    changes it."""
    from lammps_hooks.uq_math import energy_rows
    from lammps_hooks.uq_model import LinearSnapModel

    post = _scaled_posterior()
    model = LinearSnapModel(post, source="analytic", noise=noise)
    rng = np.random.default_rng(8)
    eq = "Energy" if noise else None
    for n in (1, 7, 40):
        b = rng.standard_normal((n, post.block_size - 1))
        elements = rng.integers(0, 2, n)
        x = energy_rows(b, elements, 2, post.block_size)
        tot = model.total(model.per_atom(b, elements).partial, n)
        want = n * post.predict_raw(x.mean(axis=0)[None], eq, natoms=[n])[1][0]
        assert tot.pe_std == pytest.approx(want, rel=1e-12)
        plain = n * post.predict_raw(x.mean(axis=0)[None], eq)[1][0]
        assert abs(tot.pe_std / plain - 1) > 1e-3


def test_plugin_file_carries_the_energy_scale(tmp_path):
    from lammps_hooks.native import write_plugin_posterior

    post = _scaled_posterior()
    text = write_plugin_posterior(post, tmp_path / "p.uq").read_text()
    assert "fitsnap-uq-plugin-posterior 3\n" in text
    assert "\nenergy_scale 2\nescale_cols 2 0 6\nescale_theta 6 " in text
    for key in ("escale_phi 6 ", "escale_mu 4 ", "escale_sd 4 ", "escale_eps 4 ", "scale_fitfactor 12 ",
                "scale_mefactor 12 ", "atom_scale 2"):
        assert f"\n{key}" in text, key
    assert text.count("\nscale_fitfactor ") == 1
    # only an energy scale: the factors are still written (the features need S and M)
    me = {k: v for k, v in post.model_error.items() if k not in ("atom_scale", "energy_columns")}
    me["energy_scale"] = {**post.energy_scale.to_dict(), "composition_columns": []}
    me["energy_scale"]["theta"] = me["energy_scale"]["theta"][1:]
    me["energy_scale"]["phi"] = me["energy_scale"]["phi"][1:]
    me["energy_scale"]["nelem"] = 1
    alone = Posterior(post.mean, post.cov, post.elements, post.snap, noise_var=post.noise_var,
                      model_error=me)
    text = write_plugin_posterior(alone, tmp_path / "q.uq").read_text()
    assert "\nenergy_scale 1\nescale_cols 0\n" in text and "\natom_scale" not in text
    assert "\nscale_fitfactor 12 " in text and "\nscale_mefactor 12 " in text


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.update(composition_columns=[0]), "2 intercepts but composition columns"),
    (lambda d: d.update(composition_columns=[0, 99]), "composition columns"),
    (lambda d: d.update(mu=[0.0] * 3, sd=[1.0] * 3, eps=[1e-12] * 3,
                        theta=d["theta"][:5], phi=d["phi"][:5]), "4 features"),
])
def test_inconsistent_energy_scale_is_refused_naming_the_file(tmp_path, edit, message):
    import json

    post = _scaled_posterior()
    path = post.save(tmp_path / "p.posterior.npz")
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    header = json.loads(str(arrays["header"]))
    edit(header["model_error"]["energy_scale"])
    arrays["header"] = np.array(json.dumps(header))
    np.savez(tmp_path / "bad.posterior.npz", **arrays)
    with pytest.raises(InputError, match=message) as err:
        Posterior.load(tmp_path / "bad.posterior.npz")
    assert "bad.posterior.npz" in str(err.value)


def test_bad_value_exits_2_with_one_line_naming_file_section_and_key(cu_run):
    write_cu_input(cu_run, solver="BAYES", extra="[UQ]\nenergy_scale = maybe\n")
    proc = run_cli(["fit", "Cu.in"], cwd=cu_run)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Cu.in" in lines[0] and "[UQ]" in lines[0] and "'energy_scale'" in lines[0]
    assert "'maybe'" in lines[0] and "yes" in lines[0]


@pytest.mark.slow
def test_bayes_fits_and_stores_the_energy_scale(cu_run):
    """``[UQ] atom_scale = yes`` and ``energy_scale = yes``: the Posterior holds both (one intercept
    per element from the constant column), the numbers of atoms come from the force rows, and
    Posterior.predict with natoms on FitSNAP's energy rows gives the scaled sigma."""
    write_cu_input(cu_run, solver="BAYES",
                   extra="[UQ]\natom_scale = yes\nenergy_scale = yes\n[EXTRAS]\ndump_descriptors = 1\n"
                         "dump_truth = 1\n")
    proc = run_cli(["fit", "Cu.in", "--overwrite"], cwd=cu_run)
    assert proc.returncode == 0, proc.stderr[-3000:]
    post = Posterior.load(cu_run / "Cu_pot.posterior.npz")
    assert post.atom_scale is not None and post.energy_scale is not None
    assert post.energy_scale.nelem == 1 and post.energy_columns.tolist() == [0]
    assert post.energy_scale.mu.size == 4
    # log N is standardized over the training configurations: all have 32 atoms here
    assert post.energy_scale.mu[3] == pytest.approx(np.log(32.0))
    assert post.noise_var["Energy"] == pytest.approx(post.energy_scale.floor_var)
    a = np.load(cu_run / "Descriptors.npy")
    e = np.flatnonzero(np.isclose(a[:, 0], 1.0))  # energy rows: the constant column is the fraction 1
    assert e.size == 8
    _, scaled = post.predict_raw(a[e], "Energy", natoms=np.full(e.size, 32))
    _, plain = post.predict_raw(a[e], "Energy")
    assert np.all(np.isfinite(scaled)) and not np.allclose(scaled, plain)


def test_with_natoms_counts_force_rows_and_needs_them():
    from fitsnap_uq.solvers import with_natoms

    types = np.array(["Energy", "Force", "Force", "Force", "Force", "Force", "Force", "Energy", "Stress"],
                     dtype=object)
    cfg = np.array(["a"] * 7 + ["b"] * 2, dtype=object)
    n = types.size
    rows = Rows(np.zeros((n, 2)), np.zeros(n), np.ones(n), np.zeros(n, bool),
                np.full(n, "g", dtype=object), types, cfg)
    with pytest.raises(InputError, match="energy_scale") as err:
        with_natoms(rows, "x.in")
    assert err.value.section == "UQ" and err.value.key == "energy_scale"
    np.testing.assert_array_equal(with_natoms(rows.subset(np.arange(7)), "x.in").natoms, [2] * 7)
