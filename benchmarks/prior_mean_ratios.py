"""Which prior keeps BAYES's mean at FitSNAP's SVD: held-out RMSE ratios per group, prior by prior.

    python benchmarks/prior_mean_ratios.py [--datasets ta wbe] [--seeds 101 202 303]
        [--priors isotropic g ard standardized] [--outdir DIR]

The split of ``calibration_newdata.py`` (20% of each group's configurations held out, per seed) and
its cached FitSNAP rows (``--outdir``, default ``benchmarks/out/calibration_newdata``); one noise class
(the default ``noise_classes = one``), FitSNAP's weights. For each prior: the largest and smallest
held-out energy/force RMSE ratio to SVD's over the groups, the four groups furthest from 1, and the
log evidence; for the isotropic prior also how much it shrinks the directions the weighted rows
determine least (``beta lambda / (beta lambda + alpha)`` over the eigenvalues ``lambda`` of the Gram
matrix with the constant columns projected out). ``standardized`` is an experiment, not a solver
option: the isotropic prior on columns scaled to ``diag(G) / n = 1``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import calibration_newdata as B  # noqa: E402

from fitsnap_uq.linear.bayes import ClassStats, cell_stats, fit_bayes  # noqa: E402

PRIORS = ("isotropic", "g", "ard", "standardized")


def fit(st: ClassStats, prior: str, unpen: np.ndarray | None):
    """(coefficients, BayesResult) of one class's statistics under ``prior``."""
    if prior != "standardized":
        res = fit_bayes({"all": st}, prior=prior, unpenalized=unpen)
        return res.mean, res
    diag = np.diag(st.g).copy()
    s = np.ones_like(diag)
    s[diag > 0] = 1.0 / np.sqrt(diag[diag > 0] / st.n)
    scaled = ClassStats(g=st.g * s[:, None] * s[None, :], h0=st.h0 * s, ee0=st.ee0, yy=st.yy, n=st.n,
                        wref2=st.wref2, anchor=st.anchor / s)
    res = fit_bayes({"all": scaled}, prior="isotropic", unpenalized=unpen)
    return res.mean * s, res


def shrinkage(st: ClassStats, res, unpen: np.ndarray | None) -> np.ndarray:
    """Isotropic prior: ``beta lambda / (beta lambda + alpha)`` over the eigenvalues of the Gram
    matrix of the penalized columns with the unpenalized ones projected out (ascending)."""
    act = res.active
    up = act & (unpen if unpen is not None else np.zeros(act.size, bool))
    pen = act & ~up
    g = st.g
    m = g[np.ix_(pen, pen)]
    if up.any():
        m = m - g[np.ix_(pen, up)] @ np.linalg.solve(g[np.ix_(up, up)], g[np.ix_(up, pen)])
    lam = np.linalg.eigvalsh(m)
    alpha, beta = res.alpha[pen][0], res.beta[0]
    return beta * lam / (beta * lam + alpha)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", nargs="+", default=["ta", "wbe"], choices=sorted(B.DATASETS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[101, 202, 303])
    ap.add_argument("--priors", nargs="+", default=list(PRIORS), choices=PRIORS)
    ap.add_argument("--outdir", type=Path, default=B.DEFAULT_OUT, help="where the cached rows are")
    args = ap.parse_args(argv)
    for key in args.datasets:
        loaded = B.load_rows(key, args.outdir, False)
        if loaded is None:
            continue
        rows, unpen = loaded
        rows = rows.subset(rows.w != 0)
        for seed in args.seeds:
            held = B.split_by_group(rows, seed)
            train = rows.subset(~held)
            test = rows.subset(held & np.isin(rows.row_types.astype(str), B.SCORED))
            st = cell_stats(train.a, train.b, train.w, np.zeros(train.b.size, dtype=np.int64), 1)[0]
            svd = B.svd_mean(train)
            types, groups = test.row_types.astype(str), test.groups.astype(str)
            e_svd = test.b - test.a @ svd
            for prior in args.priors:
                coef, res = fit(st, prior, unpen)
                err = test.b - test.a @ coef
                ratios = []
                for q in B.SCORED:
                    for grp in np.unique(groups[types == q]):
                        sel = (types == q) & (groups == grp)
                        r_svd = np.sqrt(np.mean(e_svd[sel] ** 2))
                        if r_svd > 1e-12:
                            ratios.append((np.sqrt(np.mean(err[sel] ** 2)) / r_svd, grp, q,
                                           np.unique(test.config_keys()[sel]).size))
                worst = sorted(ratios, key=lambda x: -abs(np.log(x[0])))[:4]
                r = np.array([x[0] for x in ratios])
                line = (f"{key} {seed} {prior:12s} max {r.max():.3f} min {r.min():.3f} "
                        f"log evidence {res.log_evidence:.1f} | "
                        + ", ".join(f"{g}/{q} {x:.3f} ({n} conf)" for x, g, q, n in worst))
                if prior == "isotropic":
                    sh = shrinkage(st, res, unpen)
                    line += (f" | shrink: weakest {sh[0]:.3f}, {int(np.sum(sh < 0.99))} of {sh.size} "
                             f"directions below 0.99")
                print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
