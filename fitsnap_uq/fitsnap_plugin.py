"""The FitSNAP plugin: the one place where fitsnap-uq changes FitSNAP, and only when asked.

:func:`activate` (idempotent) applies the compatibility adapters (:mod:`fitsnap_uq.compat`), registers
the ``[UQ]`` input section (:mod:`fitsnap_uq.sections`) and our solvers (:mod:`fitsnap_uq.solvers`:
``[SOLVER] solver = BAYES``, ``MODELERROR``, ``BAYESMCMC``; :mod:`fitsnap_uq.nn.fitsnap_solver`:
``NNENSEMBLE``) with FitSNAP's factories,
and lets FitSNAP run NNENSEMBLE as its PYTORCH solver where it must. FitSNAP finds sections and
solvers among ``Section.__subclasses__()`` and ``Solver.__subclasses__()``, so importing those two
modules is the registration. In your own Python::

    from fitsnap_uq.fitsnap_plugin import activate
    activate()                      # before FitSNAP reads its input
    from fitsnap3lib.fitsnap import FitSnap
    snap = FitSnap(arglist=["in.in"])

``fitsnap-uq fit`` and :func:`fitsnap_uq.fitting.descriptor_rows` call it for you. Nothing else in
:mod:`fitsnap_uq` imports FitSNAP, LAMMPS or MPI at import time.
"""

from __future__ import annotations

from typing import Any

_active = False


def activate() -> dict[str, Any]:
    """Make FitSNAP (3.1.0.4) see fitsnap-uq; safe to call again (it then does nothing).

    Returns:
        ``{"applied": [...], "skipped": {name: reason}}``: the compatibility adapters in effect and those
        whose guard failed (see :data:`fitsnap_uq.compat.SKIPPED`).

    Raises:
        ImportError: FitSNAP (``fitsnap3lib``) is not installed.
    """
    global _active
    from fitsnap_uq import compat

    if not _active:
        compat.apply()
        compat.apply_nnensemble()
        # FitSNAP finds them among Section/Solver subclasses: the [UQ] section; BAYES, MODELERROR,
        # BAYESMCMC (solvers), NNENSEMBLE (nn.fitsnap_solver).
        from fitsnap_uq import sections, solvers  # noqa: F401
        from fitsnap_uq.nn import fitsnap_solver  # noqa: F401

        _active = True
    return {"applied": list(compat.APPLIED), "skipped": dict(compat.SKIPPED)}


def is_active() -> bool:
    """Whether :func:`activate` has run in this process."""
    return _active
