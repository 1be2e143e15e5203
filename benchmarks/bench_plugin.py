"""Overhead of the native plugin (fix snap/uq) on MD, next to the Python hook's, in one process.

    python benchmarks/bench_plugin.py [--steps 600] [--chunk 10] [--posterior P.posterior.npz]

2000-atom bcc Ta at 600 K, NVE, ``pair_style hybrid/overlay zbl 4.0 4.8 snap`` with the Ta Bayesian
posterior (a BAYES fit of the Ta example made here, or --posterior with its .snapcoeff/.snapparam beside
it), the MD of benchmarks/bench_hook.py (whose set-up this uses). The plugin is built into a temporary
folder and loaded into the same LAMMPS library (``plugin load``) as the hook runs in.

Cases, each with energy+force uncertainty every 1, 10 and 100 steps, and energy only every 10:
the plugin; the hook on the plugin's one-pass ``compute snap/uq/atom`` (what the hook uses when the
plugin is built: both then spend their time in the same compute, and differ in the per-atom products
with the factor, C++ against numpy, and the Python callback); and the hook on LAMMPS' ``compute
sna/atom`` + ``compute snad/atom`` (the hook without the plugin); and a plain run (the baseline),
twice.

Every case runs on its own LAMMPS instances, all alive at once in this process and all on the same
trajectory (the uncertainty does not change the dynamics), in turns of --chunk steps (``run CHUNK pre no
post no``), one turn each in an order rotated from turn to turn, so that the machine's slow drifts hit
every case alike. Two other effects are as large as what is measured, a few per cent: a shared host's
bursts (other tenants) of a second or so hit whichever turn runs then; and two instances doing
identical work run at speeds a per cent or two apart for as long as they live (where their memory
landed). So each cadence has three instances that take the three kinds in turn, a Latin square: in
turn k instance s runs kind (s + k) mod 3, switched between turns (the old fix or hook removed, the new
one attached, ``run 0``; not timed; the plain runs do the same ``run 0``). Over a square (three
consecutive turns) every kind has run once on every instance and once in every turn, so in the ratio of
two kinds' geometric mean turn times over a square the instances' speeds and the turns' drifts cancel;
plugin / hook is the median of these ratios over the squares, with its distribution-free 95% interval
(order statistics, as the sign test), separately for the squares whose turns hold an evaluation and
the others where the cadence is longer than a turn. A case's time is robust to the bursts: per place
in a cycle of lcm(N, chunk) steps (each cycle holds the same work), the median of its turns there,
summed over the places, times the number of cycles. The two plain runs (two fixed instances, identical
work) show what fixed instances would resolve.

Prints per case the time, its ratio to the plain run's, the overhead per evaluation and the cost of an
evaluation timed inside (descriptors, and the rest); then plugin / hook. The plugin counts as slower
than a hook where the rest of its evaluation (all but the descriptors, which both spend in the same
compute or the plugin in a faster one) takes longer, or where its turns are slower than the hook's
beyond an interval (its lower end above 1). Exit status 1 where the plugin is slower than either hook.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy.stats import binom

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_hook import fit_posterior, hook_attacher, open_md  # noqa: E402

KINDS = ("plugin", "hook", "hook-lammps")
CADENCES = [(1, True), (10, True), (100, True), (10, False)]
PLAINS = ("plain", "plain again")
BOUNDS = {(10, True): 1.20, (100, True): 1.03, (10, False): 1.10}  # the hook's issue, for reference
NAMES = {"plugin": "plugin (fix snap/uq)", "hook": "hook, plugin's compute",
         "hook-lammps": "hook, LAMMPS' computes"}


class LatinSlot:
    """One LAMMPS instance of a cadence that runs the kinds in turn (:meth:`switch`), and the cost of
    the evaluations of each kind it ran, timed inside (evaluations, descriptor seconds, the rest)."""

    def __init__(self, stem: str, plugin: Path, posterior, uq: Path, every: int, forces: bool) -> None:
        self.lmp = open_md(stem, plugin)
        self.posterior, self.uq, self.every, self.forces = posterior, uq, every, forces
        self.kind: str | None = None
        self.hook = None
        self.cost = {kind: np.zeros(3) for kind in KINDS}

    def switch(self, kind: str) -> None:
        """Remove the current kind (adding up its cost), attach ``kind``, and ``run 0`` (set-up)."""
        self._remove()
        if kind == "plugin":
            self.lmp.command(f"fix uq all snap/uq {self.every} {self.uq} "
                             f"forces {'yes' if self.forces else 'no'}")
        else:
            self.hook = hook_attacher(self.posterior, self.every, self.forces,
                                      "lammps" if kind == "hook-lammps" else "native")(self.lmp)
        self.kind = kind
        self.lmp.command("run 0 post no")

    def close(self) -> None:
        """Add up the current kind's cost and close the instance."""
        self._remove()
        self.lmp.close()

    def _remove(self) -> None:
        if self.kind == "plugin":
            self.cost["plugin"] += [self.lmp.extract_fix("uq", 0, 1, k) for k in (8, 9, 10)]
            self.lmp.command("unfix uq")
        elif self.kind is not None:
            c = self.hook.cost
            self.cost[self.kind] += [c["evaluations"], c["descriptors_s"], c["uncertainty_s"]]
            self.hook.detach()
        self.kind = None


