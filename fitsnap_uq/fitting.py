"""``fitsnap-uq fit``: FitSNAP's whole flow (scrape, descriptors, fit, outputs) with the plugin loaded.

The input file is checked before FitSNAP starts, so a user's mistake gets one clear message naming the
file, the section and the key, instead of a traceback from deep inside FitSNAP (which would, under
``mpirun``, leave the other ranks waiting).
"""

from __future__ import annotations

import argparse
import configparser
import contextlib
import functools
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from fitsnap_uq import SOLVERS, progress
from fitsnap_uq.errors import InputError
from fitsnap_uq.options import parse_uq

# [GROUPS] keys that are settings rather than group names (FitSNAP 3.1.0.4, io/sections/groups.py).
GROUP_SETTINGS = {"group_sections", "group_types", "smartweights", "random_sampling", "random_seed",
                  "vasp_use_TOTEN", "vasp_json_pathname", "vasp_ignore_incomplete",
                  "vasp_ignore_jsons", "vasp_unconverged_label", "BOLTZ"}
# Scrapers that read one folder per group below [PATH] dataPath.
FOLDER_SCRAPERS = {"JSON", "XYZ"}
# Flags we accept on top of FitSNAP 3.1.0.4's parser (which has --printlammps commented out).
EXTRA_FLAGS = {"--printlammps", "-pl"}


def read_input(infile: str, keyword_replacements: Sequence[Sequence[str]] = ()) -> configparser.ConfigParser:
    """Parse a FitSNAP input file the way FitSNAP does; errors name the file."""
    path = Path(infile)
    if not path.is_file():
        raise InputError("input file not found" if not path.exists() else "input path is not a file",
                         file=infile)
    cfg = configparser.ConfigParser(inline_comment_prefixes="#")
    cfg.optionxform = str  # type: ignore[assignment, method-assign]
    try:
        cfg.read(infile)
    except configparser.Error as exc:
        raise InputError(f"cannot parse input: {exc}", file=infile) from None
    for section, key, value in keyword_replacements:
        if section not in cfg:
            raise InputError("section given with --keyword is not in the input file", file=infile,
                             section=section, key=key)
        cfg[section][key] = value
    return cfg


def validate_input(infile: str, keyword_replacements: Sequence[Sequence[str]] = ()
                   ) -> configparser.ConfigParser:
    """Check what FitSNAP would otherwise fail on late or obscurely; return the parsed input.

    Checked: the file exists and parses; every section is known; the solver exists (the message lists
    the available solvers, ours included); ``[UQ]`` keys and values; the data folder and, for folder
    scrapers, each group's folder exist.
    """
    from fitsnap_uq.fitsnap_plugin import activate

    activate()  # our [UQ] section and solvers are among the known ones
    import fitsnap3lib.io.sections.section_factory  # noqa: F401  (defines FitSNAP's sections)
    from fitsnap3lib.io.sections.sections import Section

    from fitsnap_uq.solvers import available_solvers

    cfg = read_input(infile, keyword_replacements)
    known = {cls.__name__.upper() for cls in Section.__subclasses__()} | {"TEMPLATE", "BASIC_CALCULATOR"}
    for section in cfg.sections():
        if section.upper() not in known:
            raise InputError(f"unknown section; known sections: {', '.join(sorted(known))}",
                             file=infile, section=section)
    if "SOLVER" in cfg:
        name = cfg["SOLVER"].get("solver", "SVD")
        solvers = available_solvers()
        if name.upper() not in {s.upper() for s in solvers}:
            raise InputError(f"unknown solver {name!r}; available solvers: {', '.join(solvers)}",
                             file=infile, section="SOLVER", key="solver")
    if "UQ" in cfg:
        parse_uq(dict(cfg["UQ"]), file=infile)
        name = cfg["SOLVER"].get("solver", "SVD") if "SOLVER" in cfg else "SVD"
        if name.upper() not in SOLVERS:
            raise InputError(f"a [UQ] section has no effect with solver {name}: choose one of "
                             f"{', '.join(SOLVERS)} in [SOLVER], or remove [UQ]", file=infile,
                             section="SOLVER", key="solver")
    if "BISPECTRUM" in cfg:
        check_bispectrum(cfg["BISPECTRUM"], infile)
    scraper = cfg["SCRAPER"].get("scraper", "JSON").upper() if "SCRAPER" in cfg else None
    if scraper in FOLDER_SCRAPERS:
        needs = required_quantities(cfg, infile)
        base = Path(infile).parent
        data = base / (cfg["PATH"].get("dataPath", "JSON") if "PATH" in cfg else "JSON")
        if not data.is_dir():
            raise InputError(f"data directory {data} not found (relative paths are taken from the "
                             f"input file's folder)", file=infile, section="PATH", key="dataPath")
        group_file = cfg["PATH"].get("groupFile", "None") if "PATH" in cfg else "None"
        groups = cfg["GROUPS"] if "GROUPS" in cfg and group_file == "None" else {}
        nfiles = 0
        for group in groups:
            if group in GROUP_SETTINGS:
                continue
            if not (data / group).is_dir():
                raise InputError(f"no folder {data / group} for this group under the data "
                                 f"directory", file=infile, section="GROUPS", key=group)
            if scraper == "JSON":
                files = sorted((data / group).glob("*.json"))
                if not files:
                    raise InputError(f"folder {data / group} holds no configuration (*.json): the group "
                                     f"would drop out of the fit and the reports", file=infile,
                                     section="GROUPS", key=group)
                for path in files:
                    check_json_file(path, infile, needs=needs)
                nfiles += len(files)
        if "UQ" in cfg and nfiles:
            check_folds_bound(cfg, infile, nfiles)
    return cfg


