"""MPI reduction operators for the hooks' collective calls (mpi4py imported only when one is asked for)."""

from __future__ import annotations

from typing import Any


def mpi_max() -> Any:
    """``MPI.MAX`` (for ``comm.allreduce(value, op=mpi_max())``)."""
    from mpi4py import MPI

    return MPI.MAX


def mpi_min() -> Any:
    """``MPI.MIN``."""
    from mpi4py import MPI

    return MPI.MIN
