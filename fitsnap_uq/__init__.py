"""fitsnap-uq: uncertainty quantification and active learning for SNAP potentials (FitSNAP/LAMMPS).

``import fitsnap_uq`` applies the FitSNAP 3.1.0.4 adapters (:mod:`fitsnap_uq.compat`) and registers
the ``[UQ]`` input section and our solvers (``[SOLVER] solver = BAYES``, ``MODELERROR``,
``BAYESMCMC``, ``NNENSEMBLE``) with FitSNAP's factories.
The numerical cores (:mod:`fitsnap_uq.linear`, :mod:`fitsnap_uq.posterior`) do not need FitSNAP.
"""

from __future__ import annotations

from fitsnap_uq.posterior import Posterior

__version__ = "0.1.0"
__all__ = ["Posterior", "__version__", "SOLVERS", "FITSNAP_AVAILABLE"]

SOLVERS: tuple[str, ...] = ("BAYES", "MODELERROR", "BAYESMCMC", "NNENSEMBLE")
"""Names of the solvers this package adds to FitSNAP."""

try:
    import fitsnap3lib  # noqa: F401
except ImportError:  # the numerical core works without FitSNAP
    FITSNAP_AVAILABLE = False
else:
    FITSNAP_AVAILABLE = True
    from fitsnap_uq import compat as _compat

    _compat.apply()
    from fitsnap_uq import sections as _sections  # noqa: F401  ([UQ] section)
    from fitsnap_uq import solvers as _solvers  # noqa: F401  (BAYES, ...)
    from fitsnap_uq.nn.fitsnap_ensemble import adapt_fitsnap as _adapt_for_nnensemble

    _adapt_for_nnensemble()  # NNENSEMBLE uses [PYTORCH] and PYTORCH's descriptor arrays