def check_folds_bound(cfg: configparser.ConfigParser, infile: str, nconfigs: int) -> None:
    """``[UQ] cv_folds`` against the configurations found, before any work (the solver checks the
    exact number of training configurations again after FitSNAP's train/test split)."""
    text = cfg["UQ"].get("cv_folds")
    if text is None:
        return  # the default adapts (leave-one-out on fewer configurations)
    folds = parse_uq({"cv_folds": text}, file=infile)["cv_folds"]
    if folds > nconfigs:
        raise InputError(f"{folds} folds for {nconfigs} configurations in the data: use at most "
                         f"{nconfigs}", file=infile, section="UQ", key="cv_folds")


def _reject_constant(name: str) -> float:
    raise ValueError(f"non-finite number {name}")


def _flag(cfg: configparser.ConfigParser, section: str, key: str, default: bool, infile: str) -> bool:
    """A FitSNAP boolean (``strtobool``: 1/0, true/false, yes/no, on/off)."""
    text = cfg[section].get(key, str(default)) if section in cfg else str(default)
    value = text.strip().lower()
    if value in {"1", "true", "t", "yes", "y", "on"}:
        return True
    if value in {"0", "false", "f", "no", "n", "off"}:
        return False
    raise InputError(f"{text!r} is not a boolean (1/0, true/false)", file=infile, section=section,
                     key=key)


def required_quantities(cfg: configparser.ConfigParser, infile: str) -> tuple[str, ...]:
    """The quantities every training configuration must hold for this input: ``Energy`` when
    ``[CALCULATOR] energy``, ``Forces`` when ``force``, ``Stress`` when ``stress`` (FitSNAP's
    defaults: all three on)."""
    return tuple(name for name, key in (("Energy", "energy"), ("Forces", "force"), ("Stress", "stress"))
                 if _flag(cfg, "CALCULATOR", key, True, infile))


def check_json_file(path: Path, infile: str | None = None,
                    needs: Sequence[str] = ("Energy",)) -> None:
    """Parse a FitSNAP JSON file as FitSNAP's scraper will, but strictly.

    FitSNAP 3.1.0.4 prints a warning for a file it cannot parse (a ``NaN`` literal, a truncated file)
    and goes on with the previous configuration's data in its place, and fails with a bare
    ``KeyError`` deep in its calculator on a missing quantity; we stop with the file named. Checked:
    ``Positions`` (N, 3), ``AtomTypes`` (N), ``Lattice`` (3, 3), each quantity in ``needs``
    (``Energy`` a number, ``Forces`` (N, 3), ``Stress`` (3, 3)), all finite.
    """
    text = path.read_text()
    if not text.lstrip().startswith("{"):
        text = text.split("\n", 1)[1] if "\n" in text else ""  # FitSNAP skips a first comment line
    try:
        record = json.loads(text, parse_constant=_reject_constant)
        data = record["Dataset"]["Data"][0]
        if not record["Dataset"].get("fitsnap_uq", {}).get("labelled", True):
            raise ValueError("unlabelled frame flagged by the MD hook (its energy and forces are "
                             "model predictions); label it with an oracle first, e.g. "
                             "fitsnap_uq.active.oracles.label_folder")
        _check_arrays(data, needs)
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise InputError(f"bad training configuration {path}: {exc}", file=infile, section="PATH",
                         key="dataPath") from None


