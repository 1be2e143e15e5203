"""A per-atom scale of the force variance, learned from cross-validated residuals.

The predictive model (:mod:`fitsnap_uq.linear.predictive`) gives a force row ``a`` (one Cartesian
component of the force on atom j) the variance ``c a^T S a + a^T M a + sigma_F^2``. Its coefficient
part follows the descriptors but is one covariance for every environment, and on held-out
configurations it over-covers some kinds of atoms and under-covers others. This module multiplies the
coefficient part by a per-atom factor that depends on the atom's own environment, and (in general)
the force floor by another:

    var(a_jx) = exp(theta . z_j) * (c a_jx^T S a_jx + a_jx^T M a_jx) + exp(phi . z_j) * sigma_F^2

with ``z_j`` = [one-hot element of atom j (its intercepts), standardized log features of the atom]:

* ``log m_j``: the atom's model-error variance summed over its three components,
  ``sum_x a_jx^T M a_jx``;
* ``log v_j``: its fit variance ``sum_x a_jx^T S a_jx`` (S: the full fit's posterior covariance);
* ``log d_j``: the squared norm of its force rows ``sum_x |a_jx|^2`` (FitSNAP layout, unweighted).

Every feature comes from the atom's three force rows and the posterior, so an MD code that has
the rows ``D_j`` (``compute snad/atom``) can evaluate it. ``theta`` maximizes the Gaussian likelihood
of the cross-validated force residuals (the rest of the model held fixed, the force floor
``sigma_F^2`` refitted with it) with a ridge penalty ``lam |theta_features|^2`` on the non-intercept
part; ``lam`` is chosen among :data:`LAMBDAS` by K-fold cross-validation over configurations of that
likelihood. ``phi`` (the floor's weights) is stored with ``theta`` and applied by
``Posterior.predict``, the MD hook and the native plugin; :func:`fit_atom_scale` sets it to zero (the
floor is then one constant, ``sigma_F^2``). Energies are not scaled.

Units: variances in (eV/A)^2; the features are dimensionless after standardization. Pure numpy/scipy.
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
    """Fitted per-atom scales of the force variance: ``exp(theta . z_j)`` of its coefficient part,
    ``exp(phi . z_j)`` of its floor.

    Attributes:
        theta: (nelem + 3,) intercept per element, then the weights of the standardized features.
        mu, sd: (3,) means and stds of the log features over the training atoms.
        nelem: number of elements (element indices 0..nelem-1).
        lam: ridge penalty chosen by cross-validation.
        eps: (3,) floors of the raw feature sums (:data:`REL_FLOOR` times their training medians).
        floor_var: ``sigma_F^2`` in (eV/A)^2, refitted with ``theta`` (added after the scale; it
            replaces the model's force floor).
        phi: (nelem + 3,) weights of the floor's per-atom factor ``exp(phi . z_j)``, laid out as
            ``theta``; None (the default) is zeros: a floor that is the same for every atom.
    """

    theta: np.ndarray
    mu: np.ndarray
    sd: np.ndarray
    nelem: int
    lam: float
    floor_var: float
    eps: np.ndarray
    phi: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.theta = np.asarray(self.theta, float).reshape(-1)
        self.phi = (np.zeros_like(self.theta) if self.phi is None
                    else np.asarray(self.phi, float).reshape(-1))
        if self.theta.shape != (self.nelem + len(FEATURES),) or self.phi.shape != self.theta.shape:
            raise ValueError(f"atom scale: theta and phi must have nelem + {len(FEATURES)} = "
                             f"{self.nelem + len(FEATURES)} values, got {self.theta.size} and "
                             f"{self.phi.size}")

    def log_scales(self, sums: np.ndarray, element: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(theta . z, phi . z)``, each (n,), of atoms with raw feature sums ``sums`` (n, 3)
        (:func:`atom_sums`) and element indices ``element`` (n,)."""
        z = design(np.log(np.maximum(sums, self.eps)), element, self.mu, self.sd, self.nelem)
        return z @ self.theta, z @ self.phi

    def log_scale(self, sums: np.ndarray, element: np.ndarray) -> np.ndarray:
        """(n,) ``theta . z`` (the coefficient part's log factor); see :meth:`log_scales`."""
        return self.log_scales(sums, element)[0]

    def to_dict(self) -> dict:
        return {"theta": self.theta.tolist(), "mu": self.mu.tolist(), "sd": self.sd.tolist(),
                "nelem": self.nelem, "lam": self.lam, "floor_var": self.floor_var,
                "eps": self.eps.tolist(), "phi": self.phi.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> AtomScale:
        """The inverse of :meth:`to_dict`; dicts written before ``phi`` existed get zeros."""
        return cls(np.asarray(d["theta"], float), np.asarray(d["mu"], float), np.asarray(d["sd"], float),
                   int(d["nelem"]), float(d["lam"]), float(d["floor_var"]),
                   np.asarray(d.get("eps", [TINY] * 3), float),
                   None if d.get("phi") is None else np.asarray(d["phi"], float))


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


def design(feats: np.ndarray, element: np.ndarray, mu: np.ndarray, sd: np.ndarray, nelem: int
           ) -> np.ndarray:
    """(n, nelem + 3) ``z``: one-hot element, then the standardized features."""
    element = np.asarray(element, dtype=int)
    onehot = (element[:, None] == np.arange(nelem)[None, :]).astype(float)
    return np.hstack([onehot, (np.asarray(feats, float) - mu) / sd])


def _fit_theta(z: np.ndarray, base: np.ndarray, r2: np.ndarray, floor: float, lam: float,
               nelem: int) -> tuple[np.ndarray, float]:
    """Minimize the mean Gaussian NLL of ``r2`` under ``base * exp(z theta) + f`` over ``theta`` and
    the floor ``f`` (started at ``floor``), plus ``lam/2 |theta_features|^2``; returns ``(theta, f)``."""
    ms = max(float(np.mean(r2)), TINY)
    b, rt = base / ms, r2 / ms
    pen = np.r_[np.zeros(nelem), np.ones(z.shape[1] - nelem)]

    def obj(x: np.ndarray) -> tuple[float, np.ndarray]:
        th, fl = x[:-1], np.exp(x[-1])
        scaled = b * np.exp(np.clip(z @ th, -50.0, 50.0))
        v = np.maximum(scaled + fl, TINY)
        f = 0.5 * float(np.mean(np.log(v) + rt / v)) + 0.5 * lam * float(np.sum((pen * th) ** 2))
        gv = 0.5 * (1.0 / v - rt / v**2) / v.size
        return f, np.r_[z.T @ (gv * scaled) + lam * pen * th, np.sum(gv) * fl]

    x0 = np.r_[np.zeros(z.shape[1]), np.log(max(floor / ms, 1e-12))]
    res = minimize(obj, x0, jac=True, method="L-BFGS-B",
                   bounds=[(None, None)] * z.shape[1] + [(np.log(1e-16), np.log(1e4))],
                   options={"maxiter": 2000, "gtol": 1e-10, "ftol": 1e-14})
    return res.x[:-1], float(np.exp(res.x[-1]) * ms)


def _nll(z: np.ndarray, theta: np.ndarray, base: np.ndarray, r2: np.ndarray, floor: float) -> float:
    v = np.maximum(base * np.exp(np.clip(z @ theta, -50.0, 50.0)) + floor, TINY)
    return 0.5 * float(np.mean(np.log(2 * np.pi * v) + r2 / v))


def fit_atom_scale(sums: np.ndarray, element: np.ndarray, base: np.ndarray, resid: np.ndarray,
                   floor_var: float, nelem: int, config: np.ndarray, folds: int = 5, seed: int = 0
                   ) -> AtomScale:
    """Fit the per-atom scale on cross-validated force residuals.

    Args:
        sums: (n, 3) raw per-atom feature sums of the rows (:func:`atom_sums`).
        element: (n,) element index of each row's atom.
        base: (n,) the coefficient part of each row's variance (``c a^T S_f a + a^T M a``).
        resid: (n,) held-out residuals (eV/A).
        floor_var: ``sigma_F^2`` of the model without the scale (the start of the refitted floor).
        nelem: number of elements.
        config: (n,) configuration id of each row (the inner CV deals whole configurations).
        folds, seed: the inner cross-validation choosing ``lam``.
    """
    sums = np.asarray(sums, float)
    eps = np.maximum(REL_FLOOR * np.median(sums, axis=0), TINY)
    feats = np.log(np.maximum(sums, eps))
    mu = feats.mean(axis=0)
    sd = np.maximum(feats.std(axis=0), 1e-12)
    z = design(feats, element, mu, sd, nelem)
    r2 = np.asarray(resid, float) ** 2
    base = np.asarray(base, float)
    _, code = np.unique(np.asarray(config), return_inverse=True)
    order = np.random.default_rng(seed).permutation(code.max() + 1)
    fold = (order % folds)[code]
    scores = []
    for lam in LAMBDAS:
        s = 0.0
        for f in range(folds):
            tr, te = fold != f, fold == f
            if not te.any() or not tr.any():
                continue
            th, fl = _fit_theta(z[tr], base[tr], r2[tr], floor_var, lam, nelem)
            s += _nll(z[te], th, base[te], r2[te], fl) * te.sum()
        scores.append(s)
    lam = float(LAMBDAS[int(np.argmin(scores))])
    theta, floor = _fit_theta(z, base, r2, floor_var, lam, nelem)
    return AtomScale(theta=theta, mu=mu, sd=sd, nelem=nelem, lam=lam, floor_var=floor, eps=eps,
                     phi=np.zeros_like(theta))
