"""Overhead of the native plugin (fix snap/uq) on MD, next to the Python hook's, in one process.

    python benchmarks/bench_plugin.py [--steps 200] [--repeat 3] [--chunk 10] [--posterior P.posterior.npz]

2000-atom bcc Ta at 600 K, NVE, ``pair_style hybrid/overlay zbl 4.0 4.8 snap`` with the Ta Bayesian
posterior (a BAYES fit of the Ta example made here, or --posterior with its .snapcoeff/.snapparam beside
it), the MD of benchmarks/bench_hook.py (whose timing function this uses). The plugin is built into a
temporary folder and loaded into the same LAMMPS library (``plugin load``) as the hook runs in.

Cases, each with energy+force uncertainty every 1, 10 and 100 steps, and energy only every 10:
the plugin; the hook on the plugin's one-pass ``compute snap/uq/atom`` (what the hook uses when the
plugin is built: both then spend their time in the same compute, and differ in the per-atom products
with the factor, C++ against numpy, and the Python callback); and the hook on LAMMPS' ``compute
sna/atom`` + ``compute snad/atom`` (the hook without the plugin); and a plain run (the baseline),
twice.

Every case is its own LAMMPS instance, all alive at once in this process and all on the same trajectory
(the uncertainty does not change the dynamics). They run in turns of --chunk steps (``run CHUNK pre no
post no``), one turn each in an order rotated from turn to turn, so that the machine's drifts (other
tenants of a shared host, clock changes), which last seconds, hit every case alike instead of whichever
ran then; a case's time is the sum of its turns. --repeat rounds of --steps steps each give the spread.

Prints per case the total time over the rounds, its ratio to the plain run's, the overhead per
evaluation, and plugin / hook: the ratio of the totals and the ratio within each round. The plugin
counts as slower than a hook where the rest of its evaluation (all but the descriptors, timed inside)
takes longer, or where its total is larger by more than the noise of such a ratio, measured on the
two plain runs (identical work): the largest |1 - ratio| of their rounds. Exit status 1 where the
plugin is slower than either hook.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_hook import fit_posterior, hook_attacher, open_md  # noqa: E402

KINDS = ("plugin", "hook", "hook-lammps")
CADENCES = [(1, True), (10, True), (100, True), (10, False)]
PLAIN, PLAIN_AGAIN = (None, None, True), ("plain", None, True)
CASES = [PLAIN, PLAIN_AGAIN] + [(kind, every, forces) for every, forces in CADENCES for kind in KINDS]
BOUNDS = {(10, True): 1.20, (100, True): 1.03, (10, False): 1.10}  # the hook's issue, for reference
NAMES = {"plugin": "plugin (fix snap/uq)", "hook": "hook, plugin's compute",
         "hook-lammps": "hook, LAMMPS' computes"}


def attacher(kind: str | None, every: int | None, forces: bool, posterior, uq: Path,
             hooks: dict) -> Callable | None:
    """``attach`` for :func:`bench_hook.open_md`: ``kind`` (None, plugin, hook, hook-lammps), every
    ``every`` steps; a hook it makes goes to ``hooks[(kind, every, forces)]``."""
    if kind == "plugin":
        return lambda lmp: lmp.command(f"fix uq all snap/uq {every} {uq} forces {'yes' if forces else 'no'}")
    if kind not in KINDS:
        return None
    attach = hook_attacher(posterior, every, forces, "lammps" if kind == "hook-lammps" else "native")

    def attach_and_keep(lmp) -> None:
        hooks[(kind, every, forces)] = attach(lmp)
    return attach_and_keep


def cost(case: tuple, lmp, hooks: dict) -> tuple[float, float, float]:
    """(evaluations, seconds in the descriptors, seconds in the rest) so far: the plugin's f_uq[9..11],
    a hook's ``cost``."""
    if case[0] == "plugin":
        return tuple(lmp.extract_fix("uq", 0, 1, k) for k in (8, 9, 10))  # global vector, 0-based
    c = hooks[case].cost
    return float(c["evaluations"]), c["descriptors_s"], c["uncertainty_s"]


