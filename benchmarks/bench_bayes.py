"""Speed of the whole BAYES fit versus ``numpy.linalg.lstsq`` on the same arrays, in one process.

    python benchmarks/bench_bayes.py [--rows 200000] [--cols 200] [--repeat 3]

A synthetic linear system (rows x cols, three noise classes like energy/force/stress). Times, best of
``--repeat``: ``numpy.linalg.lstsq`` of the weighted system (the baseline); the BAYES fit (one pass
over the rows building the per-class QR statistics, then the evidence optimization of the prior and
three noise precisions, posterior mean and covariance); and what the solver does by default: the
same fit from per-fold statistics (still one pass) plus the 5-fold cross-validated recalibration.
Prints the ratios to the baseline.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fitsnap_uq.linear import noise as noise_model  # noqa: E402
from fitsnap_uq.linear.bayes import fit_bayes  # noqa: E402
from fitsnap_uq.linear.rows import Rows, fit_and_recalibrate, recalibration_map  # noqa: E402


def best_of(repeat: int, fn) -> tuple[float, object]:
    best, out = np.inf, None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--cols", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    n, p = args.rows, args.cols
    rng = np.random.default_rng(0)
    a = rng.normal(size=(n, p))
    theta = rng.normal(size=p)
    kinds = np.array(["Energy", "Force", "Stress"])[rng.choice(3, size=n, p=[0.05, 0.85, 0.10])]
    sd = np.select([kinds == "Energy", kinds == "Force"], [0.01, 0.1], 5.0)
    y = a @ theta + sd * rng.normal(size=n)
    w = np.ones(n)
    groups = np.full(n, "All")
    rows = Rows(a=a, b=y, w=w, testing=np.zeros(n, dtype=bool), groups=groups, row_types=kinds,
                configs=np.char.add("c", (np.arange(n) // 100).astype(str)))

    t_lstsq, ref = best_of(args.repeat, lambda: np.linalg.lstsq(a * w[:, None], y * w, rcond=None)[0])

    def bayes():
        labels = noise_model.class_labels(groups, kinds, "quantity")
        return fit_bayes(noise_model.stats_by_class(a, y, w, labels), prior="isotropic")

    t_bayes, res = best_of(args.repeat, bayes)

    def bayes_recal():
        fit, ratios = fit_and_recalibrate(rows, folds=5, noise_classes="quantity", weights="ratios")
        return fit, recalibration_map(ratios)

    t_recal, _ = best_of(args.repeat, bayes_recal)
    noise = {k: f"{np.sqrt(v):.4g}" for k, v in res.noise_var.items()}
    print(f"system: {n} rows x {p} columns, 3 noise classes (true std Energy 0.01, Force 0.1, Stress 5)")
    print(f"learned noise std: {noise}; {res.iterations} iterations, converged {res.converged}")
    print(f"max |BAYES mean - lstsq| / max |lstsq| = {np.abs(res.mean - ref).max() / np.abs(ref).max():.2e} "
          "(BAYES weights each class by its learned precision; lstsq weights all rows alike)")
    print(f"numpy.linalg.lstsq            {t_lstsq:8.3f} s   (baseline)")
    print(f"BAYES fit (evidence included) {t_bayes:8.3f} s   ratio {t_bayes / t_lstsq:.2f}")
    print(f"BAYES + 5-fold recalibration  {t_recal:8.3f} s   ratio {t_recal / t_lstsq:.2f}")
    ok = t_bayes <= 2.0 * t_lstsq
    print(f"{'PASS' if ok else 'FAIL'}  whole BAYES fit <= 2x lstsq: ratio {t_bayes / t_lstsq:.2f}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
