"""Per-atom scales of the force variance and per-configuration scales of the energy variance,
learned from cross-validated residuals.

The predictive model (:mod:`fitsnap_uq.linear.predictive`) gives a force row ``a`` (one Cartesian
component of the force on atom j) the variance ``c a^T S a + a^T M a + sigma_F^2``. Its coefficient
part follows the descriptors but is one covariance for every environment, and its floor is one
constant: on held-out configurations it over-covers some kinds of atoms (a constant floor is far
above the errors of forces that symmetry nearly fixes) and under-covers others. This module scales
both parts by per-atom factors that depend on the atom's own environment:

    var(a_jx) = (c a_jx^T S a_jx + a_jx^T M a_jx) * exp(theta . z_j) + sigma_F^2 * exp(phi . z_j)

with ``z_j`` = [one-hot element of atom j (its intercepts), standardized log features of the atom]:

* ``log m_j``: the atom's model-error variance summed over its three components,
  ``sum_x a_jx^T M a_jx``;
* ``log v_j``: its fit variance ``sum_x a_jx^T S a_jx`` (S: the full fit's posterior covariance);
* ``log d_j``: the squared norm of its force rows ``sum_x |a_jx|^2`` (FitSNAP layout, unweighted).

Every feature comes from the atom's three force rows and the posterior, so an MD code that has
the rows ``D_j`` (``compute snad/atom``) can evaluate it. ``theta`` and ``phi`` maximize the Gaussian
likelihood of the cross-validated force residuals (the rest of the model held fixed; ``sigma_F^2`` is
the model's floor, a reference that ``phi``'s intercepts rescale) with a ridge penalty
``lam (|theta_features|^2 + |phi_features|^2)`` on the non-intercept parts; ``lam`` is chosen among
:data:`LAMBDAS` by K-fold cross-validation over configurations of that likelihood
(:func:`fit_scales`). ``floor_model = element`` keeps only ``phi``'s intercepts, ``constant`` none
(one refitted floor, the model before ``phi``).

The same form scales an energy row (per atom) of a configuration, with ``z`` = [the configuration's
element fractions (its intercepts: a composition-weighted mean), standardized logs of the energy
row's own ``a^T M a``, ``a^T S a``, ``|a|^2`` and of the number of atoms N] (:func:`energy_features`; an
:class:`AtomScale` whose ``element`` argument is an (n, nelem) array of fractions).

Units: variances in (eV/A)^2 (forces) or (eV/atom)^2 (energies); the features are dimensionless
after standardization. Pure numpy/scipy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize

LAMBDAS = (1e-4, 1e-2, 1.0)
"""Ridge penalties tried by the inner cross-validation."""
TINY = 1e-300
REL_FLOOR = 1e-6
"""Each raw feature sum is floored at this fraction of its median over the training atoms before the
log (atoms whose forces symmetry fixes have rows ~0; their logs would otherwise sit hundreds of units
below the rest and set the standardization)."""
FEATURES = ("log_me", "log_fitvar", "log_rownorm")


@dataclass
class AtomScale:
    """Fitted per-atom scales of the force variance: ``exp(theta . z_j)`` on its coefficient part,
    ``exp(phi . z_j)`` on its floor.

    Attributes:
        theta: (nelem + 3,) intercept per element, then the weights of the standardized features.
        mu, sd: (3,) means and stds of the log features over the training atoms.
        nelem: number of elements (element indices 0..nelem-1).
        lam: ridge penalty chosen by cross-validation.
        floor_var: ``sigma_F^2`` in (eV/A)^2, the floor's reference (it replaces the model's force
            floor): an atom's floor is ``exp(phi . z_j) sigma_F^2``.
        eps: (3,) floors of the raw feature sums (:data:`REL_FLOOR` times their training medians).
        phi: (nelem + 3,) as ``theta``, the log-linear scale of the floor; zeros (the default, and a
            scale stored without it): one constant floor ``sigma_F^2``.
        zlo, zhi: (3,) the range of the standardized features over the training atoms. Beyond it
            the log-linear fit is an extrapolation: a feature there counts as at the range's edge
            where going on would lower ``theta . z`` (or ``phi . z``), and in full where it raises
            it, so an atom unlike any that cross-validation saw is never given a smaller variance
            than the nearest edge gives, while one whose features call for more keeps it (measured
            on held-out and leave-one-group-out configurations, ``benchmarks/calibration_newdata.py``:
            a plain clip lowered the NLL of groups beyond the range, where it raised the variance,
            and raised it for held-out configurations whose larger ``a^T S a`` called for more).
            None (a scale stored without them): no guard.
    """

    theta: np.ndarray
    mu: np.ndarray
    sd: np.ndarray
    nelem: int
    lam: float
    floor_var: float
    eps: np.ndarray
    phi: np.ndarray | None = None
    zlo: np.ndarray | None = None
    zhi: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.theta = np.asarray(self.theta, float).reshape(-1)
        self.phi = (np.zeros_like(self.theta) if self.phi is None
                    else np.asarray(self.phi, float).reshape(-1))
        nfeat = np.asarray(self.mu).size
        if self.theta.shape != (self.nelem + nfeat,) or self.phi.shape != self.theta.shape:
            raise ValueError(f"atom scale: theta and phi must have nelem + {nfeat} = "
                             f"{self.nelem + nfeat} values, got {self.theta.size} and {self.phi.size}")
        if (self.zlo is None) != (self.zhi is None):
            raise ValueError("atom scale: zlo and zhi go together")
        if self.zlo is not None:
            self.zlo = np.asarray(self.zlo, float).reshape(-1)
            self.zhi = np.asarray(self.zhi, float).reshape(-1)
            if self.zlo.shape != (nfeat,) or self.zhi.shape != (nfeat,) or np.any(self.zlo > self.zhi):
                raise ValueError(f"atom scale: zlo and zhi must be {nfeat} values with zlo <= zhi")

    def _z(self, sums: np.ndarray, element: np.ndarray) -> np.ndarray:
        return design(np.log(np.maximum(sums, self.eps)), element, self.mu, self.sd, self.nelem)

    def _dot(self, z: np.ndarray, w: np.ndarray) -> np.ndarray:
        """(n,) ``w . z`` with the range guard: each feature beyond ``[zlo, zhi]`` counts as at the
        edge when going on would lower ``w . z``, in full when it raises it (:attr:`zlo`)."""
        if self.zlo is None:
            return z @ w
        k = self.nelem
        feats = z[:, k:]
        edge = np.clip(feats, self.zlo, self.zhi)
        beyond = (feats - edge) * w[k:]
        return z[:, :k] @ w[:k] + edge @ w[k:] + np.sum(np.maximum(beyond, 0.0), axis=1)

    def log_scales(self, sums: np.ndarray, element: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(theta . z, phi . z)``, each (n,), of atoms with raw feature sums ``sums`` (n, 3)
        (:func:`atom_sums`) and element indices ``element`` (n,)."""
        z = self._z(sums, element)
        return self._dot(z, self.theta), self._dot(z, self.phi)

    def log_scale(self, sums: np.ndarray, element: np.ndarray) -> np.ndarray:
        """(n,) ``theta . z`` of atoms with raw feature sums ``sums`` (n, 3) (:func:`atom_sums`) and
        element indices ``element`` (n,)."""
        return self._dot(self._z(sums, element), self.theta)

    def log_floor_scale(self, sums: np.ndarray, element: np.ndarray) -> np.ndarray:
        """(n,) ``phi . z`` (arguments as :meth:`log_scale`)."""
        return self._dot(self._z(sums, element), self.phi)

    def variance(self, base: np.ndarray, sums: np.ndarray, element: np.ndarray) -> np.ndarray:
        """(n,) force variance ``base exp(theta . z) + sigma_F^2 exp(phi . z)`` in (eV/A)^2 of rows
        whose coefficient part is ``base`` (n,) (arguments otherwise as :meth:`log_scale`)."""
        z = self._z(sums, element)
        return (np.asarray(base, float) * np.exp(np.clip(self._dot(z, self.theta), -50.0, 50.0))
                + self.floor_var * np.exp(np.clip(self._dot(z, self.phi), -50.0, 50.0)))

    def to_dict(self) -> dict:
        return {"theta": self.theta.tolist(), "mu": self.mu.tolist(), "sd": self.sd.tolist(),
                "nelem": self.nelem, "lam": self.lam, "floor_var": self.floor_var,
                "eps": self.eps.tolist(), "phi": self.phi.tolist(),
                **({} if self.zlo is None else {"zlo": self.zlo.tolist(), "zhi": self.zhi.tolist()})}

    @classmethod
    def from_dict(cls, d: dict) -> AtomScale:
        return cls(np.asarray(d["theta"], float), np.asarray(d["mu"], float), np.asarray(d["sd"], float),
                   int(d["nelem"]), float(d["lam"]), float(d["floor_var"]),
                   np.asarray(d.get("eps", [TINY] * 3), float),
                   None if d.get("phi") is None else np.asarray(d["phi"], float),
                   None if d.get("zlo") is None else np.asarray(d["zlo"], float),
                   None if d.get("zhi") is None else np.asarray(d["zhi"], float))


