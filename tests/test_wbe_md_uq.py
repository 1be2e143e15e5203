"""Two elements at their real size: a BAYES fit of the W-Be DFT data (predictive model of new
configurations included), then the per-atom and per-configuration sigma of an MD configuration from
the Python hook and from the native plugin, both under ``mpirun -np 2``, against
``Posterior.predict`` on that configuration's descriptor rows (slow: the fit takes about a minute)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, run_cli
from test_plugin import run_lmp

from fitsnap_uq.posterior import Posterior
from lammps_hooks.native import write_plugin_posterior
from lammps_hooks.snap_uq import SnapUQHook
from lammps_hooks.uq_math import energy_rows, force_rows

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


@pytest.fixture(scope="module")
def wbe_stem(tmp_path_factory) -> Path:
    dest = tmp_path_factory.mktemp("wbe") / "WBe"
    shutil.copytree(SHARED_WBE, dest, ignore=shutil.ignore_patterns("full_data_reference_fit"))
    for p in [dest, *dest.rglob("*")]:
        p.chmod(p.stat().st_mode | 0o200)
    text = (dest / "WBe-example.in").read_text().replace("solver = SVD", "solver = BAYES")
    (dest / "WBe-example.in").write_text(text)
    proc = run_cli(["fit", "WBe-example.in", "--overwrite"], cwd=dest, mpi=2, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dest / "WBe_pot"


def predicted(stem: Path) -> tuple[np.ndarray, np.ndarray, float]:
    """Per-atom energy and force sigma and the total-energy sigma of the configuration, from
    ``Posterior.predict`` on its descriptor rows (LAMMPS' sna/atom and snad/atom, serial)."""
    from fitsnap_uq.compat import import_lammps

    post = Posterior.load(f"{stem}.posterior.npz")
    assert post.model_error is not None and post.elements == ["W", "Be"]
    lmp = import_lammps().lammps(cmdargs=["-screen", "none", "-log", "none"])
    lmp.commands_string(SETUP.format(stem=stem))
    hook = SnapUQHook(lmp, post, every=1, descriptors="lammps").attach()
    lmp.command("run 0")
    n = lmp.get_natoms()
    b, d = (np.array(a) for a in hook.descriptor_arrays(n))
    types = np.array(lmp.numpy.extract_atom("type"))[:n]
    ids = np.array(lmp.numpy.extract_atom("id"))[:n]
    lmp.close()
    x = energy_rows(b, hook.type_to_element[types - 1], 2, post.block_size)
    fr = force_rows(d, hook.type_to_element, 2, post.block_size)
    _, estd = post.predict(x)
    _, fcomp = post.predict(fr.reshape(-1, post.n_coefficients))
    fstd = np.sqrt(np.sum(fcomp.reshape(n, 3) ** 2, axis=1))
    _, pe = post.predict(x.sum(axis=0)[None, :])
    order = np.argsort(ids)
    assert np.all(fstd > 0) and np.ptp(fstd) > 0
    return estd[order], fstd[order], float(pe[0])


def test_hook_and_plugin_equal_posterior_predict_under_mpirun(wbe_stem, built_plugin, tmp_path):
    estd, fstd, pe_std = predicted(wbe_stem)
    # The Python hook, fitsnap-uq md under mpirun -np 2.
    folder = tmp_path / "hook"
    folder.mkdir()
    (folder / "in.md").write_text(SETUP.format(stem=wbe_stem) + "run 0\n"
                                  + DUMP.format(cols="d_uq_estd d_uq_fstd"))
    proc = run_cli(["md", "in.md", "--posterior", f"{wbe_stem}.posterior.npz", "--every", "1",
                    "--summary", "s.json", "--log", "none"], cwd=folder, mpi=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    hook = np.loadtxt(folder / "peratom.txt", skiprows=9)
    # The native plugin, lmp -in under mpirun -np 2.
    uq = write_plugin_posterior(f"{wbe_stem}.posterior.npz", tmp_path / "WBe.uq")
    folder = tmp_path / "plugin"
    folder.mkdir()
    script = (f"plugin load {built_plugin}\n" + SETUP.format(stem=wbe_stem)
              + f"fix uq all snap/uq 1 {uq}\nrun 0\n" + DUMP.format(cols="f_uq[1] f_uq[2]")
              + 'print "PESTD $(f_uq[1]:%.17g)"\n')
    run = run_lmp(script, folder, ranks=2)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    plugin = np.loadtxt(folder / "peratom.txt", skiprows=9)
    plugin_pe = float([ln for ln in run.stdout.splitlines() if ln.startswith("PESTD ")][-1].split()[1])
    hook_pe = json.loads((tmp_path / "hook" / "s.json").read_text())["last"]["pe_std"]
    for name, got, want in (("hook estd", hook[:, 1], estd), ("hook fstd", hook[:, 2], fstd),
                            ("plugin estd", plugin[:, 1], estd), ("plugin fstd", plugin[:, 2], fstd),
                            ("hook pe_std", [hook_pe], [pe_std]), ("plugin pe_std", [plugin_pe], [pe_std])):
        rel = np.max(np.abs(np.asarray(got) - want) / np.abs(want))
        print(f"{name} vs Posterior.predict: max relative difference {rel:.2e}")
        np.testing.assert_allclose(got, want, rtol=RTOL)
