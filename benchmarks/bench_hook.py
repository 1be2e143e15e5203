"""Overhead of the SNAP uncertainty hook on MD: the same run with and without it, in one process.

    python benchmarks/bench_hook.py [--steps 200] [--repeat 3] [--posterior P.posterior.npz]
                                    [--descriptors native|lammps]

2000-atom bcc Ta at 600 K, NVE, with the Ta Bayesian posterior (fitted here with BAYES from the Ta
example unless --posterior is given) as ``pair_style hybrid/overlay zbl 4.0 4.8 snap``, exactly as
fitted. Times, best of --repeat, interleaved: the plain run (baseline); energy+force uncertainty every
10 and every 100 steps; energy-only every 10 steps. Prints the ratios to the baseline and the
acceptance bounds (1.20, 1.03, 1.10).

The hook takes its descriptors from the fitsnap-uq plugin's one-pass ``compute snap/uq/atom``
(``--descriptors native``, the default: the plugin is built here into a temporary folder, as
``fitsnap-uq build-plugin`` does, and loaded) or from LAMMPS' ``compute sna/atom`` and ``compute
snad/atom`` (``--descriptors lammps``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

SETUP = """
units metal
lattice bcc 3.316
region b block 0 10 0 10 0 10
create_box 1 b
create_atoms 1 box
mass 1 180.88
pair_style hybrid/overlay zbl 4.0 4.8 snap
pair_coeff * * zbl 73 73
pair_coeff * * snap {stem}.snapcoeff {stem}.snapparam Ta
velocity all create 600 4928459 loop geom
fix nve all nve
thermo 100
"""


def fit_posterior(folder: Path) -> Path:
    """BAYES fit of the Ta example (the solver's defaults) into ``folder``; returns the posterior."""
    from _ta import ta_copy

    with ta_copy() as infile:
        text = infile.read_text().replace("solver = SVD", "solver = BAYES")
        infile.write_text(text)
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        subprocess.run([sys.executable, "-m", "fitsnap_uq", "fit", infile.name, "--overwrite"],
                       check=True, env=env, capture_output=True)
        for suffix in (".posterior.npz", ".snapcoeff", ".snapparam"):
            (folder / f"Ta_pot{suffix}").write_bytes((infile.parent / f"Ta_pot{suffix}").read_bytes())
    return folder / "Ta_pot.posterior.npz"


def open_md(stem: str, plugin: Path | None = None, attach: Callable[[Any], None] | None = None) -> Any:
    """A LAMMPS instance with the 2000-atom Ta MD set up (SETUP, the potential ``STEM.snapcoeff/.snapparam``),
    ``plugin`` loaded and ``attach(lmp)`` applied, after a ``run 0`` (so set-up is done and not timed)."""
    from fitsnap_uq.compat import import_lammps

    lmp = import_lammps().lammps(cmdargs=["-screen", "none", "-log", "none"])
    if plugin is not None:
        lmp.command(f"plugin load {plugin}")
    lmp.commands_string(SETUP.format(stem=stem))
    if attach is not None:
        attach(lmp)
    lmp.command("run 0 post no")
    return lmp


def timed_md(stem: str, steps: int, plugin: Path | None = None,
             attach: Callable[[Any], None] | None = None) -> float:
    """Seconds of ``run STEPS`` of the MD of :func:`open_md` (set-up not timed)."""
    lmp = open_md(stem, plugin, attach)
    t0 = time.perf_counter()
    lmp.command(f"run {steps} pre no post no")
    elapsed = time.perf_counter() - t0
    lmp.close()
    return elapsed


def hook_attacher(posterior, every: int | None, forces: bool,
                  descriptors: str) -> Callable[[Any], None] | None:
    """``attach`` for :func:`open_md` and :func:`timed_md`: a SnapUQHook every ``every`` steps (None:
    the plain run)."""
    if every is None:
        return None
    from lammps_hooks.snap_uq import SnapUQHook

    return lambda lmp: SnapUQHook(lmp, posterior, every=every, forces=forces,
                                  descriptors=descriptors).attach()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--posterior", help="a Ta posterior with its .snapcoeff/.snapparam beside it")
    ap.add_argument("--descriptors", choices=("native", "lammps"), default="native",
                    help="compute snap/uq/atom of the fitsnap-uq plugin (built here), or LAMMPS' "
                         "compute sna/atom + snad/atom")
    args = ap.parse_args()
    from fitsnap_uq.posterior import Posterior
    from lammps_hooks.native import build_plugin

    with tempfile.TemporaryDirectory() as tmp:
        plugin = build_plugin(Path(tmp)) if args.descriptors == "native" else None
        path = Path(args.posterior) if args.posterior else fit_posterior(Path(tmp))
        stem = str(path)[: -len(".posterior.npz")]
        post = Posterior.load(path)
        cases = [("plain run (baseline)", None, True), ("energy+force every 10", 10, True),
                 ("energy+force every 100", 100, True), ("energy only every 10", 10, False)]
        best = {name: float("inf") for name, _, _ in cases}
        for _ in range(args.repeat):  # interleaved, so drifts of the machine hit every case alike
            for name, every, forces in cases:
                t = timed_md(stem, args.steps, plugin,
                             hook_attacher(post, every, forces, args.descriptors))
                best[name] = min(best[name], t)
    base = best["plain run (baseline)"]
    bounds = {"energy+force every 10": 1.20, "energy+force every 100": 1.03, "energy only every 10": 1.10}
    source = ("compute snap/uq/atom (fitsnap-uq plugin)" if args.descriptors == "native"
              else "compute sna/atom + snad/atom (LAMMPS)")
    print(f"2000-atom bcc Ta, {args.steps} steps, best of {args.repeat}; hook descriptors: {source}")
    ok = True
    for name, _, _ in cases:
        ratio = best[name] / base
        line = f"{name:26s} {best[name]:8.3f} s   ratio {ratio:.3f}"
        if name in bounds:
            passed = ratio <= bounds[name]
            ok &= passed
            line += f"   (<= {bounds[name]:.2f}: {'PASS' if passed else 'FAIL'})"
        print(line)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
