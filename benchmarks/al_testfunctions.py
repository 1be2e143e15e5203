"""Query by committee (QBC) with neural-network committees on the seed talk's test functions.

    python benchmarks/al_testfunctions.py [--seeds 0 1 2] [--dims 2 4 16 32]
                                          [--functions griewank sines] [--strategies qbc random]
                                          [--quick] [--outdir benchmarks/out/al_testfunctions]

Functions (x uniform on the stated domain):

* ``griewank``: f(x) = 1 + sum_i x_i^2 / 4000 - prod_i cos(x_i / sqrt(i)) on [-2, 2]^d. On this box
  the cosine product is a smooth bump that is not separable (cos(2) < 0, so it changes sign in d = 2);
  on the classic [-600, 600]^d or even [-10, 10]^d the product is a rapidly oscillating term that a
  small network cannot learn from a few hundred points in d >= 4 (tested: test RMSE above the std of f);
* ``sines``: f(x) = sin(sum_i x_i) on [0, 1]^d: a ridge function whose range along the ridge grows
  like sqrt(d / 12), so it gets harder with d.

For each function, dimension d and seed: a pool of P uniform points, N of them labelled at random
(the same pool and initial points for every strategy of that seed, so the comparison is paired);
a committee of K networks (``fitsnap_uq.nn.Ensemble`` with one member each: 2 x 32 tanh MLP, Adam,
full batch, retrained from its seeded initial weights every round) run by
:class:`fitsnap_uq.active.committee.Committee`: each learner starts on round(f N) labelled points drawn
with replacement; a new batch is split by K-means into round(f M) clusters and each learner draws one
point of every cluster (the seed's "K-means clustering to discover geometry of selected data, distribute
data from clusters evenly among learners, add fM points per learner with replacement"). Per round,
M pool points are added, chosen by

* ``qbc``: the seed's algorithm: the M points of largest committee disagreement (std of the K
  predictions); the seed's K-means step is the sharing above, not the selection (its slides note that
  in low d the selected points cluster);
* ``qbc_kmeans``: not the seed's: largest disagreement spread by K-means (the most disputed point of
  each of M clusters among the 3 M most disputed); before 2026-11-30 this was ``qbc``;
* ``oracle``: the M pool points where the committee mean's true |error| is largest (reads the pool's
  labels): a diagnostic, the best any disagreement measure could rank;
* ``random``: uniform from the pool (the baseline); also available: ``max_std`` (= ``qbc``),
  ``std_sampling``;

until the budget N + R M (R rounds). The model is the committee mean; its RMSE on a fixed test set of
2000 uniform points (its own seed, the same for all strategies and seeds) is recorded after every
round. Sizes scale with d: N = 5 d + 10, M = ceil(N / 2), R = 6, P = 10 x budget, K = 5, f = 0.8
(d = 2: N 20, M 10, budget 80, P 800; d = 4: 30, 15, 120, 1200; d = 16: 90, 45, 360, 3600; d = 32:
170, 85, 680, 6800). Learners: 400 epochs of Adam (lr 0.01, weight decay 1e-3, float64). Inputs are scaled
to [-1, 1], targets standardized with the initial labelled points' mean and std.

Prints per function and d: the test RMSE at the budget of each strategy (mean over seeds) and the
AL / random RMSE ratio at the budget (mean, std and each seed's), plus the ratio of the areas under the
learning curves (rounds after the first); writes the table (``table.md``), the learning curves
(``learning_curves.csv``), their plots (``learning_curves.png``: mean over seeds, band = min..max) and
the ratios (``ratios.png``) to --outdir. Before each pick it measures on the unlabelled pool
(:func:`pick_diagnostics`, means in the table): the Spearman correlation of disagreement and true
|error|, the |error| at the picks over the pool's mean, the share of picks among the M largest errors,
and the picks' mean radius ||x||_2 over the pool's. ``--ablation-dims`` re-runs qbc vs random with
(K, f) = (5, 0.5), (5, 1.0), (10, 0.8) (or ``--ablation K:f ...``) at those d;
``--members``/``--fraction`` change K and f.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fitsnap_uq.active.committee import POOL_STRATEGIES, Committee, pick_from_pool  # noqa: E402
from fitsnap_uq.nn import Ensemble  # noqa: E402

OUTDIR = ROOT / "benchmarks" / "out" / "al_testfunctions"
TEST_SEED = 987_654


def griewank(x: np.ndarray) -> np.ndarray:
    """Griewank function of (n, d) points: 1 + sum x_i^2 / 4000 - prod cos(x_i / sqrt(i)); (n,)."""
    i = np.arange(1, x.shape[1] + 1)
    return 1.0 + np.sum(x**2, axis=1) / 4000.0 - np.prod(np.cos(x / np.sqrt(i)), axis=1)


def sum_of_sines(x: np.ndarray) -> np.ndarray:
    """sin(sum_i x_i) of (n, d) points; (n,)."""
    return np.sin(np.sum(x, axis=1))


FUNCTIONS = {"griewank": (griewank, (-2.0, 2.0)), "sines": (sum_of_sines, (0.0, 1.0))}


@dataclass
class Plan:
    """Sizes of one function/dimension run: pool P, initial N, batch M, rounds R, committee K, ..."""

    pool: int
    initial: int
    batch: int
    rounds: int
    members: int = 5
    fraction: float = 0.8
    epochs: int = 400
    lr: float = 1e-2
    weight_decay: float = 1e-3
    hidden: int = 32
    test: int = 2000

    @property
    def budget(self) -> int:
        return self.initial + self.rounds * self.batch


def plan_for(d: int, quick: bool = False) -> Plan:
    """The sizes for dimension d (see the module docstring); ``quick``: a tiny smoke-test run."""
    if quick:
        return Plan(pool=200, initial=10, batch=5, rounds=2, members=3, epochs=100, test=300)
    initial = 5 * d + 10
    batch = math.ceil(initial / 2)
    rounds = 6
    return Plan(pool=10 * (initial + rounds * batch), initial=initial, batch=batch, rounds=rounds)


def mlp_factory(d: int, hidden: int):
    """``make()``: a fresh 2-layer tanh MLP R^d -> R (hidden units per layer)."""

    def make() -> torch.nn.Module:
        return torch.nn.Sequential(torch.nn.Linear(d, hidden), torch.nn.Tanh(),
                                   torch.nn.Linear(hidden, hidden), torch.nn.Tanh(),
                                   torch.nn.Linear(hidden, 1))

    return make


def make_learner_factory(d: int, plan: Plan):
    """``factory(seed)``: a one-member :class:`fitsnap_uq.nn.Ensemble` over the MLP (Adam, full batch)."""
    def factory(seed: int) -> Ensemble:
        return Ensemble(mlp_factory(d, plan.hidden), members=1, bootstrap=False, fraction=1.0,
                        epochs=plan.epochs, lr=plan.lr, weight_decay=plan.weight_decay, seed=seed)

    return factory


def make_committee(d: int, plan: Plan, seed: int) -> Committee:
    """The QBC committee of a run: K one-member ``Ensemble`` MLP learners (seeds seed .. seed + K - 1)."""
    return Committee(make_learner_factory(d, plan), members=plan.members, fraction=plan.fraction, seed=seed)


def make_test_set(name: str, d: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The fixed test set of a function and d: (n, d) points and (n,) values."""
    f, (lo, hi) = FUNCTIONS[name]
    x = np.random.default_rng([TEST_SEED, d, sorted(FUNCTIONS).index(name)]).uniform(lo, hi, (n, d))
    return x, f(x)