def rotated(cases: list, k: int) -> list:
    """``cases`` rotated by ``k`` places, so that no case always runs right after the same one."""
    k %= len(cases)
    return cases[k:] + cases[:k]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=3, help="rounds of --steps steps (>= 2)")
    ap.add_argument("--chunk", type=int, default=10, help="steps per turn")
    ap.add_argument("--posterior", help="a Ta posterior with its .snapcoeff/.snapparam beside it "
                                        "(default: a BAYES fit of the Ta example, made here)")
    args = ap.parse_args()
    if args.repeat < 2:
        ap.error("--repeat must be >= 2 (the noise is the spread of the two plain runs over rounds)")
    if args.chunk < 1 or args.steps % args.chunk:
        ap.error("--chunk must divide --steps")
    from fitsnap_uq.posterior import Posterior
    from lammps_hooks.native import build_plugin, write_plugin_posterior

    rounds: dict[tuple, list[float]] = {case: [0.0] * args.repeat for case in CASES}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.posterior) if args.posterior else fit_posterior(Path(tmp))
        stem = str(path)[: -len(".posterior.npz")]
        post = Posterior.load(path)
        plugin = build_plugin(Path(tmp))
        uq = write_plugin_posterior(post, Path(tmp) / "Ta.uq")
        hooks: dict[tuple, object] = {}
        instances = {case: open_md(stem, plugin, attacher(*case, posterior=post, uq=uq, hooks=hooks))
                     for case in CASES}
        start = {case: cost(case, lmp, hooks) for case, lmp in instances.items() if case[0] in KINDS}
        turn = 0
        for k in range(args.repeat):
            for _ in range(args.steps // args.chunk):
                for case in rotated(CASES, turn):
                    t0 = time.perf_counter()
                    instances[case].command(f"run {args.chunk} pre no post no")
                    rounds[case][k] += time.perf_counter() - t0
                turn += 1
        spent = {case: [e - s for e, s in zip(cost(case, lmp, hooks), start[case])]
                 for case, lmp in instances.items() if case[0] in KINDS}
        for lmp in instances.values():
            lmp.close()
    total = {case: sum(ts) for case, ts in rounds.items()}
    plain, again = rounds[PLAIN], rounds[PLAIN_AGAIN]
    base = total[PLAIN]
    noise = max(abs(a / p - 1.0) for a, p in zip(again, plain))
    steps = args.steps * args.repeat
    print(f"2000-atom bcc Ta, {args.repeat} rounds of {args.steps} steps in turns of {args.chunk}; times are "
          f"totals over the rounds; ratio = time / plain run's; overhead = (time - plain) / evaluations")
    print(f"plain run (baseline): {base:.3f} s (rounds {', '.join(f'{t:.3f}' for t in plain)} s); again: "
          f"{total[PLAIN_AGAIN]:.3f} s (rounds {', '.join(f'{t:.3f}' for t in again)} s); noise of a ratio "
          f"of identical runs (largest |1 - again / plain| of a round) {100 * noise:.2f}%")
    ok = True
    for every, forces in CADENCES:
        nevals = steps // every
        bound = BOUNDS.get((every, forces))
        print(f"\n{'energy+force' if forces else 'energy only'} every {every} step(s) ({nevals} evaluations)"
              + (f"; the hook's bound {bound:.2f}" if bound else ""))
        own = {}
        for kind in KINDS:
            t = total[(kind, every, forces)]
            overhead = f"{1e3 * (t - base) / nevals:7.2f} ms/evaluation" if nevals else "(no evaluation)"
            n, desc, rest = spent[(kind, every, forces)]
            own[kind] = rest / max(n, 1)
            inside = (f"; inside: descriptors {1e3 * desc / n:6.2f} + the rest {1e3 * rest / n:5.2f} ms"
                      if n else "")
            print(f"  {NAMES[kind]:24s} {t:8.3f} s   ratio {t / base:.3f}   overhead {overhead}{inside}")
        for kind in ("hook", "hook-lammps"):
            ratio = total[("plugin", every, forces)] / total[(kind, every, forces)]
            pairs = zip(rounds[("plugin", every, forces)], rounds[(kind, every, forces)])
            per_round = ", ".join(f"{p / h:.3f}" for p, h in pairs)
            slower = ratio > 1.0 + noise or (nevals > 0 and own["plugin"] > own[kind])
            ok &= not slower
            print(f"  plugin / {NAMES[kind]:22s} {ratio:.3f} (rounds: {per_round}); the rest "
                  f"{1e3 * own['plugin']:.2f} against {1e3 * own[kind]:.2f} ms/evaluation: "
                  f"{'SLOWER' if slower else 'not slower'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
