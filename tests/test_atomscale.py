"""The per-atom scale of the force variance (fitsnap_uq.linear.atomscale) and its use by
fit_with_model_error on rows that carry atom and element labels."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from fitsnap_uq.linear.atomscale import AtomScale, atom_sums, fit_atom_scale, fit_scales
from fitsnap_uq.linear.rows import Rows, fit_with_model_error, group_weights


def test_atom_sums_sum_over_the_atoms_rows():
    me = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    atom = np.array([7, 7, 7, 9, 9, 9])
    f = atom_sums(me, 2 * me, me**2, atom)
    np.testing.assert_allclose(f[:3, 0], 6.0)
    np.testing.assert_allclose(f[3:, 1], 30.0)
    np.testing.assert_allclose(f[3:, 2], 16 + 25 + 36)


def test_recovers_an_element_scale_and_a_feature_slope():
    """Residual variance base * exp(theta . z) + floor with known theta: the fit finds it."""
    rng = np.random.default_rng(0)
    n_atoms = 6000
    element = np.repeat(rng.integers(0, 2, n_atoms), 3)
    atom = np.repeat(np.arange(n_atoms), 3)
    feats = np.repeat(rng.standard_normal((n_atoms, 3)), 3, axis=0)
    sums = np.exp(feats)
    base = np.exp(rng.standard_normal(3 * n_atoms))
    true = np.where(element == 0, 0.7, -0.5) + 0.8 * feats[:, 0]
    resid = rng.standard_normal(base.size) * np.sqrt(base * np.exp(true) + 0.01)
    sc = fit_atom_scale(sums, element, base, resid, 0.01, 2, config=atom // 4)
    z = (feats - sc.mu) / sc.sd
    got = sc.log_scale(sums, element)
    assert np.corrcoef(got, true)[0, 1] > 0.99
    assert sc.theta[0] - sc.theta[1] == pytest.approx(1.2, abs=0.15)
    assert np.std(z[:, 0]) == pytest.approx(1.0)
    assert sc.lam in (1e-4, 1e-2, 1.0)


def test_fit_scales_recovers_the_floors_slope():
    """Residual variance base exp(z theta) + floor exp(z phi) with a feature in both: the fit finds
    both slopes, and a floor held constant (phi's intercept only) cannot follow the feature."""
    rng = np.random.default_rng(3)
    n = 20000
    x = rng.standard_normal(n)
    z = np.stack([np.ones(n), x], axis=1)
    base = np.exp(rng.standard_normal(n))
    th_true, ph_true = np.array([0.2, 0.5]), np.array([0.0, 1.5])
    var = base * np.exp(z @ th_true) + 0.5 * np.exp(z @ ph_true)
    resid = rng.standard_normal(n) * np.sqrt(var)
    config = np.arange(n) // 5
    pen = np.array([0.0, 1.0])
    th, ph, lam = fit_scales(z, base, resid, 0.5, pen, np.array([True, True]), config)
    assert lam in (1e-4, 1e-2, 1.0)
    np.testing.assert_allclose(th, th_true, atol=0.15)
    np.testing.assert_allclose(ph, ph_true, atol=0.15)
    th0, ph0, _ = fit_scales(z, base, resid, 0.5, pen, np.array([True, False]), config)
    assert ph0[1] == 0.0
    assert th0[1] > th_true[1] + 0.2  # the coefficient part takes up the floor's slope instead


@pytest.mark.parametrize("mode", ["features", "element", "constant"])
def test_floor_models_and_the_variance_they_give(mode):
    """A force floor that grows with the atoms' row norm (symmetry-fixed atoms: tiny rows, tiny
    errors): ``features`` follows it and has the best likelihood; ``element`` moves only the element
    intercepts of phi, ``constant`` none (its floor is refitted instead); AtomScale.variance is
    base exp(theta.z) + sigma_F^2 exp(phi.z) and survives to_dict/from_dict."""
    rng = np.random.default_rng(4)
    n_atoms = 4000
    atom = np.repeat(np.arange(n_atoms), 3)
    element = np.repeat(rng.integers(0, 2, n_atoms), 3)
    sums = np.exp(np.repeat(rng.standard_normal((n_atoms, 3)), 3, axis=0))
    base = 1e-3 * np.exp(rng.standard_normal(3 * n_atoms))
    true = base + 1e-2 * sums[:, 2] ** 1.5
    resid = rng.standard_normal(base.size) * np.sqrt(true)
    sc = fit_atom_scale(sums, element, base, resid, 1e-2, 2, config=atom // 4, floor_model=mode)
    var = sc.variance(base, sums, element)
    np.testing.assert_allclose(var, base * np.exp(sc.log_scale(sums, element))
                               + sc.floor_var * np.exp(sc.log_floor_scale(sums, element)), rtol=1e-12)
    nll = 0.5 * np.mean(np.log(var) + resid**2 / var)
    nll_true = 0.5 * np.mean(np.log(true) + resid**2 / true)
    if mode == "features":
        assert nll < nll_true + 0.01
        assert sc.phi[4] > 1.0  # the row-norm feature
    else:
        assert nll > nll_true + 0.05
        assert np.all(sc.phi[2:] == 0.0)
        if mode == "constant":
            assert np.all(sc.phi == 0.0)
    back = AtomScale.from_dict(sc.to_dict())
    np.testing.assert_allclose(back.variance(base, sums, element), var, rtol=1e-12)
    old = {k: v for k, v in sc.to_dict().items() if k != "phi"}  # stored before phi existed
    np.testing.assert_array_equal(AtomScale.from_dict(old).phi, np.zeros(5))
    with pytest.raises(ValueError, match="floor_model"):
        fit_atom_scale(sums, element, base, resid, 1e-2, 2, config=atom // 4, floor_model="x")


def _rows(rng, n_conf=120, n_atoms=4, m=5, scale=(1.0, 9.0)):
    """Toy rows: per configuration one energy row and 3 x n_atoms force rows; the true model error
    on force rows is 9x larger for atoms of element 1."""
    coef = rng.standard_normal(m)
    recs = []  # (row, truth, type, config, atom, element)
    for c in range(n_conf):
        el = rng.integers(0, 2, n_atoms)
        e_row = rng.standard_normal(m)
        recs.append((e_row, e_row @ coef + 0.01 * rng.standard_normal(), "Energy", f"c{c}", -1, -1))
        for j in range(n_atoms):
            for _ in range(3):
                row = rng.standard_normal(m)
                noise = 0.05 * np.sqrt(scale[el[j]]) * np.linalg.norm(row)
                recs.append((row, row @ coef + noise * rng.standard_normal(), "Force", f"c{c}", j, el[j]))
    a, b, types, cfg, atom, elem = (list(x) for x in zip(*recs))
    n = len(b)
    return Rows(np.array(a), np.array(b), np.ones(n), np.zeros(n, bool), np.full(n, "g", dtype=object),
                np.array(types, dtype=object), np.array(cfg, dtype=object), np.array(atom),
                np.array(elem))


def test_fit_with_model_error_learns_the_scale_and_predicts_with_it():
    rows = _rows(np.random.default_rng(1))
    # rank 0: the per-atom features carry no element contrast, so it is in the intercepts
    full, model, ratios = fit_with_model_error(rows, folds=5, seed=0, rank=0)
    assert model.atom_scale is not None
    # element 1's force variance is ~9x element 0's
    assert model.atom_scale.theta[1] - model.atom_scale.theta[0] == pytest.approx(np.log(9.0), abs=0.6)
    f = rows.row_types.astype(str) == "Force"
    # the default rank (3): the contrast is split between the intercepts and the features (log a^T M a
    # takes part of it); the predicted variances keep it (10.0; rank 0: 10.2; the errors: 8.8)
    full3, model3, _ = fit_with_model_error(rows, folds=5, seed=0)
    pv3 = np.einsum("ij,jk,ik->i", rows.a, full3.result.cov, rows.a)
    var3 = model3.variance(rows.a, pv3, rows.row_types.astype(str),
                           *model3.atom_log_scales(rows.a, pv3, rows.atom_ids(), rows.element))
    el = rows.element
    assert var3[f & (el == 1)].mean() / var3[f & (el == 0)].mean() == pytest.approx(9.0, rel=0.25)
    pv = np.einsum("ij,jk,ik->i", rows.a, full.result.cov, rows.a)
    ls, lf = model.atom_log_scales(rows.a, pv, rows.atom_ids(), rows.element)
    assert np.all(ls[~f] == 0.0) and np.all(lf[~f] == 0.0)
    np.testing.assert_array_equal(ls, model.atom_log_scale(rows.a, pv, rows.atom_ids(), rows.element))
    var = model.variance(rows.a, pv, rows.row_types.astype(str), ls, lf)
    coef = (model.cov_scale * pv + model.model_error_var(rows.a))[f] * np.exp(ls[f])
    np.testing.assert_allclose(var[f], coef + model.floor_var["Force"] * np.exp(lf[f]), rtol=1e-12)
    assert np.sqrt(np.mean(var[f])) < 3 * np.sqrt(np.mean(rows.b[f] ** 2))  # on the errors' scale
    plain = model.variance(rows.a, pv, rows.row_types.astype(str))
    assert np.all(var[~f] == plain[~f])
    assert set(ratios) == {"Energy", "Force"}
    # without labels: no scale
    bare = Rows(rows.a, rows.b, rows.w, rows.testing, rows.groups, rows.row_types, rows.configs)
    assert fit_with_model_error(bare, folds=5, seed=0)[1].atom_scale is None


def test_posterior_predicts_what_the_model_gives_and_round_trips(tmp_path):
    """Posterior.predict_raw with atom/element labels equals PredictiveModel.variance with the scale
    (same S, model error, floor), and the scale survives save/load."""
    from fitsnap_uq.posterior import Posterior

    rows = _rows(np.random.default_rng(2), n_conf=60)
    # a constant floor (phi = 0): what Posterior.predict_raw applies today
    full, model, _ = fit_with_model_error(rows, folds=5, seed=0, atom_floor="constant")
    assert np.all(model.atom_scale.phi == 0.0)
    m = rows.a.shape[1]
    post = Posterior(full.result.mean, full.result.cov, ["A", "B"][:1], {"bzeroflag": 0},
                     noise_var=dict(model.floor_var),
                     model_error={"cov_scale": model.cov_scale, "coef_var": model.coef_var,
                                  "factor": model.factor, "atom_scale": model.atom_scale.to_dict()})
    assert post.n_coefficients == m
    types = rows.row_types.astype(str)
    pv = np.einsum("ij,jk,ik->i", rows.a, full.result.cov, rows.a)
    atom, elem = rows.atom_ids(), rows.element
    want = model.variance(rows.a, pv, types, model.atom_log_scale(rows.a, pv, atom, elem))
    _, std = post.predict_raw(rows.a, list(types), atom, elem)
    np.testing.assert_allclose(std**2, want, rtol=1e-8)
    back = Posterior.load(post.save(tmp_path / "p.npz"))
    _, std2 = back.predict_raw(rows.a, list(types), atom, elem)
    np.testing.assert_allclose(std2, std, rtol=1e-12)
    _, plain = back.predict_raw(rows.a, list(types))
    assert not np.allclose(plain, std)


def _scaled_two_element_posterior(phi: np.ndarray | None):
    """A synthetic W-Be posterior (2J = 2) with a model error, noise floors and a per-atom scale."""
    from fitsnap_uq.linear.atomscale import AtomScale
    from fitsnap_uq.posterior import Posterior

    rng = np.random.default_rng(5)
    ncoeff, nel = 5, 2
    p = nel * (ncoeff + 1)
    g = rng.standard_normal((p, p))
    scale = AtomScale(theta=np.array([0.3, -0.4, 0.5, -0.2, 0.1]), mu=np.zeros(3), sd=np.ones(3) * 3,
                      nelem=nel, lam=0.01, floor_var=1e-4, eps=np.full(3, 1e-12), phi=phi)
    return Posterior(rng.standard_normal(p), 1e-3 * g @ g.T, ["W", "Be"],
                     {"bzeroflag": 0, "twojmax": 2, "rcutfac": 4.0, "rfac0": 0.99, "radelem": [0.5, 0.4],
                      "wj": [1.0, 0.9], "rmin0": 0.0, "quadraticflag": 0},
                     noise_var={"Energy": 4e-6, "Force": 3e-3},
                     model_error={"cov_scale": 2.0, "coef_var": rng.random(p) * 1e-3,
                                  "factor": 0.01 * rng.standard_normal((p, 2)),
                                  "atom_scale": scale.to_dict()})


PHI = np.array([-0.5, 0.6, 0.3, -0.4, 0.2])


def test_phi_scales_the_floor_and_old_dicts_read_as_zero(tmp_path):
    """var = exp(theta . z) (c a^T S a + a^T M a) + exp(phi . z) sigma_F^2, z from the atom's rows;
    phi survives save/load, and an atom scale written before phi existed reads as phi = 0."""
    from fitsnap_uq.linear.atomscale import AtomScale
    from fitsnap_uq.posterior import Posterior

    post = _scaled_two_element_posterior(PHI)
    p = post.n_coefficients
    rng = np.random.default_rng(3)
    rows = rng.standard_normal((12, p))
    atom, elem = np.repeat(np.arange(4), 3), np.repeat([0, 1, 1, 0], 3)
    scale = post.atom_scale
    # z by hand: one-hot element, standardized logs of the atom's sums of a^T M a, a^T S a, |a|^2
    me_cov = np.diag(post.model_error["coef_var"]) + post.model_error["factor"] @ post.model_error["factor"].T
    per_row = np.stack([np.einsum("ij,jk,ik->i", rows, me_cov, rows),
                        np.einsum("ij,jk,ik->i", rows, post.cov, rows), np.sum(rows**2, axis=1)], axis=1)
    sums = np.repeat(per_row.reshape(4, 3, 3).sum(axis=1), 3, axis=0)
    z = np.hstack([np.eye(2)[elem], (np.log(np.maximum(sums, scale.eps)) - scale.mu) / scale.sd])
    coef = np.einsum("ij,jk,ik->i", rows, post.predictive_cov, rows)
    want = np.exp(z @ scale.theta) * coef + np.exp(z @ PHI) * 3e-3
    _, std = post.predict_raw(rows, "Force", atom, elem)
    np.testing.assert_allclose(std**2, want, rtol=1e-10)
    # without noise phi does not enter; phi = 0 gives the floor unscaled
    _, bare = post.predict_raw(rows, None, atom, elem)
    np.testing.assert_allclose(bare**2, np.exp(z @ scale.theta) * coef, rtol=1e-10)
    _, zero_phi = _scaled_two_element_posterior(None).predict_raw(rows, "Force", atom, elem)
    np.testing.assert_allclose(zero_phi**2, np.exp(z @ scale.theta) * coef + 3e-3, rtol=1e-10)
    back = Posterior.load(post.save(tmp_path / "p.npz"))
    np.testing.assert_array_equal(back.atom_scale.phi, PHI)
    old = {k: v for k, v in scale.to_dict().items() if k != "phi"}
    assert np.all(AtomScale.from_dict(old).phi == 0.0) and AtomScale.from_dict(old).phi.shape == (5,)
    with pytest.raises(ValueError, match="theta and phi"):
        AtomScale.from_dict({**old, "phi": [0.0, 1.0]})


@pytest.mark.parametrize("noise", [False, True], ids=["coefficients", "noise"])
def test_hook_model_equals_posterior_predict_with_the_scale(noise):
    """LinearSnapModel.per_atom and total (the MD hook's numbers) against Posterior.predict_raw with
    atom labels: each atom's force std is sqrt(sum over x/y/z of the rows' variances), the scale
    (theta and, with the floors, phi) included; energy std per atom and of the configuration."""
    from lammps_hooks.uq_math import energy_rows, force_rows
    from lammps_hooks.uq_model import LinearSnapModel

    post = _scaled_two_element_posterior(PHI)
    p, ncoeff, nel = post.n_coefficients, post.block_size - 1, 2
    model = LinearSnapModel(post, source="analytic", noise=noise)
    rng = np.random.default_rng(8)
    n = 7
    b = rng.standard_normal((n, ncoeff))
    elements = rng.integers(0, nel, n)
    t2e = np.array([0, 1])
    d = rng.standard_normal((n, 2 * 3 * ncoeff))
    atoms = model.per_atom(b, elements, d, t2e)
    tot = model.total(atoms.partial, n)
    rows = force_rows(d, t2e, nel, ncoeff + 1).reshape(3 * n, p)
    x = energy_rows(b, elements, nel, ncoeff + 1)
    fq, eq = ("Force", "Energy") if noise else (None, None)
    _, std = post.predict_raw(rows, fq, np.repeat(np.arange(n), 3), np.repeat(elements, 3))
    np.testing.assert_allclose(atoms.fstd, np.sqrt((std**2).reshape(n, 3).sum(axis=1)), rtol=1e-10)
    np.testing.assert_allclose(atoms.estd, post.predict_raw(x, eq)[1], rtol=1e-10)
    assert tot.pe_std == pytest.approx(n * post.predict_raw(x.mean(axis=0)[None], eq)[1][0], rel=1e-10)
    unscaled = np.sqrt((post.predict_raw(rows, fq)[1] ** 2).reshape(n, 3).sum(axis=1))
    assert np.min(np.abs(atoms.fstd / unscaled - 1)) > 1e-3


def test_hook_model_with_noise_needs_the_floors():
    from fitsnap_uq.errors import InputError
    from fitsnap_uq.posterior import Posterior
    from lammps_hooks.uq_model import LinearSnapModel

    post = _scaled_two_element_posterior(PHI)
    bare = Posterior(post.mean, post.cov, post.elements, post.snap, noise_var={"Force": 1e-3})
    with pytest.raises(InputError, match="no Energy noise std"):
        LinearSnapModel(bare, noise=True)


def test_noise_is_for_a_linear_posterior():
    """The hook's and fitsnap-uq md's noise option adds a Posterior's floors: refused for another
    model (a network ensemble has none) instead of being ignored."""
    from fitsnap_uq.errors import InputError
    from lammps_hooks.md import run_md
    from lammps_hooks.snap_uq import SnapUQHook
    from lammps_hooks.uq_model import LinearSnapModel

    model = LinearSnapModel(_scaled_two_element_posterior(PHI))
    with pytest.raises(ValueError, match="noise=True adds a Posterior's noise floors"):
        SnapUQHook(None, model, noise=True)
    with pytest.raises(InputError, match="--noise adds a linear posterior's noise floors"):
        run_md("in.md", None, nnensemble="ens.nnensemble.json", noise=True)


def test_composition_columns_find_the_element_fractions():
    """FitSNAP's layout: each element block starts with a constant column, the element's fraction on
    an energy row (per atom) and 0 on force rows; any other layout gives None (one intercept)."""
    from fitsnap_uq.linear.rows import composition, composition_columns

    rng = np.random.default_rng(6)
    n_e, n_f, k = 30, 90, 4
    frac = rng.random(n_e)
    energy = np.hstack([frac[:, None], rng.standard_normal((n_e, k)), 1 - frac[:, None],
                        rng.standard_normal((n_e, k))])
    force = np.hstack([np.zeros((n_f, 1)), rng.standard_normal((n_f, k)), np.zeros((n_f, 1)),
                       rng.standard_normal((n_f, k))])
    a = np.vstack([energy, force])
    types = np.array(["Energy"] * n_e + ["Force"] * n_f)
    cols = composition_columns(a, types)
    np.testing.assert_array_equal(cols, [0, k + 1])
    np.testing.assert_allclose(composition(energy, cols), np.stack([frac, 1 - frac], axis=1))
    assert composition_columns(a[:, 1:], types) is None  # fractions no longer sum to 1
    assert composition_columns(energy, types[:n_e]) is None  # no force rows to tell them apart
    np.testing.assert_array_equal(composition(energy, None), np.ones((n_e, 1)))


def test_energy_scale_is_learned_and_applied_to_energy_rows_only():
    """Energy errors whose spread grows with the configuration's number of atoms (which no descriptor
    row shows): fit_with_model_error's energy scale follows it (held-out ratios far less dispersed
    than without it), log_scales/variance give the scored rows' variance, force rows are untouched,
    and without Rows.natoms it refuses."""
    rng = np.random.default_rng(7)
    m, n_conf = 6, 400
    coef = rng.standard_normal(m)
    recs = []
    for c in range(n_conf):
        e_row = rng.standard_normal(m)
        nat = int(rng.integers(1, 300))
        recs.append((e_row, e_row @ coef + 0.002 * nat * rng.standard_normal(), "Energy", f"c{c}", nat))
        for _ in range(3):
            row = rng.standard_normal(m)
            recs.append((row, row @ coef + 0.02 * rng.standard_normal(), "Force", f"c{c}", nat))
    a, b, types, cfg, nat = (list(x) for x in zip(*recs))
    n = len(b)
    rows = Rows(np.array(a), np.array(b), np.ones(n), np.zeros(n, bool), np.full(n, "g", dtype=object),
                np.array(types, dtype=object), np.array(cfg, dtype=object), natoms=np.array(nat))
    _, plain, r0 = fit_with_model_error(rows, folds=5, seed=0)
    full, model, r1 = fit_with_model_error(rows, folds=5, seed=0, energy_scale=True)
    assert plain.energy_scale is None and model.energy_scale is not None
    assert model.energy_scale.theta.size == 1 + 4  # one intercept (no constant columns), 4 features
    # log N (standardized): the variance grows with N, through the floor here (the toy's energy
    # errors are far above the model error that the forces set)
    assert model.energy_scale.phi[-1] > 0.5
    assert np.mean(r1["Energy"] ** 2) == pytest.approx(1.0, abs=0.25)
    # sigma follows the errors: log(ratio^2) spreads less (a calibrated Gaussian: var pi^2/2 = 4.9)
    assert np.var(np.log(r1["Energy"] ** 2)) < np.var(np.log(r0["Energy"] ** 2)) - 0.5
    t = rows.row_types.astype(str)
    pv = np.einsum("ij,jk,ik->i", rows.a, full.result.cov, rows.a)
    ls, lf = model.log_scales(rows.a, pv, t, composition=np.ones((n, 1)), natoms=rows.natoms)
    assert np.all(ls[t == "Force"] == 0.0) and np.all(lf[t == "Force"] == 0.0)
    assert np.ptp(lf[t == "Energy"]) > 1.0
    var = model.variance(rows.a, pv, t, ls, lf)
    np.testing.assert_allclose(var[t == "Force"], plain.variance(rows.a, pv, t)[t == "Force"], rtol=1e-6)
    bare = Rows(rows.a, rows.b, rows.w, rows.testing, rows.groups, rows.row_types, rows.configs)
    with pytest.raises(ValueError, match="natoms"):
        fit_with_model_error(bare, folds=5, seed=0, energy_scale=True)


def test_constant_floor_scale_stores_the_model_it_fitted():
    """floor_model = constant fits theta with a column of ones beside the one-hot intercepts (the
    floor's free factor); the stored AtomScale gives exactly the variances of that fitted model
    (the ones column's theta folded into the intercepts, not dropped)."""
    from fitsnap_uq.linear import atomscale as A

    rng = np.random.default_rng(11)
    n = 2400
    sums = np.exp(rng.normal(size=(n, 3)))
    element = rng.integers(0, 2, n)
    base = 0.01 * sums[:, 0]
    resid = rng.normal(size=n) * np.sqrt(3.0 * base * np.exp(0.5 * element) + 0.02)
    config = np.arange(n) // 3
    sc = A.fit_atom_scale(sums, element, base, resid, 0.01, 2, config, floor_model="constant")
    z = A.design(np.log(np.maximum(sums, sc.eps)), element, sc.mu, sc.sd, 2)
    zc = np.hstack([z, np.ones((n, 1))])
    theta, phi, lam = A.fit_scales(zc, base, resid, 0.01, np.r_[0, 0, 1, 1, 1, 0.0],
                                   np.r_[np.zeros(5, bool), True], config)
    assert abs(theta[-1]) > 0.05  # the ones column carries part of the scale
    want = base * np.exp(zc @ theta) + 0.01 * np.exp(phi[-1])
    np.testing.assert_allclose(sc.variance(base, sums, element), want, rtol=1e-10)
    assert np.all(sc.phi == 0.0) and sc.lam == lam


def test_beyond_the_training_range_a_feature_may_raise_the_scale_not_lower_it(tmp_path):
    """fit_atom_scale stores the standardized features' training range; beyond it a feature counts
    in full where it raises theta . z and as at the range's edge where it would lower it (phi . z
    alike); inside the range nothing changes; the range survives the dict round trip, and a scale
    stored without it has no guard."""
    from fitsnap_uq.linear.atomscale import AtomScale

    rng = np.random.default_rng(11)
    n = 600
    sums = np.exp(rng.normal(0.0, 1.0, (n, 3)))
    element = rng.integers(0, 2, n)
    base = sums[:, 0] * 1e-2
    resid = rng.standard_normal(n) * np.sqrt(base * np.exp(0.8 * np.log(sums[:, 1])) + 1e-4)
    sc = fit_atom_scale(sums, element, base, resid, 1e-4, 2, config=np.arange(n) // 3)
    z = (np.log(sums) - sc.mu) / sc.sd
    np.testing.assert_allclose(sc.zlo, z.min(axis=0))
    np.testing.assert_allclose(sc.zhi, z.max(axis=0))
    # a hand-set scale: feature 0 raises the scale (theta > 0), feature 1 lowers it (theta < 0)
    hand = AtomScale(theta=np.array([0.1, -0.2, 0.7, -0.5, 0.0]), mu=np.zeros(3), sd=np.ones(3),
                     nelem=2, lam=0.01, floor_var=1e-4, eps=np.full(3, 1e-300),
                     phi=np.array([0.0, 0.0, -0.3, 0.4, 0.0]), zlo=np.full(3, -1.0), zhi=np.full(3, 1.0))
    el = np.array([0, 1])
    at = lambda z0, z1: np.exp(np.array([[z0, z1, 0.0], [z0, z1, 0.0]]))  # noqa: E731
    inside = hand.log_scales(at(0.5, -0.5), el)
    np.testing.assert_allclose(inside[0], np.array([0.1, -0.2]) + 0.7 * 0.5 + 0.25, rtol=1e-12)
    np.testing.assert_allclose(inside[1], -0.15 - 0.2, rtol=1e-12)
    # z0 = 3 beyond zhi: raises theta . z (counts in full), would lower phi . z (held at the edge)
    th, ph = hand.log_scales(at(3.0, 0.0), el)
    np.testing.assert_allclose(th, np.array([0.1, -0.2]) + 0.7 * 3.0, rtol=1e-12)
    np.testing.assert_allclose(ph, -0.3 * 1.0, rtol=1e-12)
    # z1 = 3 beyond zhi: would lower theta . z (edge), raises phi . z (in full)
    th, ph = hand.log_scales(at(0.0, 3.0), el)
    np.testing.assert_allclose(th, np.array([0.1, -0.2]) - 0.5 * 1.0, rtol=1e-12)
    np.testing.assert_allclose(ph, 0.4 * 3.0, rtol=1e-12)
    # z0 = -4 below zlo: would lower theta . z (edge), raises phi . z (in full)
    th, ph = hand.log_scales(at(-4.0, 0.0), el)
    np.testing.assert_allclose(th, np.array([0.1, -0.2]) - 0.7, rtol=1e-12)
    np.testing.assert_allclose(ph, 1.2, rtol=1e-12)
    var = hand.variance(np.array([2.0, 3.0]), at(-4.0, 0.0), el)
    np.testing.assert_allclose(var, np.array([2.0, 3.0]) * np.exp(th) + 1e-4 * np.exp(ph), rtol=1e-12)
    bare = AtomScale.from_dict({k: v for k, v in hand.to_dict().items() if k not in ("zlo", "zhi")})
    np.testing.assert_allclose(bare.log_scale(at(-4.0, 0.0), el), np.array([0.1, -0.2]) - 2.8,
                               rtol=1e-12)
    back = AtomScale.from_dict(json.loads(json.dumps(sc.to_dict())))
    np.testing.assert_array_equal(back.zlo, sc.zlo)
    np.testing.assert_array_equal(back.zhi, sc.zhi)
    with pytest.raises(ValueError, match="zlo and zhi"):
        AtomScale.from_dict({**sc.to_dict(), "zhi": None})


def test_row_weights_count_a_row_like_copies_of_it():
    """fit_scales with integer row weights gives what the rows repeated that many times give (same
    configurations, so the same inner-CV folds): in the fits and in the choice of lam alike."""
    rng = np.random.default_rng(11)
    n = 3000
    x = rng.standard_normal(n)
    z = np.stack([np.ones(n), x], axis=1)
    base = np.exp(rng.standard_normal(n))
    resid = rng.standard_normal(n) * np.sqrt(base * np.exp(0.6 * x) + 0.3 * np.exp(-0.8 * x))
    config = np.arange(n) // 3
    weight = rng.integers(1, 4, n).astype(float)
    pen, free = np.array([0.0, 1.0]), np.array([True, True])
    th, ph, lam = fit_scales(z, base, resid, 0.3, pen, free, config, weight=weight)
    rep = np.repeat(np.arange(n), weight.astype(int))
    th_r, ph_r, lam_r = fit_scales(z[rep], base[rep], resid[rep], 0.3, pen, free, config[rep])
    assert lam == lam_r
    np.testing.assert_allclose(th, th_r, atol=1e-4)
    np.testing.assert_allclose(ph, ph_r, atol=1e-4)
    th1, ph1, _ = fit_scales(z, base, resid, 0.3, pen, free, config)
    np.testing.assert_allclose(fit_scales(z, base, resid, 0.3, pen, free, config, weight=np.ones(n))[0],
                               th1, atol=1e-8)
    with pytest.raises(ValueError, match="weight"):
        fit_scales(z, base, resid, 0.3, pen, free, config, weight=-weight)


def test_group_weights_give_each_group_the_same_total():
    g = np.array(["a"] * 6 + ["b"] * 2 + ["c"])
    w = group_weights(g)
    assert w.mean() == pytest.approx(1.0)
    totals = [w[g == k].sum() for k in "abc"]
    np.testing.assert_allclose(totals, totals[0])


def _concat(*parts: Rows) -> Rows:
    fields = ("a", "b", "w", "testing", "groups", "row_types", "configs", "atom", "element")
    return Rows(*(np.concatenate([getattr(p, f) for p in parts]) for f in fields))


def test_scale_weights_group_lets_each_group_count_equally():
    """A large group whose element-1 atoms have 9x the force variance of element 0's and a small
    group where element 0's have 9x element 1's: counted by rows the large group sets the per-atom
    scale; counted by group (scale_weights = group) the small group weighs as much, so its forces'
    likelihood improves and the large group's gets no better."""
    rng = np.random.default_rng(5)
    big, small = _rows(rng, n_conf=150), _rows(rng, n_conf=30, scale=(9.0, 1.0))
    small = replace(small, groups=np.full(small.b.size, "small", dtype=object),
                    configs=np.char.add("s", small.configs.astype(str)).astype(object))
    rows = _concat(big, small)
    f = rows.row_types.astype(str) == "Force"
    in_small = rows.groups.astype(str) == "small"
    nll = {}
    for mode in ("rows", "group"):
        full, model, _ = fit_with_model_error(rows, folds=5, seed=0, scale_weights=mode)
        pv = np.einsum("ij,jk,ik->i", rows.a, full.result.cov, rows.a)
        ls, lf = model.atom_log_scales(rows.a, pv, rows.atom_ids(), rows.element)
        var = model.variance(rows.a, pv, rows.row_types.astype(str), ls, lf)
        r2 = (rows.b - rows.a @ full.result.mean) ** 2
        term = 0.5 * (np.log(var) + r2 / var)
        nll[mode] = (term[f & in_small].mean(), term[f & ~in_small].mean())
    assert nll["group"][0] < nll["rows"][0] - 0.05
    assert nll["rows"][1] <= nll["group"][1] + 1e-3
    with pytest.raises(ValueError, match="scale_weights"):
        fit_with_model_error(rows, folds=5, seed=0, scale_weights="x")


@pytest.mark.slow
def test_uq_scale_weights_group_reaches_the_fit(cu_run):
    """``[UQ] scale_weights = group`` weighs the per-atom scale's fit by group (Cu: two groups of
    different sizes), so its parameters differ from the default ``rows``; the mean does not."""
    from conftest import run_cli, write_cu_input

    from fitsnap_uq.posterior import Posterior

    strained = sorted((cu_run / "JSON" / "Strained").glob("*.json"))
    for extra in strained[2:]:  # groups of 4 and 2 configurations (equal groups weigh their rows alike)
        extra.unlink()
    fits = {}
    for value in ("rows", "group"):
        write_cu_input(cu_run, solver="BAYES", extra=f"[UQ]\natom_scale = yes\nscale_weights = {value}\n")
        proc = run_cli(["fit", "Cu.in", "--overwrite"], cwd=cu_run)
        assert proc.returncode == 0, proc.stderr[-3000:]
        fits[value] = Posterior.load(cu_run / "Cu_pot.posterior.npz")
    np.testing.assert_array_equal(fits["rows"].mean, fits["group"].mean)
    rows, group = fits["rows"].atom_scale, fits["group"].atom_scale
    assert not np.allclose(np.r_[rows.theta, rows.phi], np.r_[group.theta, group.phi])