def pick_diagnostics(err: np.ndarray, dis: np.ndarray, x: np.ndarray, pick: np.ndarray) -> dict[str, float]:
    """Why a batch helps or not, measured on the unlabelled pool before the pick.

    Args:
        err: (m,) absolute error of the committee mean at the m unlabelled pool points.
        dis: (m,) committee disagreement (std of the K predictions) there.
        x: (m, d) their scaled inputs (in [-1, 1]^d).
        pick: (M,) positions (into those m) of the batch picked.

    Returns:
        ``rho``: Spearman rank correlation of disagreement and |error| over the pool; ``err_ratio``:
        mean |error| at the picks / over the pool (> 1: the batch is where the model is wrong);
        ``top_overlap``: fraction of the picks among the M points of largest |error|; ``radius_ratio``:
        mean ||x||_2 of the picks / of the pool (> 1: the batch sits toward the faces and corners).
    """
    rho = spearmanr(dis, err).statistic if np.ptp(dis) > 0 else np.nan
    top = np.argsort(-err)[: pick.size]
    radius = np.linalg.norm(x, axis=1)
    return {"rho": float(rho), "err_ratio": float(err[pick].mean() / err.mean()),
            "top_overlap": float(np.intersect1d(top, pick).size / pick.size),
            "radius_ratio": float(radius[pick].mean() / radius.mean())}


