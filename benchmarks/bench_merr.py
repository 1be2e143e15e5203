"""MODELERROR (iid, all coefficients) versus FitSNAP 3.1.0.4's MERR with the same settings, on Ta.

    python benchmarks/bench_merr.py [--twojmax 6 8 10] [--seed 0]

For each twojmax: FitSNAP's descriptors of the Ta example, a seeded 80/20 split by configuration, and
on the weighted training rows (FitSNAP's weights) both fits of the iid embedded-model-error likelihood
with model error on every coefficient and the data variance FitSNAP's MERR uses (ANL's sigmahat):
ours (fitsnap_uq.linear.merr) and FitSNAP's (``lreg_merr(..., merr_method='iid', method='bfgs')``,
numpy seeded for its random start). Prints the fit times and their ratio, the final negative
log-likelihood of both evaluated with FitSNAP's own ``logpost_emb``, and the calibration of test-row
predictions (energy eV/atom, force eV/A) with the spread both models imply,
``var_i = sum_k a_ik^2 s_k^2 + d / w_i^2``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _ta import split_by_configuration, ta_rows

from fitsnap_uq import calibration as C
from fitsnap_uq.linear.merr import anl_data_var, fit_model_error


def predict(rows, coef, sigma, d):
    mean = rows.a @ coef
    var = (rows.a**2) @ (sigma**2) + d / rows.w**2
    return mean, np.sqrt(var)


def main() -> int:
    from fitsnap_uq.fitsnap_plugin import activate

    activate()  # the adapters (libmpi first) before any fitsnap3lib import
    from fitsnap3lib.solvers.lreg import logpost_emb, lreg_merr

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--twojmax", type=int, nargs="+", default=[6, 8, 10])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    ok = True
    for tj in args.twojmax:
        rows = split_by_configuration(ta_rows(tj), 0.2, args.seed)
        train = rows.training()
        test = rows.subset(rows.testing & (rows.w != 0))
        aw, bw = train.w[:, None] * train.a, train.w * train.b
        d = anl_data_var(aw, bw)
        t0 = time.perf_counter()
        ours = fit_model_error(aw, bw, likelihood="iid", data_var=d)
        t_ours = time.perf_counter() - t0
        np.random.seed(args.seed)
        t0 = time.perf_counter()
        theirs = lreg_merr(ind_embed=None, datavar=d, multiplicative=False, merr_method="iid",
                           method="bfgs")
        theirs.fit(aw, bw)
        t_theirs = time.perf_counter() - t0
        sig_theirs = np.sqrt(np.diag(theirs.cf_cov))
        nll = {name: -logpost_emb(np.concatenate([c, s]), aw=aw, bw=bw, ind_sig=None, datavar=d,
                                  merr_method="iid")
               for name, c, s in (("ours", ours.coef, ours.sigma), ("FitSNAP", theirs.cf, sig_theirs))}
        print(f"\n== twojmax {tj}: {aw.shape[1]} coefficients, {aw.shape[0]} training rows, "
              f"{test.b.size} test rows (seed {args.seed})")
        print(f"fit time: ours {t_ours:.3f} s, FitSNAP MERR {t_theirs:.2f} s, ratio ours/theirs "
              f"{t_ours / t_theirs:.4f} (speed-up {t_theirs / t_ours:.0f}x)")
        print(f"negative log-likelihood (FitSNAP's logpost_emb): ours {nll['ours']:.6f}, "
              f"FitSNAP {nll['FitSNAP']:.6f}")
        print(f"ours: {ours.iterations} iterations, converged {ours.converged} ({ours.message})")
        for name, coef, sig in (("ours", ours.coef, ours.sigma), ("FitSNAP", theirs.cf, sig_theirs)):
            mean, sd = predict(test, coef, sig, d)
            table = C.metrics_table(test.b, mean, sd, test.groups, test.row_types, test.testing)
            t = table.xs("*ALL", level="Group").xs("Testing", level="Set")
            print(f"  test calibration {name:8s}: " + "; ".join(
                f"{q} cov68 {t.loc[q, 'cov68']:.3f} cov95 {t.loc[q, 'cov95']:.3f} miscal "
                f"{t.loc[q, 'miscal_area']:.3f} rmse {t.loc[q, 'rmse']:.4g}" for q in ("Energy", "Force")))
        passed = t_theirs / t_ours >= 50 and nll["ours"] <= nll["FitSNAP"] + 1e-9 * abs(nll["FitSNAP"])
        ok &= passed
        print(f"{'PASS' if passed else 'FAIL'}  >= 50x faster and NLL <= FitSNAP's")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
