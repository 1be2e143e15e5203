"""Calibration of BAYES on the Ta DFT data versus FitSNAP's ANL, on the same seeded 80/20 split.

    python benchmarks/calibration_ta.py [--seed 0] [--noise-classes group]

Splits the 363 configurations at random (seeded) 80/20, fits on the 80% and scores the predictive
intervals on the held-out 20% in physical units (eV/atom, eV/A). BAYES: per group-and-quantity noise,
isotropic evidence-optimized prior, 5-fold cross-validated quantile recalibration (exactly what the
BAYES solver does). ANL: FitSNAP's formula (weighted least squares, one noise level,
cov = sigmahat (Aw^T Aw)^-1), scored with its coefficient sigma, as FitSNAP reports it, and with its
noise added. Prints the acceptance checks of the Bayesian-solver issue.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _ta import constant_columns, split_by_configuration, ta_rows

from fitsnap_uq import calibration as C
from fitsnap_uq.linear.gaussian import interval_multiplier
from fitsnap_uq.linear.rows import fit_and_recalibrate, recalibration_map

COLS = ["n", "cov68", "cov95", "miscal_area", "nll", "zms", "spearman", "rmse", "rms_sigma"]


def anl(train, test_rows):
    """FitSNAP 3.1.0.4 ANL (solvers/anl.py) on the training rows; predictions for ``test_rows``."""
    aw, bw = train.w[:, None] * train.a, train.w * train.b
    npt, nbas = aw.shape
    invptp = np.linalg.pinv(aw.T @ aw)
    invptp = 0.5 * (invptp + invptp.T)
    fit = invptp @ (aw.T @ bw)
    res = bw - aw @ fit
    sigmahat = (res @ res / 2.0) / ((npt - nbas) / 2.0 - 1.0)
    cov = sigmahat * invptp
    mean = test_rows.a @ fit
    coef_sigma = C.anl_sigma(test_rows.a, cov)
    with np.errstate(divide="ignore"):
        noise = np.where(test_rows.w != 0, sigmahat / test_rows.w**2, np.inf)
    return mean, coef_sigma, np.sqrt(coef_sigma**2 + noise)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seeds", type=int, nargs="*", default=None,
                    help="also summarize these split seeds (one line each)")
    ap.add_argument("--noise-classes", default="group", choices=["one", "quantity", "group"])
    args = ap.parse_args()

    rows = split_by_configuration(ta_rows(), 0.2, args.seed)
    train = rows.training()
    test = rows.subset(rows.testing & (rows.w != 0))
    nconf = np.unique(rows.config_keys()).size
    nconf_test = np.unique(test.config_keys()).size
    print(f"Ta data: {nconf} configurations, {rows.b.size} rows; test: {nconf_test} configurations "
          f"(seed {args.seed}), {test.b.size} rows")

    t0 = time.perf_counter()
    opts = {"noise_classes": args.noise_classes, "prior": "isotropic", "weights": "ratios",
            "unpenalized": constant_columns(rows)}
    model, ratios = fit_and_recalibrate(train, folds=5, seed=args.seed, **opts)
    rec = recalibration_map(ratios)
    elapsed = time.perf_counter() - t0
    print(f"BAYES fit + 5-fold recalibration: {elapsed:.2f} s, {model.result.iterations} iterations, "
          f"log evidence {model.result.log_evidence:.6g}")

    def recal(level, q):
        return interval_multiplier(rec, level, q)

    mean, sigma = model.predict_raw(test)
    a_mean, a_coef, a_total = anl(train, test)
    tables = {
        "BAYES raw": C.metrics_table(test.b, mean, sigma, test.groups, test.row_types, test.testing),
        "BAYES recalibrated": C.metrics_table(test.b, mean, sigma, test.groups, test.row_types,
                                              test.testing, recal),
        "ANL (coefficient sigma, as FitSNAP)": C.metrics_table(test.b, a_mean, a_coef, test.groups,
                                                               test.row_types, test.testing),
        "ANL (+ its noise)": C.metrics_table(test.b, a_mean, a_total, test.groups, test.row_types,
                                             test.testing),
    }
    summary = {}
    for name, table in tables.items():
        allrows = table.xs("*ALL", level="Group").xs("Testing", level="Set")
        summary[name] = allrows
        print(f"\n== {name}: test rows (energy eV/atom, force eV/A, stress bar)")
        print(allrows[COLS].to_string(float_format=lambda x: f"{x:.4g}"))

    cal = summary["BAYES recalibrated"]
    e, f = cal.loc["Energy"], cal.loc["Force"]
    checks = [
        ("energy miscalibration area <= 0.07", e["miscal_area"], e["miscal_area"] <= 0.07),
        ("force miscalibration area <= 0.07", f["miscal_area"], f["miscal_area"] <= 0.07),
        ("force 68.3% coverage within 0.07", f["cov68"], abs(f["cov68"] - C.ONE_SIGMA) <= 0.07),
        ("force 95.4% coverage within 0.07", f["cov95"], abs(f["cov95"] - C.TWO_SIGMA) <= 0.07),
        ("energy 68.3% coverage within 0.12", e["cov68"], abs(e["cov68"] - C.ONE_SIGMA) <= 0.12),
        ("energy 95.4% coverage within 0.12", e["cov95"], abs(e["cov95"] - C.TWO_SIGMA) <= 0.12),
    ]
    print("\nAcceptance (BAYES recalibrated, test rows):")
    for text, value, ok in checks:
        print(f"  {'PASS' if ok else 'FAIL'}  {text}: {value:.4f}")
    if args.seeds:
        print("\nOther split seeds (BAYES recalibrated, test rows: cov68/cov95/miscal_area):")
        for seed in args.seeds:
            r = split_by_configuration(rows, 0.2, seed)
            tr, te = r.training(), r.subset(r.testing & (r.w != 0))
            m, ratios_s = fit_and_recalibrate(tr, folds=5, seed=seed, **opts)
            rc = recalibration_map(ratios_s)

            def mult(level, q, rc=rc):
                return float(np.interp(level, rc["levels"], rc[q]))

            mu, sg = m.predict_raw(te)
            t = C.metrics_table(te.b, mu, sg, te.groups, te.row_types, te.testing, mult)
            t = t.xs("*ALL", level="Group").xs("Testing", level="Set")
            print(f"  seed {seed}: " + "  ".join(
                f"{q} {t.loc[q, 'cov68']:.3f}/{t.loc[q, 'cov95']:.3f}/{t.loc[q, 'miscal_area']:.3f}"
                for q in ("Energy", "Force")))
    anl_f = summary["ANL (coefficient sigma, as FitSNAP)"].loc["Force"]
    print(f"\nANL beside it: force RMSE / RMS sigma = {anl_f['rmse'] / anl_f['rms_sigma']:.1f}, "
          f"force 1-sigma coverage {anl_f['cov68']:.3f}, miscalibration area {anl_f['miscal_area']:.3f}")
    return 0 if all(ok for _, _, ok in checks) else 1


if __name__ == "__main__":
    raise SystemExit(main())