def _check_arrays(data: dict[str, Any], needs: Sequence[str]) -> None:
    """Raise ValueError naming the first missing or misshapen entry of one configuration's data."""
    import numpy as np

    for key in ("Positions", "AtomTypes", "Lattice", *needs):
        if key not in data:
            hint = (" (set [CALCULATOR] force = 0 to fit energies only)" if key == "Forces" else
                    " (set [CALCULATOR] stress = 0 to fit without stresses)" if key == "Stress" else "")
            raise ValueError(f"no {key!r}{hint}")
    natoms = len(data["AtomTypes"])
    shapes = {"Positions": (natoms, 3), "Lattice": (3, 3), "Energy": (), "Forces": (natoms, 3),
              "Stress": (3, 3)}
    for key in ("Positions", "Lattice", *needs):
        value = np.asarray(data[key], dtype=float)
        if value.shape != shapes[key]:
            raise ValueError(f"{key!r} has shape {value.shape}, expected {shapes[key]} for "
                             f"{natoms} atoms (len(AtomTypes))")
        if not np.all(np.isfinite(value)):
            raise ValueError(f"{key!r} holds a NaN or infinite number")


def check_bispectrum(section: Any, infile: str) -> None:
    """Per-element keys of [BISPECTRUM] must have one value per type, ``rcutfac`` and ``radelem``
    must be positive, and explicit multi-element SNAP (``chemflag``) takes one ``twojmax`` and no
    ``quadraticflag`` (FitSNAP fails obscurely, with a traceback, or fits all-zero descriptors)."""
    try:
        ntypes = int(section.get("numTypes", "1"))
    except ValueError:
        raise InputError("numTypes must be an integer", file=infile, section="BISPECTRUM",
                         key="numTypes") from None
    for key in ("twojmax", "radelem", "wj", "type"):
        if key in section and len(section[key].split()) != ntypes:
            raise InputError(f"{len(section[key].split())} value(s) for numTypes = {ntypes}: give one "
                             f"per element type", file=infile, section="BISPECTRUM", key=key)
    for key in ("rcutfac", "radelem"):  # FitSNAP takes a negative one and every descriptor is zero
        for value in section.get(key, "1").split():
            try:
                positive = float(value) > 0
            except ValueError:
                positive = False
            if not positive:
                raise InputError(f"must be a positive number, got '{value}'", file=infile,
                                 section="BISPECTRUM", key=key)
    flags = {}
    for key in ("chemflag", "quadraticflag"):
        try:
            flags[key] = section.getboolean(key, fallback=False)
        except ValueError:
            raise InputError(f"{key} must be 0 or 1, not {section[key]!r}", file=infile,
                             section="BISPECTRUM", key=key) from None
    if flags["chemflag"] and flags["quadraticflag"]:
        raise InputError("FitSNAP has no quadratic explicit multi-element SNAP: set chemflag = 0 or "
                         "quadraticflag = 0", file=infile, section="BISPECTRUM", key="quadraticflag")
    if flags["chemflag"] and len(set(section.get("twojmax", "6").split())) > 1:
        raise InputError("explicit multi-element SNAP (chemflag = 1) takes one twojmax for all elements "
                         "in FitSNAP", file=infile, section="BISPECTRUM", key="twojmax")


