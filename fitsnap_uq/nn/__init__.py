"""Uncertainty for neural networks: ensemble, MCMC and variational learners over torch modules.

The learners are imported on first use (``from fitsnap_uq.nn import Ensemble``), so importing a submodule
such as the FitSNAP solver adapter (:mod:`fitsnap_uq.nn.fitsnap_solver`) does not load torch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Ensemble", "MCMC", "Variational", "EnsRegr", "MCMCRegr", "VIRegr"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from fitsnap_uq.nn import learners

        return getattr(learners, name)
    raise AttributeError(f"module 'fitsnap_uq.nn' has no attribute {name!r}")