def fill_distance(x_test: np.ndarray, x_labelled: np.ndarray) -> float:
    """Mean over the (n, d) test points of the Euclidean distance to the nearest of the (m, d)
    labelled points (same units as x): how well the labelled set covers the test distribution."""
    sq = (x_test**2).sum(axis=1)[:, None] - 2.0 * x_test @ x_labelled.T + (x_labelled**2).sum(axis=1)[None, :]
    return float(np.mean(np.sqrt(np.maximum(sq.min(axis=1), 0.0))))


def run_curve(name: str, d: int, plan: Plan, strategy: str, seed: int) -> list[dict[str, float]]:
    """One learning curve: per round, ``n`` points labelled, the committee mean's test ``rmse``, the
    :func:`fill_distance` of the test set to the labelled points (``fill``, scaled inputs) and
    (rounds 0 .. R-1) the :func:`pick_diagnostics` of the batch picked after it.

    ``strategy`` is one of :data:`fitsnap_uq.active.committee.POOL_STRATEGIES` or ``oracle``: the M
    pool points of largest true |error| of the committee mean (reads the pool's labels: a diagnostic
    upper bound of what any disagreement could pick, not a strategy).
    """

    f, (lo, hi) = FUNCTIONS[name]
    rng = np.random.default_rng([seed, d, sorted(FUNCTIONS).index(name)])
    pool = rng.uniform(lo, hi, (plan.pool, d))
    scale = lambda x: (2.0 * x - (lo + hi)) / (hi - lo)  # noqa: E731
    pool_s = scale(pool)
    x_test, y_test = make_test_set(name, d, plan.test)
    x_test_s = scale(x_test)
    labelled = list(rng.choice(plan.pool, size=plan.initial, replace=False))
    y_all = f(pool)  # the oracle; only labelled entries are read, except by the diagnostics and ``oracle``
    mu, sd = float(np.mean(y_all[labelled])), float(np.std(y_all[labelled])) or 1.0
    committee = make_committee(d, plan, 1000 * seed + 17).start(plan.initial)
    curve = []
    for r in range(plan.rounds + 1):
        idx = np.array(labelled)
        committee.fit(pool_s[idx], (y_all[idx] - mu) / sd)
        mean = committee.predict(x_test_s)[0] * sd + mu
        curve.append({"n": len(labelled), "rmse": float(np.sqrt(np.mean((mean - y_test) ** 2))),
                      "fill": fill_distance(x_test_s, pool_s[idx])})
        if r == plan.rounds:
            return curve
        free = np.setdiff1d(np.arange(plan.pool), idx)
        mean_pool, dis = committee.predict(pool_s[free])
        err = np.abs(mean_pool * sd + mu - y_all[free])
        if strategy == "oracle":
            at = pick_from_pool("qbc", err, pool_s[free], plan.batch, seed=1000 * seed + r)
        else:
            at = pick_from_pool(strategy, dis, pool_s[free], plan.batch, seed=1000 * seed + r)
        curve[-1].update(pick_diagnostics(err, dis, pool_s[free], at))
        pick = free[at]
        start = len(labelled)
        labelled += list(pick)
        committee.add(np.arange(start, len(labelled)), pool_s[pick])
    return curve