def output_files(cfg: configparser.ConfigParser, infile: str, relative: bool = False
                 ) -> list[tuple[str, str, Path]]:
    """The files a fit will write, as (section, key, path): FitSNAP's metrics and potential files and
    ours (posterior, NN ensemble, calibration report). FitSNAP puts its outputs in the current folder
    (the input file's with ``--relative``); ours follow :meth:`~fitsnap_uq.solvers.UQSolverMixin.output_path`.
    """
    base = Path(infile).parent if relative else Path.cwd()

    def get(section: str, key: str, default: str) -> str:
        return cfg[section].get(key, default) if section in cfg else default

    files: list[tuple[str, str, Path]] = []
    metrics = get("OUTFILE", "metrics", "fitsnap_metrics")
    potential = get("OUTFILE", "potential", "fitsnap_potential")
    if metrics != "None":
        stem = metrics[:-3] if metrics.endswith(".md") else metrics
        files += [("OUTFILE", "metrics", base / metrics), ("OUTFILE", "metrics", base / f"{stem}.uq.md")]
    if potential != "None":
        files += [("OUTFILE", "potential", base / f"{potential}{suffix}")
                  for suffix in (".snapcoeff", ".snapparam")]
    solver = get("SOLVER", "solver", "SVD").upper()
    if solver in SOLVERS:
        key, suffix = (("nn_ensemble", ".nnensemble.json") if solver == "NNENSEMBLE"
                       else ("posterior", ".posterior.npz"))
        given = get("UQ", key, "")
        if given:
            path = Path(given)
            files.append(("UQ", key, path if path.is_absolute() or not relative else base / path))
        elif potential != "None":
            files.append(("OUTFILE", "potential", base / f"{potential}{suffix}"))
    return files


def check_outputs(cfg: configparser.ConfigParser, infile: str, relative: bool = False) -> None:
    """Every output file can be written: checked before the descriptors (minutes), not after the fit."""
    from fitsnap_uq.io import unwritable_reason

    for section, key, path in output_files(cfg, infile, relative):
        reason = unwritable_reason(path)
        if reason:
            raise InputError(f"cannot write the output file {path}: {reason}", file=infile,
                             section=section, key=key)


def split_arguments(argv: Sequence[str]) -> tuple[list[str], bool]:
    """Our extra flags out of FitSNAP's arguments: (FitSNAP arguments, printlammps)."""
    args = [a for a in argv if a not in EXTRA_FLAGS]
    return args, len(args) != len(argv)


def _parse_cmdline_alone() -> Any:
    """FitSNAP's ``Config.parse_cmdline``, compiled alone from FitSNAP's source; None if that fails.

    ``fitsnap3lib/io/input.py`` imports every input section (and with them pandas and torch: ~2 s);
    the parser itself needs only :mod:`argparse` and :mod:`sys`. Nothing of FitSNAP is imported.
    """
    import ast
    import importlib.util
    import sys

    spec = importlib.util.find_spec("fitsnap3lib")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "io" / "input.py"
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        method = next(node for cls in tree.body if isinstance(cls, ast.ClassDef) and cls.name == "Config"
                      for node in cls.body
                      if isinstance(node, ast.FunctionDef) and node.name == "parse_cmdline")
        namespace: dict[str, Any] = {"argparse": argparse, "sys": sys}
        exec(compile(ast.Module(body=[method], type_ignores=[]), str(path), "exec"), namespace)
    except (OSError, SyntaxError, StopIteration):
        return None
    return namespace["parse_cmdline"]


def print_fitsnap_help() -> None:
    """Print FitSNAP's command-line help, from FitSNAP's own parser, in well under a second.

    Uses :func:`_parse_cmdline_alone`, or FitSNAP's ``Config`` (slow import) if that is not possible.
    """
    parse = _parse_cmdline_alone()
    if parse is None:
        from fitsnap3lib.io.input import Config

        parse = Config.parse_cmdline
    probe = argparse.Namespace(input=None)  # parse_cmdline reads self.input and sets self.args
    try:
        parse(probe, arguments_lst=["--help"])
    except SystemExit:
        pass


def fitsnap_arguments(argv: Sequence[str]) -> argparse.Namespace:
    """Parse FitSNAP's command line (infile and flags) with FitSNAP's own parser."""
    from fitsnap3lib.io.input import Config

    probe = Config.__new__(Config)
    probe.input = None
    probe.parse_cmdline(arguments_lst=list(argv))
    return probe.args


