"""The MD hook for an NNENSEMBLE: per-atom energy and force spread of the FitSNAP network ensemble
during MD.

::

    from fitsnap_uq.nn.fitsnap_ensemble import NNEnsemble
    hook = NNEnsembleHook(lmp, NNEnsemble("Ta_pot.nnensemble.json"), every=10, flag_above=0.5,
                          store=QueryStore("flagged")).attach()
    lmp.command("run 10000")

Every ``every`` steps (``fix external pf/callback``, adds no force) the hook computes ``compute sna/atom``
with the ensemble's SNAP parameters (the descriptors its networks were trained on), evaluates every
member's network on them (torch, float64) and, with ``forces=True`` (the default), every member's force
on every atom:

* per atom (``fix property/atom``): ``d_nnuq_estd``, the std over members of the atom's energy (eV), and
  ``d_nnuq_fstd``, the std over members of the atom's force vector (eV/A):
  ``sqrt(sum_c mean_m (F_jc^m - mean_m F_jc^m)^2)``, the square root of the trace of the members' force
  covariance, as the linear hook's ``sqrt(trace(D Cov D^T))`` (population moments over the K members, as
  the energy std);
* global internal variables: ``nnuq_pe_std`` (std over members of the total network energy, eV),
  ``nnuq_pe_atom_std``, ``nnuq_estd_max``, ``nnuq_estd_mean``, ``nnuq_fstd_max``, ``nnuq_fstd_mean``,
  ``nnuq_nflagged``, ``nnuq_halt``; flagging and halting as :class:`~lammps_hooks.snap_uq.SnapUQHook`.

The numbers come from :class:`NNEnsembleModel`, an :class:`~lammps_hooks.uq_model.UQModel`;
:class:`NNEnsembleHook` is :class:`~lammps_hooks.snap_uq.SnapUQHook` with that model, the ``nnuq`` prefix,
LAMMPS' ``compute sna/atom`` and, for the forces, :class:`MemberForceProbes`.

**Forces.** The force on atom j from member m is ``F_j^m = -sum_i dE_i^m/dB_i . dB_i/dr_j``. The
per-atom derivatives ``compute snad/atom`` gives are summed over the atoms i of each type, which is exact
only when ``dE_i/dB_i`` is the same for all atoms of a type (a linear SNAP), not for a network. The
per-pair derivatives (``compute snap ... dgradflag 1``, what FitSNAP trains on) are a dense
(N + 3 N^2) x (d + 3) global array in the 2025 LAMMPS (3.2 GB for 2000 atoms, summed over all ranks
at every call), usable for small cells only (:meth:`NNEnsemble.member_forces
<fitsnap_uq.nn.fitsnap_ensemble.NNEnsemble.member_forces>` evaluates it; the tests use it as the
reference). So the hook lets C++ do it, in one of two ways (``descriptors``):

* ``native`` (the default, ``auto``, when the fitsnap-uq plugin is built: ``fitsnap-uq build-plugin``):
  the hook computes every member's ``dE_i^m/dB_i`` by torch autograd on the ``sna/atom`` descriptors,
  hands them to the plugin's ``compute snap/uq/atom ... members K gradients NAME`` through a per-atom
  array of ``fix property/atom``, and the compute contracts them with the per-pair derivatives
  ``dB_i/dr_j`` in one pass over the neighbours (ghost contributions summed onto their owners), the
  computation ``fix snap/uq`` does with its own networks. Cost: a second descriptor pass and the
  members' backward passes, per evaluation.
* ``lammps`` (``auto`` without the plugin), below: the members are written as ML-IAP ``model nn`` files
(:mod:`fitsnap_uq.nn.fitsnap_mliap`; ML-IAP evaluates ``dE_i/dB_i`` of the network and contracts it with
the per-pair derivatives in C++, neighbor by neighbor) and K helper LAMMPS instances on the same MPI
communicator, one per member, mirror the running system (box, types, positions, every evaluation) and
compute each member's forces with ``run 0``. This needs members with ML-IAP's activations (``[UQ]
nn_activation = tanh``, ``sigmoid`` or ``relu``; a softplus ensemble is refused with forces, or use
``forces=False``) and atom IDs 1..N. Cost: K force evaluations of one member per evaluation
(:attr:`SnapUQHook.cost`, key ``member_forces_s``).

What drives the dynamics: any pair style of the script; for the ensemble's own dynamics, the mean of the
members or one member through ``pair_style mliap model nn`` (``fitsnap-uq nn-export`` writes the files and
lines). The energies the hook reports are the ensemble's (the reference potential is the same for all
members and drops out of the spread).
"""

