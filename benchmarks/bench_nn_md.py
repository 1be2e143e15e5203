"""MD driven by an NN ensemble in LAMMPS (ML-IAP ``model nn``) with its energy and force spread, against
the same MD without it and against linear SNAP with its uncertainty, in one process.

    python benchmarks/bench_nn_md.py [--rounds 8] [--every 10] [--ensemble E.nnensemble.json]
                                     [--posterior P.posterior.npz] [--linear plugin|hook]

2000-atom bcc Ta at 600 K, NVE, on the fit's ZBL reference as fitted. The NN ensemble is the 4-member
tanh NNENSEMBLE of ``examples/ta_nnensemble_lammps`` (fitted here unless --ensemble is given; written as
ML-IAP files with ``fitsnap-uq nn-export``'s code); the dynamics are driven by the ensemble mean (one
``pair_style mliap model nn`` network). Each case is one LAMMPS instance, set up before timing; in each
of --rounds rounds every instance runs ``--every`` steps (one uncertainty evaluation each), in an order
rotated from round to round, so that the drifts and bursts of a shared machine hit every case alike. A
case's time is its median over the rounds, a ratio the median over the rounds of the ratio of the two
times of that round. Cases:

* NN mean, plain (the baseline of the NN ratios);
* NN mean + the plugin's ``fix snap/uq`` with the members' networks (``write_plugin_ensemble``) every
  10 steps: energy and force spread, the networks' dE/dB in C++ contracted with the per-pair
  descriptor derivatives (with a C++ compiler; ``--linear plugin``);
* NN mean + :class:`~lammps_hooks.nn_uq.NNEnsembleHook` every 10 steps: energy and force spread, the
  members' forces by the plugin's contraction of torch's dE/dB (``descriptors=native``, with the plugin)
  and by ML-IAP in 4 helper instances (``descriptors=lammps``);
* NN mean + the hook every 10 steps, energy spread only;
* linear SNAP (the BAYES fit of the Ta example, fitted here unless --posterior is given), plain;
* linear SNAP + its uncertainty every 10 steps (energy and force std): the plugin's ``fix snap/uq``
  (built here) with ``--linear plugin`` (default when a C++ compiler is there), else the Python hook.

Prints each case's milliseconds per step, the ratios to the baselines, and the cost per NN evaluation
(member forces, descriptors, the rest) from the hook's own timers, with the overhead it implies.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_hook import SETUP as SNAP_SETUP  # noqa: E402  (benchmarks/ on the path above)
from bench_hook import fit_posterior  # noqa: E402

# bench_hook's 2000-atom Ta MD, with the pair style lines left to each case.
SETUP = re.sub(r"pair_style .*? Ta\n", "{pair}\n", SNAP_SETUP, flags=re.S)
assert "{pair}" in SETUP and "snap" not in SETUP
EXAMPLE = ROOT / "examples" / "ta_nnensemble_lammps" / "Ta-nnensemble-tanh.in"


def fit_ensemble(folder: Path) -> Path:
    """The example's tanh NNENSEMBLE fitted into ``folder``; returns its description."""
    from _ta import require_ta

    text = re.sub(r"dataPath = .*", f"dataPath = {require_ta() / 'JSON'}", EXAMPLE.read_text())
    (folder / "Ta.in").write_text(text)
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, "-m", "fitsnap_uq", "fit", "Ta.in", "--overwrite"], cwd=folder,
                   check=True, env=env, capture_output=True)
    return folder / "Ta_pot.nnensemble.json"


