"""The uncertainty-model protocol of the MD side: what :class:`~lammps_hooks.snap_uq.SnapUQHook` needs
from a model, as ASE's Calculator is what an MD driver needs from an engine (numpy only, no LAMMPS).

The hook owns the LAMMPS plumbing (the descriptor computes, the callback, the per-atom columns, the
variables, MPI) and the flagging; a model only turns per-atom SNAP descriptors into uncertainties::

    class MyModel:                        # any class with these attributes and methods
        elements = ["Ta"]                 # element order: element index i is elements[i]
        snap = {"rcutfac": 4.67, "rfac0": 0.99363, "twojmax": 6, "radelem": 0.5, "wj": 1.0,
                "rmin0": 0.0, "bzeroflag": 0, "quadraticflag": 0}
        ncoeff = 30                       # columns of B_i (compute sna/atom)
        force_std = False                 # True: per_atom gets the force rows D_i, returns a force std
        checks_pair_style = False         # True: mean_energies is the running snap pair style's
        source = "mine"                   # a label (``fitsnap-uq md --summary`` reports it)
        def mean_energies(self, b, elements): ...
        def per_atom(self, b, elements, d=None, type_to_element=None): ... -> AtomUncertainty
        def total(self, partial, natoms): ... -> TotalUncertainty

    SnapUQHook(lmp, MyModel(), every=10, prefix="my").attach()

Under MPI each rank calls :meth:`UQModel.per_atom` on its own atoms; the hook sums the returned
``partial`` vectors over ranks and passes the sum to :meth:`UQModel.total`. So a total-energy std that is
not a sum over atoms (a correlated Gaussian, an ensemble's spread of total energies) is computed from
additive pieces (the summed energy row, the members' total energies).

Implementations: :class:`LinearSnapModel` (a linear SNAP :class:`~fitsnap_uq.posterior.Posterior`,
propagated through its coefficient spread; also what the native plugin's posterior file is written
from) and :class:`lammps_hooks.nn_uq.NNEnsembleModel` (the members' spread of a FitSNAP network
ensemble). :func:`uncertainty` evaluates a model on one process's complete set of atoms.

Units: energies eV, forces eV/A (LAMMPS ``metal``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from fitsnap_uq.errors import InputError
from fitsnap_uq.posterior import Posterior
from lammps_hooks.uq_math import CoefficientSpread, energy_rows, force_rows, force_std, spread_of


@dataclass
class AtomUncertainty:
    """One rank's per-atom uncertainties.

    Attributes:
        estd: (n,) std of each atom's energy (eV).
        fstd: (n,) std of each atom's force vector (eV/A), or None when the model gives none.
        partial: (m,) this rank's additive contribution to the configuration's totals; the hook sums it
            over the ranks and hands the sum to :meth:`UQModel.total`.
    """

    estd: np.ndarray
    fstd: np.ndarray | None
    partial: np.ndarray


@dataclass
class TotalUncertainty:
    """The configuration's totals.

    Attributes:
        pe_std: std of the total energy (eV).
        energy: the model's mean total energy (eV): the placeholder label of a flagged frame.
        fingerprint: (k,) the configuration's point in descriptor space, per atom (flagged frames are
            deduplicated by the distance between fingerprints).
    """

    pe_std: float
    energy: float
    fingerprint: np.ndarray


@runtime_checkable
class UQModel(Protocol):
    """What the MD hook needs from an uncertainty model (see the module docstring).

    Attributes:
        elements: element names; an atom's element index is its position here.
        snap: SNAP parameters of the descriptors the model reads (``rcutfac``, ``rfac0``, ``twojmax``,
            ``radelem``, ``wj``, ``rmin0``, ``bzeroflag``, ``quadraticflag``, optionally
            ``switchflag``, ``bnormflag``, ``wselfallflag``, ``chemflag``), as in a FitSNAP
            ``[BISPECTRUM]`` section; the hook builds ``compute sna/atom`` (and ``snad/atom``) from them.
        ncoeff: columns of the per-atom descriptors B_i.
        force_std: whether the model gives a per-atom force std from the force rows D_i (then the hook
            computes D_i unless asked not to); False: B_i only.
        checks_pair_style: whether :meth:`mean_energies` is the running ``snap`` pair style's energy, so
            the hook verifies the match on attach (and requires a ``snap`` pair style).
        source: a short label of where the spread comes from (``analytic``, ``samples``, ``ensemble``).
    """

    elements: Sequence[str]
    snap: Mapping[str, Any]
    ncoeff: int
    force_std: bool
    checks_pair_style: bool
    source: str

    def mean_energies(self, b: np.ndarray, elements: np.ndarray) -> np.ndarray:
        """(n,) the model's mean energy of each atom (eV).

        Args:
            b: (n, ncoeff) per-atom descriptors B_i (``compute sna/atom``, dimensionless).
            elements: (n,) element index of each atom (0-based in :attr:`elements`).
        """
        ...

    def per_atom(self, b: np.ndarray, elements: np.ndarray, d: np.ndarray | None = None,
                 type_to_element: np.ndarray | None = None) -> AtomUncertainty:
        """The uncertainties of n atoms (one rank's; n may be 0).

        Args:
            b, elements: as in :meth:`mean_energies`.
            d: (n, 3 * ntypes * ncoeff) force rows D_i (``compute snad/atom``, 1/A), only when
                :attr:`force_std` and the hook computes forces; else None.
            type_to_element: (ntypes,) element index of each LAMMPS atom type (the layout of ``d``).
        """
        ...

    def total(self, partial: np.ndarray, natoms: int) -> TotalUncertainty:
        """The totals, from the sum over ranks of :attr:`AtomUncertainty.partial` and the atom count."""
        ...


def uncertainty(model: UQModel, b: np.ndarray, elements: np.ndarray, d: np.ndarray | None = None,
                type_to_element: np.ndarray | None = None) -> tuple[AtomUncertainty, TotalUncertainty]:
    """Evaluate ``model`` on all atoms of a configuration at once (no MPI): per atom and totals."""
    atoms = model.per_atom(np.asarray(b, float), np.asarray(elements, int), d, type_to_element)
    return atoms, model.total(atoms.partial, int(np.shape(b)[0]))


class LinearSnapModel:
    """A linear SNAP Posterior as an :class:`UQModel`: the energy of atom i is ``x_i . theta`` with
    ``x_i = [1, B_i]`` in its element's block, the force ``D_i theta``; ``theta`` spreads as
    :func:`~lammps_hooks.uq_math.spread_of` gives (analytic: ``Posterior.predictive_cov``; or samples).

    Args:
        posterior: the coefficients' posterior (its mean is the pair style's coefficients).
        source, nsamples, seed: as :func:`~lammps_hooks.uq_math.spread_of`.
        noise: also add the Posterior's noise floors (``Energy`` (eV/atom)^2 to each atom's and to
            the per-atom configuration energy's variance, ``Force`` (eV/A)^2 to each force
            component's, scaled per atom with an atom scale): the numbers of
            ``Posterior.predict_raw(rows, noise=...)``; default False, ``noise=None``'s.

    Attributes:
        posterior: the Posterior; spread: its :class:`~lammps_hooks.uq_math.CoefficientSpread`.
        mean: (p,) mean coefficients; factor: (p, r) with ``Cov(theta) = factor @ factor.T`` (what the
            native plugin's posterior file holds); block_size: coefficients per element block.
        noise_var: ``(Energy, Force)`` floor variances added (zeros without ``noise``).
    """

    force_std = True
    checks_pair_style = True

    def __init__(self, posterior: Posterior, source: str = "auto", nsamples: int = 1000,
                 seed: int = 0, noise: bool = False) -> None:
        self.posterior = posterior
        self.spread: CoefficientSpread = spread_of(posterior, source, nsamples, seed)
        self.elements: list[str] = list(posterior.elements)
        self.snap: dict[str, Any] = dict(posterior.snap)
        self.block_size = int(posterior.block_size)
        self.ncoeff = self.block_size - 1
        self.noise = bool(noise)
        self.noise_var = (0.0, 0.0)
        if self.noise:
            missing = [q for q in ("Energy", "Force") if q not in posterior.noise_var]
            if missing:
                raise InputError(f"the posterior has no {' and no '.join(missing)} noise std, so the "
                                 "uncertainty with noise cannot be computed", file=posterior.path)
            self.noise_var = (posterior.noise_var["Energy"], posterior.noise_var["Force"])

    @property
    def source(self) -> str:
        return self.spread.source

    @property
    def mean(self) -> np.ndarray:
        return np.asarray(self.posterior.mean, dtype=float)

    @property
    def factor(self) -> np.ndarray:
        return np.asarray(self.spread.factor, dtype=float)

    def rows(self, b: np.ndarray, elements: np.ndarray) -> np.ndarray:
        """(n, p) the atoms' energy rows (:func:`~lammps_hooks.uq_math.energy_rows`)."""
        return energy_rows(b, elements, len(self.elements), self.block_size)

    def mean_energies(self, b: np.ndarray, elements: np.ndarray) -> np.ndarray:
        return self.rows(b, elements) @ self.posterior.mean

    def per_atom(self, b: np.ndarray, elements: np.ndarray, d: np.ndarray | None = None,
                 type_to_element: np.ndarray | None = None) -> AtomUncertainty:
        """Energy std ``sqrt(|x_i L|^2 [+ sigma_E^2])``; force std
        ``sqrt(exp(theta . z_i) trace(D_i Cov D_i^T) [+ 3 exp(phi . z_i) sigma_F^2])`` (the factors
        are 1 without a per-atom scale in the Posterior,
        :meth:`~fitsnap_uq.posterior.Posterior.force_log_scales`; the bracketed floors with
        ``noise``); partial: the summed row."""
        rows = self.rows(b, elements)
        noise_e, noise_f = self.noise_var
        fstd = None
        if d is not None:
            frows = force_rows(d, type_to_element, len(self.elements), self.block_size)
            fstd = force_std(frows, self.spread)
            scaled = self.posterior.atom_scale is not None and frows.shape[0] > 0
            if scaled or self.noise:  # otherwise the plain std (the MD hook's usual path)
                coef = fstd**2
                floor = np.full(coef.shape, 3.0 * noise_f)
                if scaled:
                    # the per-atom factors (Posterior.force_log_scales), from the atom's three
                    # force rows and its element
                    n, p = frows.shape[0], frows.shape[2]
                    log_coef, log_floor = (x[::3] for x in self.posterior.force_log_scales(
                        frows.reshape(3 * n, p), np.repeat(np.arange(n), 3),
                        np.repeat(np.asarray(elements, dtype=int), 3)))
                    coef = coef * np.exp(np.clip(log_coef, -50.0, 50.0))
                    floor = floor * np.exp(np.clip(log_floor, -50.0, 50.0))
                fstd = np.sqrt(coef + floor)
        partial = rows.sum(axis=0) if rows.shape[0] else np.zeros(rows.shape[1])
        estd = self.spread.std(rows)
        if self.noise:
            estd = np.sqrt(estd**2 + noise_e)
        return AtomUncertainty(estd=estd, fstd=fstd, partial=partial)

    def total(self, partial: np.ndarray, natoms: int) -> TotalUncertainty:
        """Std of ``(sum_i x_i) . theta`` (with ``noise``, plus ``natoms^2 sigma_E^2``: the
        per-atom energy floor of the configuration, times its atoms); with a per-configuration
        energy scale in the Posterior, the first part times ``exp(theta . z)`` and the floor times
        ``exp(phi . z)``, ``z`` from the configuration's energy row per atom ``partial / natoms``
        (:meth:`~fitsnap_uq.posterior.Posterior.energy_log_scales`: ``Posterior.predict`` of that
        row with ``natoms``, times ``natoms``); fingerprint: the mean energy row."""
        coef = float(self.spread.std(partial)) ** 2
        floor = natoms**2 * self.noise_var[0]
        if self.posterior.energy_scale is not None and natoms > 0:
            log_coef, log_floor = (float(x[0]) for x in self.posterior.energy_log_scales(
                np.asarray(partial, dtype=float)[None, :] / natoms, np.array([natoms])))
            coef *= float(np.exp(np.clip(log_coef, -50.0, 50.0)))
            floor *= float(np.exp(np.clip(log_floor, -50.0, 50.0)))
        var = coef + floor
        return TotalUncertainty(pe_std=float(np.sqrt(var)),
                                energy=float(partial @ self.posterior.mean),
                                fingerprint=partial / max(natoms, 1))
