"""BAYES and MODELERROR at real size against the SVD fit step on the same rows (issue 17).

    python benchmarks/bench_scale.py [--data synthetic wbe] [--rows 300000] [--cols 500] [--groups 20]
        [--repeat 1] [--no-memory] [--load] [--joint] [--recompute]

Two systems: a synthetic one (``--rows`` x ``--cols``, ``--groups`` FitSNAP-like groups of an energy and
3 x 20 force rows per configuration, so 2 x groups = 40 noise classes; columns spanning 3 decades, a
model error on a fifth of the coefficients; ``benchmarks/_synthetic.py``) and the W-Be subset of
../shared/data (2 elements, 1916 configurations, 364,784 rows x 110 columns; FitSNAP's rows computed once
under ``mpirun -np 2`` and cached in ``benchmarks/out/scale/rows_wbe.npz``).

Timed in this process, each against the same rows (best of ``--repeat``, wall time; the CPU time of
that run is printed too, a steadier measure of the work on a shared machine; BLAS threads: every
method, the baselines included, runs under the thread limits of ``fitsnap_uq.linear.threads``):

* ``SVD fit step``: FitSNAP's SVD solver, ``scipy.linalg.lstsq(w A, w b, 1e-13)`` with its weighted
  copies (the baseline), and ``numpy.linalg.lstsq`` of the same system;
* ``BAYES``: ``fit_rows`` with a noise class per group and quantity (the one pass over the rows, the
  evidence maximization, the posterior);
* ``BAYES + 5-fold recalibration``: ``fit_and_recalibrate`` (per-(fold, class) statistics in the same
  pass, five CV refits from them, quantile recalibration) with the same noise classes;
* ``BAYES default (predictive)``: what ``[SOLVER] solver = BAYES`` runs with the default ``[UQ]``
  (``fit_with_model_error``: one noise class, 5-fold CV, the model-error predictive fit, recalibration);
* ``MODELERROR``: ``fit_model_error`` (iid likelihood, model error on every coefficient, the mean fixed
  at the weighted least-squares fit: the solver's default ``merr_mean = weights``); ``--joint`` also
  times the joint fit of mean and model error (FitSNAP MERR's objective).

Peak memory of each (``tracemalloc``: the most memory allocated during the call beyond what existed
before it, in a separate untimed run) against the bytes of the descriptor matrix. ``--load`` repeats the
timings with a second process multiplying matrices on every core. Prints PASS/FAIL for the targets:
BAYES + 5-fold recalibration <= 1.5 x the SVD fit step (each data set; the default predictive path is
checked against the same bound); MODELERROR <= 5 x BAYES; peak memory of each <= 2 x the descriptors.
"""

from __future__ import annotations

import argparse
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from _synthetic import synthetic_rows  # noqa: E402
from bench_threads import Loader  # noqa: E402

from fitsnap_uq.linear import threads  # noqa: E402
from fitsnap_uq.linear.merr import fit_model_error  # noqa: E402
from fitsnap_uq.linear.rows import (  # noqa: E402
    Rows,
    fit_and_recalibrate,
    fit_rows,
    fit_with_model_error,
    recalibration_map,
)

OUT = HERE / "out" / "scale"
BAYES_LIMIT = 1.5
MERR_LIMIT = 5.0
MEMORY_LIMIT = 2.0


def wbe_rows(recompute: bool) -> Rows | None:
    """The W-Be subset's rows (FitSNAP's descriptors, cached), or None with a message."""
    from calibration_newdata import load_rows

    loaded = load_rows("wbe", OUT, recompute)
    return None if loaded is None else loaded[0]


def methods(rows: Rows, noise_classes: str, joint: bool) -> dict[str, Callable[[], object]]:
    """The timed calls on ``rows`` (name -> zero-argument function)."""
    from scipy.linalg import lstsq

    def svd():
        w = rows.w
        return lstsq(w[:, None] * rows.a, w * rows.b, 1.0e-13)[0]

    def np_lstsq():
        w = rows.w
        return np.linalg.lstsq(w[:, None] * rows.a, w * rows.b, rcond=None)[0]

    def recal():
        fit, ratios = fit_and_recalibrate(rows, folds=5, seed=0, noise_classes=noise_classes)
        return fit, recalibration_map(ratios)

    def default():
        fit, model, ratios = fit_with_model_error(rows, folds=5, seed=0)
        return fit, model, recalibration_map(ratios)

    out = {
        "SVD fit step (FitSNAP, scipy lstsq)": svd,
        "numpy.linalg.lstsq": np_lstsq,
        "BAYES": lambda: fit_rows(rows, noise_classes=noise_classes),
        "BAYES + 5-fold recalibration": recal,
        "BAYES default (predictive model)": default,
        "MODELERROR (iid, mean fixed)": lambda: fit_model_error(rows.a, rows.b, w=rows.w, likelihood="iid",
                                                                fix_mean=True),
    }
    if joint:
        out["MODELERROR (iid, joint)"] = lambda: fit_model_error(rows.a, rows.b, w=rows.w,
                                                                 likelihood="iid", fix_mean=False)
    return out


def timed(fn: Callable[[], object], repeat: int, cols: int) -> tuple[float, float, object]:
    """Best wall time (s), the CPU time of that run (s, all threads of this process), the result."""
    best, cpu, out = np.inf, np.inf, None
    with threads.blas_threads(cols):
        for _ in range(repeat):
            start, start_cpu = time.perf_counter(), time.process_time()
            out = fn()
            wall = time.perf_counter() - start
            if wall < best:
                best, cpu = wall, time.process_time() - start_cpu
    return best, cpu, out


