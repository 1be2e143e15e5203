"""The per-atom scale of the force variance (fitsnap_uq.linear.atomscale) and its use by
fit_with_model_error on rows that carry atom and element labels."""

from __future__ import annotations

import numpy as np
import pytest

from fitsnap_uq.linear.atomscale import atom_sums, fit_atom_scale
from fitsnap_uq.linear.rows import Rows, fit_with_model_error


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
    full, model, ratios = fit_with_model_error(rows, folds=5, seed=0)
    assert model.atom_scale is not None
    # element 1's force variance is ~9x element 0's
    assert model.atom_scale.theta[1] - model.atom_scale.theta[0] == pytest.approx(np.log(9.0), abs=0.6)
    f = rows.row_types.astype(str) == "Force"
    pv = np.zeros(rows.b.size)
    ls = model.atom_log_scale(rows.a, pv, rows.atom_ids(), rows.element)
    assert np.all(ls[~f] == 0.0)
    var = model.variance(rows.a, pv, rows.row_types.astype(str), ls)
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
    full, model, _ = fit_with_model_error(rows, folds=5, seed=0)
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
