"""Uncertainty of SNAP energies and forces from per-atom descriptors (numpy only, no LAMMPS).

Layout: coefficients in the ``.snapcoeff`` layout of a :class:`fitsnap_uq.Posterior`, one block of
``block = ncoeff + 1`` per element, ``[constant, B_1 .. B_ncoeff]``.

* Atom i of element t has energy ``E_i = theta_t0 + B_i . theta_t``: its row ``x_i`` (p,) is
  ``[1, B_i]`` in block t and 0 elsewhere; ``B_i`` is LAMMPS' ``compute sna/atom`` (N, ncoeff).
* The force on atom j is ``F_j = D_j theta`` (LAMMPS ``compute snad/atom``, (N, 3 * ntypes * ncoeff),
  laid out [x | y | z], each ntypes blocks of ncoeff; checked against ``pair_style snap``: F = +D theta).
* A coefficient spread is a factor ``L`` (p, r) with ``Cov(theta) = L L^T``: a Gaussian
  posterior's :meth:`~fitsnap_uq.posterior.Posterior.predictive_factor`, or the centred samples
  divided by sqrt(K - 1), so analytic and sample-based uncertainties are the same computation:
  ``var(x . theta) = ||x L||^2``.

Units: energies eV, forces eV/A (LAMMPS ``metal``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from fitsnap_uq.posterior import Posterior


@dataclass
class CoefficientSpread:
    """Spread of the coefficients around their mean.

    Attributes:
        mean: (p,) coefficient mean (snapcoeff layout).
        factor: (p, r) with Cov = factor @ factor.T.
        source: ``analytic`` (Gaussian covariance) or ``samples`` (r samples).
    """

    mean: np.ndarray
    factor: np.ndarray
    source: str

    @classmethod
    def from_samples(cls, samples: np.ndarray, mean: np.ndarray | None = None) -> CoefficientSpread:
        """Centred samples / sqrt(K - 1): ``||x L||^2`` is then the sample variance of x . theta."""
        samples = np.asarray(samples, dtype=float)
        k = samples.shape[0]
        if k < 2:
            raise ValueError("need at least 2 samples")
        centre = samples.mean(axis=0)
        return cls(mean=centre if mean is None else np.asarray(mean, float),
                   factor=((samples - centre) / np.sqrt(k - 1)).T, source="samples")

    def std(self, rows: np.ndarray) -> np.ndarray:
        """Std of ``rows @ theta`` for rows (..., p) -> (...)."""
        return np.sqrt(np.sum((rows @ self.factor) ** 2, axis=-1))


def energy_rows(b: np.ndarray, types: np.ndarray, nelem: int, block: int) -> np.ndarray:
    """Per-atom energy rows (N, p) from ``sna/atom`` descriptors ``b`` (N, ncoeff).

    Args:
        b: (N, block - 1) per-atom bispectrum components.
        types: (N,) element index of each atom, 0-based in the posterior's element order.
        nelem: number of element blocks; block: coefficients per block.
    """
    n = b.shape[0]
    rows = np.zeros((n, nelem * block))
    for t in range(nelem):
        sel = types == t
        if sel.any():
            rows[sel, t * block] = 1.0
            rows[sel, t * block + 1:(t + 1) * block] = b[sel]
    return rows


def force_rows(d: np.ndarray, type_to_element: np.ndarray, nelem: int, block: int) -> np.ndarray:
    """Per-atom force rows (N, 3, nelem * block) from ``snad/atom`` output, so that F_j = D_j . theta.

    Args:
        d: (N, ntypes * 3 * (block - 1)) ``compute snad/atom`` output. LAMMPS lays it out by atom type
            of the contributing neighbours, then x/y/z, then bispectrum component: column
            ``(t * 3 + c) * (block - 1) + k``.
        type_to_element: (ntypes,) element index of each LAMMPS type, 0-based in the posterior's order;
            the columns of several types of one element add up.
        nelem: number of element blocks; block: coefficients per block (the constant first, whose
            force row is zero).
    """
    type_to_element = np.asarray(type_to_element, dtype=int)
    n, ncoeff = d.shape[0], block - 1
    per_type = d.reshape(n, type_to_element.size, 3, ncoeff)
    rows = np.zeros((n, 3, nelem, block))
    for t, e in enumerate(type_to_element):
        rows[:, :, e, 1:] += per_type[:, t]
    return rows.reshape(n, 3, nelem * block)


def force_std(frows: np.ndarray, spread: CoefficientSpread) -> np.ndarray:
    """(N,) std of each atom's force vector, ``sqrt(trace(D_j Cov D_j^T))`` (eV/A).

    This is the root-mean-square length of the force deviation, the per-atom quantity that
    committee methods (e.g. DP-GEN's model deviation) threshold.
    """
    per_component = spread.std(frows)  # (N, 3)
    return np.sqrt(np.sum(per_component**2, axis=1))


def spread_of(posterior: Posterior, source: str = "auto", nsamples: int = 1000,
              seed: int = 0) -> CoefficientSpread:
    """The coefficient spread of a posterior: ``analytic`` (its predictive covariance, the model error
    included: :attr:`~fitsnap_uq.posterior.Posterior.predictive_cov`), ``samples`` (its stored samples,
    or ``nsamples`` Gaussian draws of the predictive covariance), or ``auto`` (samples if it has any,
    else analytic).

    Shared by the Python hook (:class:`lammps_hooks.snap_uq.SnapUQHook`) and the plugin's posterior file
    (:func:`lammps_hooks.native.write_plugin_posterior`), so both give the same stds.
    """
    if source == "auto":
        source = "samples" if posterior.samples is not None else "analytic"
    if source == "analytic":
        return CoefficientSpread(mean=np.asarray(posterior.mean, float),
                                 factor=posterior.predictive_factor(), source="analytic")
    if source == "samples":
        if posterior.samples is not None:
            draws = posterior.samples
        else:  # Gaussian draws with the predictive covariance (model error included)
            factor = posterior.predictive_factor()
            z = np.random.default_rng(seed).standard_normal((nsamples, factor.shape[1]))
            draws = posterior.mean + z @ factor.T
        return CoefficientSpread.from_samples(draws, mean=posterior.mean)
    raise ValueError(f"source must be auto, analytic or samples, not {source!r}")
