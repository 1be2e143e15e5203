"""The Posterior: the contract between our solvers, the LAMMPS hook and active learning.

A Posterior holds a distribution over the coefficients of a linear SNAP potential in the exact
layout of the ``.snapcoeff`` file: one block per element, in the element order of the potential,
each block ``[constant, B_1 ... B_ncoeff]``. With ``bzeroflag = 1`` FitSNAP fits no constant term;
the constants are then 0 with zero variance, as FitSNAP writes them.

File format (one ``.npz``, written atomically: temp file + rename):

=================  ==========  =============================================================
key                shape       meaning
=================  ==========  =============================================================
``header``         () str      JSON: format version, solver, elements, SNAP parameters, noise
                               classes with their std, log evidence, solver report
``mean``           (p,)        posterior mean (snapcoeff layout; eV per unit descriptor)
``cov``            (p, p)      posterior covariance of the coefficients
``samples``        (ns, p)     optional coefficient samples (MCMC, ensembles)
``recal_levels``   (L,)        optional: coverage levels of the recalibration map
``recal_<Q>``      (L,)        optional: multiplier of the raw sigma at each level, quantity Q
``me_coef_var``    (p,)        optional (version 2): model-error variance of each coefficient
``me_factor``      (p, r)      optional (version 2): low-rank model-error factor U (r may be 0)
=================  ==========  =============================================================

Version 2 adds the predictive model of new configurations (:mod:`fitsnap_uq.linear.predictive`):
the header's ``model_error`` holds ``cov_scale`` ``c``, and the predictive covariance of the
coefficients is ``c * cov + diag(me_coef_var) + U U^T`` (:attr:`Posterior.predictive_cov`). Version 1
files (no model error) are read as before: their predictive covariance is ``cov``.

Noise classes are named ``Energy``, ``Force``, ``Stress`` (pooled per quantity, always present for
prediction on new data) and, where the solver learned them per FitSNAP group, ``GROUP/Energy`` etc.
Noise std are in physical units: eV/atom for energies, eV/A for forces, bar for stresses (LAMMPS
``metal`` units, as FitSNAP's stress rows).

Prediction takes unweighted descriptor rows in FitSNAP's layout (energy rows per atom), either
with the constant columns (width p) or without them as FitSNAP builds A when ``bzeroflag = 1``.

Tied coefficients (header ``ties``, optional): descriptor columns that are a multiple of another
on every row (explicit multi-element SNAP has such pairs by construction), ``[column, earlier column,
factor]`` in the snapcoeff layout. The fit carries each group on its earlier column (the others have
mean and variance 0); only the group's combination enters a prediction. Coefficients written for
LAMMPS are first spread over the group in proportion to the factors (:meth:`Posterior.tied`): LAMMPS'
``pair_style snap`` computes explicit multi-element forces that are the gradient of its energy only
for coefficients spread that way.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fitsnap_uq.errors import InputError, NumericalError
from fitsnap_uq.io import atomic_write as _atomic_write
from fitsnap_uq.io import json_default as _json_default
from fitsnap_uq.linear.atomscale import AtomScale, atom_sums, energy_features
from fitsnap_uq.linear.gaussian import ONE_SIGMA, interval_multiplier, live_cholesky

FORMAT_VERSION = 2
QUANTITIES = ("Energy", "Force", "Stress")
SNAP_KEYS = ("twojmax", "rcutfac", "rfac0", "rmin0", "radelem", "wj", "bzeroflag", "switchflag",
             "wselfallflag", "chemflag", "quadraticflag", "bnormflag", "switchinnerflag")


def quantity_of(noise_class: str) -> str:
    """The quantity (``Energy``, ``Force`` or ``Stress``) of a noise class name."""
    return noise_class.rsplit("/", 1)[-1]


def check_covariance(cov: np.ndarray, what: str = "covariance") -> None:
    """Raise :class:`NumericalError` unless ``cov`` is symmetric positive semi-definite.

    Rows/columns that are exactly zero (coefficients held at 0) are allowed; the rest must have a
    Cholesky factor.
    """
    cov = np.asarray(cov)
    if cov.ndim != 2 or cov.shape[0] != cov.shape[1]:
        raise NumericalError(f"{what} must be square, got shape {cov.shape}")
    if not np.all(np.isfinite(cov)):
        raise NumericalError(f"{what} has NaN or infinite entries")
    scale = max(float(np.max(np.abs(cov))), 1e-300)
    if np.max(np.abs(cov - cov.T)) > 1e-10 * scale:
        raise NumericalError(f"{what} is not symmetric")
    try:
        live_cholesky(cov)
    except np.linalg.LinAlgError:
        raise NumericalError(f"{what} is not positive definite; refusing to use or write it") from None


class Posterior:
    """Distribution over SNAP coefficients, with noise model and recalibration.

    Args:
        mean: (p,) coefficient mean, snapcoeff layout.
        cov: (p, p) coefficient covariance.
        elements: element names, in the order of the potential's blocks.
        snap: SNAP parameters (see :data:`SNAP_KEYS`), needed to recompute descriptors.
        noise_var: {noise class: variance in physical units squared}.
        log_evidence: log marginal likelihood of the fit, if the solver has one.
        samples: (ns, p) coefficient samples, if the solver draws them.
        recalibration: {"levels": (L,), quantity: (L,) multipliers}, if learned.
        info: solver name, settings and report (JSON-serializable).
        model_error: the predictive model of new configurations, if learned:
            ``{"cov_scale": c, "coef_var": (p,), "factor": (p, r)}`` (snapcoeff layout); the
            predictive covariance is ``c * cov + diag(coef_var) + factor factor^T``; optionally
            ``atom_scale`` (an :class:`~fitsnap_uq.linear.atomscale.AtomScale` dict: the per-atom
            force scale) and ``energy_scale`` (the same dict plus ``composition_columns``, the
            snapcoeff-layout columns holding an energy row's element fractions, empty for one
            intercept: the per-configuration energy scale).
        ties: ``(column, earlier column, factor)`` of tied coefficients (see the module docstring),
            snapcoeff layout.
    """

    def __init__(self, mean: np.ndarray, cov: np.ndarray, elements: Sequence[str],
                 snap: dict[str, Any], noise_var: dict[str, float] | None = None,
                 log_evidence: float | None = None, samples: np.ndarray | None = None,
                 recalibration: dict[str, np.ndarray] | None = None,
                 info: dict[str, Any] | None = None,
                 model_error: dict[str, Any] | None = None,
                 ties: Sequence[Sequence[float]] | None = None) -> None:
        self.mean = np.asarray(mean, dtype=float).copy()
        self.cov = np.asarray(cov, dtype=float).copy()
        p = self.mean.shape[0]
        if self.cov.shape != (p, p):
            raise ValueError(f"cov must have shape ({p}, {p}), got {self.cov.shape}")
        self.elements = list(elements)
        if p % max(len(self.elements), 1):
            raise ValueError(f"{p} coefficients do not split into {len(self.elements)} element blocks")
        self.snap = dict(snap)
        self.noise_var = {k: float(v) for k, v in (noise_var or {}).items()}
        self.log_evidence = None if log_evidence is None else float(log_evidence)
        self.samples = None if samples is None else np.asarray(samples, dtype=float)
        if self.samples is not None and (self.samples.ndim != 2 or self.samples.shape[1] != p):
            raise ValueError(f"samples must have shape (ns, {p}), got {self.samples.shape}")
        self.recalibration = None
        if recalibration is not None:
            self.recalibration = {k: np.asarray(v, dtype=float) for k, v in recalibration.items()}
        self.info = dict(info or {})
        check_covariance(self.cov, "posterior covariance")
        self.model_error: dict[str, Any] | None = None
        if model_error is not None:
            coef_var = np.asarray(model_error["coef_var"], dtype=float).reshape(-1)
            factor = np.asarray(model_error.get("factor", np.zeros((p, 0))), dtype=float)
            scale = float(model_error.get("cov_scale", 1.0))
            if coef_var.shape != (p,) or factor.ndim != 2 or factor.shape[0] != p:
                raise ValueError(f"model error must have coef_var ({p},) and factor ({p}, r), got "
                                 f"{coef_var.shape} and {factor.shape}")
            if not (np.isfinite(scale) and scale >= 0 and np.all(np.isfinite(coef_var))
                    and np.all(coef_var >= 0) and np.all(np.isfinite(factor))):
                raise ValueError("model error must be finite and non-negative")
            self.model_error = {"cov_scale": scale, "coef_var": coef_var, "factor": factor}
            if model_error.get("atom_scale") is not None:
                self.model_error["atom_scale"] = AtomScale.from_dict(dict(model_error["atom_scale"]))
            if model_error.get("energy_scale") is not None:
                self.model_error["energy_scale"], self.model_error["energy_columns"] = \
                    _energy_scale_of(dict(model_error["energy_scale"]), p)
        self.ties = [(int(j), int(i), float(f)) for j, i, f in (ties or [])]
        for j, i, f in self.ties:
            if not (0 <= i < j < p and np.isfinite(f) and f != 0):
                raise ValueError(f"tie ({j}, {i}, {f}) must name two coefficients i < j < {p} and a "
                                 "finite non-zero factor")
        self.path: str | None = None
        """The file this posterior was read from (:meth:`load`), for messages; None if built here."""
        self._factor: tuple[np.ndarray, np.ndarray] | None = None
        self._predictive_cov: np.ndarray | None = None
        self._pred_factor: np.ndarray | None = None

    def predictive_factor(self) -> np.ndarray:
        """(p, r) factor ``L`` with ``L L^T = predictive_cov``, r <= p, built without factorizing the
        (possibly singular) predictive covariance itself: ``sqrt(c)`` times :meth:`fit_factor`
        beside :meth:`model_error_factor`, compressed to at most p columns by a QR decomposition
        (exact to rounding)."""
        if self._pred_factor is not None:
            return self._pred_factor
        base = self.fit_factor()
        self._pred_factor = base
        if self.model_error is None:
            return base
        factor = np.hstack([np.sqrt(self.model_error["cov_scale"]) * base, self.model_error_factor()])
        factor = factor[:, np.any(factor != 0, axis=0)]
        if factor.shape[1] > self.n_coefficients:
            factor = np.linalg.qr(factor.T, mode="r").T  # L L^T = (Q R)^T (Q R) = R^T R
        self._pred_factor = factor
        return factor

    def fit_factor(self) -> np.ndarray:
        """(p, r) factor ``F`` with ``F F^T = cov`` (the fit's posterior covariance ``S``): the
        Cholesky factor of its live block, zero rows for the coefficients held fixed."""
        live, chol = self._cov_cholesky()
        base = np.zeros((self.n_coefficients, chol.shape[1]))
        base[live] = chol
        return base

    def model_error_factor(self) -> np.ndarray:
        """(p, r) factor ``G`` with ``G G^T = M = diag(coef_var) + factor factor^T``, the model
        error's covariance (r = 0 without a model error): the low-rank factor beside one column
        ``sqrt(coef_var_k) e_k`` per coefficient with a nonzero variance."""
        p = self.n_coefficients
        if self.model_error is None:
            return np.zeros((p, 0))
        me = self.model_error
        nz = np.flatnonzero(me["coef_var"] > 0)
        diag = np.zeros((p, nz.size))
        diag[nz, np.arange(nz.size)] = np.sqrt(me["coef_var"][nz])
        return np.hstack([me["factor"], diag])

    def _cov_cholesky(self) -> tuple[np.ndarray, np.ndarray]:
        """The live coefficients of ``cov`` and the Cholesky factor of their block (cached)."""
        if self._factor is None:
            self._factor = live_cholesky(self.cov)
        return self._factor

    @property
    def predictive_cov(self) -> np.ndarray:
        """(p, p) covariance of the coefficients for predicting new configurations.

        ``c * cov + diag(s^2) + U U^T`` when a model error was learned (see the module docstring),
        else ``cov``. Its quadratic form ``x^T C x`` is the variance of the potential's error on a
        row ``x`` (per-quantity floors, :attr:`noise_var`, not included); the MD hook and the native
        plugin use it.
        """
        if self.model_error is None:
            return self.cov
        if self._predictive_cov is None:
            me = self.model_error
            cov = me["cov_scale"] * self.cov + np.diag(me["coef_var"]) + me["factor"] @ me["factor"].T
            self._predictive_cov = 0.5 * (cov + cov.T)
        return self._predictive_cov

    # ----------------------------------------------------------------- layout
    @property
    def n_coefficients(self) -> int:
        """Number of coefficients p (all element blocks, constants included)."""
        return int(self.mean.shape[0])

    @property
    def block_size(self) -> int:
        """Coefficients per element block (``ncoeff + 1`` of the ``.snapcoeff`` header)."""
        return self.n_coefficients // len(self.elements)

    @property
    def fit_columns(self) -> np.ndarray:
        """Positions in the snapcoeff layout of the columns of FitSNAP's A (constants dropped
        when ``bzeroflag = 1``)."""
        idx = np.arange(self.n_coefficients)
        if int(self.snap.get("bzeroflag", 0)):
            return idx[idx % self.block_size != 0]
        return idx

    def to_layout(self, a: np.ndarray) -> np.ndarray:
        """Rows of descriptors (n, p) or (n, len(fit_columns)) -> (n, p) in the snapcoeff layout."""
        a = np.atleast_2d(np.asarray(a, dtype=float))
        if a.shape[1] == self.n_coefficients:
            return a
        cols = self.fit_columns
        if a.shape[1] == cols.size:
            full = np.zeros((a.shape[0], self.n_coefficients))
            full[:, cols] = a
            return full
        raise ValueError(f"descriptor rows have {a.shape[1]} columns; this posterior takes "
                         f"{self.n_coefficients} (snapcoeff layout) or {cols.size} (FitSNAP's A)")

    def tied(self, coefficients: np.ndarray) -> np.ndarray:
        """Coefficients (p,) or (n, p) with each tied group's combination spread over the group in
        proportion to its factors (the least-norm coefficients that make the same predictions):
        what LAMMPS runs (see the module docstring). Without ties, the coefficients themselves."""
        out = np.array(coefficients, dtype=float)
        if not self.ties:
            return out
        groups: dict[int, list[tuple[int, float]]] = {}
        for j, i, f in self.ties:
            groups.setdefault(i, []).append((j, f))
        for i, members in groups.items():
            idx = np.array([i] + [j for j, _ in members])
            fac = np.array([1.0] + [f for _, f in members])
            total = out[..., idx] @ fac  # the combination every prediction sees
            out[..., idx] = total[..., None] * fac / float(fac @ fac)
        return out

    # ------------------------------------------------------------------ noise
    @property
    def noise_std(self) -> dict[str, float]:
        """{noise class: std in physical units} (eV/atom, eV/A, bar)."""
        return {k: float(np.sqrt(v)) for k, v in self.noise_var.items()}

    def _noise_variance(self, noise: str | Sequence[str] | np.ndarray | None, n: int) -> np.ndarray:
        if noise is None:
            return np.zeros(n)
        names = [noise] * n if isinstance(noise, str) else list(noise)
        if len(names) != n:
            raise ValueError(f"noise names: {len(names)} given for {n} rows")
        table = self.noise_var
        out = np.empty(n)
        for i, name in enumerate(names):
            if name in table:
                out[i] = table[name]
            elif quantity_of(name) in table:
                out[i] = table[quantity_of(name)]
            else:
                raise KeyError(f"unknown noise class {name!r}; known: {sorted(table)}")
        return out

    # ------------------------------------------------------------- prediction
    @property
    def atom_scale(self) -> AtomScale | None:
        """The per-atom scale of the force variance (:mod:`fitsnap_uq.linear.atomscale`), if learned."""
        return None if self.model_error is None else self.model_error.get("atom_scale")

    @property
    def energy_scale(self) -> AtomScale | None:
        """The per-configuration scale of the energy variance (:mod:`fitsnap_uq.linear.atomscale`,
        features :func:`~fitsnap_uq.linear.atomscale.energy_features`), if learned."""
        return None if self.model_error is None else self.model_error.get("energy_scale")

    @property
    def energy_columns(self) -> np.ndarray:
        """(k,) snapcoeff-layout columns whose values on an energy row (per atom) are the
        configuration's element fractions, the intercepts of :attr:`energy_scale` (empty: one
        intercept)."""
        if self.model_error is None or self.model_error.get("energy_columns") is None:
            return np.zeros(0, dtype=int)
        return self.model_error["energy_columns"]

    def _row_variances(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(a^T M a, a^T S a)``, each (n,), of rows (n, p) in the snapcoeff layout: ``|a G|^2`` and
        ``|a F|^2`` with the factors of :meth:`model_error_factor` and :meth:`fit_factor`, as the
        plugin computes them (the diagonal part without forming its columns)."""
        me = self.model_error
        if me is None:
            raise ValueError("the posterior has no model error")
        me_var = (rows**2) @ me["coef_var"] + np.sum((rows @ me["factor"]) ** 2, axis=1)
        live, chol = self._cov_cholesky()
        fit_var = np.sum((rows[:, live] @ chol) ** 2, axis=1)
        return me_var, fit_var

    def energy_log_scales(self, a: np.ndarray, natoms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(theta . z, phi . z)``, each (n,): the logs of the per-configuration factors on each
        energy row's coefficient variance and on its noise floor (0 on rows with ``natoms <= 0`` and
        without a learned :attr:`energy_scale`).

        ``z`` = [the configuration's element fractions (the row's :attr:`energy_columns`, clipped to
        [0, 1]; 1 without them), standardized logs of the row's ``a^T M a``, ``a^T S a``, ``|a|^2``
        (over FitSNAP's columns, :attr:`fit_columns`) and of ``natoms``] (as
        :meth:`~fitsnap_uq.linear.predictive.PredictiveModel.energy_log_scales`).

        Args:
            a: (n, p) or (n, len(fit_columns)) rows; energy rows per atom (the configuration's
                descriptor sum divided by its number of atoms).
            natoms: (n,) the number of atoms of each energy row's configuration, 0 (or negative) on
                force and stress rows.
        """
        full = self.to_layout(a)
        coef, floor = np.zeros(full.shape[0]), np.zeros(full.shape[0])
        natoms = np.asarray(natoms, dtype=float).reshape(-1)
        if natoms.shape != (full.shape[0],):
            raise ValueError(f"natoms: {natoms.size} values for {full.shape[0]} rows")
        sel = natoms > 0
        scale = self.energy_scale
        if scale is None or not sel.any():
            return coef, floor
        rows = full[sel]
        me_var, fit_var = self._row_variances(rows)
        feats = energy_features(me_var, fit_var, rows[:, self.fit_columns], natoms[sel])
        cols = self.energy_columns
        comp = np.ones((rows.shape[0], 1)) if cols.size == 0 else np.clip(rows[:, cols], 0.0, 1.0)
        coef[sel], floor[sel] = scale.log_scales(feats, comp)
        return coef, floor

    def force_log_scales(self, a: np.ndarray, atom: np.ndarray, element: np.ndarray
                         ) -> tuple[np.ndarray, np.ndarray]:
        """``(theta . z_j, phi . z_j)``, each (n,): the logs of the per-atom factors on each row's
        coefficient variance and on its noise floor (0 on rows with ``atom < 0`` and without a
        learned :attr:`atom_scale`; see :mod:`fitsnap_uq.linear.atomscale`).

        Args:
            a: (n, p) or (n, len(fit_columns)) rows; all three force rows of every atom named in
                ``atom`` must be among them (the features sum over an atom's rows).
            atom: (n,) an id per atom (equal on its force rows, unique over configurations), -1 on
                energy and stress rows.
            element: (n,) element index (in :attr:`elements`) of each force row's atom.
        """
        full = self.to_layout(a)
        coef, floor = np.zeros(full.shape[0]), np.zeros(full.shape[0])
        atom = np.asarray(atom)
        sel = atom >= 0
        scale = self.atom_scale
        if scale is None or not sel.any():
            return coef, floor
        rows = full[sel]
        me_var, fit_var = self._row_variances(rows)
        feats = atom_sums(me_var, fit_var, np.einsum("ij,ij->i", rows, rows), atom[sel])
        coef[sel], floor[sel] = scale.log_scales(feats, np.asarray(element)[sel])
        return coef, floor

    def force_log_scale(self, a: np.ndarray, atom: np.ndarray, element: np.ndarray) -> np.ndarray:
        """(n,) ``theta . z_j``, the log of the per-atom factor on each row's coefficient variance
        (:meth:`force_log_scales`)."""
        return self.force_log_scales(a, atom, element)[0]

    def predict_raw(self, a: np.ndarray, noise: str | Sequence[str] | None = None,
                    atom: np.ndarray | None = None, element: np.ndarray | None = None,
                    natoms: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Mean (n,) and uncalibrated Gaussian std (n,) for descriptor rows ``a``: the predictive
        covariance's part (:attr:`predictive_cov`, as ``||a L||^2`` with its factor
        :meth:`predictive_factor`, the same numbers the MD hook and the plugin compute) plus the
        noise variance of ``noise``; when ``atom`` and ``element`` are given and the Posterior has
        an :attr:`atom_scale`, a force row's first part is multiplied by ``exp(theta . z_j)`` and its
        noise variance by ``exp(phi . z_j)`` (:meth:`force_log_scales`); when ``natoms`` is given and
        the Posterior has an :attr:`energy_scale`, an energy row's (``natoms > 0``) likewise by its
        configuration's factors (:meth:`energy_log_scales`)."""
        full = self.to_layout(a)
        mean = full @ self.mean
        var = np.sum((full @ self.predictive_factor()) ** 2, axis=1)
        noise_var = self._noise_variance(noise, full.shape[0])
        if atom is not None and element is not None:
            log_coef, log_floor = self.force_log_scales(full, atom, element)
            var = var * np.exp(np.clip(log_coef, -50.0, 50.0))
            noise_var = noise_var * np.exp(np.clip(log_floor, -50.0, 50.0))
        if natoms is not None:
            log_coef, log_floor = self.energy_log_scales(full, natoms)
            var = var * np.exp(np.clip(log_coef, -50.0, 50.0))
            noise_var = noise_var * np.exp(np.clip(log_floor, -50.0, 50.0))
        return mean, np.sqrt(var + noise_var)

    def multiplier(self, level: float, quantity: str | None) -> float:
        """Half-width of the central interval at ``level`` coverage, in units of the raw sigma.

        Gaussian (``Phi^-1((1 + level) / 2)``) unless a recalibration for ``quantity`` is stored.
        """
        if not 0.0 < level < 1.0:
            raise ValueError(f"level must be in (0, 1), got {level}")
        return interval_multiplier(self.recalibration, level, quantity)

    def _quantities(self, noise: str | Sequence[str] | None, n: int) -> list[str | None]:
        if noise is None:
            return [None] * n
        if isinstance(noise, str):
            return [quantity_of(noise)] * n
        return [quantity_of(x) for x in noise]

    def interval(self, a: np.ndarray, level: float = 0.95,
                 noise: str | Sequence[str] | None = None, atom: np.ndarray | None = None,
                 element: np.ndarray | None = None, natoms: np.ndarray | None = None) -> np.ndarray:
        """Half-widths (n,) of the calibrated central interval at coverage ``level``.

        With ``noise=None`` the interval is the coefficient part only and is not recalibrated (the
        recalibration is learned on total predictive errors of a quantity).
        """
        _, std = self.predict_raw(a, noise, atom, element, natoms)
        quants = self._quantities(noise, std.shape[0])
        mult = {q: self.multiplier(level, q) for q in set(quants)}
        return std * np.array([mult[q] for q in quants])

    def predict(self, a: np.ndarray, noise: str | Sequence[str] | None = None,
                atom: np.ndarray | None = None, element: np.ndarray | None = None,
                natoms: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Mean (n,) and calibrated 1-sigma (68.3%) half-width (n,) for unweighted rows ``a``.

        Args:
            a: (n, p) or (n, len(fit_columns)) unweighted descriptor rows, energy rows per atom.
            noise: None (coefficient uncertainty only), a noise class name for all rows, or one
                name per row; adds that class's noise variance.
            atom, element: optional (n,) atom ids and element indices of force rows (-1 elsewhere):
                with a learned :attr:`atom_scale`, each force row's coefficient variance and its
                noise variance are scaled by its atom's factors (:meth:`force_log_scales`).
            natoms: optional (n,) number of atoms of each energy row's configuration (0 on force and
                stress rows): with a learned :attr:`energy_scale`, each energy row's coefficient
                variance and noise variance are scaled by its configuration's factors
                (:meth:`energy_log_scales`).
        """
        mean, _ = self.predict_raw(a, noise, atom, element, natoms)
        return mean, self.interval(a, ONE_SIGMA, noise, atom, element, natoms)

    # --------------------------------------------------------------- sampling
    def sample(self, n: int, seed: int | None = 0) -> np.ndarray:
        """Draw ``n`` coefficient vectors (n, p); the same seed gives the same draws.

        From the stored samples when there are any (with replacement if n exceeds them),
        otherwise from the Gaussian N(mean, cov): the coefficients' posterior, without the model
        error (a draw is a plausible fit of the data, not a sample of the fit's error).
        """
        rng = np.random.default_rng(seed)
        if self.samples is not None and self.samples.shape[0] > 0:
            ns = self.samples.shape[0]
            idx = rng.choice(ns, size=n, replace=n > ns)
            return self.samples[idx].copy()
        # Cholesky of the live block: coefficients held fixed (zero variance) stay exact.
        live, factor = self._cov_cholesky()
        out = np.tile(self.mean, (n, 1))
        out[:, live] += rng.standard_normal((n, int(live.sum()))) @ factor.T
        return out

    # -------------------------------------------------------------------- I/O
    def header(self) -> dict[str, Any]:
        """The JSON header (everything except the arrays)."""
        return {
            "format": "fitsnap-uq posterior",
            "version": FORMAT_VERSION,
            "elements": self.elements,
            "snap": self.snap,
            "noise_std": self.noise_std,
            "log_evidence": self.log_evidence,
            "quantity_units": {"Energy": "eV/atom", "Force": "eV/Angstrom", "Stress": "bar"},
            "info": self.info,
            "model_error": (None if self.model_error is None
                            else {"cov_scale": self.model_error["cov_scale"],
                                  **({"atom_scale": self.model_error["atom_scale"].to_dict()}
                                     if self.model_error.get("atom_scale") is not None else {}),
                                  **({"energy_scale": {
                                      **self.model_error["energy_scale"].to_dict(),
                                      "composition_columns": self.energy_columns.tolist()}}
                                     if self.model_error.get("energy_scale") is not None else {})}),
            "ties": [list(t) for t in self.ties],
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write the posterior to ``path`` (.npz) atomically; returns the path."""
        path = Path(path)
        check_covariance(self.cov, "posterior covariance")
        arrays: dict[str, np.ndarray] = {
            "header": np.array(json.dumps(self.header(), default=_json_default)),
            "mean": self.mean, "cov": self.cov,
        }
        if self.samples is not None:
            arrays["samples"] = self.samples
        if self.model_error is not None:
            arrays["me_coef_var"] = self.model_error["coef_var"]
            arrays["me_factor"] = self.model_error["factor"]
        if self.recalibration is not None:
            arrays["recal_levels"] = self.recalibration["levels"]
            for q, v in self.recalibration.items():
                if q != "levels":
                    arrays[f"recal_{q}"] = v
        _atomic_write(path, lambda fh: np.savez(fh, **arrays))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Posterior:
        """Read a posterior written by :meth:`save`; errors name the file."""
        path = Path(path)
        if not path.is_file():
            raise InputError("posterior file not found", file=str(path))
        try:
            with np.load(path, allow_pickle=False) as data:
                header = json.loads(str(data["header"]))
                arrays = {k: data[k] for k in data.files}
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            raise InputError(f"not a fitsnap-uq posterior file ({exc})", file=str(path)) from None
        if header.get("format") != "fitsnap-uq posterior":
            raise InputError("not a fitsnap-uq posterior file (no header)", file=str(path))
        if int(header.get("version", 0)) > FORMAT_VERSION:
            raise InputError(f"posterior format version {header['version']} is newer than this "
                             f"fitsnap-uq reads ({FORMAT_VERSION}); upgrade fitsnap-uq", file=str(path))
        recal = None
        if "recal_levels" in arrays:
            recal = {"levels": arrays["recal_levels"]}
            recal.update({k[len("recal_"):]: v for k, v in arrays.items()
                          if k.startswith("recal_") and k != "recal_levels"})
        model_error = None
        if header.get("model_error") is not None:
            if "me_coef_var" not in arrays:
                raise InputError("posterior file is inconsistent: its header has a model error but "
                                 "the file has no me_coef_var array", file=str(path))
            p = arrays["mean"].shape[0]
            model_error = {"cov_scale": header["model_error"].get("cov_scale", 1.0),
                           "atom_scale": header["model_error"].get("atom_scale"),
                           "energy_scale": header["model_error"].get("energy_scale"),
                           "coef_var": arrays["me_coef_var"],
                           "factor": arrays.get("me_factor", np.zeros((p, 0)))}
        try:
            post = cls(arrays["mean"], arrays["cov"], header["elements"], header["snap"],
                       noise_var={k: v**2 for k, v in header.get("noise_std", {}).items()},
                       log_evidence=header.get("log_evidence"), samples=arrays.get("samples"),
                       recalibration=recal, info=header.get("info"), model_error=model_error,
                       ties=header.get("ties"))
        except (ValueError, KeyError, TypeError, NumericalError) as exc:
            raise InputError(f"posterior file is inconsistent: {exc}", file=str(path)) from None
        post.path = str(path)
        return post

    def snapcoeff_text(self, coefficients: np.ndarray | None = None, comment: str = "") -> str:
        """A LAMMPS ``.snapcoeff`` file's text for ``coefficients`` (default: the mean), tied
        coefficients spread over their groups (:meth:`tied`)."""
        coeffs = self.mean if coefficients is None else np.asarray(coefficients, dtype=float)
        if coeffs.shape != (self.n_coefficients,):
            raise ValueError(f"coefficients must have shape ({self.n_coefficients},), got {coeffs.shape}")
        coeffs = self.tied(coeffs)
        radelem = per_element(self.snap.get("radelem", 0.5), len(self.elements))
        wj = per_element(self.snap.get("wj", 1.0), len(self.elements))
        lines = [f"# fitsnap-uq {comment}".rstrip(), "", f"{len(self.elements)} {self.block_size}"]
        blocks = coeffs.reshape(len(self.elements), self.block_size)
        for name, rad, w, block in zip(self.elements, radelem, wj, blocks):
            lines.append(f"{name} {rad} {w}")
            lines.extend(f" {c:<30.18g}" for c in block)
        return "\n".join(lines) + "\n"

    def write_snapcoeff(self, path: str | os.PathLike, coefficients: np.ndarray | None = None,
                        comment: str = "") -> Path:
        """Write ``coefficients`` (default: the mean) as a LAMMPS ``.snapcoeff`` file, atomically."""
        text = self.snapcoeff_text(coefficients, comment)
        path = Path(path)
        _atomic_write(path, lambda fh: fh.write(text.encode()))
        return path


def _energy_scale_of(d: dict[str, Any], p: int) -> tuple[AtomScale, np.ndarray]:
    """The energy scale and its composition columns (snapcoeff layout) from their dict (the
    :class:`~fitsnap_uq.linear.atomscale.AtomScale` dict plus ``composition_columns``); checks that
    the intercepts match the columns (one without columns) and the four features."""
    given = d.pop("composition_columns", None)
    cols = np.asarray([] if given is None else given, dtype=int).reshape(-1)
    scale = AtomScale.from_dict(d)
    if scale.mu.size != 4 or scale.sd.size != 4 or scale.eps.size != 4:
        raise ValueError("the energy scale needs 4 features (log a^T M a, log a^T S a, log |a|^2, "
                         f"log natoms), got {scale.mu.size}")
    if scale.nelem != max(cols.size, 1) or np.any(cols < 0) or np.any(cols >= p):
        raise ValueError(f"the energy scale has {scale.nelem} intercepts but composition columns "
                         f"{cols.tolist()} (of {p} coefficients)")
    if not (np.all(np.isfinite(scale.theta)) and np.all(np.isfinite(scale.phi))
            and np.all(np.isfinite(scale.mu)) and np.all(scale.sd > 0)):
        raise ValueError("the energy scale must be finite with sd > 0")
    return scale, cols


def per_element(value: Any, n: int) -> list:
    """One value per element: a scalar (or a one-element list) repeated ``n`` times, else the list itself."""
    vals = value if isinstance(value, (list, tuple)) else [value]
    return list(vals) * n if len(vals) == 1 else list(vals)


def posterior_from_fit(mean: np.ndarray, cov: np.ndarray, elements: list[str], snap: dict[str, Any],
                       **kwargs: Any) -> Posterior:
    """A Posterior from a fit in FitSNAP's column layout (constants added when bzeroflag = 1).

    Args:
        mean: (m,) and cov: (m, m) over FitSNAP's A columns (:attr:`Posterior.fit_columns`).
        kwargs: the other arguments of :class:`Posterior`; ``model_error``, ``samples`` (k, m) and
            ``ties`` (if any) in FitSNAP's layout. With ties, the mean is spread over each tied group
            (:meth:`Posterior.tied`): the posterior's mean is the coefficients LAMMPS runs.
    """
    p = len(elements) * (snap["ncoeff"] + 1)
    layout = Posterior(np.zeros(p), np.zeros((p, p)), elements, snap)
    cols = layout.fit_columns
    full_mean = np.zeros(p)
    full_cov = np.zeros((p, p))
    full_mean[cols] = mean
    full_cov[np.ix_(cols, cols)] = cov
    samples = kwargs.pop("samples", None)
    if samples is not None:
        full_samples = np.zeros((np.asarray(samples).shape[0], p))
        full_samples[:, cols] = samples
        kwargs["samples"] = full_samples
    model_error = kwargs.pop("model_error", None)
    if model_error is not None:
        coef_var = np.zeros(p)
        coef_var[cols] = model_error["coef_var"]
        factor = np.zeros((p, np.asarray(model_error["factor"]).shape[1]))
        factor[cols] = model_error["factor"]
        energy = model_error.get("energy_scale")
        if energy is not None:  # the composition columns from FitSNAP's layout to the snapcoeff one
            energy = dict(energy)
            energy["composition_columns"] = cols[np.asarray(
                energy.get("composition_columns", []), dtype=int)].tolist()
        model_error = {"cov_scale": model_error["cov_scale"], "coef_var": coef_var, "factor": factor,
                       "atom_scale": model_error.get("atom_scale"), "energy_scale": energy}
    ties = [(int(cols[j]), int(cols[i]), float(f)) for j, i, f in kwargs.pop("ties", None) or []]
    post = Posterior(full_mean, full_cov, elements, snap, model_error=model_error, ties=ties, **kwargs)
    post.mean = post.tied(post.mean)
    return post