from __future__ import annotations

import ctypes
import shutil
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from fitsnap_uq.errors import InputError
from fitsnap_uq.nn.fitsnap_ensemble import NNEnsemble
from lammps_hooks.flagging import QueryStore
from lammps_hooks.snap_uq import ENERGY_MEASURES, SnapUQHook
from lammps_hooks.uq_model import AtomUncertainty, TotalUncertainty

NN_MEASURES = ENERGY_MEASURES
"""What the hook can threshold without forces (with forces also ``fstd_max``, ``fstd_mean``)."""


def force_spread(member_forces: np.ndarray) -> np.ndarray:
    """(n,) std over members of each atom's force vector (eV/A): ``sqrt(trace(Cov_m(F_j^m)))`` with the
    population covariance over the K members.

    Args:
        member_forces: (K, n, 3) each member's force on each atom (eV/A).
    """
    f = np.asarray(member_forces, dtype=float)
    return np.sqrt(np.sum(f.var(axis=0), axis=-1))


class NNEnsembleModel:
    """The members' spread of an NNENSEMBLE as an :class:`~lammps_hooks.uq_model.UQModel`.

    Per atom: the std over the K members of the atom's network energy (eV) and, with ``forces``, of its
    force vector (:func:`force_spread`, eV/A; the hook hands the members' forces as ``d``). Totals: the
    std over members of the total energy, the members' mean total energy, and the mean descriptor over
    all atoms as fingerprint. ``partial`` is ``[K member totals, d descriptor sums]``.

    Args:
        ensemble: the ensemble (:class:`~fitsnap_uq.nn.fitsnap_ensemble.NNEnsemble`), trained on linear
            SNAP descriptors (``quadraticflag = 0``).
        forces: whether :meth:`per_atom` gets the members' forces (``d``: (n, K, 3), eV/A).
    """

    checks_pair_style = False  # the mean is not a snap pair style (see the module docstring)
    source = "ensemble"

    def __init__(self, ensemble: NNEnsemble, forces: bool = False) -> None:
        if int(ensemble.snap.get("quadraticflag", 0)):
            raise InputError("the ensemble was trained on quadratic descriptors; the hook supports "
                             "quadraticflag = 0 only", file=str(ensemble.path), section="BISPECTRUM",
                             key="quadraticflag")
        self.ensemble = ensemble
        self.force_std = bool(forces)
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
        """Energy std per atom; force std (:func:`force_spread`) when ``d`` holds the members' forces,
        (n, K, 3) eV/A."""
        e = self.member_energies(b, elements)
        b = np.asarray(b, dtype=float).reshape(len(b), self.ncoeff)
        fstd = None
        if d is not None:
            forces = np.asarray(d, dtype=float).reshape(len(b), len(self.ensemble), 3)
            fstd = force_spread(forces.transpose(1, 0, 2))
        return AtomUncertainty(estd=e.std(axis=0), fstd=fstd,
                               partial=np.concatenate([e.sum(axis=1), b.sum(axis=0)]))

    def total(self, partial: np.ndarray, natoms: int) -> TotalUncertainty:
        k = len(self.ensemble)
        totals = partial[:k]
        return TotalUncertainty(pe_std=float(totals.std()), energy=float(totals.mean()),
                                fingerprint=partial[k:] / max(natoms, 1))


def _box(lmp: Any) -> tuple[list[float], list[float], float, float, float, list[int]]:
    """``lmp.extract_box()`` as Python floats: lo (3,), hi (3,), xy, yz, xz (A) and periodicity (3,)."""
    boxlo, boxhi, xy, yz, xz, periodicity, _ = lmp.extract_box()
    return ([float(v) for v in boxlo], [float(v) for v in boxhi], float(xy), float(yz), float(xz),
            [int(p) for p in periodicity])