def atom_sums(me: np.ndarray, fitvar: np.ndarray, rownorm: np.ndarray, atom: np.ndarray
              ) -> np.ndarray:
    """(n, 3) raw per-atom feature sums of force rows: the sums over each atom's rows of ``me`` (n,)
    (``a^T M a``), ``fitvar`` (n,) (``a^T S a``) and ``rownorm`` (n,) (``|a|^2``); every row of an atom
    gets its atom's values. ``atom`` (n,): an integer id per atom (equal on its rows)."""
    _, inv = np.unique(np.asarray(atom), return_inverse=True)
    out = np.empty((inv.size, 3))
    for k, v in enumerate((me, fitvar, rownorm)):
        out[:, k] = np.bincount(inv, weights=np.asarray(v, float))[inv]
    return out


def energy_features(me: np.ndarray, fitvar: np.ndarray, a: np.ndarray, natoms: np.ndarray
                    ) -> np.ndarray:
    """(n, 4) raw features of energy rows ``a`` (n, m) (per atom, FitSNAP layout): their model-error
    variance ``me`` (n,) (``a^T M a``), fit variance ``fitvar`` (n,) (``a^T S a``), ``|a|^2`` and the
    number of atoms ``natoms`` (n,) of the row's configuration."""
    a = np.asarray(a, float)
    return np.stack([np.asarray(me, float), np.asarray(fitvar, float), np.einsum("ij,ij->i", a, a),
                     np.asarray(natoms, float)], axis=1)