def run_fit(argv: Sequence[str], comm: Any = None) -> Any:
    """Run FitSNAP's flow on ``argv`` (input file + FitSNAP's flags) with the plugin; return FitSnap.

    Raises:
        InputError: a mistake in the input, found before or during the run.
    """
    from fitsnap_uq.fitsnap_plugin import activate

    activate()  # adapters, [UQ] section and solvers, before FitSNAP reads the input
    from fitsnap3lib.fitsnap import FitSnap

    fs_argv, printlammps = split_arguments(argv)
    if not fs_argv or fs_argv[0].startswith("-"):
        raise InputError("no input file given: fitsnap-uq fit INPUT.in [FitSNAP flags]")
    args = fitsnap_arguments(fs_argv)
    cfg = validate_input(args.infile, args.keyword_replacements or ())
    check_outputs(cfg, args.infile, bool(getattr(args, "relative", False)))
    snap = FitSnap(comm=comm, arglist=fs_argv)
    if printlammps and snap.calculator is not None:
        calc = snap.calculator
        calc._initialize_lammps = functools.partial(type(calc)._initialize_lammps, calc, 1)
    scrape_and_describe(snap, comm)
    solver = snap.solver.__class__.__name__ if snap.solver is not None else "?"
    with progress.timed(f"fitsnap-uq fit: fit ({solver})", show=bool(args.perform_fit)):
        snap.perform_fit()
    with progress.timed("fitsnap-uq fit: outputs (potential files, error tables)"):
        snap.write_output()
    return snap


def scrape_and_describe(snap: Any, comm: Any = None) -> None:
    """FitSNAP's scrape and descriptor stages, with stage lines and a bar over rank 0's configurations
    (:mod:`fitsnap_uq.progress`)."""
    with progress.timed("fitsnap-uq fit: reading the configurations"):
        snap.scrape_configs(delete_scraper=True)
    mine = len(getattr(snap, "data", []) or [])
    size = comm.Get_size() if comm is not None else 1
    total = comm.allreduce(mine) if size > 1 else mine
    share = f" (rank 0 computes {mine} of them; {size} ranks)" if size > 1 else ""
    with progress.timed(f"fitsnap-uq fit: descriptors of {total} configurations{share}"), \
            progress.bar(total=mine, desc="descriptors", unit="configs", leave=False) as bar, \
            _count_calls(snap.calculator, ("process_configs", "process_configs_nonlinear"), bar):
        snap.process_configs(delete_data=True)
    snap.pt.all_barrier()


@contextlib.contextmanager
def _count_calls(obj: Any, names: Sequence[str], bar: Any) -> Iterator[None]:
    """Advance ``bar`` by one after each call of the methods ``names`` of ``obj`` (FitSNAP's calculator
    processes one configuration per call); the methods are restored afterwards."""
    wrapped = []
    for name in names:
        original = getattr(obj, name, None)
        if original is None:
            continue

        def counting(*args: Any, _original: Any = original, **kwargs: Any) -> Any:
            out = _original(*args, **kwargs)
            bar.update(1)
            return out

        own = name in vars(obj)
        wrapped.append((name, original, own))
        setattr(obj, name, counting)
    try:
        yield
    finally:
        for name, original, own in wrapped:
            if own:
                setattr(obj, name, original)
            else:
                delattr(obj, name)


def descriptor_rows(infile: str, extra_args: Sequence[str] = (), comm: Any = None) -> Any:
    """Run FitSNAP's scrape and descriptor stages on ``infile``; return the system as
    :class:`~fitsnap_uq.linear.rows.Rows` (on the head rank; None elsewhere) and the FitSnap object.

    Used by benchmarks and tools that need FitSNAP's rows without fitting them.
    """
    from fitsnap_uq.fitsnap_plugin import activate

    activate()
    from fitsnap3lib.fitsnap import FitSnap

    from fitsnap_uq.solvers import gather_rows

    args = [infile, "--nofit", "--overwrite", *extra_args]
    validate_input(infile)
    snap = FitSnap(comm=comm, arglist=args)
    scrape_and_describe(snap, comm)
    rows = gather_rows(snap.pt, infile) if snap.pt.get_subrank() == 0 else None
    return rows, snap
