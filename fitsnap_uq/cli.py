"""Command line: ``fitsnap-uq fit INPUT.in [FitSNAP flags]`` (also ``python -m fitsnap_uq``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from fitsnap_uq.errors import InputError, NumericalError


def _mpi_comm():
    """COMM_WORLD when mpi4py is there (FitSNAP uses it for its ranks), else None."""
    try:
        from mpi4py import MPI
    except ImportError:
        return None
    return MPI.COMM_WORLD


def _fail(message: str, comm, code: int = 2) -> int:
    size = comm.Get_size() if comm is not None else 1
    print(f"fitsnap-uq: error: {message}", file=sys.stderr, flush=True)
    if size > 1:
        # An error seen by one rank only would leave the others waiting: end the whole run.
        comm.Abort(code)
    return code


def _cmd_fit(rest: Sequence[str]) -> int:
    from fitsnap_uq.fitting import run_fit

    comm = _mpi_comm()
    try:
        run_fit(rest, comm=comm)
    except (InputError, NumericalError) as exc:
        return _fail(str(exc), comm)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``fitsnap-uq`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="fitsnap-uq",
        description="Uncertainty quantification and active learning for SNAP potentials "
                    "(FitSNAP + LAMMPS).")
    from fitsnap_uq import __version__

    parser.add_argument("--version", action="version", version=f"fitsnap-uq {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    fit = sub.add_parser(
        "fit", help="run FitSNAP on an input file with the fitsnap-uq solvers available",
        description="Run FitSNAP's whole flow (scrape, descriptors, fit, outputs) with the "
                    "fitsnap-uq solvers and [UQ] section loaded. Takes FitSNAP's arguments: "
                    "INPUT.in [--overwrite] [--verbose] [--relative] [--nofit] [--lammpslog] "
                    "[--keyword GROUP NAME VALUE] [--printlammps] ...; works under mpirun -np N.",
        add_help=False)
    fit.add_argument("fitsnap_args", nargs=argparse.REMAINDER,
                     help="input file and FitSNAP flags")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fitsnap-uq`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if argv and argv[0] == "fit":
        rest = argv[1:]
        if not rest or rest[0] in ("-h", "--help"):
            from fitsnap_uq.fitting import fitsnap_arguments

            print("usage: fitsnap-uq fit INPUT.in [FitSNAP flags] [--printlammps]\n"
                  "FitSNAP's flags:")
            try:
                fitsnap_arguments(["--help"])
            except SystemExit:
                pass
            return 0 if rest else 2
        return _cmd_fit(rest)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return 0
