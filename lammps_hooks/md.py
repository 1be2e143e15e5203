"""``fitsnap-uq md``: run an unmodified LAMMPS input script with the uncertainty hook attached.

The script runs command by command through the LAMMPS Python module. The hook's global variables
(``v_uq_*``) are defined first, so ``thermo_style`` and ``fix halt`` lines may name them anywhere; the
hook itself is attached just before the first command that needs it (a ``run``/``minimize``, or a
line naming a per-atom ``d_uq_*`` column), by which point the box, the atoms and the snap pair style
exist. After a halt (``--halt-above``) the rest of the script is skipped and the reason printed.
Works under ``mpirun -np N`` (each rank runs the same commands; LAMMPS decomposes the domain).

With ``nnensemble`` (``fitsnap-uq md --nnensemble E.nnensemble.json``) the hook is an
:class:`~lammps_hooks.nn_uq.NNEnsembleHook` (per-atom columns ``d_nnuq_estd``/``d_nnuq_fstd``, variables
``v_nnuq_*``): the members' spread of a FitSNAP network ensemble, whatever pair style drives the script
(the ensemble mean or a member through ML-IAP ``model nn``, as ``fitsnap-uq nn-export`` writes it). The
element of each atom type is the mliap ``pair_coeff``'s when the script has one, else the ensemble's order.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fitsnap_uq.errors import InputError
from fitsnap_uq.posterior import Posterior
from lammps_hooks.flagging import QueryStore
from lammps_hooks.script import RUN_COMMANDS, execute, find_mliap_model, needs_hook, read_script, snap_script
from lammps_hooks.snap_uq import SnapUQHook


@dataclass
class MDResult:
    """What an MD run with the hook left: the hook (history, last values), halt reason, flags."""

    hook: SnapUQHook | None
    halted: str | None
    nflagged: int
    store: QueryStore | None


def open_lammps(comm: Any = None, log: str | None = "log.lammps", screen: bool = True,
                extra_args: list[str] | None = None) -> Any:
    """A LAMMPS instance on ``comm`` (the adapters applied first)."""
    from fitsnap_uq.compat import import_lammps

    lammps = import_lammps()
    args = [] if screen else ["-screen", "none"]
    args += ["-log", log or "none", *(extra_args or [])]
    return lammps.lammps(comm=comm, cmdargs=args) if comm is not None else lammps.lammps(cmdargs=args)


def run_md(script: str | Path, posterior: Posterior | str | Path | None, every: int = 10, forces: bool = True,
           flag_dir: str | Path | None = None, flag_above: float | None = None,
           halt_above: float | None = None, measure: str | None = None, max_flags: int | None = 100,
           min_distance: float = 1e-3, source: str = "auto", comm: Any = None,
           lmp: Any = None, log: str | None = "log.lammps", screen: bool = True,
           descriptors: str = "auto", nnensemble: Any = None, noise: bool = False) -> MDResult:
    """Run ``script`` with a :class:`SnapUQHook` attached (see the module docstring).

    Args:
        script: the LAMMPS input script (relative paths inside it are taken from its folder).
        posterior: a Posterior or its file (None with ``nnensemble``).
        nnensemble: instead, a FitSNAP network ensemble (:class:`~fitsnap_uq.nn.fitsnap_ensemble.NNEnsemble`
            or its ``.nnensemble.json``): an :class:`~lammps_hooks.nn_uq.NNEnsembleHook` (``source`` unused).
        every, forces, measure, source, descriptors, noise: as :class:`SnapUQHook` (``noise``: a
            Posterior only).
        flag_dir, flag_above, max_flags, min_distance: the query store (flagging off without both).
        halt_above: stop the run above this value of the measure.
        comm: mpi4py communicator for LAMMPS (default: COMM_WORLD).
        lmp: an existing LAMMPS instance to use instead of a new one.
    """
    from mpi4py import MPI

    comm = comm or MPI.COMM_WORLD
    if noise and nnensemble is not None:
        raise InputError("--noise adds a linear posterior's noise floors; a network ensemble has none")
    if nnensemble is None:
        post = posterior if isinstance(posterior, Posterior) else Posterior.load(posterior)
        script, commands, snap = snap_script(script, "the uncertainty hook")
        type_elements = snap.elements
    else:
        from fitsnap_uq.nn.fitsnap_ensemble import NNEnsemble

        ens = nnensemble if isinstance(nnensemble, NNEnsemble) else NNEnsemble(nnensemble)
        script = Path(script).resolve()
        commands = read_script(script)
        mliap = find_mliap_model(commands)
        known = mliap is not None and mliap.elements and "NULL" not in mliap.elements
        type_elements = mliap.elements if known else None
    if flag_above is not None and flag_dir is None:
        raise InputError("--flag-above needs --flag-dir (where flagged frames go)")
    store = None
    if flag_dir is not None and comm.Get_rank() == 0:
        store = QueryStore(flag_dir, min_distance=min_distance, max_frames=max_flags)
    old = os.getcwd()
    os.chdir(script.parent)
    try:
        lmp = lmp or open_lammps(comm, log=log, screen=screen)
        if nnensemble is None:
            hook = SnapUQHook(lmp, post, every=every, forces=forces, source=source,
                              type_elements=type_elements, store=store, flag_above=flag_above,
                              halt_above=halt_above, measure=measure, comm=comm, descriptors=descriptors,
                              noise=noise)
        else:
            from lammps_hooks.nn_uq import NNEnsembleHook

            hook = NNEnsembleHook(lmp, ens, every=every, forces=forces, type_elements=type_elements,
                                  store=store, flag_above=flag_above, halt_above=halt_above,
                                  measure=measure, comm=comm, descriptors=descriptors)
        hook.define_variables()
        for cmd in commands:
            if not hook.attached and needs_hook(cmd, hook.prefix):
                hook.attach()
            elif cmd.word in RUN_COMMANDS and hook.model.checks_pair_style and not hook.checked:
                hook.check_at_first_step()  # the previous run ended before the hook's first step
            try:
                execute(lmp, cmd)
            except Exception:
                if hook.mismatch:
                    raise InputError(hook.mismatch) from None
                raise
            if hook.mismatch:  # a run 0 has no step at which the halt fires
                raise InputError(hook.mismatch)
            hook.end_check()
            if hook.halted:
                break
        nflagged = int(hook.last.get("nflagged", 0))
        return MDResult(hook=hook, halted=hook.halted, nflagged=nflagged, store=store)
    finally:
        os.chdir(old)