DIAGNOSTICS = ("rho", "err_ratio", "top_overlap", "radius_ratio")


def summarize(curves: dict, seeds: list[int], strategies: list[str]) -> list[dict]:
    """One row per (function, d, strategy other than random): RMSEs, AL / random ratios and the mean
    :func:`pick_diagnostics` (over rounds 0 .. R-1 and seeds; those of random in ``random_*``)."""
    rows = []
    for (name, d), by_strategy in curves.items():
        base = by_strategy.get("random")
        if base is None:
            continue
        base_final = np.array([c[-1]["rmse"] for c in base])
        base_area = np.array([np.mean([p["rmse"] for p in c[1:]]) for c in base])
        for strategy in strategies:
            if strategy == "random":
                continue
            runs = by_strategy[strategy]
            final = np.array([c[-1]["rmse"] for c in runs])
            area = np.array([np.mean([p["rmse"] for p in c[1:]]) for c in runs])
            ratio = final / base_final
            row = {"function": name, "d": d, "strategy": strategy, "budget": base[0][-1]["n"],
                   "rmse_random": float(base_final.mean()), "rmse_al": float(final.mean()),
                   "ratio_mean": float(ratio.mean()),
                   "ratio_std": float(ratio.std(ddof=1)) if ratio.size > 1 else 0.0,
                   "ratio_seeds": ratio.tolist(), "gain": float(np.mean(base_final / final)),
                   "area_ratio": float(np.mean(area / base_area)),
                   "wins": int(np.sum(ratio < 1)), "seeds": list(seeds)}
            for key in DIAGNOSTICS:
                row[key] = float(np.nanmean([p[key] for c in runs for p in c[:-1]]))
                row["random_" + key] = float(np.nanmean([p[key] for c in base for p in c[:-1]]))
            row["fill"] = float(np.mean([c[-1]["fill"] for c in runs]))
            row["random_fill"] = float(np.mean([c[-1]["fill"] for c in base]))
            rows.append(row)
    return rows


def markdown(header: list[str], body: list[list[str]]) -> str:
    """A Markdown table: the header cells and one list of cells per row."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(cells) + " |" for cells in body]) + "\n"


def table(rows: list[dict], plans: list[Plan]) -> str:
    """The Markdown table of :func:`summarize`'s rows (``plans``: the plan of each row)."""
    header = ["function", "d", "domain", "P", "N", "M", "budget", "K", "f", "strategy", "test RMSE random",
              "test RMSE AL", "AL/random at budget (mean +- std)", "per seed", "AL wins", "random/AL (gain)",
              "AL/random of the RMSE averaged over rounds 1..R"]
    body = []
    for r, p in zip(rows, plans):
        lo, hi = FUNCTIONS[r["function"]][1]
        body.append([r["function"], str(r["d"]), f"[{lo:g}, {hi:g}]^{r['d']}", str(p.pool), str(p.initial),
                     str(p.batch), str(r["budget"]), str(p.members), f"{p.fraction:g}", r["strategy"],
                     f"{r['rmse_random']:.4g}", f"{r['rmse_al']:.4g}",
                     f"{r['ratio_mean']:.3f} +- {r['ratio_std']:.3f}",
                     ", ".join(f"{s}: {v:.2f}" for s, v in zip(r["seeds"], r["ratio_seeds"])),
                     f"{r['wins']}/{len(r['seeds'])}", f"{r['gain']:.3f}", f"{r['area_ratio']:.3f}"])
    return markdown(header, body)


