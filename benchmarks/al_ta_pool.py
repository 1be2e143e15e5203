"""Active learning on the Ta DFT configurations as a labelled pool: every strategy versus random.

    python benchmarks/al_ta_pool.py [--seeds 0 1 2] [--initial 10] [--batch 10] [--budget 150]
                                    [--cost-gamma 0] [--outdir al_ta_pool_out]

A fixed 20% of the configurations (split seed 0) is the test set; the other 80% is the pool. Each run
starts from ``--initial`` random configurations and adds ``--batch`` per round, chosen by the
strategy, up to ``--budget``; after each round BAYES (noise per quantity, isotropic prior, FitSNAP's
weights as ratios) is refitted and scored on the test set. The stated target is 1.10 x the test force
RMSE of the fit on the whole pool. Prints, per strategy (mean over seeds): configurations and atoms^3
cost to reach the target, force/energy RMSE at the budget, and the ratios to random; writes the
learning curves (CSV) and their plots (PNG) to --outdir.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from _ta import split_by_configuration, ta_rows

from fitsnap_uq.active.query import QuerySettings, candidates_of, select
from fitsnap_uq.active.strategies import STRATEGIES
from fitsnap_uq.linear.rows import fit_rows

FIT = {"noise_classes": "quantity", "prior": "isotropic", "weights": "ratios"}


def test_rmse(model, test) -> tuple[float, float]:
    err = test.b - test.a @ model.result.mean
    f = test.row_types == "Force"
    e = test.row_types == "Energy"
    return float(np.sqrt(np.mean(err[e] ** 2))), float(np.sqrt(np.mean(err[f] ** 2)))


def run(strategy: str, pool, test, keys_all, natoms_of, args, seed: int) -> list[tuple]:
    """One learning curve: (configurations, atoms^3 cost, energy RMSE, force RMSE) per round."""
    rng = np.random.default_rng(seed)
    unique = np.unique(keys_all)
    labelled = list(rng.choice(unique, size=args.initial, replace=False))
    settings = QuerySettings(strategy=strategy, cost_gamma=args.cost_gamma, fit=FIT)
    curve = []
    while True:
        train = pool.subset(np.isin(keys_all, labelled))
        model = fit_rows(train, **FIT)
        e, f = test_rmse(model, test)
        cost = float(sum(natoms_of[k] ** 3 for k in labelled))
        curve.append((len(labelled), cost, e, f))
        if len(labelled) >= min(args.budget, unique.size):
            return curve
        rest = pool.subset(~np.isin(keys_all, labelled))
        n = min(args.batch, args.budget - len(labelled))
        labelled += list(select(train, rest, n, settings, model=model, seed=seed * 1000 + len(labelled)))


def first_reaching(curve, target: float, column: int) -> float:
    for point in curve:
        if point[3] <= target:
            return point[column]
    return float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--initial", type=int, default=10)
    ap.add_argument("--batch", type=int, default=10)
    ap.add_argument("--budget", type=int, default=150)
    ap.add_argument("--cost-gamma", type=float, default=0.0)
    ap.add_argument("--strategies", nargs="+", default=list(STRATEGIES))
    ap.add_argument("--outdir", default="al_ta_pool_out")
    args = ap.parse_args()
    rows = split_by_configuration(ta_rows(), 0.2, 0)
    pool = rows.training()
    test = rows.subset(rows.testing & (rows.w != 0))
    keys_all = pool.config_keys()
    cands, keys = candidates_of(pool)
    natoms_of = dict(zip(keys, cands.natoms))
    full = fit_rows(pool, **FIT)
    e_full, f_full = test_rmse(full, test)
    target = 1.10 * f_full
    print(f"pool {keys.size} configurations, test {np.unique(test.config_keys()).size}; whole-pool fit: "
          f"test energy RMSE {e_full:.4f} eV/atom, force RMSE {f_full:.4f} eV/A; target force RMSE "
          f"{target:.4f} eV/A (1.10 x); start {args.initial}, batch {args.batch}, budget {args.budget}, "
          f"seeds {args.seeds}, cost gamma {args.cost_gamma}")
    curves: dict[str, list] = {}
    for strategy in args.strategies:
        t0 = time.perf_counter()
        curves[strategy] = [run(strategy, pool, test, keys_all, natoms_of, args, s) for s in args.seeds]
        print(f"  {strategy}: {time.perf_counter() - t0:.1f} s")
    out = Path(args.outdir)
    out.mkdir(parents=True, exist_ok=True)
    lines = ["strategy,seed,n_configs,cost_atoms3,energy_rmse,force_rmse"]
    for name, runs in curves.items():
        for seed, curve in zip(args.seeds, runs):
            lines += [f"{name},{seed},{n},{c:.6g},{e:.6g},{f:.6g}" for n, c, e, f in curve]
    (out / "learning_curves.csv").write_text("\n".join(lines) + "\n")
    summary = {}
    for name, runs in curves.items():
        n_needed = np.array([first_reaching(c, target, 0) for c in runs])
        cost_needed = np.array([first_reaching(c, target, 1) for c in runs])
        summary[name] = (np.nanmean(n_needed) if np.any(np.isfinite(n_needed)) else np.nan,
                         int(np.sum(np.isfinite(n_needed))),
                         np.nanmean(cost_needed) if np.any(np.isfinite(cost_needed)) else np.nan,
                         np.mean([c[-1][3] for c in runs]), np.mean([c[-1][2] for c in runs]))
    base = summary.get("random")
    print(f"\n{'strategy':20s} {'configs to target':>18s} {'reached':>8s} {'atoms^3 cost':>13s} "
          f"{'F RMSE@budget':>14s} {'E RMSE@budget':>14s} {'configs/random':>15s} {'cost/random':>12s}")
    for name, (n, k, c, f, e) in summary.items():
        rn = n / base[0] if base and np.isfinite(base[0]) else np.nan
        rc = c / base[2] if base and np.isfinite(base[2]) else np.nan
        print(f"{name:20s} {n:18.1f} {k:>5d}/{len(args.seeds):<2d} {c:13.4g} {f:14.4f} {e:14.4f} "
              f"{rn:15.2f} {rc:12.2f}")
    reached = [(v[0], k) for k, v in summary.items() if k != "random" and np.isfinite(v[0])]
    if reached and base and np.isfinite(base[0]):
        n_best, name_best = min(reached)
        print(f"\nbest strategy to the target: {name_best}, {n_best:.1f} configurations vs random "
              f"{base[0]:.1f} (ratio {n_best / base[0]:.2f})")
    else:
        print("\nnot every strategy reached the target within the budget (nan above): raise --budget")
    _plot(out / "learning_curves.png", curves, target)
    print(f"learning curves: {out / 'learning_curves.csv'}, {out / 'learning_curves.png'}")
    return 0


def _plot(path: Path, curves: dict, target: float) -> None:
    from fitsnap_uq.plotting import pyplot, save

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, runs in curves.items():
        n = np.array([p[0] for p in runs[0]])
        f = np.mean([[p[3] for p in c] for c in runs], axis=0)
        cost = np.mean([[p[1] for p in c] for c in runs], axis=0)
        axes[0].plot(n, f, marker="o", ms=3, label=name)
        axes[1].plot(cost, f, marker="o", ms=3, label=name)
    for ax in axes:
        ax.axhline(target, color="0.4", ls="--", lw=1, label="target")
        ax.set_ylabel("test force RMSE (eV/A)")
        ax.set_yscale("log")
    axes[0].set_xlabel("labelled configurations")
    axes[1].set_xlabel("QM cost (sum of atoms^3)")
    axes[1].set_xscale("log")
    axes[0].legend(fontsize=8)
    fig.suptitle("Active learning on the Ta pool (mean over seeds)")
    fig.tight_layout()
    save(fig, path)


if __name__ == "__main__":
    raise SystemExit(main())