def rotated(items: list, k: int) -> list:
    """``items`` rotated by ``k`` places, so that no instance always runs right after the same one."""
    k %= len(items)
    return items[k:] + items[:k]


def robust_time(times: np.ndarray, places: np.ndarray, per_cycle: int) -> float:
    """Seconds of a run robust to bursts: turn ``times`` (n,) at ``places`` (n,) in cycles of
    ``per_cycle`` turns; per place the median of its turns, summed, times n / per_cycle."""
    return float(sum(np.median(times[places == p]) for p in range(per_cycle))) * len(times) / per_cycle


def median_interval(values: np.ndarray, confidence: float = 0.95) -> tuple[float, float, float, float]:
    """(median, low, high, coverage): the median of ``values`` and the distribution-free interval
    [x_(k), x_(n+1-k)] of the order statistics with the largest k whose coverage 1 - 2 P(Bin(n, 1/2)
    < k) is at least ``confidence`` ([min, max] and its coverage where n is too small for that)."""
    x = np.sort(np.asarray(values, dtype=float))
    n = len(x)
    k = 1
    while k < n // 2 and 1.0 - 2.0 * binom.cdf(k, n, 0.5) >= confidence:
        k += 1
    return float(np.median(x)), float(x[k - 1]), float(x[n - k]), float(1.0 - 2.0 * binom.cdf(k - 1, n, 0.5))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=600,
                    help="steps per case (a multiple of 100, of 3 * chunk and of lcm(N, chunk))")
    ap.add_argument("--chunk", type=int, default=10, help="steps per turn")
    ap.add_argument("--posterior", help="a Ta posterior with its .snapcoeff/.snapparam beside it "
                                        "(default: a BAYES fit of the Ta example, made here)")
    args = ap.parse_args()
    cycle_steps = {every: math.lcm(every, args.chunk) for every, _ in CADENCES}
    if (args.chunk < 1 or args.steps % (3 * args.chunk)
            or any(args.steps % c or args.steps < 2 * c for c in cycle_steps.values())):
        ap.error(f"--steps must be a multiple of 3 x --chunk and of lcm(N, --chunk) = "
                 f"{sorted(set(cycle_steps.values()))}, at least twice each")
    from fitsnap_uq.posterior import Posterior
    from lammps_hooks.native import build_plugin, write_plugin_posterior

    nturns = args.steps // args.chunk
    plain_turns = {name: np.zeros(nturns) for name in PLAINS}
    # per cadence and kind: the turn times (nturns,), all instances together
    kind_turns = {cadence: {kind: np.zeros(nturns) for kind in KINDS} for cadence in CADENCES}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.posterior) if args.posterior else fit_posterior(Path(tmp))
        stem = str(path)[: -len(".posterior.npz")]
        post = Posterior.load(path)
        plugin = build_plugin(Path(tmp))
        uq = write_plugin_posterior(post, Path(tmp) / "Ta.uq")
        plains = {name: open_md(stem, plugin) for name in PLAINS}
        slots = {(cadence, s): LatinSlot(stem, plugin, post, uq, *cadence)
                 for cadence in CADENCES for s in range(len(KINDS))}
        order = list(PLAINS) + list(slots)
        for turn in range(nturns):
            for (_, s), slot in slots.items():    # not timed
                slot.switch(KINDS[(s + turn) % len(KINDS)])
            for lmp in plains.values():
                lmp.command("run 0 post no")
            for key in rotated(order, turn):
                lmp = plains[key] if key in plains else slots[key].lmp
                t0 = time.perf_counter()
                lmp.command(f"run {args.chunk} pre no post no")
                elapsed = time.perf_counter() - t0
                if key in plains:
                    plain_turns[key][turn] = elapsed
                else:
                    kind_turns[key[0]][slots[key].kind][turn] = elapsed
        for slot in slots.values():
            slot.close()
        for lmp in plains.values():
            lmp.close()
        spent = {cadence: {kind: sum(slots[(cadence, s)].cost[kind] for s in range(len(KINDS)))
                           for kind in KINDS} for cadence in CADENCES}

    def interval(ratios: np.ndarray) -> tuple[str, float]:
        med, lo, hi, cover = median_interval(ratios)
        return f"{med:.4f} [{lo:.4f}, {hi:.4f}] ({100 * cover:.0f}%, {len(ratios)})", lo

    squares = np.arange(nturns).reshape(-1, len(KINDS))    # turn indices of each square

    def square_ratios(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Per square, the ratio of the geometric means of turn times ``a`` and ``b`` (nturns,)."""
        return np.exp(np.log(a[squares]).mean(axis=1) - np.log(b[squares]).mean(axis=1))

    base_places = np.zeros(nturns, dtype=int)
    print(f"2000-atom bcc Ta, {args.steps} steps per case in turns of {args.chunk}, three instances per "
          f"cadence taking the kinds in turn; time = sum over the places in a cycle of the median turn "
          f"there x cycles; ratio = time / plain run's; overhead = (time - plain) / evaluations; a / b = "
          f"median [interval] (coverage, samples) of the ratios over the squares of three turns")
    p_time, again_time = (robust_time(plain_turns[n], base_places, 1) for n in PLAINS)
    again, _ = interval(plain_turns["plain again"] / plain_turns["plain"])
    print(f"plain run (baseline): {p_time:.3f} s (sum of turns {plain_turns['plain'].sum():.3f} s); again "
          f"(another instance): {again_time:.3f} s (sum {plain_turns['plain again'].sum():.3f} s); again / "
          f"plain, turn by turn: {again}")
    ok = True
    for every, forces in CADENCES:
        cadence = (every, forces)
        nevals = args.steps // every
        per_cycle = cycle_steps[every] // args.chunk
        places = np.arange(nturns) % per_cycle
        base = robust_time(plain_turns["plain"], places, per_cycle)
        bound = BOUNDS.get(cadence)
        print(f"\n{'energy+force' if forces else 'energy only'} every {every} step(s) ({nevals} evaluations, "
              f"cycles of {cycle_steps[every]} steps)" + (f"; the hook's bound {bound:.2f}" if bound else ""))
        own = {}
        for kind in KINDS:
            t = robust_time(kind_turns[cadence][kind], places, per_cycle)
            n, desc, rest = spent[cadence][kind]
            own[kind] = rest / max(n, 1)
            print(f"  {NAMES[kind]:24s} {t:8.3f} s   ratio {t / base:.3f}   overhead "
                  f"{1e3 * (t - base) / nevals:7.2f} ms/evaluation; inside: descriptors "
                  f"{1e3 * desc / n:6.2f} + the rest {1e3 * rest / n:5.2f} ms")
        # a square holds an evaluation where one of its turns ends on a multiple of N
        with_eval = np.array([any(((k + 1) * args.chunk) % every == 0 for k in sq) for sq in squares])
        for kind in ("hook", "hook-lammps"):
            ratios = square_ratios(kind_turns[cadence]["plugin"], kind_turns[cadence][kind])
            parts, slower = [], own["plugin"] > own[kind]
            for label, sel in (("squares with an evaluation", with_eval), ("without", ~with_eval)):
                if sel.any():
                    text, lo = interval(ratios[sel])
                    parts.append(f"{label if not with_eval.all() else 'squares'} {text}")
                    slower |= lo > 1.0
            ok &= not slower
            print(f"  plugin / {NAMES[kind]:22s} {'; '.join(parts)}; the rest {1e3 * own['plugin']:.2f} "
                  f"against {1e3 * own[kind]:.2f} ms/evaluation: {'SLOWER' if slower else 'not slower'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