def open_md(pair: list[str], attach: Callable[[Any], Any] | None = None,
            plugin: Path | None = None) -> tuple[Any, Any]:
    """The 2000-atom MD with ``pair`` lines, ``attach(lmp)`` applied and set up (``run 0``); returns the
    instance and what ``attach`` returned."""
    from fitsnap_uq.compat import import_lammps

    lmp = import_lammps().lammps(cmdargs=["-screen", "none", "-log", "none"])
    if plugin is not None:
        lmp.command(f"plugin load {plugin}")
    lmp.commands_string(SETUP.format(pair="\n".join(pair)))
    attached = attach(lmp) if attach is not None else None
    lmp.command("run 0 post no")
    return lmp, attached


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=8, help="rounds of --every steps per case")
    ap.add_argument("--every", type=int, default=10, help="steps between uncertainty evaluations")
    ap.add_argument("--ensemble", help="a tanh/sigmoid/relu NNENSEMBLE description (.nnensemble.json)")
    ap.add_argument("--posterior", help="a Ta posterior with its .snapcoeff/.snapparam beside it")
    ap.add_argument("--linear", choices=("plugin", "hook"),
                    default="plugin" if shutil.which(os.environ.get("CXX") or "g++") else "hook",
                    help="linear SNAP uncertainty by the plugin's fix snap/uq or the Python hook")
    args = ap.parse_args()
    from fitsnap_uq.nn.fitsnap_ensemble import NNEnsemble
    from fitsnap_uq.nn.fitsnap_mliap import export_ensemble
    from fitsnap_uq.posterior import Posterior
    from lammps_hooks.nn_uq import NNEnsembleHook

    with tempfile.TemporaryDirectory(prefix="bench-nn-md-") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        desc = Path(args.ensemble) if args.ensemble else fit_ensemble(tmp)
        post_path = Path(args.posterior) if args.posterior else fit_posterior(tmp)
        print(f"fits: {time.perf_counter() - t0:.0f} s")
        ensemble = NNEnsemble(desc)
        exported = export_ensemble(ensemble, outdir=tmp / "mliap")
        stem = str(post_path)[: -len(".posterior.npz")]
        linear = ["pair_style hybrid/overlay zbl 4.0 4.8 snap", "pair_coeff * * zbl 73 73",
                  f"pair_coeff * * snap {stem}.snapcoeff {stem}.snapparam Ta"]
        plugin = uq = None
        if args.linear == "plugin":
            from lammps_hooks.native import build_plugin, write_plugin_ensemble, write_plugin_posterior

            plugin = build_plugin(tmp / "plugin")
            uq = write_plugin_posterior(post_path, tmp / "Ta_pot.uq")
            nn_uq = write_plugin_ensemble(ensemble, tmp / "Ta_pot.nn.uq")
        posterior = Posterior.load(post_path)

        def nn_hook(forces: bool, route: str = "lammps") -> Callable[[Any], Any]:
            return lambda lmp: NNEnsembleHook(lmp, ensemble, every=args.every, forces=forces,
                                              descriptors=route).attach()

        def nn_plugin(lmp: Any) -> Any:
            lmp.command(f"fix uq all snap/uq {args.every} {nn_uq}")
            return "plugin"

        def linear_uq(lmp: Any) -> Any:
            if plugin is not None:
                lmp.command(f"fix uq all snap/uq {args.every} {uq}")
                return "plugin"
            from lammps_hooks.snap_uq import SnapUQHook

            return SnapUQHook(lmp, posterior, every=args.every, descriptors="lammps").attach()

        nn_base, lin_base = "NN mean, plain (baseline)", "linear SNAP, plain"
        lin_uq = f"linear SNAP + {args.linear} every {args.every}"
        cases = {
            nn_base: (exported.lines["mean"], None),
            f"NN mean + E,F hook/probes every {args.every}": (exported.lines["mean"], nn_hook(True)),
            f"NN mean + E hook every {args.every}": (exported.lines["mean"], nn_hook(False)),
            "NN member 0 alone, plain": (exported.lines["member0"], None),
            lin_base: (linear, None),
            lin_uq: (linear, linear_uq),
        }
        if plugin is not None:
            cases[f"NN mean + E,F plugin every {args.every}"] = (exported.lines["mean"], nn_plugin)
            cases[f"NN mean + E,F hook/native every {args.every}"] = (exported.lines["mean"],
                                                                      nn_hook(True, "native"))
        names = list(cases)
        md = {name: open_md(pair, attach, plugin) for name, (pair, attach) in cases.items()}
        times = {name: [] for name in names}
        for r in range(args.rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                t0 = time.perf_counter()
                md[name][0].command(f"run {args.every} pre no post no")
                times[name].append(time.perf_counter() - t0)
        cost = {name: dict(hook.cost) for name, (_, hook) in md.items() if isinstance(hook, NNEnsembleHook)}
        for name, (lmp, hook) in md.items():
            if hook == "plugin":  # fix snap/uq's own counters: evaluations, descriptor s, rest s
                n, desc_s, rest_s = (lmp.extract_fix("uq", 0, 1, k) for k in (8, 9, 10))
                cost[name] = {"evaluations": int(n), "descriptors_s": desc_s, "uncertainty_s": rest_s,
                              "member_forces_s": float("nan")}
        for lmp, hook in md.values():
            if isinstance(hook, NNEnsembleHook):
                hook.detach()
            lmp.close()
    t = {name: np.array(v) for name, v in times.items()}
    per_step = {name: 1e3 * float(np.median(v)) / args.every for name, v in t.items()}
    print(f"2000-atom bcc Ta, NVE, {args.rounds} rounds of {args.every} steps; NN: {len(ensemble)} tanh "
          f"members ({'-'.join(ensemble.info['network']['layer_sizes'])}), the mean drives")

    def ratio(a: str, b: str) -> float:
        return float(np.median(t[a] / t[b]))

    for name in names:
        base = lin_base if name.startswith("linear") else nn_base
        print(f"{name:40s} {per_step[name]:8.1f} ms/step (median)  ratio to its plain run "
              f"{ratio(name, base):.3f}")
    print(f"NN mean plain / linear SNAP plain: {ratio(nn_base, lin_base):.3f}; NN member 0 / NN mean: "
          f"{ratio(names[3], nn_base):.3f}")
    for name in names:
        if name.startswith("NN mean + E,F"):
            print(f"{name} / {lin_uq}: {ratio(name, lin_uq):.3f}")
    for name, c in cost.items():
        n = max(c["evaluations"], 1)
        base = lin_base if name.startswith("linear") else nn_base
        per_eval = 1e3 * (c["descriptors_s"] + c["uncertainty_s"]) / n
        if c["member_forces_s"] != c["member_forces_s"]:  # the plugin: one pass does it all
            split = (f"descriptor pass with forces {1e3 * c['descriptors_s'] / n:.1f} ms, the rest "
                     f"{1e3 * c['uncertainty_s'] / n:.1f} ms (rank 0)")
        else:
            split = (f"member forces {1e3 * c['member_forces_s'] / n:.1f} ms, sna/atom "
                     f"{1e3 * (c['descriptors_s'] - c['member_forces_s']) / n:.1f} ms, the rest "
                     f"{1e3 * c['uncertainty_s'] / n:.1f} ms")
        print(f"{name}: {c['evaluations']} evaluations, per evaluation {per_eval:.1f} ms: {split}; implied "
              f"overhead every {args.every} steps: {1 + per_eval / args.every / per_step[base]:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