class MemberForceProbes:
    """Each member's force on the local atoms of a running LAMMPS, computed by LAMMPS' ML-IAP in K helper
    instances (one per member, ``pair_style mliap model nn``) that mirror it (see the module docstring).

    Collective: every rank of ``comm`` constructs it and calls :meth:`forces` together.

    Args:
        lmp: the running ``lammps`` instance (box and atoms defined; atom IDs 1..N).
        ensemble: the ensemble; its members are written as ML-IAP files (rank 0, a temporary folder).
        type_elements: element of each LAMMPS atom type.
        comm: mpi4py communicator of ``lmp``.

    Raises:
        InputError: a member ML-IAP cannot represent (e.g. softplus), or atom IDs that are not 1..N.
    """

    def __init__(self, lmp: Any, ensemble: NNEnsemble, type_elements: Sequence[str], comm: Any) -> None:
        from fitsnap_uq.nn.fitsnap_mliap import export_ensemble

        self.lmp, self.comm = lmp, comm
        message, files, tmp = None, None, None
        if comm.Get_rank() == 0:  # ML-IAP reads its files on rank 0 only
            try:
                tmp = tempfile.mkdtemp(prefix="fitsnap-uq-nnforces-")
                exported = export_ensemble(ensemble, outdir=tmp, prefix="member")
                files = ([str(p) for p in exported.members], str(exported.descriptor))
            except InputError as exc:
                message = str(exc)
        message, files = comm.bcast((message, files), root=0)
        try:
            if message:
                raise InputError(message + " (or compute the energy spread only: forces=False)")
            self.natoms = int(lmp.get_natoms())
            self.triclinic = bool(int(lmp.extract_global("triclinic")))
            ids, types, x = self._global_state()
            self.probes = [self._probe(model, files[1], type_elements, ids, types, x) for model in files[0]]
        finally:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)

    def _global_state(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All atoms' IDs (N,), types (N,) and positions (N, 3) sorted by ID, on every rank."""
        lmp = self.lmp
        nlocal = int(lmp.extract_global("nlocal"))
        ids = np.asarray(lmp.numpy.extract_atom("id"))[:nlocal].astype(np.int64)
        types = np.asarray(lmp.numpy.extract_atom("type"))[:nlocal].astype(np.int32)
        x = np.asarray(lmp.numpy.extract_atom("x"))[:nlocal].astype(float)
        parts = self.comm.allgather((ids, types, x))
        ids = np.concatenate([p[0] for p in parts])
        order = np.argsort(ids)
        ids = ids[order]
        if ids.size != self.natoms or not np.array_equal(ids, np.arange(1, ids.size + 1)):
            raise InputError("the NN ensemble's force spread needs atom IDs 1..N (LAMMPS 'reset_atoms id'), "
                             f"got {ids.size} atoms with IDs {ids[:1]}..{ids[-1:]}")
        return (ids, np.concatenate([p[1] for p in parts])[order],
                np.concatenate([p[2] for p in parts]).reshape(-1, 3)[order])

    def _probe(self, model: str, descriptor: str, type_elements: Sequence[str], ids: np.ndarray,
               types: np.ndarray, x: np.ndarray) -> Any:
        from fitsnap_uq.compat import import_lammps

        lmp = self.lmp
        boxlo, boxhi, xy, yz, xz, periodicity = _box(lmp)
        probe = import_lammps().lammps(comm=self.comm, cmdargs=["-screen", "none", "-log", "none",
                                                                 "-nocite"])
        bounds = " ".join(f"{lo!r} {hi!r}" for lo, hi in zip(boxlo, boxhi))
        region = f"prism {bounds} {xy!r} {xz!r} {yz!r}" if self.triclinic else f"block {bounds}"
        self._box = (tuple(boxlo), tuple(boxhi), xy, yz, xz)
        probe.commands_string(f"""
units {lmp.extract_global("units")}
atom_style atomic
atom_modify map array
boundary {" ".join("p" if p else "m" for p in periodicity)}
region probebox {region} units box
create_box {int(lmp.extract_global("ntypes"))} probebox
mass * 1.0
pair_style mliap model nn {model} descriptor sna {descriptor}
pair_coeff * * {" ".join(type_elements)}
thermo_style custom step pe
""")
        made = probe.create_atoms(ids.size, ids.tolist(), types.tolist(), x.ravel().tolist(),
                                  shrinkexceed=True)
        if int(probe.get_natoms()) != ids.size:
            raise RuntimeError(f"the force probe created {made} of {ids.size} atoms")
        return probe

    def forces(self) -> np.ndarray:
        """(K, nlocal, 3) each member's force (eV/A) on this rank's atoms of the running instance, in its
        local order, at the current positions (collective)."""
        lmp = self.lmp
        if int(lmp.get_natoms()) != self.natoms:
            raise InputError(f"the number of atoms changed ({self.natoms} -> {lmp.get_natoms()}); the NN "
                             "ensemble's force spread follows a fixed set of atoms")
        nlocal = int(lmp.extract_global("nlocal"))
        local = np.asarray(lmp.numpy.extract_atom("id"))[:nlocal].astype(np.int64) - 1
        _, types, x = self._global_state()
        box = self._box_command()
        n = self.natoms
        xs = (ctypes.c_double * (3 * n))(*x.ravel())
        ts = (ctypes.c_int * n)(*types)
        out = np.empty((len(self.probes), nlocal, 3))
        for k, probe in enumerate(self.probes):
            if box is not None:
                probe.command(box)
            probe.scatter_atoms("type", 0, 1, ts)
            probe.scatter_atoms("x", 1, 3, xs)
            probe.command("run 0 post no")
            f = np.ctypeslib.as_array(probe.gather_atoms("f", 1, 3)).reshape(n, 3)
            out[k] = f[local]
        return out

    def _box_command(self) -> str | None:
        """``change_box`` to the running instance's box (the positions come next), None when unchanged."""
        boxlo, boxhi, xy, yz, xz, _ = _box(self.lmp)
        key = (tuple(boxlo), tuple(boxhi), xy, yz, xz)
        if key == getattr(self, "_box", None):
            return None
        self._box = key
        dims = " ".join(f"{d} final {lo!r} {hi!r}" for d, lo, hi in zip("xyz", boxlo, boxhi))
        tilt = f" xy final {xy!r} xz final {xz!r} yz final {yz!r}" if self.triclinic else ""
        return f"change_box all {dims}{tilt} units box"

    def close(self) -> None:
        """Close the helper instances."""
        for probe in getattr(self, "probes", []):
            probe.close()
        self.probes = []


class NNEnsembleHook(SnapUQHook):
    """Per-atom energy and force spread of an NNENSEMBLE during MD (see the module docstring): a
    :class:`SnapUQHook` with an :class:`NNEnsembleModel`.

    Args:
        lmp: a ``lammps.lammps`` instance with box, atoms and a pair style (any) defined.
        ensemble: the ensemble (:class:`~fitsnap_uq.nn.fitsnap_ensemble.NNEnsemble`).
        every: compute every this many steps.
        forces: also the force spread (:class:`MemberForceProbes`; members with ML-IAP activations).
        type_elements: element of each LAMMPS atom type (default: the ensemble's element order).
        prefix: prefix of every LAMMPS name the hook defines.
        store, flag_above, halt_above, measure: flagging as in :class:`SnapUQHook`; ``measure`` is one
            of ``fstd_max`` (default with forces), ``fstd_mean``, ``estd_max`` (default without),
            ``estd_mean``, ``pe_atom_std``, ``pe_std``.
        comm: mpi4py communicator of ``lmp`` (default ``MPI.COMM_WORLD``).
        descriptors: how the members' forces are computed (see the module docstring): ``native`` (the
            plugin's contraction of torch's dE/dB with the per-pair derivatives), ``lammps`` (K helper
            ML-IAP instances), ``auto`` (native when the plugin is built). Same numbers.
    """

    def __init__(self, lmp: Any, ensemble: NNEnsemble, every: int = 10, forces: bool = True,
                 type_elements: Sequence[str] | None = None, prefix: str = "nnuq",
                 store: QueryStore | None = None, flag_above: float | None = None,
                 halt_above: float | None = None, measure: str | None = None, comm: Any = None,
                 descriptors: str = "auto") -> None:
        self.ensemble = ensemble
        self.probes: MemberForceProbes | None = None
        super().__init__(lmp, NNEnsembleModel(ensemble, forces=forces), every=every, forces=forces,
                         type_elements=type_elements, prefix=prefix, store=store, flag_above=flag_above,
                         halt_above=halt_above, measure=measure, comm=comm, descriptors=descriptors)
        self.cost["member_forces_s"] = 0.0
        """(In :attr:`cost`) seconds in the members' force evaluations (part of ``descriptors_s``)."""

    def attach(self, verify: bool = True) -> NNEnsembleHook:
        """Define ``compute sna/atom``, the force probes (with forces), the per-atom columns, variables
        and callback. ``verify`` is accepted for the interface: the ensemble is not a pair style."""
        self._map_types()
        args = self._descriptor_args()
        self._compute("sna", f"sna/atom {args}")
        self.native = bool(self.forces) and self._native_available()
        if self.native:
            k, d = len(self.ensemble), int(self.model.ncoeff)
            self.lmp.command(f"fix {self.name('grad')} all property/atom d2_{self.name('grad')} {k * d}")
            self._compute("desc", f"snap/uq/atom {args} forces yes members {k} gradients {self.name('grad')}")
        elif self.forces:
            self.probes = MemberForceProbes(self.lmp, self.ensemble, self.type_elements, self.comm)
        self._install()
        return self

    def _native_forces(self, nlocal: int, b: np.ndarray) -> np.ndarray:
        """(K, nlocal, 3) the members' forces (eV/A) from the plugin's contraction of torch's dE/dB on
        the descriptors ``b`` (nlocal, d) with the per-pair descriptor derivatives (collective)."""
        k, d = len(self.ensemble), int(self.model.ncoeff)
        betas = self.ensemble.member_betas(b, self._elements_of_local(nlocal))  # (K, nlocal, d)
        grad = self.lmp.numpy.extract_atom(f"d2_{self.name('grad')}")
        if nlocal:
            grad[:nlocal] = betas.transpose(1, 0, 2).reshape(nlocal, k * d)
        f = self._peratom("desc", nlocal).reshape(nlocal, -1)[:, d:]
        return f.reshape(nlocal, k, 3).transpose(1, 0, 2)

    def descriptor_arrays(self, nlocal: int) -> tuple[np.ndarray, np.ndarray | None]:
        """The local atoms' ``sna/atom`` descriptors (nlocal, d) and, with forces, the members' forces on
        them (nlocal, K, 3), eV/A."""
        b = self._peratom("sna", nlocal)
        if not self.forces or (self.probes is None and not self.native):
            return b, None
        t0, before = time.perf_counter(), self._descriptor_s
        f = self._native_forces(nlocal, b) if self.native else self.probes.forces()
        spent = time.perf_counter() - t0
        self._descriptor_s = before + spent  # the contraction's own compute time is part of spent
        self.cost["member_forces_s"] += spent
        return b, f.transpose(1, 0, 2)

    def member_forces(self) -> np.ndarray:
        """(K, nlocal, 3) every member's force (eV/A) on the local atoms now (collective; needs forces)."""
        if self.native:
            nlocal = int(self.lmp.extract_global("nlocal"))
            return self._native_forces(nlocal, self.descriptors(nlocal))
        if self.probes is None:
            raise RuntimeError("the hook computes no forces (forces=False, or not attached)")
        return self.probes.forces()

    def descriptors(self, nlocal: int) -> np.ndarray:
        """(nlocal, d) the current ``sna/atom`` descriptors of the local atoms."""
        return self._peratom("sna", nlocal)

    def member_energies(self, nlocal: int, b: np.ndarray | None = None) -> np.ndarray:
        """(K, nlocal) per-atom energies (eV) of every member on the current ``sna/atom`` descriptors
        (or on ``b``, (nlocal, d), when given)."""
        b = self.descriptors(nlocal) if b is None else b
        return self.model.member_energies(b, self._elements_of_local(nlocal))

    def detach(self) -> None:
        """Remove the hook's fixes and computes and close the force probes."""
        was_native = self.attached and self.native
        super().detach()
        if was_native:
            self.lmp.command(f"unfix {self.name('grad')}")
        if self.probes is not None:
            self.probes.close()
            self.probes = None
