"""The MD hook: per-atom and global SNAP uncertainty from a Posterior (or any uncertainty model of the
:class:`~lammps_hooks.uq_model.UQModel` protocol), inside a plain LAMMPS ``run``.

Attach it to a ``lammps`` object whose pair style is ``snap`` (alone or inside ``hybrid/overlay``)::

    hook = SnapUQHook(lmp, Posterior.load("Ta_pot.posterior.npz"), every=10,
                      store=QueryStore("flagged"), flag_above=0.15, halt_above=0.5)
    hook.attach()
    lmp.command("run 10000")

Every ``every`` steps (``fix external pf/callback``; the hook adds no force) it computes, from the
per-atom SNAP descriptors and their force rows with the Posterior's SNAP parameters (``compute
snap/uq/atom`` of the fitsnap-uq LAMMPS plugin, one pass, when it is built: ``fitsnap-uq
build-plugin``; else LAMMPS' ``compute sna/atom`` and ``compute snad/atom``; see ``descriptors``):

* per atom, as ``fix property/atom`` columns (dumpable, ``dump_modify thresh`` works):
  ``d_uq_estd`` energy std (eV) and ``d_uq_fstd`` force std (eV/A, ``sqrt(trace(D Cov D^T))``);
* global, as LAMMPS internal variables (``thermo_style custom ... v_uq_fstd_max``, ``fix halt``):
  ``uq_pe_std`` (eV), ``uq_pe_atom_std`` (eV/atom), ``uq_estd_max``, ``uq_estd_mean``,
  ``uq_fstd_max``, ``uq_fstd_mean``, ``uq_nflagged``, ``uq_halt``.

Gaussian posteriors are propagated analytically, sampled ones (MCMC, model error) from their samples.
The covariance is the Posterior's :attr:`~fitsnap_uq.posterior.Posterior.predictive_cov`: the
coefficients' uncertainty and, where the fit learned it, the model error of new configurations (the
numbers ``Posterior.predict(rows)`` gives with ``noise=None``); the per-quantity floors of its noise
model enter only with ``noise=True``. A per-atom force scale in the Posterior
(:mod:`fitsnap_uq.linear.atomscale`) multiplies each atom's force variance as ``Posterior.predict``
with ``atom=``/``element=`` does.
On attach, the hook checks that the Posterior's mean coefficients and SNAP parameters reproduce the
energy of the running ``snap`` pair style (to 1e-8 relative) and refuses otherwise.

Flagging: above ``flag_above`` (of ``measure``, default ``uq_fstd_max``, or ``uq_estd_max`` without
forces) the configuration goes to a :class:`~lammps_hooks.flagging.QueryStore`; above ``halt_above``
the run stops cleanly (``fix halt ... error soft``) and :attr:`SnapUQHook.halted` gives the reason.
Under MPI every rank must attach the hook (it is collective), as with any LAMMPS command.

The hook is LAMMPS plumbing and flagging only; the numbers come from its model. A Posterior is wrapped
in :class:`~lammps_hooks.uq_model.LinearSnapModel`; any other :class:`~lammps_hooks.uq_model.UQModel`
(e.g. :class:`lammps_hooks.nn_uq.NNEnsembleModel`) plugs in the same way: ``SnapUQHook(lmp, model)``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from fitsnap_uq.errors import InputError
from fitsnap_uq.posterior import Posterior
from lammps_hooks.flagging import Frame, QueryStore
from lammps_hooks.parallel import mpi_max, mpi_min
from lammps_hooks.snap_params import check_chem_order, check_supported, compute_args
from lammps_hooks.uq_math import CoefficientSpread
from lammps_hooks.uq_model import LinearSnapModel, UQModel

GLOBALS = ("pe_std", "pe_atom_std", "estd_max", "estd_mean", "fstd_max", "fstd_mean", "nflagged", "halt")
MEASURES = ("fstd_max", "fstd_mean", "estd_max", "estd_mean", "pe_atom_std", "pe_std")
ENERGY_MEASURES = ("estd_max", "estd_mean", "pe_atom_std", "pe_std")
"""What a model without a force std (``force_std = False``) can be thresholded by."""


def zero_external_force(fext: Any, nlocal: int) -> None:
    """Set the ``fix external pf/callback`` force array to zero: the hook adds no force, and LAMMPS does
    not clear the array it hands to the callback (its contents are whatever the memory held)."""
    if nlocal and fext is not None:
        np.asarray(fext)[:nlocal] = 0.0


class SnapUQHook:
    """Per-atom and global uncertainty during LAMMPS MD (see the module docstring).

    Args:
        lmp: a ``lammps.lammps`` instance with the box, atoms and a ``snap`` pair style defined (any
            pair style when the model does not ``checks_pair_style``).
        model: the uncertainty model (:class:`~lammps_hooks.uq_model.UQModel`), or the coefficients'
            Posterior (its mean must be the pair style's coefficients), wrapped in
            :class:`~lammps_hooks.uq_model.LinearSnapModel` with ``source``, ``nsamples``, ``seed``.
        every: compute every this many steps (also at the first step of each run).
        forces: also the per-atom force std (needs ``compute snad/atom``, the costlier part); always
            off for a model without ``force_std``.
        source: ``auto``, ``analytic`` or ``samples`` (see :func:`~lammps_hooks.uq_math.spread_of`).
        nsamples, seed: Gaussian draws when ``source = samples`` and the posterior has none.
        type_elements: element of each LAMMPS atom type (default: the model's element order).
        prefix: prefix of every LAMMPS name the hook defines (computes, fixes, variables).
        store, flag_above, halt_above, measure: flagging (see the module docstring); the store is
            needed on rank 0 only (frames are gathered there).
        comm: the mpi4py communicator of ``lmp`` (default ``MPI.COMM_WORLD``).
        descriptors: where B_i and the force rows come from: ``native`` (``compute snap/uq/atom``
            of the fitsnap-uq plugin, B and its gradients in one pass, about half the cost; the
            plugin must be loaded in ``lmp`` or built in :func:`lammps_hooks.native.default_outdir`),
            ``lammps`` (``compute sna/atom`` and ``compute snad/atom``), or ``auto`` (``native``
            when the plugin is there, else ``lammps``). Same numbers.
        noise: with a Posterior, also the noise floors of its predictive model
            (:class:`~lammps_hooks.uq_model.LinearSnapModel`; ``Posterior.predict_raw(rows, noise=Q)``
            instead of ``noise=None``).
    """

    def __init__(self, lmp: Any, model: UQModel | Posterior, every: int = 10, forces: bool = True,
                 source: str = "auto", nsamples: int = 1000, seed: int = 0,
                 type_elements: Sequence[str] | None = None, prefix: str = "uq",
                 store: QueryStore | None = None, flag_above: float | None = None,
                 halt_above: float | None = None, measure: str | None = None, comm: Any = None,
                 descriptors: str = "auto", noise: bool = False) -> None:
        if descriptors not in ("auto", "native", "lammps"):
            raise ValueError(f"descriptors must be auto, native or lammps, not {descriptors!r}")
        self.descriptor_source = descriptors
        self.native = False  # set by attach: compute snap/uq/atom in use
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.lmp = lmp
        if isinstance(model, Posterior):
            model = LinearSnapModel(model, source, nsamples, seed, noise=noise)
        elif noise:
            raise ValueError("noise=True adds a Posterior's noise floors; pass the Posterior (or a "
                             "LinearSnapModel made with noise=True)")
        self.model: UQModel = model
        self.every = int(every)
        self.forces = bool(forces) and bool(model.force_std)
        self.measures = MEASURES if model.force_std else ENERGY_MEASURES
        """What ``flag_above``/``halt_above`` may threshold."""
        self.prefix = prefix
        self.store = store
        self.flag_above = flag_above
        self.halt_above = halt_above
        self.measure = measure or ("fstd_max" if self.forces else "estd_max")
        if self.measure not in self.measures:
            raise ValueError(f"measure must be one of {self.measures}, not {self.measure!r}")
        if self.measure.startswith("fstd") and not self.forces:
            raise ValueError(f"measure {self.measure} needs forces=True")
        if comm is None:
            from mpi4py import MPI

            comm = MPI.COMM_WORLD
        self.comm = comm
        if flag_above is not None and store is None and comm.Get_rank() == 0:
            raise ValueError("flag_above needs a QueryStore (on rank 0) for the flagged frames")
        self._type_elements = list(type_elements) if type_elements is not None else None
        self.type_to_element: np.ndarray | None = None
        self.last: dict[str, float] = {}
        self.history: list[dict[str, float]] = []
        self.cost = {"evaluations": 0, "descriptors_s": 0.0, "uncertainty_s": 0.0}
        """This rank's evaluations and their wall seconds: in the descriptor computes, and in the
        rest of the callback (the products with the factor, reductions, fingerprint, flagging)."""
        self._descriptor_s = 0.0
        self.halted: str | None = None
        self.attached = False
        self._active = True
        self._last_key: tuple[int, int, int] | None = None
        self._computes: list[str] = []  # the computes this hook defined (removed by detach)
        self.mismatch: str | None = None
        """Why the model does not match the pair style (found at the first step of a run), or None."""
        self.checked = False
        self._checking = False

    @property
    def posterior(self) -> Posterior | None:
        """The Posterior of a :class:`~lammps_hooks.uq_model.LinearSnapModel` (else None)."""
        return getattr(self.model, "posterior", None)

    @property
    def spread(self) -> CoefficientSpread | None:
        """The coefficient spread of a :class:`~lammps_hooks.uq_model.LinearSnapModel` (else None)."""
        return getattr(self.model, "spread", None)

    def _compute(self, what: str, style: str) -> None:
        """Define the hook's compute ``what`` (``compute <prefix>_<what> all <style>``)."""
        self.lmp.command(f"compute {self.name(what)} all {style}")
        self._computes.append(what)

    # ------------------------------------------------------------------ names
    def name(self, what: str) -> str:
        """The LAMMPS name of one of the hook's computes/fixes/variables."""
        return f"{self.prefix}_{what}"

    # ------------------------------------------------------------------ setup
    def _check_pair_style(self) -> None:
        style = str(self.lmp.extract_global("pair_style") or "")
        if style != "snap" and not style.startswith("hybrid"):
            raise InputError(f"the pair style is {style!r}; the SNAP uncertainty hook needs "
                             "pair_style snap (alone or in hybrid/overlay)")
        try:
            self._compute("pair", "pair snap")
        except Exception as exc:
            raise InputError(f"pair style {style} has no snap sub-style ({exc})") from None

    def _map_types(self) -> None:
        ntypes = int(self.lmp.extract_global("ntypes"))
        known = list(self.model.elements)
        elements = self._type_elements or known
        if len(elements) != ntypes:
            raise InputError(f"LAMMPS has {ntypes} atom types but {len(elements)} elements were given "
                             f"({elements}); pass the element of each type (as in pair_coeff)")
        unknown = [e for e in elements if e not in known]
        if unknown:
            raise InputError(f"elements {unknown} are not in the posterior ({known})",
                             file=self._model_file())
        check_supported(self.model.snap, self._model_file())
        check_chem_order(self.model.snap, known, elements, self._model_file(),
                         "pair_coeff")
        self.type_elements = elements
        self.type_to_element = np.array([known.index(e) for e in elements])

    def _model_file(self) -> str | None:
        """The file the model was read from (for messages), if it knows."""
        return getattr(getattr(self.model, "posterior", None), "path", None) or \
            getattr(self.model, "path", None)

    def _descriptor_args(self) -> str:
        return compute_args(self.model.snap, len(self.model.elements), self.type_to_element)

    def define_variables(self) -> None:
        """Define the global internal variables (possible before the box exists, so an input script's
        ``thermo_style``/``fix halt`` lines can name them early); idempotent."""
        if getattr(self, "_variables_defined", False):
            return
        for g in GLOBALS:
            self.lmp.command(f"variable {self.name(g)} internal 0.0")
        self._variables_defined = True

    def attach(self, verify: bool = True) -> SnapUQHook:
        """Define the computes, per-atom columns, variables and the callback; with ``verify`` (and a
        model that ``checks_pair_style``), check the match at the hook's first evaluation in the next
        run (:meth:`check_at_first_step`: no extra run in the user's log)."""
        if self.model.checks_pair_style:
            self._check_pair_style()
        self._map_types()
        args = self._descriptor_args()
        self.native = self._native_available()
        if self.native:
            self._compute("desc", f"snap/uq/atom {args} forces {'yes' if self.forces else 'no'}")
        else:
            self._compute("sna", f"sna/atom {args}")
            if self.forces:
                self._compute("snad", f"snad/atom {args}")
        self._install()
        if verify and self.model.checks_pair_style:
            self.check_at_first_step()
        return self

    def _native_available(self) -> bool:
        """Whether to use ``compute snap/uq/atom`` (see ``descriptors``); loads the built plugin."""
        if self.descriptor_source == "lammps":
            return False
        if not self.lmp.has_style("compute", "snap/uq/atom"):
            from lammps_hooks.native import PLUGIN_NAME, default_outdir

            path = default_outdir() / PLUGIN_NAME
            loaded = False
            if path.is_file():
                try:
                    self.lmp.command(f"plugin load {path}")
                    loaded = bool(self.lmp.has_style("compute", "snap/uq/atom"))
                except Exception as exc:  # a plugin built for another LAMMPS refuses to register
                    if self.descriptor_source == "native":
                        raise InputError(f"cannot load the fitsnap-uq plugin {path}: {exc}") from None
            loaded = bool(self.comm.allreduce(int(loaded), op=mpi_min()))
            if not loaded:
                if self.descriptor_source == "native":
                    raise InputError("descriptors='native' needs the fitsnap-uq LAMMPS plugin: run "
                                     "'fitsnap-uq build-plugin' (or load it with 'plugin load')")
                return False
        return True

    def descriptor_arrays(self, nlocal: int) -> tuple[np.ndarray, np.ndarray | None]:
        """The local atoms' ``sna/atom`` descriptors (nlocal, ncoeff) and, with forces, their
        ``snad/atom`` force rows (nlocal, 3 * ntypes * ncoeff), from whichever computes are in use."""
        ncoeff = int(self.model.ncoeff)
        if self.native:
            a = self._peratom("desc", nlocal).reshape(nlocal, -1)
            return a[:, :ncoeff], (a[:, ncoeff:] if self.forces else None)
        return self._peratom("sna", nlocal), (self._peratom("snad", nlocal) if self.forces else None)

    def _peratom(self, what: str, nlocal: int) -> np.ndarray:
        """(nlocal, columns) of this hook's per-atom compute ``what``, computed now if not yet on this
        step; the seconds it takes count as descriptor time in :attr:`cost`."""
        t0 = time.perf_counter()
        a = np.asarray(self.lmp.numpy.extract_compute(self.name(what), 1, 2))[:nlocal]
        self._descriptor_s += time.perf_counter() - t0
        return a

    def _install(self) -> None:
        """The per-atom columns, the variables, the callback and the halt fix (after the computes)."""
        lmp = self.lmp
        lmp.command(f"fix {self.name('props')} all property/atom d_{self.name('estd')} "
                    f"d_{self.name('fstd')}")
        self.define_variables()
        lmp.command(f"fix {self.name('ext')} all external pf/callback {self.every} 1")
        lmp.set_fix_external_callback(self.name("ext"), self._callback, None)
        if self.halt_above is not None:
            lmp.command(f"fix {self.name('stop')} all halt {self.every} v_{self.name('halt')} > 0.5 "
                        "error soft message yes")
        self.attached = True

    def check_at_first_step(self, rtol: float = 1e-8) -> None:
        """Check the model against the snap pair style at the hook's first evaluation of the next run,
        instead of a ``run 0`` of our own (which would add a step-0 thermo block to the user's log).
        ``fix ave/time`` on the pair energy makes LAMMPS tally it on the hook's steps (cheap next to
        the forces); a mismatch stops the run at that step (``fix halt ... error hard``, an exception
        in Python) and is kept in :attr:`mismatch`. :meth:`end_check` removes the two fixes."""
        lmp = self.lmp
        self.mismatch, self.checked, self._rtol = None, False, rtol
        lmp.command(f"variable {self.name('mismatch')} internal 0.0")
        lmp.command(f"fix {self.name('tally')} all ave/time {self.every} 1 {self.every} "
                    f"c_{self.name('pair')}")
        lmp.command(f"fix {self.name('checkhalt')} all halt 1 v_{self.name('mismatch')} > 0.5 "
                    "error hard message yes")
        self._checking = True

    def _check_now(self) -> None:
        """The first-evaluation check (collective; inside the callback)."""
        self.checked = True
        try:
            self.compare_energy(self._rtol)
        except InputError as exc:
            self.mismatch = str(exc)
            if self.comm.Get_rank() == 0:
                print(f"fitsnap-uq: ERROR {exc}", file=sys.stderr, flush=True)
            self.lmp.set_internal_variable(self.name("mismatch"), 1.0)

    def end_check(self) -> None:
        """Remove the first-evaluation check's fixes (between runs; idempotent). ``reset_timestep``
        refuses to run while they exist (``fix ave/time``); :meth:`check_at_first_step` re-arms the
        check when it has not run yet."""
        if self._checking:
            self.lmp.command(f"unfix {self.name('tally')}")
            self.lmp.command(f"unfix {self.name('checkhalt')}")
            self._checking = False

    def verify(self, rtol: float = 1e-8) -> float:
        """Run 0 steps now and check the posterior mean reproduces the snap pair energy (an immediate
        check for Python users; :meth:`attach` checks at the next run's first step instead); returns
        the relative difference (0 when the model does not ``checks_pair_style``).
        Raises InputError when it does not match."""
        if not self.model.checks_pair_style:
            return 0.0
        self._active = False
        try:
            self.lmp.command("run 0 post no")
        finally:
            self._active = True
        return self.compare_energy(rtol)

    def compare_energy(self, rtol: float = 1e-8) -> float:
        """The relative difference of the model mean's SNAP energy and the pair style's, on this step
        (collective; the pair energy must have been tallied on it). Raises InputError above ``rtol``."""
        nlocal = int(self.lmp.extract_global("nlocal"))
        b, _ = self.descriptor_arrays(nlocal)
        mine = self.model.mean_energies(b, self._elements_of_local(nlocal))
        ours = self.comm.allreduce(float(np.sum(mine)))
        theirs = float(self.lmp.extract_compute(self.name("pair"), 0, 0))
        rel = abs(ours - theirs) / max(abs(theirs), 1e-300)
        if rel > rtol:
            raise InputError(f"the posterior does not match the running snap pair style: its mean "
                             f"coefficients give a SNAP energy of {ours:.10g} eV, the pair style "
                             f"{theirs:.10g} eV (relative difference {rel:.2e}); use the .snapcoeff/"
                             ".snapparam written with this posterior", file=self._model_file())
        return rel

    def _elements_of_local(self, nlocal: int) -> np.ndarray:
        types = np.asarray(self.lmp.numpy.extract_atom("type"))[:nlocal]
        return self.type_to_element[types - 1]

    # --------------------------------------------------------------- callback
    def evaluate(self, nlocal: int
                 ) -> tuple[np.ndarray, np.ndarray, dict[str, float], np.ndarray, float]:
        """Per-atom energy std (nlocal,), force std (nlocal,) and the globals, now (collective).

        Also returns the configuration's fingerprint (:attr:`TotalUncertainty.fingerprint
        <lammps_hooks.uq_model.TotalUncertainty>`; for a Posterior the mean energy row over all atoms,
        (p,)) and the energy the model's mean predicts (eV). Without a force std, fstd is zeros.
        """
        b, d = self.descriptor_arrays(nlocal)
        atoms = self.model.per_atom(b, self._elements_of_local(nlocal), d, self.type_to_element)
        partial = np.asarray(atoms.partial, dtype=float)
        summed = np.zeros_like(partial)
        self.comm.Allreduce(partial, summed)
        natoms = self.comm.allreduce(nlocal)
        tot = self.model.total(summed, natoms)
        estd = np.asarray(atoms.estd, dtype=float)
        fstd = np.zeros(nlocal) if atoms.fstd is None else np.asarray(atoms.fstd, dtype=float)
        pe_std = float(tot.pe_std)
        g = {
            "pe_std": pe_std,
            "pe_atom_std": pe_std / max(natoms, 1),
            "estd_max": self.comm.allreduce(float(estd.max()) if nlocal else 0.0, op=mpi_max()),
            "estd_mean": self.comm.allreduce(float(estd.sum())) / max(natoms, 1),
            "fstd_max": self.comm.allreduce(float(fstd.max()) if nlocal else 0.0, op=mpi_max()),
            "fstd_mean": self.comm.allreduce(float(fstd.sum())) / max(natoms, 1),
        }
        return estd, fstd, g, tot.fingerprint, float(tot.energy)

    def _callback(self, caller: Any, step: int, nlocal: int, tag: Any, x: Any, fext: Any) -> None:
        zero_external_force(fext, nlocal)
        if not self._active:
            return
        if self._checking and not self.checked:
            self._check_now()
        t0 = time.perf_counter()
        self._descriptor_s = 0.0
        if self._evaluate_step(step, nlocal):
            self.cost["evaluations"] += 1
            self.cost["descriptors_s"] += self._descriptor_s
            self.cost["uncertainty_s"] += time.perf_counter() - t0 - self._descriptor_s

    def _evaluate_step(self, step: int, nlocal: int) -> bool:
        """Evaluate, store and flag this step's configuration; False when it was already evaluated."""
        # A new run starts with a callback at its first step: when the previous run ended on this
        # step with the same positions, the per-atom columns and variables already hold its values.
        key = self._configuration_key(step, nlocal)
        if self.comm.allreduce(int(key == self._last_key), op=mpi_min()) == 1:
            return False
        self._last_key = key
        lmp = self.lmp
        estd, fstd, g, fingerprint, energy = self.evaluate(nlocal)
        lmp.numpy.extract_atom(f"d_{self.name('estd')}")[:nlocal] = estd
        lmp.numpy.extract_atom(f"d_{self.name('fstd')}")[:nlocal] = fstd
        value = g[self.measure]
        if self.flag_above is not None and value > self.flag_above:
            added = self._flag(step, nlocal, estd, fstd, fingerprint, energy, value)
            g["nflagged"] = float(self.last.get("nflagged", 0.0) + (1 if added else 0))
        else:
            g["nflagged"] = float(self.last.get("nflagged", 0.0))
        g["halt"] = 0.0
        if self.halt_above is not None and value > self.halt_above:
            g["halt"] = 1.0
            self.halted = (f"fitsnap-uq: stopped at step {step}: {self.name(self.measure)} = {value:.4g} "
                           f"> halt threshold {self.halt_above:g}")
        for k, v in g.items():
            lmp.set_internal_variable(self.name(k), float(v))
        self.last = dict(g, step=float(step))
        self.history.append(self.last)
        return True

    def _configuration_key(self, step: int, nlocal: int) -> tuple[int, int, int]:
        """(step, nlocal, hash of the tag-sorted fractional coordinates mod 1): unchanged by the
        wrapping and sorting LAMMPS does between runs, changed by any real displacement."""
        lmp = self.lmp
        ids = np.asarray(lmp.numpy.extract_atom("id"))[:nlocal]
        x = np.asarray(lmp.numpy.extract_atom("x"))[:nlocal]
        boxlo, boxhi, xy, yz, xz, _, _ = lmp.extract_box()
        cell = np.array([[boxhi[0] - boxlo[0], 0, 0], [xy, boxhi[1] - boxlo[1], 0],
                         [xz, yz, boxhi[2] - boxlo[2]]])
        frac = np.linalg.solve(cell.T, (x - np.asarray(boxlo)).T).T
        frac = np.round(np.mod(frac, 1.0), 9) % 1.0
        order = np.argsort(ids)
        return int(step), int(nlocal), hash((ids[order].tobytes(), frac[order].tobytes(), cell.tobytes()))

    # --------------------------------------------------------------- flagging
    def _flag(self, step: int, nlocal: int, estd: np.ndarray, fstd: np.ndarray,
              fingerprint: np.ndarray, energy: float, value: float) -> bool:
        """Gather the configuration on rank 0 and offer it to the store (collective).

        ``energy`` is the model mean's energy from :meth:`evaluate` (the placeholder label).
        """
        lmp = self.lmp
        ids = np.asarray(lmp.numpy.extract_atom("id"))[:nlocal].copy()
        x = np.asarray(lmp.numpy.extract_atom("x"))[:nlocal].copy()
        f = np.asarray(lmp.numpy.extract_atom("f"))[:nlocal].copy()
        elems = self._elements_of_local(nlocal)
        parts = self.comm.gather((ids, x, f, elems, estd.copy(), fstd.copy()), root=0)
        added = False
        if self.comm.Get_rank() == 0:
            ids, x, f, elems, es, fs = (np.concatenate(z) for z in zip(*parts))
            order = np.argsort(ids)
            boxlo, boxhi, xy, yz, xz, periodicity, _ = lmp.extract_box()
            lo = np.asarray(boxlo)
            cell = np.array([[boxhi[0] - boxlo[0], 0, 0], [xy, boxhi[1] - boxlo[1], 0],
                             [xz, yz, boxhi[2] - boxlo[2]]])
            names = [self.model.elements[i] for i in elems[order]]
            frame = Frame(symbols=names, positions=x[order] - lo, cell=cell,
                          pbc=np.asarray(periodicity, dtype=bool), energy=energy, forces=f[order],
                          estd=es[order], fstd=fs[order], fingerprint=fingerprint,
                          info={"step": int(step), "measure": self.measure, "value": float(value)})
            added = self.store.add(frame) is not None
        return bool(self.comm.bcast(added, root=0))

    def detach(self) -> None:
        """Remove the hook's fixes and computes from LAMMPS."""
        if not self.attached:
            return
        for fix in ("ext", "props", "stop"):
            if fix != "stop" or self.halt_above is not None:
                self.lmp.command(f"unfix {self.name(fix)}")
        for compute in self._computes:
            self.lmp.command(f"uncompute {self.name(compute)}")
        self._computes = []
        self.attached = False
