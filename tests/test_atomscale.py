"""The per-atom scale of the force variance (fitsnap_uq.linear.atomscale) and its use by
fit_with_model_error on rows that carry atom and element labels."""

from __future__ import annotations

import numpy as np
import pytest

from fitsnap_uq.linear.atomscale import atom_features, fit_atom_scale
from fitsnap_uq.linear.rows import Rows, fit_with_model_error


def test_atom_features_sum_over_the_atoms_rows():
    me = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    atom = np.array([7, 7, 7, 9, 9, 9])
    f = atom_features(me, 2 * me, me**2, atom)
    np.testing.assert_allclose(np.exp(f[:3, 0]), 6.0)
    np.testing.assert_allclose(np.exp(f[3:, 1]), 30.0)
    np.testing.assert_allclose(np.exp(f[3:, 2]), 16 + 25 + 36)


def test_recovers_an_element_scale_and_a_feature_slope():
    """Residual variance base * exp(theta . z) + floor with known theta: the fit finds it."""
    rng = np.random.default_rng(0)
    n_atoms = 6000
    element = np.repeat(rng.integers(0, 2, n_atoms), 3)
    atom = np.repeat(np.arange(n_atoms), 3)
    feats = np.repeat(rng.standard_normal((n_atoms, 3)), 3, axis=0)
    base = np.exp(rng.standard_normal(3 * n_atoms))
    true = np.where(element == 0, 0.7, -0.5) + 0.8 * feats[:, 0]
    resid = rng.standard_normal(base.size) * np.sqrt(base * np.exp(true) + 0.01)
    sc = fit_atom_scale(feats, element, base, resid, 0.01, 2, config=atom // 4)
    z = (feats - sc.mu) / sc.sd
    got = sc.log_scale(feats, element)
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
