"""Two elements at their real size: BAYES fits of the W-Be DFT data (predictive model of new
configurations, per-atom force scale and per-configuration energy scale, ``[UQ] atom_scale = yes``,
``energy_scale = yes``, included), then the per-atom and
per-configuration sigma of an MD configuration from the Python hook and from the native plugin, both
under ``mpirun -np 2``, against ``Posterior.predict`` on that configuration's descriptor rows, each
force row labelled with its atom and element, without and with the noise floors (slow: a fit takes one
to two minutes).

Three potentials: the published linear SNAP (2J = 8, all groups); explicit multi-element SNAP
(``chemflag = 1``, ``bnormflag = 1``, 2J = 6: 240 coefficients per element) and quadratic SNAP
(``quadraticflag = 1``, 2J = 4: 119 per element), both on a subset of the groups (W, Be and W-Be
structures, 1,000 configurations, about 16,000 atoms) to keep the memory and the time of the fit small."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, predicted_on, run_cli
from test_plugin import run_lmp

from fitsnap_uq.posterior import Posterior
from lammps_hooks.native import write_plugin_posterior

SHARED_WBE = ROOT.parent / "shared" / "data" / "WBe_PRB2019_subset"
RTOL = 1e-8

pytestmark = [pytest.mark.slow, pytest.mark.mpi,
              pytest.mark.skipif(not SHARED_WBE.is_dir(),
                                 reason=f"W-Be DFT data not found at {SHARED_WBE} (../shared/data)")]

# 128 atoms of bcc W, a fifth of them Be, displaced off the lattice; ZBL + SNAP as fitted.
SETUP = """
units metal
lattice bcc 3.1803
region b block 0 4 0 4 0 4
create_box 2 b
create_atoms 1 box
set type 1 type/fraction 2 0.2 1234
mass 1 183.84
mass 2 9.012
displace_atoms all random 0.1 0.1 0.1 4321
pair_style hybrid/overlay zbl 4.0 4.8 snap
pair_coeff 1 1 zbl 74 74
pair_coeff 1 2 zbl 74 4
pair_coeff 2 2 zbl 4 4
pair_coeff * * snap {stem}.snapcoeff {stem}.snapparam W Be
"""
DUMP = "write_dump all custom peratom.txt id {cols} modify sort id format float %.17g\n"


GROUPS = ("DFT_MD_1000K", "DFT_MD_300K", "EOS", "EOS_BCC", "EOS_Data", "EOS_FCC", "EOS_HCP",
          "Elast_BCC_Vol", "ElasticDeform_Shear", "ElasticDeform_Vol", "Divacancy", "gamma_surface",
          "surface", "DFTMD_300K", "Disordered_Struc", "slice_sample")
"""The groups of the chemflag and quadratic fits: pure W, pure Be and W-Be configurations."""
VARIANTS = {
    "linear": {},
    "chemflag": {"twojmax": "6 6", "chemflag": "1", "bnormflag": "1"},
    "quadratic": {"twojmax": "4 4", "quadraticflag": "1"},
}


def wbe_input(text: str, variant: str) -> str:
    """The published W-Be input with solver BAYES; for a variant, its [BISPECTRUM] values and the
    subset of groups :data:`GROUPS`."""
    text = text.replace("solver = SVD", "solver = BAYES") + "\n[UQ]\natom_scale = yes\nenergy_scale = yes\n"
    values = dict(VARIANTS[variant])
    if not values:
        return text
    lines = []
    in_groups = False
    for line in text.splitlines():
        key = line.split("=")[0].strip()
        if line.startswith("["):
            in_groups = line.strip() == "[GROUPS]"
        if "=" in line and key in values:
            line = f"{key} = {values.pop(key)}"
        elif in_groups and "=" in line and key not in GROUPS and not key.startswith(
                ("group_", "smartweights", "random_sampling")):
            continue
        lines.append(line)
    at = lines.index("[BISPECTRUM]") + 1
    lines[at:at] = [f"{k} = {v}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module", params=list(VARIANTS))
def wbe_fit(request, tmp_path_factory) -> tuple[str, Path]:
    """(variant, stem of its fit)."""
    dest = tmp_path_factory.mktemp(f"wbe_{request.param}") / "WBe"
    shutil.copytree(SHARED_WBE, dest, ignore=shutil.ignore_patterns("full_data_reference_fit"))
    for p in [dest, *dest.rglob("*")]:
        p.chmod(p.stat().st_mode | 0o200)
    text = wbe_input((dest / "WBe-example.in").read_text(), request.param)
    (dest / "WBe-example.in").write_text(text)
    if request.param != "linear":
        assert set(re.findall(r"^(\w+)\s+=\s+1\.0 0\.0", text, re.M)) == set(GROUPS)
    proc = run_cli(["fit", "WBe-example.in", "--overwrite"], cwd=dest, mpi=2, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    post = Posterior.load(dest / "WBe_pot.posterior.npz")
    for key, value in VARIANTS[request.param].items():
        if key != "twojmax":
            assert int(post.snap[key]) == int(value), key
    return request.param, dest / "WBe_pot"


def predicted(stem: Path, noise: bool) -> tuple[np.ndarray, np.ndarray, float]:
    """Per-atom energy and force sigma and the total-energy sigma of the configuration, from
    ``Posterior.predict`` on its descriptor rows (:func:`conftest.predicted_on`)."""
    from fitsnap_uq.compat import import_lammps

    post = Posterior.load(f"{stem}.posterior.npz")
    assert post.model_error is not None and post.elements == ["W", "Be"]
    assert post.atom_scale is not None and post.atom_scale.nelem == 2
    # bzeroflag = 1: no constant columns, so one intercept; |a|^2 over FitSNAP's columns only
    assert post.energy_scale is not None and post.energy_scale.nelem == 1 and post.energy_columns.size == 0
    lmp = import_lammps().lammps(cmdargs=["-screen", "none", "-log", "none"])
    lmp.commands_string(SETUP.format(stem=stem))
    return predicted_on(lmp, post, noise=noise)


@pytest.mark.parametrize("noise", [False, True], ids=["coefficients", "noise"])
def test_hook_and_plugin_equal_posterior_predict_under_mpirun(wbe_fit, built_plugin, tmp_path, noise):
    variant, wbe_stem = wbe_fit
    estd, fstd, pe_std = predicted(wbe_stem, noise)
    # The Python hook, fitsnap-uq md under mpirun -np 2.
    folder = tmp_path / "hook"
    folder.mkdir()
    (folder / "in.md").write_text(SETUP.format(stem=wbe_stem) + "run 0\n"
                                  + DUMP.format(cols="d_uq_estd d_uq_fstd"))
    proc = run_cli(["md", "in.md", "--posterior", f"{wbe_stem}.posterior.npz", "--every", "1",
                    "--summary", "s.json", "--log", "none", *(["--noise"] if noise else [])],
                   cwd=folder, mpi=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    hook = np.loadtxt(folder / "peratom.txt", skiprows=9)
    # The native plugin, lmp -in under mpirun -np 2.
    uq = write_plugin_posterior(f"{wbe_stem}.posterior.npz", tmp_path / "WBe.uq")
    assert "\natom_scale 2\n" in uq.read_text() and "\nenergy_scale 1\nescale_cols 0\n" in uq.read_text()
    folder = tmp_path / "plugin"
    folder.mkdir()
    script = (f"plugin load {built_plugin}\n" + SETUP.format(stem=wbe_stem)
              + f"fix uq all snap/uq 1 {uq} noise {'yes' if noise else 'no'}\nrun 0\n"
              + DUMP.format(cols="f_uq[1] f_uq[2]")
              + 'print "PESTD $(f_uq[1]:%.17g)"\n')
    run = run_lmp(script, folder, ranks=2)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    plugin = np.loadtxt(folder / "peratom.txt", skiprows=9)
    plugin_pe = float([ln for ln in run.stdout.splitlines() if ln.startswith("PESTD ")][-1].split()[1])
    hook_pe = json.loads((tmp_path / "hook" / "s.json").read_text())["last"]["pe_std"]
    for name, got, want in (("hook estd", hook[:, 1], estd), ("hook fstd", hook[:, 2], fstd),
                            ("plugin estd", plugin[:, 1], estd), ("plugin fstd", plugin[:, 2], fstd),
                            ("hook pe_std", [hook_pe], [pe_std]), ("plugin pe_std", [plugin_pe], [pe_std])):
        diff = np.abs(np.asarray(got) - want)
        print(f"[W-Be {variant}, {'noise' if noise else 'coefficients'}] {name} vs Posterior.predict: "
              f"max abs difference {diff.max():.2e}, max relative {np.max(diff / np.abs(want)):.2e}")
        np.testing.assert_allclose(got, want, rtol=RTOL)