def diagnostics_table(rows: list[dict], plans: list[Plan]) -> str:
    """Markdown: per row, the mean pick diagnostics of the strategy and of random (same rounds)."""
    header = ["function", "d", "K", "f", "strategy", "Spearman(disagreement, abs error) on the pool",
              "abs error at picks / pool: strategy (random)",
              "picks among the M largest errors: strategy (random)",
              "radius of picks / pool: strategy (random)",
              "test points' mean distance to the nearest labelled point at budget: strategy (random)",
              "AL/random at budget"]
    body = [[r["function"], str(r["d"]), str(p.members), f"{p.fraction:g}", r["strategy"], f"{r['rho']:.2f}",
             f"{r['err_ratio']:.2f} ({r['random_err_ratio']:.2f})",
             f"{r['top_overlap']:.2f} ({r['random_top_overlap']:.2f})",
             f"{r['radius_ratio']:.3f} ({r['random_radius_ratio']:.3f})",
             f"{r['fill']:.3f} ({r['random_fill']:.3f})", f"{r['ratio_mean']:.3f}"]
            for r, p in zip(rows, plans)]
    return markdown(header, body)


def run_study(functions: list[str], dims: list[int], seeds: list[int], strategies: list[str],
              plans: dict[int, Plan], label: str = "") -> dict:
    """Learning curves ``{(function, d): {strategy: [curve of each seed]}}``, progress printed."""
    curves: dict = {}
    for name in functions:
        for d in dims:
            plan = plans[d]
            t0 = time.perf_counter()
            curves[(name, d)] = {s: [run_curve(name, d, plan, s, seed) for seed in seeds] for s in strategies}
            y_std = float(np.std(make_test_set(name, d, plan.test)[1]))
            finals = ", ".join(f"{s} {np.mean([c[-1]['rmse'] for c in runs]):.4g}"
                               for s, runs in curves[(name, d)].items())
            print(f"  {label}{name} d={d}: P {plan.pool}, N {plan.initial}, M {plan.batch}, budget "
                  f"{plan.budget}, K {plan.members}, f {plan.fraction:g}; std of f {y_std:.4g}; RMSE at "
                  f"budget: {finals}  ({time.perf_counter() - t0:.1f} s)", flush=True)
    return curves


def losses(rows: list[dict]) -> str:
    """One line per row where the strategy's mean AL/random >= 1, with its measured diagnostics and,
    for ``qbc``, the reading of them: is the disagreement informative (Spearman, error at the picks),
    would the true largest errors have won (``oracle``, if run), does spreading help (``qbc_kmeans``,
    if run), and how well the labelled set covers the test set at the budget (fill distance)."""
    by_key = {(r["function"], r["d"], r["strategy"]): r for r in rows}
    out = []
    for r in rows:
        if r["ratio_mean"] < 1.0:
            continue
        line = (f"- {r['function']} d={r['d']} {r['strategy']}: AL/random {r['ratio_mean']:.3f} "
                f"(wins {r['wins']}/{len(r['seeds'])}); Spearman(disagreement, abs error) {r['rho']:.2f}; "
                f"abs error at picks / pool {r['err_ratio']:.2f} (random {r['random_err_ratio']:.2f}); "
                f"radius of picks / pool {r['radius_ratio']:.3f}; test set's distance to the labelled points "
                f"{r['fill']:.3f} (random {r['random_fill']:.3f})")
        if r["strategy"] == "qbc":
            informative = r["rho"] > 0.1 and r["err_ratio"] > 1.2 * r["random_err_ratio"]
            line += (". Reading: the disagreement " + ("finds" if informative else "does not find")
                     + " the large errors")
            oracle = by_key.get((r["function"], r["d"], "oracle"))
            if oracle is not None:
                line += (f"; the M largest true errors {'beat' if oracle['ratio_mean'] < 1 else 'lose to'} "
                         f"random too ({oracle['ratio_mean']:.3f}"
                         + (f", fill {oracle['fill']:.3f}" if np.isfinite(oracle["fill"]) else "") + ")")
            spread = by_key.get((r["function"], r["d"], "qbc_kmeans"))
            if spread is not None:
                line += f"; spread by K-means: {spread['ratio_mean']:.3f}"
        out.append(line)
    return "\n".join(out) + "\n" if out else "- none\n"


