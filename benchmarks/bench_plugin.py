"""Overhead of the native plugin (fix snap/uq) on MD, next to the Python hook's, in one process.

    python benchmarks/bench_plugin.py [--steps 200] [--repeat 2] [--posterior P.posterior.npz]

2000-atom bcc Ta at 600 K, NVE, ``pair_style hybrid/overlay zbl 4.0 4.8 snap`` with the Ta Bayesian
posterior (a BAYES fit of the Ta example made here, or --posterior with its .snapcoeff/.snapparam beside
it), the MD of benchmarks/bench_hook.py (whose timing function this uses). The plugin is built into a
temporary folder and loaded into the same LAMMPS library (``plugin load``) as the hook runs in. Times,
best of --repeat, interleaved: the plain run (baseline), then the plugin and the hook with energy+force
uncertainty every 1, 10 and 100 steps and energy-only every 10 steps (both on the plugin's one-pass
compute snap/uq/atom), and the hook on LAMMPS' compute sna/atom + snad/atom for reference. Prints each
ratio to the baseline, the plugin/hook ratio, and the bounds of the hook's issue (1.20 every 10, 1.03
every 100, 1.10 energy-only every 10).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_hook import fit_posterior, hook_attacher, timed_md  # noqa: E402

CASES = ([(None, None, True)] + [(kind, every, True) for every in (1, 10, 100) for kind in ("plugin", "hook")]
         + [(kind, 10, False) for kind in ("plugin", "hook")] + [("hook-lammps", 10, True)])
BOUNDS = {(10, True): 1.20, (100, True): 1.03, (10, False): 1.10}


def label(kind: str | None, every: int | None, forces: bool) -> str:
    if kind is None:
        return "plain run (baseline)"
    return f"{kind} {'energy+force' if forces else 'energy only'} every {every}"


def timed_run(kind: str | None, every: int | None, forces: bool, stem: str, posterior, uq: Path,
              plugin: Path, steps: int) -> float:
    """Seconds of the benchmark MD with ``kind`` (None, plugin, hook, hook-lammps) attached."""
    if kind == "plugin":
        return timed_md(stem, steps, plugin, lambda lmp: lmp.command(
            f"fix uq all snap/uq {every} {uq} forces {'yes' if forces else 'no'}"))
    descriptors = "lammps" if kind == "hook-lammps" else "native"
    return timed_md(stem, steps, plugin, hook_attacher(posterior, every if kind else None, forces,
                                                       descriptors))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--posterior", help="a Ta posterior with its .snapcoeff/.snapparam beside it "
                                        "(default: a BAYES fit of the Ta example, made here)")
    args = ap.parse_args()
    from fitsnap_uq.posterior import Posterior
    from lammps_hooks.native import build_plugin, write_plugin_posterior

    best = {case: float("inf") for case in CASES}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.posterior) if args.posterior else fit_posterior(Path(tmp))
        stem = str(path)[: -len(".posterior.npz")]
        post = Posterior.load(path)
        plugin = build_plugin(Path(tmp))
        uq = write_plugin_posterior(post, Path(tmp) / "Ta.uq")
        for _ in range(args.repeat):  # interleaved, so drifts of the machine hit every case alike
            for case in CASES:
                t = timed_run(*case, stem=stem, posterior=post, uq=uq, plugin=plugin, steps=args.steps)
                best[case] = min(best[case], t)
    base = best[CASES[0]]
    print(f"2000-atom bcc Ta, {args.steps} steps, best of {args.repeat}; ratio = time / plain run")
    print(f"{label(*CASES[0]):34s} {base:8.3f} s")
    ok = True
    for every, forces in [(1, True), (10, True), (100, True), (10, False)]:
        tp, th = best[("plugin", every, forces)], best[("hook", every, forces)]
        bound = BOUNDS.get((every, forces))
        for kind, t in (("plugin", tp), ("hook", th)):
            line = f"{label(kind, every, forces):34s} {t:8.3f} s   ratio {t / base:.3f}"
            if bound is not None:
                line += f"   (<= {bound:.2f}: {'PASS' if t / base <= bound else 'FAIL'})"
            print(line)
        not_slower = tp <= th * 1.02  # 2% timing noise
        ok &= not_slower
        print(f"{'':34s} plugin / hook {tp / th:.3f} ({'not slower' if not_slower else 'SLOWER'})")
    t = best[("hook-lammps", 10, True)]
    print(f"{'hook on sna/atom+snad/atom, E+F every 10':34s} {t:8.3f} s   ratio {t / base:.3f}"
          f"   (LAMMPS' two computes instead of the plugin's one-pass compute)")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
