"""fitsnap-uq: uncertainty quantification and active learning for SNAP potentials (FitSNAP/LAMMPS).

``import fitsnap_uq`` has no side effects and imports neither FitSNAP, LAMMPS nor MPI. To use our
``[UQ]`` input section and solvers (``[SOLVER] solver = BAYES``, ``MODELERROR``, ``BAYESMCMC``,
``NNENSEMBLE``) from your own Python, call :func:`fitsnap_uq.fitsnap_plugin.activate` once before
creating ``FitSnap`` (``fitsnap-uq fit`` does it for you). The numerical cores
(:mod:`fitsnap_uq.linear`, :mod:`fitsnap_uq.posterior`, :mod:`fitsnap_uq.calibration`) do not need FitSNAP.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fitsnap_uq.posterior import Posterior

__version__ = "0.1.0"
__all__ = ["Posterior", "__version__", "SOLVERS", "FITSNAP_AVAILABLE"]

SOLVERS: tuple[str, ...] = ("BAYES", "MODELERROR", "BAYESMCMC", "NNENSEMBLE")
"""Names of the solvers this package adds to FitSNAP (see :mod:`fitsnap_uq.fitsnap_plugin`)."""

FITSNAP_AVAILABLE: bool = importlib.util.find_spec("fitsnap3lib") is not None
"""Whether FitSNAP is installed (checked without importing it)."""


def __getattr__(name: str) -> Any:
    # Posterior on first use, so `import fitsnap_uq` (and the CLI's --help) stays cheap (no scipy).
    if name == "Posterior":
        from fitsnap_uq.posterior import Posterior

        return Posterior
    raise AttributeError(f"module 'fitsnap_uq' has no attribute {name!r}")