ABLATION = ((5, 0.5), (5, 1.0), (10, 0.8))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--dims", type=int, nargs="+", default=[2, 4, 16, 32])
    ap.add_argument("--functions", nargs="+", default=list(FUNCTIONS), choices=list(FUNCTIONS))
    ap.add_argument("--strategies", nargs="+", default=["qbc", "qbc_kmeans", "oracle", "random"],
                    choices=[*POOL_STRATEGIES, "oracle"])
    ap.add_argument("--members", type=int, default=None, help="K learners (default 5)")
    ap.add_argument("--fraction", type=float, default=None, help="bootstrap fraction f (default 0.8)")
    ap.add_argument("--ablation-dims", type=int, nargs="*", default=[],
                    help="also run qbc vs random with other (K, f) at these d")
    ap.add_argument("--ablation", nargs="+", default=[f"{k}:{f:g}" for k, f in ABLATION],
                    help="the (K, f) of the ablation as K:f (default %(default)s)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (smoke test, seconds)")
    ap.add_argument("--outdir", default=str(OUTDIR))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    strategies = list(dict.fromkeys(args.strategies + ["random"]))
    override = {k: v for k, v in (("members", args.members), ("fraction", args.fraction)) if v is not None}
    plans = {d: replace(plan_for(d, args.quick), **override) for d in args.dims}
    p0 = next(iter(plans.values()))
    print(f"QBC vs random with NN committees: functions {args.functions}, d {args.dims}, seeds {args.seeds}; "
          f"K {p0.members}, f {p0.fraction}, {p0.hidden}x{p0.hidden} tanh MLP, Adam lr {p0.lr}, "
          f"{p0.epochs} epochs, weight decay {p0.weight_decay}; {p0.rounds} rounds"
          + (" (--quick)" if args.quick else ""), flush=True)
    t_all = time.perf_counter()
    curves = run_study(args.functions, args.dims, args.seeds, strategies, plans)
    rows = summarize(curves, args.seeds, strategies)
    row_plans = [plans[r["d"]] for r in rows]
    out = Path(args.outdir)
    out.mkdir(parents=True, exist_ok=True)
    header = (f"QBC vs random, NN committees (seeds {args.seeds}{', --quick' if args.quick else ''}); "
              f"AL/random < 1: active learning is better. qbc: the seed's (the M most disputed); "
              f"qbc_kmeans: spread by K-means (not the seed's); oracle: the M largest true errors "
              f"(a diagnostic bound, reads the pool's labels).\n\n")
    report = (header + table(rows, row_plans) + "\nPick diagnostics (mean over rounds 0..R-1 and seeds, "
              "measured on the unlabelled pool before each pick):\n\n" + diagnostics_table(rows, row_plans)
              + "\nWhere AL does not beat random (mean AL/random >= 1):\n\n" + losses(rows))
    ab_rows = [r for r in rows if r["strategy"] == "qbc" and r["d"] in args.ablation_dims]
    ab_plans = [plans[r["d"]] for r in ab_rows]
    variants = [(int(v.split(":")[0]), float(v.split(":")[1])) for v in args.ablation]
    for members, fraction in (variants if args.ablation_dims else ()):
        aplans = {d: replace(plans[d], members=members, fraction=fraction) for d in args.ablation_dims}
        acurves = run_study(args.functions, args.ablation_dims, args.seeds, ["qbc", "random"], aplans,
                            label=f"[K {members}, f {fraction:g}] ")
        new_rows = summarize(acurves, args.seeds, ["qbc", "random"])
        ab_rows += new_rows
        ab_plans += [aplans[r["d"]] for r in new_rows]
    if args.ablation_dims:
        report += ("\nAblation: qbc vs random with other committee sizes K and fractions f (each paired "
                   "with its own random run; the first rows are the main study's):\n\n"
                   + table(ab_rows, ab_plans) + "\n" + diagnostics_table(ab_rows, ab_plans))
    print("\n" + report)
    (out / "table.md").write_text(report)
    lines = ["function,d,strategy,seed,n_labelled,test_rmse,fill," + ",".join(DIAGNOSTICS)]
    for (name, d), by_strategy in curves.items():
        for s, runs in by_strategy.items():
            for seed, curve in zip(args.seeds, runs):
                lines += [f"{name},{d},{s},{seed},{p['n']},{p['rmse']:.6g},{p['fill']:.4g},"
                          + ",".join(f"{p.get(k, np.nan):.4g}" for k in DIAGNOSTICS) for p in curve]
    (out / "learning_curves.csv").write_text("\n".join(lines) + "\n")
    _plot_curves(out / "learning_curves.png", curves, args.functions, args.dims)
    _plot_ratios(out / "ratios.png", rows, args.functions)
    print(f"total {time.perf_counter() - t_all:.1f} s; table {out / 'table.md'}, curves "
          f"{out / 'learning_curves.csv'}, plots {out / 'learning_curves.png'}, {out / 'ratios.png'}")
    return 0


