"""Model selection by the log evidence: BAYES fits of the Ta data with twojmax 4, 6 and 8.

    python benchmarks/model_selection_ta.py [--twojmax 4 6 8] [--seed 0]

For each twojmax, FitSNAP computes the descriptors of the Ta example and BAYES (noise per group and
quantity, isotropic prior) is fitted (a) to all configurations, giving the log evidence of that model
for the whole data set, and (b) to a seeded 80% of the configurations, giving the RMSE on the other
20%. The evidence, which needs no held-out data, should rank the models like the test error does.
The same comparison with the solver itself: ``fitsnap-uq fit Ta.in --keyword BISPECTRUM twojmax 8``
prints ``log evidence`` (and stores it in the Posterior header).
"""

from __future__ import annotations

import argparse

import numpy as np
from _ta import constant_columns, split_by_configuration, ta_rows

from fitsnap_uq.linear.rows import fit_rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--twojmax", type=int, nargs="+", default=[4, 6, 8])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    opts = {"noise_classes": "group", "prior": "isotropic", "weights": "ratios"}
    print(f"{'twojmax':>7} {'coeffs':>6} {'log evidence':>14} {'test E RMSE':>12} {'test F RMSE':>12}"
          f"  (eV/atom, eV/A; seed {args.seed})")
    results = []
    for tj in args.twojmax:
        rows = ta_rows(tj)
        opts["unpenalized"] = constant_columns(rows)
        whole = fit_rows(rows, **opts)
        split = split_by_configuration(rows, 0.2, args.seed)
        part = fit_rows(split.training(), **opts)
        test = split.subset(split.testing & (split.w != 0))
        err = test.b - test.a @ part.result.mean
        rmse = {q: float(np.sqrt(np.mean(err[test.row_types == q] ** 2))) for q in ("Energy", "Force")}
        results.append((tj, whole.result.log_evidence, rmse))
        print(f"{tj:>7} {rows.a.shape[1]:>6} {whole.result.log_evidence:>14.2f} {rmse['Energy']:>12.4f} "
              f"{rmse['Force']:>12.4f}")
    best = max(results, key=lambda r: r[1])
    print(f"highest evidence: twojmax {best[0]}; lowest test force RMSE: twojmax "
          f"{min(results, key=lambda r: r[2]['Force'])[0]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
