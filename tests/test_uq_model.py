"""The uncertainty-model protocol of the MD hook (lammps_hooks.uq_model): a toy model, the linear SNAP
model's numbers without LAMMPS, and a custom model inside the hook in a short LAMMPS MD."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import CU_LJ_MD

from fitsnap_uq.posterior import Posterior
from lammps_hooks.flagging import QueryStore
from lammps_hooks.uq_model import AtomUncertainty, LinearSnapModel, TotalUncertainty, UQModel, uncertainty

SNAP = {"rcutfac": 4.0, "rfac0": 0.99363, "twojmax": 4, "radelem": 0.5, "wj": 1.0, "rmin0": 0.0,
        "bzeroflag": 0, "quadraticflag": 0}
NCOEFF = 14  # twojmax 4


class DistanceModel:
    """A toy model: an atom's energy std grows with its descriptors' distance from a reference
    environment, its force std with the size of its force rows; atoms are independent."""

    elements = ["Cu"]
    snap = SNAP
    ncoeff = NCOEFF
    force_std = True
    checks_pair_style = False
    source = "toy"

    def __init__(self, reference: np.ndarray, scale: float = 0.01) -> None:
        self.reference = np.asarray(reference, float)
        self.scale = scale

    def mean_energies(self, b, elements):
        return np.zeros(len(b))

    def per_atom(self, b, elements, d=None, type_to_element=None):
        b = np.asarray(b, float).reshape(len(b), self.ncoeff)
        estd = self.scale * np.linalg.norm(b - self.reference, axis=1)
        fstd = None if d is None else self.scale * np.linalg.norm(np.asarray(d).reshape(len(b), -1), axis=1)
        return AtomUncertainty(estd, fstd, np.concatenate([[np.sum(estd**2)], b.sum(axis=0)]))

    def total(self, partial, natoms):
        return TotalUncertainty(float(np.sqrt(partial[0])), 0.0, partial[1:] / max(natoms, 1))


def test_toy_model_implements_the_protocol():
    rng = np.random.default_rng(0)
    toy = DistanceModel(np.zeros(NCOEFF))
    assert isinstance(toy, UQModel) and not isinstance(object(), UQModel)
    b, d = rng.normal(size=(7, NCOEFF)), rng.normal(size=(7, 3 * NCOEFF))
    atoms, tot = uncertainty(toy, b, np.zeros(7, int), d, np.array([0]))
    np.testing.assert_allclose(atoms.estd, 0.01 * np.linalg.norm(b, axis=1))
    np.testing.assert_allclose(atoms.fstd, 0.01 * np.linalg.norm(d, axis=1))
    assert tot.pe_std == pytest.approx(np.sqrt(np.sum(atoms.estd**2)))
    np.testing.assert_allclose(tot.fingerprint, b.mean(axis=0))
    assert uncertainty(toy, b, np.zeros(7, int))[0].fstd is None


def test_linear_model_numbers_and_rank_split():
    """LinearSnapModel gives x C x^T with C = Posterior.predictive_cov (analytic), the force std
    sqrt(trace(D C D^T)), and the same totals when the atoms are split over two 'ranks'."""
    rng = np.random.default_rng(1)
    p = 2 * (NCOEFF + 1)
    m = rng.normal(size=(p, p))
    post = Posterior(rng.normal(size=p), m @ m.T / p, ["Cu", "Ag"], dict(SNAP))
    model = LinearSnapModel(post, source="analytic")
    assert isinstance(model, UQModel) and model.source == "analytic" and model.ncoeff == NCOEFF
    np.testing.assert_allclose(model.factor @ model.factor.T, post.predictive_cov, atol=1e-12)
    n, type_to_element = 9, np.array([1, 0])  # LAMMPS type 1 = Ag, type 2 = Cu
    b, d = rng.normal(size=(n, NCOEFF)), rng.normal(size=(n, 2 * 3 * NCOEFF))
    elems = rng.integers(0, 2, n)
    atoms, tot = uncertainty(model, b, elems, d, type_to_element)
    x = model.rows(b, elems)
    mean, std = post.predict_raw(x)
    np.testing.assert_allclose(atoms.estd, std, rtol=1e-10)
    np.testing.assert_allclose(model.mean_energies(b, elems), mean, rtol=1e-12)
    cov = post.predictive_cov
    per_type = d.reshape(n, 2, 3, NCOEFF)
    fr = np.zeros((n, 3, 2, NCOEFF + 1))
    for t, e in enumerate(type_to_element):
        fr[:, :, e, 1:] += per_type[:, t]
    fr = fr.reshape(n, 3, p)
    np.testing.assert_allclose(atoms.fstd, np.sqrt(np.einsum("nip,pq,niq->n", fr, cov, fr)), rtol=1e-10)
    xs = x.sum(axis=0)
    assert tot.pe_std == pytest.approx(np.sqrt(xs @ cov @ xs), rel=1e-10)
    assert tot.energy == pytest.approx(mean.sum(), rel=1e-12)
    halves = [model.per_atom(b[s], elems[s]) for s in (slice(0, 4), slice(4, n))]
    split = model.total(halves[0].partial + halves[1].partial, n)
    assert split.pe_std == pytest.approx(tot.pe_std, rel=1e-12)
    np.testing.assert_allclose(split.fingerprint, tot.fingerprint, rtol=1e-12)
    empty = model.per_atom(np.zeros((0, NCOEFF)), np.zeros(0, int))
    assert empty.estd.shape == (0,) and empty.partial.shape == (p,)


def test_custom_model_runs_in_the_hook(tmp_path):
    """Any UQModel plugs into SnapUQHook: its per-atom values land in d_toy_*, its totals in v_toy_*,
    and flagging and halting follow its numbers (here on an LJ MD: the toy is not the pair style)."""
    from fitsnap_uq.compat import import_lammps
    from lammps_hooks.snap_uq import SnapUQHook

    lmp = import_lammps().lammps(cmdargs=["-screen", "none", "-log", "none"])
    lmp.commands_string(CU_LJ_MD)
    toy = DistanceModel(np.full(NCOEFF, 0.5))
    store = QueryStore(tmp_path / "flags")
    hook = SnapUQHook(lmp, toy, every=5, prefix="toy", descriptors="lammps", store=store,
                      flag_above=0.0, halt_above=1e9).attach()
    lmp.command("run 10")
    n = lmp.get_natoms()
    b = np.array(lmp.numpy.extract_compute("toy_sna", 1, 2))[:n]
    d = np.array(lmp.numpy.extract_compute("toy_snad", 1, 2))[:n]
    assert b.shape == (n, NCOEFF) and d.shape == (n, 3 * NCOEFF)
    estd = np.array(lmp.numpy.extract_atom("d_toy_estd"))[:n]
    fstd = np.array(lmp.numpy.extract_atom("d_toy_fstd"))[:n]
    np.testing.assert_allclose(estd, 0.01 * np.linalg.norm(b - 0.5, axis=1), rtol=1e-12)
    np.testing.assert_allclose(fstd, 0.01 * np.linalg.norm(d, axis=1), rtol=1e-12)
    assert fstd.max() > 0
    assert lmp.extract_variable("toy_pe_std") == pytest.approx(np.sqrt(np.sum(estd**2)), rel=1e-12)
    assert lmp.extract_variable("toy_fstd_max") == pytest.approx(fstd.max(), rel=1e-12)
    assert [h["step"] for h in hook.history] == [0.0, 5.0, 10.0]
    assert hook.last["nflagged"] == store.added >= 1 and hook.halted is None
    hook.detach()
    halting = SnapUQHook(lmp, toy, every=5, prefix="toy2", descriptors="lammps", halt_above=0.0).attach()
    lmp.command("run 20")
    assert halting.halted.startswith("fitsnap-uq: stopped at step ") and "toy2_fstd_max" in halting.halted
    assert lmp.extract_global("ntimestep") < 30
    lmp.close()