def _plot_curves(path: Path, curves: dict, functions: list[str], dims: list[int]) -> None:
    from fitsnap_uq.plotting import pyplot, save

    plt = pyplot()
    fig, axes = plt.subplots(len(functions), len(dims), figsize=(3.6 * len(dims), 3.2 * len(functions)),
                             squeeze=False)
    for i, name in enumerate(functions):
        for j, d in enumerate(dims):
            ax = axes[i][j]
            for s, runs in curves[(name, d)].items():
                n = np.array([p["n"] for p in runs[0]])
                e = np.array([[p["rmse"] for p in c] for c in runs])
                line, = ax.plot(n, e.mean(axis=0), marker="o", ms=3, label=s)
                ax.fill_between(n, e.min(axis=0), e.max(axis=0), color=line.get_color(), alpha=0.2)
            ax.set_yscale("log")
            ax.set_title(f"{name}, d = {d}", fontsize=10)
            ax.set_xlabel("labelled points")
            if j == 0:
                ax.set_ylabel("test RMSE")
            ax.legend(fontsize=8)
    fig.suptitle("QBC vs random: committee-mean test RMSE (mean over seeds, band min..max)")
    fig.tight_layout()
    save(fig, path)


def _plot_ratios(path: Path, rows: list[dict], functions: list[str]) -> None:
    from fitsnap_uq.plotting import pyplot, save

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    strategies = list(dict.fromkeys(r["strategy"] for r in rows))
    for k, name in enumerate(functions):
        for r in (r for r in rows if r["function"] == name):
            j = strategies.index(r["strategy"])
            slot = k * len(strategies) + j - (len(functions) * len(strategies) - 1) / 2
            x = np.log2(r["d"]) + 0.06 * slot
            ax.scatter([x] * len(r["ratio_seeds"]), r["ratio_seeds"], s=14, alpha=0.5, color=f"C{j}",
                       marker="os"[k % 2])
            ax.errorbar(x, r["ratio_mean"], yerr=r["ratio_std"], fmt="os"[k % 2], color=f"C{j}", capsize=3,
                        label=f"{name} ({r['strategy']})", mfc="none" if k else None)
    handles, labels = ax.get_legend_handles_labels()
    uniq = dict(zip(labels, handles))
    ax.legend(uniq.values(), uniq.keys(), fontsize=8)
    ax.axhline(1.0, color="0.4", ls="--", lw=1)
    dims = sorted({r["d"] for r in rows})
    ax.set_xticks(np.log2(dims))
    ax.set_xticklabels([str(d) for d in dims])
    ax.set_xlabel("dimension d")
    ax.set_ylabel("test RMSE at budget, AL / random")
    ax.set_title("AL / random (points: seeds; bars: mean +- std)")
    fig.tight_layout()
    save(fig, path)


if __name__ == "__main__":
    sys.exit(main())