def design(feats: np.ndarray, element: np.ndarray, mu: np.ndarray, sd: np.ndarray, nelem: int
           ) -> np.ndarray:
    """(n, nelem + k) ``z``: the element intercepts, then the standardized features ``feats`` (n, k).

    ``element``: (n,) element indices (one-hot intercepts: an atom), or (n, nelem) element fractions
    (a configuration: the composition-weighted mean of the intercepts)."""
    element = np.asarray(element)
    if element.ndim == 2:
        onehot = element.astype(float)
    else:
        onehot = (element.astype(int)[:, None] == np.arange(nelem)[None, :]).astype(float)
    return np.hstack([onehot, (np.asarray(feats, float) - mu) / sd])


def _weights(weight: np.ndarray | None, n: int) -> np.ndarray:
    """(n,) row weights normalized to sum 1 (equal when ``weight`` is None)."""
    w = np.ones(n) if weight is None else np.asarray(weight, float)
    return w / w.sum()


def _fit_scales(z: np.ndarray, base: np.ndarray, r2: np.ndarray, floor: float, lam: float,
                pen: np.ndarray, floor_free: np.ndarray, weight: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """Minimize the (weighted) mean Gaussian NLL of ``r2`` (n,) under ``base exp(z theta) + floor
    exp(z phi)`` plus ``lam/2 (|pen theta|^2 + |pen phi|^2)`` over ``theta`` and the ``floor_free``
    (k,) bool components of ``phi`` (the others stay 0); ``z`` (n, k), ``pen`` (k,) 0 on intercepts,
    1 on features, ``weight`` (n,) optional nonnegative row weights (None: equal). Returns
    ``(theta, phi)``, each (k,)."""
    wn = _weights(weight, r2.size)
    ms = max(float(np.sum(wn * r2)), TINY)
    b, rt, fl = base / ms, r2 / ms, max(floor, TINY) / ms
    k = z.shape[1]
    free = np.flatnonzero(floor_free)

    def obj(x: np.ndarray) -> tuple[float, np.ndarray]:
        th = x[:k]
        ph = np.zeros(k)
        ph[free] = x[k:]
        scaled = b * np.exp(np.clip(z @ th, -50.0, 50.0))
        fscaled = fl * np.exp(np.clip(z @ ph, -50.0, 50.0))
        v = np.maximum(scaled + fscaled, TINY)
        f = (0.5 * float(np.sum(wn * (np.log(v) + rt / v)))
             + 0.5 * lam * float(np.sum((pen * th) ** 2) + np.sum((pen * ph) ** 2)))
        gv = 0.5 * wn * (1.0 / v - rt / v**2)
        g_ph = z.T @ (gv * fscaled) + lam * pen * ph
        return f, np.r_[z.T @ (gv * scaled) + lam * pen * th, g_ph[free]]

    res = minimize(obj, np.zeros(k + free.size), jac=True, method="L-BFGS-B",
                   options={"maxiter": 3000, "gtol": 1e-10, "ftol": 1e-14})
    phi = np.zeros(k)
    phi[free] = res.x[k:]
    return res.x[:k], phi


def _nll(z: np.ndarray, theta: np.ndarray, phi: np.ndarray, base: np.ndarray, r2: np.ndarray,
         floor: float, weight: np.ndarray | None = None) -> float:
    """(Weighted) mean Gaussian NLL of ``r2`` (n,) under the scales ``theta``, ``phi``."""
    v = np.maximum(base * np.exp(np.clip(z @ theta, -50.0, 50.0))
                   + floor * np.exp(np.clip(z @ phi, -50.0, 50.0)), TINY)
    return 0.5 * float(np.sum(_weights(weight, r2.size) * (np.log(2 * np.pi * v) + r2 / v)))


def fit_scales(z: np.ndarray, base: np.ndarray, resid: np.ndarray, floor: float, pen: np.ndarray,
               floor_free: np.ndarray, config: np.ndarray, folds: int = 5, seed: int = 0,
               weight: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, float]:
    """Log-linear scales of both parts of a variance, ``base exp(z theta) + floor exp(z phi)``,
    fitted to held-out residuals; the ridge penalty ``lam`` is chosen among :data:`LAMBDAS` by a
    K-fold cross-validation over configurations of the same likelihood.

    Args:
        z: (n, k) design (intercept columns, then standardized features).
        base: (n,) the coefficient part of each row's variance; floor: the constant part (a
            reference: ``phi``'s intercepts rescale it).
        resid: (n,) held-out residuals (units of sqrt(base)).
        pen: (k,) 1 on penalized (feature) columns, 0 on intercepts.
        floor_free: (k,) bool, the components of ``phi`` that are fitted (the others stay 0).
        config: (n,) configuration id of each row (the inner CV deals whole configurations).
        weight: (n,) optional nonnegative row weights of the likelihood, in the fits and in the
            inner CV's score alike (None: every row counts once).

    Returns:
        ``(theta, phi, lam)``.
    """
    r2 = np.asarray(resid, float) ** 2
    base = np.asarray(base, float)
    pen = np.asarray(pen, float)
    floor_free = np.asarray(floor_free, bool)
    w = np.ones(r2.size) if weight is None else np.asarray(weight, float)
    if w.shape != r2.shape or np.any(w < 0) or not np.all(np.isfinite(w)) or w.sum() <= 0:
        raise ValueError("fit_scales: weight must be (n,) finite, nonnegative, not all zero")
    _, code = np.unique(np.asarray(config), return_inverse=True)
    order = np.random.default_rng(seed).permutation(code.max() + 1)
    fold = (order % folds)[code]
    scores = []
    for lam in LAMBDAS:
        s = 0.0
        for f in range(folds):
            tr, te = fold != f, fold == f
            if not (te.any() and tr.any()) or w[te].sum() <= 0 or w[tr].sum() <= 0:
                continue
            th, ph = _fit_scales(z[tr], base[tr], r2[tr], floor, lam, pen, floor_free, w[tr])
            s += _nll(z[te], th, ph, base[te], r2[te], floor, w[te]) * w[te].sum()
        scores.append(s)
    lam = float(LAMBDAS[int(np.argmin(scores))])
    theta, phi = _fit_scales(z, base, r2, floor, lam, pen, floor_free, w)
    return theta, phi, lam


FLOOR_MODES = ("features", "element", "constant")
"""How the force floor depends on the atom: ``exp(phi . z_j)`` with every component of ``phi``
(``features``, default), its element intercepts only (``element``), or one constant (``constant``,
the model before ``phi``)."""


def fit_atom_scale(sums: np.ndarray, element: np.ndarray, base: np.ndarray, resid: np.ndarray,
                   floor_var: float, nelem: int, config: np.ndarray, folds: int = 5, seed: int = 0,
                   floor_model: str = "features", weight: np.ndarray | None = None) -> AtomScale:
    """Fit the per-atom scale on cross-validated force residuals.

    Args:
        sums: (n, 3) raw per-atom feature sums of the rows (:func:`atom_sums`).
        element: (n,) element index of each row's atom.
        base: (n,) the coefficient part of each row's variance (``c a^T S_f a + a^T M a``).
        resid: (n,) held-out residuals (eV/A).
        floor_var: ``sigma_F^2`` of the model without the scale ((eV/A)^2): the reference of the
            floor, which ``exp(phi . z_j)`` rescales (``constant``: refitted instead).
        nelem: number of elements.
        config: (n,) configuration id of each row (the inner CV deals whole configurations).
        folds, seed: the inner cross-validation choosing ``lam``.
        floor_model: one of :data:`FLOOR_MODES`.
        weight: (n,) optional row weights of the likelihood (:func:`fit_scales`; None: equal).
    """
    if floor_model not in FLOOR_MODES:
        raise ValueError(f"floor_model must be one of {FLOOR_MODES}, not {floor_model!r}")
    sums = np.asarray(sums, float)
    eps = np.maximum(REL_FLOOR * np.median(sums, axis=0), TINY)
    feats = np.log(np.maximum(sums, eps))
    mu = feats.mean(axis=0)
    sd = np.maximum(feats.std(axis=0), 1e-12)
    z = design(feats, element, mu, sd, nelem)
    zlo = z[:, nelem:].min(axis=0)
    zhi = z[:, nelem:].max(axis=0)
    pen = np.r_[np.zeros(nelem), np.ones(z.shape[1] - nelem)]
    floor = max(float(floor_var), TINY)
    if floor_model == "constant":  # one common floor: the column of ones in the span of the one-hots
        zc = np.hstack([z, np.ones((z.shape[0], 1))])
        free = np.r_[np.zeros(z.shape[1], bool), True]
        theta, phi, lam = fit_scales(zc, base, resid, floor, np.r_[pen, 0.0], free, config, folds, seed,
                                     weight)
        # the column of ones is the sum of the one-hot columns: its theta goes to the intercepts
        return AtomScale(theta=np.r_[theta[:nelem] + theta[-1], theta[nelem:-1]], mu=mu, sd=sd,
                         nelem=nelem, lam=lam, floor_var=floor * float(np.exp(phi[-1])), eps=eps,
                         zlo=zlo, zhi=zhi)
    free = pen == 0 if floor_model == "element" else np.ones(z.shape[1], bool)
    theta, phi, lam = fit_scales(z, base, resid, floor, pen, free, config, folds, seed, weight)
    return AtomScale(theta=theta, mu=mu, sd=sd, nelem=nelem, lam=lam, floor_var=floor, eps=eps,
                     phi=phi, zlo=zlo, zhi=zhi)