def peak_bytes(fn: Callable[[], object], cols: int) -> int:
    """Most bytes allocated during ``fn()`` beyond those allocated before it (tracemalloc)."""
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        with threads.blas_threads(cols):
            out = fn()
        peak = tracemalloc.get_traced_memory()[1] - base
        del out
    finally:
        tracemalloc.stop()
    return peak


def report(name: str, rows: Rows, calls: dict[str, Callable[[], object]], repeat: int, memory: bool,
           loaded: bool) -> bool:
    cols = rows.ncols()
    nbytes = rows.a.nbytes
    label = "with a second process loading every core" if loaded else "no other load from this benchmark"
    print(f"\n== {name}: {rows.a.shape[0]} rows x {rows.a.shape[1]} columns (descriptors "
          f"{nbytes / 2**20:.0f} MiB), {label}; BLAS threads {threads.threads_for(cols)}", flush=True)
    times: dict[str, float] = {}
    cpus: dict[str, float] = {}
    peaks: dict[str, int] = {}
    details: dict[str, str] = {}
    print(f"{'':38s} {'wall':>8s}   {'ratio':>5s}   {'CPU':>8s}   {'ratio':>5s}   (to the SVD fit step)")
    for key, fn in calls.items():
        dt, cpu, out = timed(fn, repeat, cols)
        times[key], cpus[key] = dt, cpu
        details[key] = describe(out)
        del out
        if memory:
            peaks[key] = peak_bytes(fn, cols)
        base = times.get("SVD fit step (FitSNAP, scipy lstsq)", dt)
        base_cpu = cpus.get("SVD fit step (FitSNAP, scipy lstsq)", cpu)
        mem = ""
        if memory:
            mem = f"   peak {peaks[key] / 2**20:6.0f} MiB = {peaks[key] / nbytes:4.2f} x descriptors"
        print(f"{key:38s} {dt:8.2f} s {dt / base:5.2f}   {cpu:8.2f} s {cpu / base_cpu:5.2f}{mem}   "
              f"{details[key]}", flush=True)
    svd = times["SVD fit step (FitSNAP, scipy lstsq)"]
    ok = True

    def verdict(passed: bool, text: str) -> None:
        nonlocal ok
        ok &= passed
        print(f"{'PASS' if passed else 'FAIL'}  [{name}] {text}")

    r = times["BAYES + 5-fold recalibration"] / svd
    verdict(r <= BAYES_LIMIT, f"BAYES + 5-fold recalibration <= {BAYES_LIMIT} x SVD fit step: ratio {r:.2f}")
    r = times["BAYES default (predictive model)"] / svd
    verdict(r <= BAYES_LIMIT, f"BAYES default (5-fold CV + predictive model) <= {BAYES_LIMIT} x SVD fit "
            f"step: ratio {r:.2f}")
    for key in [k for k in times if k.startswith("MODELERROR")]:
        r = times[key] / times["BAYES"]
        r2 = times[key] / times["BAYES + 5-fold recalibration"]
        verdict(r <= MERR_LIMIT, f"{key} <= {MERR_LIMIT} x BAYES: ratio {r:.2f} (to BAYES + recalibration "
                f"{r2:.2f})")
    for key, peak in peaks.items():
        if key.startswith(("BAYES", "MODELERROR")):
            verdict(peak <= MEMORY_LIMIT * nbytes, f"peak memory of {key} <= {MEMORY_LIMIT} x descriptors: "
                    f"{peak / nbytes:.2f}")
    return ok


def describe(out: object) -> str:
    """One line on a result (convergence, size of the posterior)."""
    from fitsnap_uq.linear.merr import MerrResult
    from fitsnap_uq.linear.rows import RowsFit

    first = out[0] if isinstance(out, tuple) else out
    if isinstance(first, RowsFit):
        res = first.result
        text = f"{len(first.classes)} noise classes, {res.iterations} evidence iterations"
        if isinstance(out, tuple) and len(out) == 3:
            text += f"; predictive model: {out[1].message}"
        return text
    if isinstance(first, MerrResult):
        return f"{first.iterations} iterations, {first.message}"
    return ""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", nargs="+", default=["synthetic", "wbe"], choices=["synthetic", "wbe"])
    ap.add_argument("--rows", type=int, default=300_000)
    ap.add_argument("--cols", type=int, default=500)
    ap.add_argument("--groups", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    ap.add_argument("--load", action="store_true", help="also time with a second process loading every core")
    ap.add_argument("--joint", action="store_true", help="also time MODELERROR with the mean fitted jointly")
    ap.add_argument("--recompute", action="store_true", help="recompute the W-Be rows with FitSNAP")
    args = ap.parse_args()
    print(f"cores {threads.available_cores()}; thread budget {threads.budget()}")
    ok = True
    for data in args.data:
        if data == "synthetic":
            start = time.perf_counter()
            rows = synthetic_rows(args.rows, args.cols, groups=args.groups)
            name = f"synthetic ({2 * args.groups} noise classes)"
            print(f"synthetic rows generated in {time.perf_counter() - start:.1f} s")
        else:
            rows = wbe_rows(args.recompute)
            if rows is None:
                continue
            name = "W-Be subset (noise class per group and quantity)"
        calls = methods(rows, "group", args.joint)
        ok &= report(name, rows, calls, args.repeat, not args.no_memory, loaded=False)
        if args.load:
            with Loader(True):
                ok &= report(name, rows, calls, args.repeat, memory=False, loaded=True)
        del rows, calls
    print(f"\n{'ALL PASS' if ok else 'SOME FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
