"""Calibration of predictive uncertainties on NEW configurations (no FitSNAP group label).

    python benchmarks/calibration_newdata.py [--datasets ta wbe] [--seeds 101 202 303]
        [--no-logo | --logo-groups N] [--quick] [--recompute] [--outdir DIR]

What users face: an MD frame or a held-out structure arrives without a group, so its sigma must come
from the configuration itself. Two scenarios, on FitSNAP's own linear system (rows from FitSNAP's
descriptor stage, cached under ``benchmarks/out/calibration_newdata/rows_<dataset>.npz``; W-Be is
computed under ``mpirun -np 2``):

* held-out configurations: per split seed, 20% of each group's configurations held out (seeded), fit on
  the rest, every held-out Energy and Force row predicted without its group (stress rows not scored);
* leave-one-group-out (LOGO): each group held out in turn (a new kind of structure), fit on the others.

Methods, all on the same rows: ours (``fit_with_model_error``: configuration-dependent predictive
model, raw and quantile-recalibrated), the previous default (``fit_and_recalibrate`` with per-group
noise, predicted with the pooled per-quantity noise, recalibrated), FitSNAP's ANL formula, pytuq's
Bayesian linear regression (``pytuq.lreg.anl``) and, where practical, its embedded model-error
regression (``pytuq.lreg.merr``), and POPSRegression. Plain weighted least squares (FitSNAP's SVD) is
fitted too, to check that our mean is not worse.

Metrics per method and quantity (overall and per group): cov68/cov95 (coverage of the 68.27/95.45%
intervals), MA (miscalibration area), NLL (Gaussian with the calibrated 1-sigma), ZMS, Spearman(|err|,
sigma), ENCE, RMSE. Writes JSON, Markdown and an error-based calibration plot per data set under
``--outdir``, and prints an ACCEPTANCE summary for ours (PASS/FAIL per bound, not tuned to pass).
"""

from __future__ import annotations

import argparse
import configparser
import contextlib
import io
import json
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fitsnap_uq import calibration as C  # noqa: E402
from fitsnap_uq.linear.atomscale import FLOOR_MODES  # noqa: E402
from fitsnap_uq.linear.bayes import PRIORS  # noqa: E402
from fitsnap_uq.linear.rows import (  # noqa: E402
    BASES,
    SCALE_WEIGHTS,
    Rows,
    composition,
    composition_columns,
    fit_and_recalibrate,
    fit_with_model_error,
    recalibration_map,
)

DATA = ROOT.parent / "shared" / "data"
DATASETS = {  # key: (folder, input file, MPI ranks for the descriptors)
    "ta": ("Ta_Linear_JCP2014", "Ta-example.in", 1),
    "wbe": ("WBe_PRB2019_subset", "WBe-example.in", 2),
}
DEFAULT_OUT = ROOT / "benchmarks" / "out" / "calibration_newdata"
SCORED = ("Energy", "Force")
GROUP_MIN_FORCE_ROWS = 200
PYTUQ_MERR_MAX_ROWS = 20000
LOGO_PREV_DEFAULT_MAX_GROUPS = 20
COLS = ["n", "cov68", "cov95", "miscal_area", "nll", "nll_nz", "zms", "spearman", "ence", "rmse", "rms_sigma"]


# ----------------------------------------------------------------------------------------- rows

def _dump_rows_main(infile: str, out: str) -> None:
    """Subprocess entry (possibly under mpirun): FitSNAP's descriptors of ``infile`` to ``out``."""
    try:
        from mpi4py import MPI

        comm = MPI.COMM_WORLD
    except ImportError:
        comm = None
    from fitsnap_uq.fitting import descriptor_rows

    rows, _ = descriptor_rows(infile, comm=comm)
    if rows is not None:
        np.savez(out, a=rows.a, b=rows.b, w=rows.w, testing=rows.testing,
                 groups=rows.groups.astype(str), row_types=rows.row_types.astype(str),
                 configs=rows.configs.astype(str))


def bzeroflag(infile: Path) -> int:
    """``[BISPECTRUM] bzeroflag`` of a FitSNAP input (FitSNAP's default 1)."""
    cfg = configparser.ConfigParser(inline_comment_prefixes="#")
    cfg.optionxform = str  # type: ignore[assignment, method-assign]
    cfg.read(infile)
    return int(cfg["BISPECTRUM"].get("bzeroflag", "1")) if "BISPECTRUM" in cfg else 1


def compute_rows(key: str, cache: Path) -> None:
    """Run FitSNAP's descriptors on a temporary copy of the data set; write ``cache``."""
    folder, infile, nproc = DATASETS[key]
    src = DATA / folder
    with tempfile.TemporaryDirectory(prefix=f"newdata-{key}-") as tmp:
        dest = Path(tmp) / folder
        shutil.copytree(src, dest)
        for p in [dest, *dest.rglob("*")]:
            p.chmod(p.stat().st_mode | 0o200)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--_dump-rows", infile, str(cache)]
        if nproc > 1:
            mpirun = Path(sys.executable).parent / "mpirun"
            cmd = [str(mpirun) if mpirun.exists() else "mpirun", "-np", str(nproc), *cmd]
        t0 = time.perf_counter()
        print(f"[{key}] computing FitSNAP rows: {' '.join(cmd[:4])} ... (in {dest})", flush=True)
        proc = subprocess.run(cmd, cwd=dest, capture_output=True, text=True)
        if proc.returncode != 0 or not cache.exists():
            raise RuntimeError(f"FitSNAP descriptors failed for {key}:\n{proc.stdout[-3000:]}\n"
                               f"{proc.stderr[-3000:]}")
        print(f"[{key}] rows computed in {time.perf_counter() - t0:.1f} s -> {cache}", flush=True)


def load_rows(key: str, outdir: Path, recompute: bool) -> tuple[Rows, np.ndarray | None] | None:
    """The data set's rows (cached) and the unpenalized-column mask; None (with a message) if absent."""
    folder, infile, _ = DATASETS[key]
    src = DATA / folder / infile
    cache = outdir / f"rows_{key}.npz"
    if not src.exists() and not cache.exists():
        print(f"SKIP {key}: data not found at {src} (../shared/data beside the checkout) and no cache")
        return None
    if recompute or not cache.exists():
        if not src.exists():
            print(f"SKIP {key}: --recompute but data not found at {src}")
            return None
        outdir.mkdir(parents=True, exist_ok=True)
        cache.unlink(missing_ok=True)
        compute_rows(key, cache)
    d = np.load(cache)
    rows = Rows(d["a"], d["b"], d["w"], np.zeros(d["b"].shape[0], dtype=bool),
                d["groups"].astype(str).astype(object), d["row_types"].astype(str).astype(object),
                d["configs"].astype(str).astype(object))
    bz = bzeroflag(src) if src.exists() else 1
    unpen = None
    if bz == 0:  # per-element constant columns: zero on every force and stress row
        other = rows.row_types.astype(str) != "Energy"
        unpen = np.all(rows.a[other] == 0, axis=0) & np.any(rows.a[~other] != 0, axis=0)
    return rows, unpen


def element_order(infile: Path) -> list[str]:
    """``[BISPECTRUM] type`` of a FitSNAP input: the potential's element order."""
    cfg = configparser.ConfigParser(inline_comment_prefixes="#")
    cfg.optionxform = str  # type: ignore[assignment, method-assign]
    cfg.read(infile)
    return cfg["BISPECTRUM"]["type"].split()


def attach_atoms(rows: Rows, key: str) -> Rows:
    """``rows`` with :attr:`Rows.atom` and :attr:`Rows.element` of the force rows, read from the data
    set's JSON files (their ``AtomTypes``; FitSNAP's force rows of a configuration run atom by atom,
    x/y/z, after its energy row). Unchanged (with a message) if the JSON files are not there."""
    folder, infile, _ = DATASETS[key]
    src = DATA / folder
    if not (src / infile).exists():
        print(f"  [{key}] no JSON data at {src}: no per-atom force scale")
        return rows
    order = {e: i for i, e in enumerate(element_order(src / infile))}
    types = rows.row_types.astype(str)
    keys = rows.config_keys()
    atom = np.full(types.size, -1)
    element = np.full(types.size, -1)
    natoms = np.zeros(types.size, dtype=int)
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1], True])
    for s, e in zip(starts[:-1], starts[1:]):
        path = src / "JSON" / str(rows.groups[s]) / str(rows.configs[s])
        text = path.read_text()
        data = json.loads(text[text.index("{"):])["Dataset"]["Data"][0]
        codes = np.array([order[t] for t in data["AtomTypes"]])
        natoms[s:e] = codes.size
        force = s + np.flatnonzero(types[s:e] == "Force")
        if force.size != 3 * codes.size:
            raise ValueError(f"{path}: {force.size} force rows for {codes.size} atoms")
        atom[force] = np.repeat(np.arange(codes.size), 3)
        element[force] = np.repeat(codes, 3)
    return replace(rows, atom=atom, element=element, natoms=natoms)


def split_by_group(rows: Rows, seed: int, frac: float = 0.2) -> np.ndarray:
    """(n,) bool: rows of a seeded ``frac`` of each group's configurations (held out)."""
    keys = rows.config_keys()
    groups = rows.groups.astype(str)
    rng = np.random.default_rng(seed)
    held = np.zeros(keys.size, dtype=bool)
    for g in np.unique(groups):
        ks = np.unique(keys[groups == g])
        k = int(round(frac * ks.size))
        if k:
            held |= np.isin(keys, rng.choice(ks, size=k, replace=False))
    return held


# -------------------------------------------------------------------------------------- methods

def _interp_multiplier(rec: dict[str, np.ndarray]):
    def mult(level: float, q: str | None) -> float:
        if q in rec:
            return float(np.interp(level, rec["levels"], rec[q]))
        return C.gaussian_multiplier(level)
    return mult


def _quad(a: np.ndarray, cov: np.ndarray) -> np.ndarray:
    return np.maximum(np.einsum("ij,jk,ik->i", a, cov, a, optimize=True), 0.0)


def anl_formula(train: Rows) -> tuple[np.ndarray, np.ndarray, float]:
    """FitSNAP ANL (fitsnap3lib/solvers/anl.py, cov_nugget 0, no transpose trick): mean, cov, sigmahat.

    ``invptp = pinv(Aw^T Aw)`` symmetrized, ``fit = invptp Aw^T bw``,
    ``sigmahat = (res.res / 2) / ((n - p) / 2 - 1)`` (= RSS_w / (n - p - 2)), ``cov = sigmahat invptp``.
    """
    aw, bw = train.w[:, None] * train.a, train.w * train.b
    npt, nbas = aw.shape
    invptp = np.linalg.pinv(aw.T @ aw)
    invptp = 0.5 * invptp + 0.5 * invptp.T
    fit = invptp @ (aw.T @ bw)
    res = bw - aw @ fit
    sigmahat = float((res @ res / 2.0) / ((npt - nbas) / 2.0 - 1.0))
    return fit, sigmahat * invptp, sigmahat


def svd_mean(train: Rows) -> np.ndarray:
    """FitSNAP's SVD solver: ``scipy.linalg.lstsq(Aw, bw, 1e-13)``."""
    from scipy.linalg import lstsq

    return lstsq(train.w[:, None] * train.a, train.w * train.b, 1.0e-13)[0]


class Peers:
    """Which optional peers work, and why not (printed once)."""

    def __init__(self) -> None:
        self.notes: dict[str, str] = {}
        try:
            from popsregression import POPSRegression  # noqa: F401

            self.pops = True
        except Exception as exc:  # noqa: BLE001
            self.pops = False
            self.notes["POPSRegression"] = f"not importable ({type(exc).__name__}: {exc})"
        try:
            from pytuq.lreg.anl import anl  # noqa: F401
            from pytuq.lreg.merr import lreg_merr  # noqa: F401

            self.pytuq = True
        except Exception as exc:  # noqa: BLE001
            self.pytuq = False
            self.notes["pytuq"] = f"not importable ({type(exc).__name__}: {exc})"

    def note(self, name: str, text: str) -> None:
        if self.notes.get(name) != text:
            self.notes[name] = text
            print(f"  note [{name}]: {text}", flush=True)


def run_methods(train: Rows, test: Rows, unpen: np.ndarray | None, peers: Peers, key: str,
                seed: int, pops_max_rows: int, pytuq_merr: bool, timings: dict[str, list[float]],
                prev_default: bool = True, svd: bool = True, ours: dict | None = None
                ) -> tuple[dict[str, dict], dict[str, np.ndarray]]:
    """Fit every method on ``train``; predict ``test`` (no group used).

    Returns:
        {method: {"mean", "sigma" (raw 1-sigma), "mult" (calibrated multiplier)}}, and
        {"svd": mean of plain weighted least squares} for the mean check.
    """
    out: dict[str, dict] = {}
    a, types = test.a, test.row_types.astype(str)
    gauss = C.gaussian_multiplier

    def clock(name: str, t0: float) -> None:
        timings.setdefault(name, []).append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    full, pm, ratios = fit_with_model_error(train, folds=5, seed=0, unpenalized=unpen,
                                            **(ours or {}))
    mean = a @ full.result.mean
    pv = _quad(a, full.result.cov)
    labelled = test.atom is not None and test.element is not None
    # element fractions of the energy rows from the potential's per-element constant columns (found
    # on the training rows: the layout, not the test data)
    comp = (composition(a, composition_columns(train.a, train.row_types))
            if pm.energy_scale is not None else None)
    log_scale, log_floor = pm.log_scales(a, pv, types, test.atom_ids() if labelled else None,
                                         test.element if labelled else None, comp, test.natoms)
    sigma = np.sqrt(pm.variance(a, pv, types, log_scale, log_floor))
    out["ours raw"] = {"mean": mean, "sigma": sigma, "mult": gauss}
    out["ours recal"] = {"mean": mean, "sigma": sigma, "mult": _interp_multiplier(recalibration_map(ratios))}
    clock("ours", t0)

    if prev_default:
        t0 = time.perf_counter()
        old, old_ratios = fit_and_recalibrate(train, folds=5, seed=0, noise_classes="group",
                                              unpenalized=unpen)
        noise = np.array([old.noise_var[q] for q in types])
        out["prev-default recal"] = {"mean": a @ old.result.mean,
                                     "sigma": np.sqrt(_quad(a, old.result.cov) + noise),
                                     "mult": _interp_multiplier(recalibration_map(old_ratios))}
        clock("prev-default", t0)

    t0 = time.perf_counter()
    fit, cov, _ = anl_formula(train)
    out["FitSNAP ANL"] = {"mean": a @ fit, "sigma": C.anl_sigma(a, cov), "mult": gauss}
    clock("FitSNAP ANL", t0)

    aw, bw = train.w[:, None] * train.a, train.w * train.b
    if peers.pytuq:
        t0 = time.perf_counter()
        try:
            from pytuq.lreg.anl import anl

            with contextlib.redirect_stdout(io.StringIO()):
                lr = anl()
                lr.fita(aw, bw)
            out["pytuq anl"] = {"mean": a @ lr.cf, "sigma": C.anl_sigma(a, lr.cf_cov), "mult": gauss}
        except Exception as exc:  # noqa: BLE001
            peers.note("pytuq anl", f"failed ({type(exc).__name__}: {exc})")
        clock("pytuq anl", t0)
        if pytuq_merr:
            t0 = time.perf_counter()
            res = _pytuq_merr(aw, bw, a, seed, peers)
            if res is not None:
                out["pytuq merr"] = {"mean": res[0], "sigma": res[1], "mult": gauss}
            clock("pytuq merr", t0)
    if peers.pops:
        t0 = time.perf_counter()
        from popsregression import POPSRegression

        idx = np.arange(aw.shape[0])
        if pops_max_rows and idx.size > pops_max_rows:
            idx = np.sort(np.random.default_rng(seed).choice(idx, size=pops_max_rows, replace=False))
            peers.note("POPSRegression", f"{key}: fitted on a seeded random subset of {pops_max_rows} of "
                       f"the weighted training rows (of {aw.shape[0]})")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = POPSRegression().fit(aw[idx], bw[idx])
            mu, sd = model.predict(a, return_std=True)
        out["POPSRegression"] = {"mean": mu, "sigma": sd, "mult": gauss}
        clock("POPSRegression", t0)
    extra = {}
    if svd:
        t0 = time.perf_counter()
        extra["svd"] = a @ svd_mean(train)
        clock("SVD", t0)
    return out, extra


def _pytuq_merr(aw: np.ndarray, bw: np.ndarray, a: np.ndarray, seed: int, peers: Peers
                ) -> tuple[np.ndarray, np.ndarray] | None:
    """pytuq's embedded model-error regression as FitSNAP's MERR solver calls it (weighted rows,
    zero columns dropped, data variance fixed at ANL's sigmahat, ``iid`` likelihood, BFGS with
    finite-difference gradients); sigma of a new row = sqrt(a^T L L^T a) (model error only: the data
    variance is per weighted row, i.e. needs the row's group weight)."""
    from pytuq.lreg.merr import lreg_merr

    if aw.shape[0] > PYTUQ_MERR_MAX_ROWS:
        peers.note("pytuq merr", f"skipped: {aw.shape[0]} training rows x {aw.shape[1]} columns; its BFGS "
                   f"has no analytic gradient (2p finite-difference evaluations of an O(n p^2) "
                   f"likelihood per iteration), impractical above {PYTUQ_MERR_MAX_ROWS} rows")
        return None
    live = np.any(aw != 0, axis=0)
    _, _, sigmahat = anl_formula(Rows(aw[:, live], bw, np.ones(bw.size), np.zeros(bw.size, bool),
                                      *(np.zeros(bw.size, dtype=object),) * 3))
    np.random.seed(seed)  # pytuq draws its starting point from numpy's global generator
    lr = lreg_merr(merr_method="iid", opt_method="bfgs",
                   dvinfo={"fcn": lambda v, p: sigmahat, "npar": 0, "aux": None})
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            lr.fita(aw[:, live], bw)
    except Exception as exc:  # noqa: BLE001
        peers.note("pytuq merr", f"failed ({type(exc).__name__}: {exc})")
        return None
    if not np.all(np.isfinite(lr.cf)) or not np.all(np.isfinite(lr.cf_cov)):
        peers.note("pytuq merr", "optimizer returned non-finite coefficients")
        return None
    al = a[:, live]
    return al @ lr.cf, np.sqrt(_quad(al, lr.cf_cov))


# -------------------------------------------------------------------------------------- metrics

def metrics(err: np.ndarray, sigma: np.ndarray, q: str, mult, live: np.ndarray, bins: int = 10
            ) -> dict[str, float]:
    """``block_metrics`` plus ENCE of the calibrated 1-sigma, and ``nll_nz``: the NLL over rows with
    a nonzero descriptor row (``live``; an all-zero row gets sigma 0 from a coefficient covariance,
    whose NLL is infinite or 0/0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        rec = C.block_metrics(err, sigma, q, mult)
        rec["nll_nz"] = (C.block_metrics(err[live], sigma[live], q, mult)["nll"] if live.any()
                         else float("nan"))
    s1 = mult(C.ONE_SIGMA, q) * sigma
    rec["ence"] = C.ence(err, s1, bins=max(1, min(bins, err.size // 20))) if err.size else float("nan")
    return rec


def score(methods: dict[str, dict], test: Rows) -> dict:
    """{method: {"all": {q: metrics}, "groups": {group: {q: metrics}}}}."""
    types = test.row_types.astype(str)
    groups = test.groups.astype(str)
    live = np.any(test.a != 0, axis=1)
    out: dict = {}
    for name, m in methods.items():
        err = test.b - m["mean"]
        rec: dict = {"all": {}, "groups": {}}
        for q in SCORED:
            sel = types == q
            if sel.any():
                rec["all"][q] = metrics(err[sel], m["sigma"][sel], q, m["mult"], live[sel])
            for g in np.unique(groups[sel]):
                gs = sel & (groups == g)
                rec["groups"].setdefault(str(g), {})[q] = metrics(err[gs], m["sigma"][gs], q, m["mult"],
                                                                  live[gs])
        out[name] = rec
    return out


def mean_check(methods: dict[str, dict], extra: dict[str, np.ndarray], test: Rows) -> dict:
    """Per group and quantity: held-out RMSE of ours' mean / RMSE of plain weighted LSQ (SVD)."""
    types = test.row_types.astype(str)
    groups = test.groups.astype(str)
    e_ours = test.b - methods["ours raw"]["mean"]
    e_svd = test.b - extra["svd"]
    out: dict = {}
    for q in SCORED:
        for g in np.unique(groups[types == q]):
            s = (types == q) & (groups == g)
            r_svd = float(np.sqrt(np.mean(e_svd[s] ** 2)))
            r_ours = float(np.sqrt(np.mean(e_ours[s] ** 2)))
            ratio = r_ours / r_svd if r_svd > 1e-12 else float("nan")
            out.setdefault(str(g), {})[q] = {"n": int(s.sum()), "rmse_ours": r_ours, "rmse_svd": r_svd,
                                             "ratio": ratio}
    return out


def _fmt(x: float) -> str:
    return f"{x:.4g}" if isinstance(x, float) else str(x)


def overall_table(scores: dict) -> pd.DataFrame:
    rows = []
    for name, rec in scores.items():
        for q, m in rec["all"].items():
            rows.append({"method": name, "q": q, **{k: m[k] for k in COLS}})
    return pd.DataFrame(rows).set_index(["method", "q"])


def group_force_table(scores: dict) -> pd.DataFrame:
    """Force cov95 per group (groups with >= GROUP_MIN_FORCE_ROWS held-out force rows) per method."""
    ref = scores["ours recal"]["groups"]
    big = [g for g, r in ref.items() if "Force" in r and r["Force"]["n"] >= GROUP_MIN_FORCE_ROWS]
    data = {"n_F": [ref[g]["Force"]["n"] for g in big]}
    for name, rec in scores.items():
        data[name] = [rec["groups"][g]["Force"]["cov95"] for g in big]
    return pd.DataFrame(data, index=pd.Index(big, name="group"))


# ----------------------------------------------------------------------------------------- plot

def error_plot(path: Path, curves: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]], title: str) -> None:
    """Error-based calibration: RMSE vs RMS calibrated sigma per sigma bin, per quantity."""
    from fitsnap_uq.plotting import pyplot, save

    plt = pyplot()
    fig, axes = plt.subplots(1, len(curves), figsize=(5.2 * len(curves), 5))
    axes = np.atleast_1d(axes)
    for ax, (q, per_method) in zip(axes, curves.items()):
        lo, hi = np.inf, 0.0
        for name, (rs, rm) in per_method.items():
            ok = (rs > 0) & (rm > 0)
            ax.loglog(rs[ok], rm[ok], marker="o", ms=3, lw=1.4, label=name)
            if ok.any():
                lo, hi = min(lo, rs[ok].min(), rm[ok].min()), max(hi, rs[ok].max(), rm[ok].max())
        if np.isfinite(lo) and hi > 0:
            ax.loglog([lo, hi], [lo, hi], color="0.5", ls="--", lw=1, label="ideal")
        ax.set_xlabel(f"RMS calibrated sigma per bin ({C.UNITS.get(q, '')})")
        ax.set_ylabel(f"RMSE per bin ({C.UNITS.get(q, '')})")
        ax.set_title(f"{title}: {q}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    save(fig, path, dpi=110)


# ------------------------------------------------------------------------------------------ main

def acceptance(scores: dict, check: dict) -> list[tuple[str, str, bool]]:
    """The bounds for ours (recalibrated) on one split: [(text, value, ok)]."""
    ours = scores["ours recal"]
    e, f = ours["all"]["Energy"], ours["all"]["Force"]
    out = [
        ("energy MA <= 0.07", f"{e['miscal_area']:.3f}", e["miscal_area"] <= 0.07),
        ("force MA <= 0.07", f"{f['miscal_area']:.3f}", f["miscal_area"] <= 0.07),
        ("force cov68 within 0.05 of 0.683", f"{f['cov68']:.3f}", abs(f["cov68"] - C.ONE_SIGMA) <= 0.05),
        ("force cov95 within 0.05 of 0.954", f"{f['cov95']:.3f}", abs(f["cov95"] - C.TWO_SIGMA) <= 0.05),
    ]
    big = {g: r["Force"] for g, r in ours["groups"].items()
           if "Force" in r and r["Force"]["n"] >= GROUP_MIN_FORCE_ROWS}
    bad = {g: m["cov95"] for g, m in big.items() if not 0.85 <= m["cov95"] <= 0.99}
    out.append((f"per-group force cov95 in [0.85, 0.99] ({len(big)} groups >= {GROUP_MIN_FORCE_ROWS} rows)",
                "all in" if not bad else ", ".join(f"{g} {v:.3f}" for g, v in sorted(bad.items())),
                not bad))
    if "POPSRegression" in scores:
        p = scores["POPSRegression"]["all"]["Force"]["spearman"]
        out.append(("force Spearman >= POPSRegression's", f"{f['spearman']:.3f} vs {p:.3f}",
                    f["spearman"] >= p))
    for q, m in (("Energy", e), ("Force", f)):
        for peer in ("FitSNAP ANL", "POPSRegression"):
            if peer in scores:
                key = "nll"
                pn = scores[peer]["all"][q][key]
                if not (np.isfinite(pn) and np.isfinite(m[key])):
                    key = "nll_nz"  # NaN/inf from zero-sigma rows: compare on rows with nonzero descriptors
                    pn = scores[peer]["all"][q][key]
                out.append((f"{q.lower()} {'NLL' if key == 'nll' else 'NLL (nonzero rows)'} < {peer}'s",
                            f"{m[key]:.4g} vs {pn:.4g}", m[key] < pn))
    for q in SCORED:
        ratios = {g: r[q]["ratio"] for g, r in check.items() if q in r and np.isfinite(r[q]["ratio"])}
        if ratios:
            g = max(ratios, key=ratios.get)
            out.append((f"max group {q.lower()} RMSE ratio ours/SVD <= 1.10", f"{ratios[g]:.3f} ({g})",
                        ratios[g] <= 1.10))
    return out


def ours_options(args: argparse.Namespace) -> dict:
    """Keyword arguments of ours' ``fit_with_model_error`` from the command line."""
    out = {"rank": args.rank, "basis": args.basis, "atom_floor": args.atom_floor,
           "energy_scale": args.energy_scale, "scale_weights": args.scale_weights}
    if args.prior is not None:
        out["prior"] = args.prior
    return out


def run_dataset(key: str, args: argparse.Namespace, peers: Peers, report: dict, md: list[str]) -> None:
    loaded = load_rows(key, args.outdir, args.recompute)
    if loaded is None:
        report[key] = {"skipped": True}
        return
    rows, unpen = loaded
    if args.atom_scale or args.energy_scale:
        rows = attach_atoms(rows, key)  # atom/element labels and numbers of atoms
        if not args.atom_scale:
            rows = replace(rows, atom=None, element=None)
    rows = rows.subset(rows.w != 0)
    ngroups = np.unique(rows.groups.astype(str)).size
    nconf = np.unique(rows.config_keys()).size
    print(f"\n######## {key}: {rows.b.size} rows ({nconf} configurations, {ngroups} groups), "
          f"{rows.a.shape[1]} columns; unpenalized columns: "
          f"{None if unpen is None else np.flatnonzero(unpen).tolist()}", flush=True)
    md += [f"# {key}", "", f"{rows.b.size} rows, {nconf} configurations, {ngroups} groups, "
           f"{rows.a.shape[1]} columns.", ""]
    res: dict = {"rows": int(rows.b.size), "configurations": int(nconf), "groups": int(ngroups),
                 "seeds": {}, "logo": {}}
    report[key] = res
    timings: dict[str, list[float]] = {}
    pytuq_merr = True
    plot_curves: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for seed in args.seeds:
        held = split_by_group(rows, seed)
        train = rows.subset(~held)
        test = rows.subset(held & np.isin(rows.row_types.astype(str), SCORED))
        t0 = time.perf_counter()
        methods, extra = run_methods(train, test, unpen, peers, key, seed, args.pops_max_rows,
                                     pytuq_merr, timings, ours=ours_options(args))
        scores = score(methods, test)
        check = mean_check(methods, extra, test)
        elapsed = time.perf_counter() - t0
        n_test_conf = np.unique(test.config_keys()).size
        print(f"\n=== {key} seed {seed}: train {train.b.size} rows, held out {n_test_conf} configurations "
              f"({np.sum(test.row_types == 'Energy')} energy, {np.sum(test.row_types == 'Force')} force "
              f"rows), {elapsed:.1f} s", flush=True)
        table = overall_table(scores)
        show = table[["n", "cov68", "cov95", "miscal_area", "nll", "nll_nz", "spearman", "ence", "rmse",
                      "rms_sigma"]]
        print(show.to_string(float_format=_fmt))
        gtab = group_force_table(scores)
        print(f"\n  force cov95 per group (>= {GROUP_MIN_FORCE_ROWS} held-out force rows):")
        print(gtab.to_string(float_format=lambda x: f"{x:.3f}"))
        out_ours = gtab.index[(gtab["ours recal"] < 0.85) | (gtab["ours recal"] > 0.99)].tolist()
        print(f"  ours recal outside [0.85, 0.99]: {out_ours if out_ours else 'none'}")
        ctab = pd.DataFrame({g: {f"{q} ratio": r[q]["ratio"] for q in SCORED if q in r}
                             for g, r in check.items()}).T
        print("\n  mean check: held-out RMSE of ours' mean / SVD's, per group")
        print(ctab.to_string(float_format=lambda x: f"{x:.3f}"))
        print("  max over groups: " + ", ".join(f"{c} {ctab[c].max():.3f} ({ctab[c].idxmax()})"
                                                 for c in ctab.columns if ctab[c].notna().any()))
        checks = acceptance(scores, check)
        res["seeds"][str(seed)] = {
            "train_rows": int(train.b.size), "test_configurations": int(n_test_conf), "seconds": elapsed,
            "scores": scores, "mean_check": check,
            "acceptance": [{"check": t, "value": v, "pass": bool(ok)} for t, v, ok in checks]}
        md += [f"## {key}, seed {seed} (held-out configurations, predicted without group)", "",
               show.reset_index().to_markdown(index=False, floatfmt=".4g"), "",
               f"Force cov95 per group (>= {GROUP_MIN_FORCE_ROWS} held-out force rows); ours outside "
               f"[0.85, 0.99]: {out_ours if out_ours else 'none'}", "",
               gtab.reset_index().to_markdown(index=False, floatfmt=".3f"), "",
               "Held-out RMSE of ours' mean / SVD's:", "",
               ctab.reset_index().to_markdown(index=False, floatfmt=".3f"), ""]
        if seed == args.seeds[0]:
            types = test.row_types.astype(str)
            for q in SCORED:
                sel = types == q
                plot_curves[q] = {}
                for name, m in methods.items():
                    if name == "ours raw":
                        continue
                    s1 = m["mult"](C.ONE_SIGMA, q) * m["sigma"][sel]
                    plot_curves[q][name] = C.error_based_curve(test.b[sel] - m["mean"][sel], s1, bins=15)
    res["acceptance_rows"] = None
    if plot_curves:
        path = args.outdir / f"error_based_{key}.png"
        try:
            error_plot(path, plot_curves, f"{key} seed {args.seeds[0]}")
            res["plot"] = str(path)
        except Exception as exc:  # noqa: BLE001
            print(f"  (no plot: {type(exc).__name__}: {exc})")

    if args.logo:
        groups = sorted(np.unique(rows.groups.astype(str)))
        if args.logo_groups:
            groups = groups[:args.logo_groups]
        prev = args.logo_prev_default or ngroups <= LOGO_PREV_DEFAULT_MAX_GROUPS
        print(f"\n=== {key} leave-one-group-out: {len(groups)} groups", flush=True)
        if not prev:
            mean_prev = np.mean(timings.get("prev-default", [float("nan")]))
            print(f"  prev-default left out of LOGO: its per-group noise classes ({ngroups} groups x 3 "
                  f"quantities) take {mean_prev:.0f} s per fit here, {len(groups)} fits would take "
                  f"~{len(groups) * mean_prev / 60:.0f} min (--logo-prev-default to include it)", flush=True)
        logo_rows = []
        t_logo = time.perf_counter()
        for i, g in enumerate(groups):
            t0 = time.perf_counter()
            in_g = rows.groups.astype(str) == g
            train = rows.subset(~in_g)
            test = rows.subset(in_g & np.isin(rows.row_types.astype(str), SCORED))
            methods, _ = run_methods(train, test, unpen, peers, key, 0, args.pops_max_rows,
                                     pytuq_merr and args.logo_pytuq_merr, timings, prev_default=prev,
                                     svd=False, ours=ours_options(args))
            scores = score(methods, test)
            res["logo"][g] = {name: rec["all"] for name, rec in scores.items()}
            rec = {"group": g, "n_E": int(np.sum(test.row_types == "Energy")),
                   "n_F": int(np.sum(test.row_types == "Force"))}
            for name, s in scores.items():
                if "Force" in s["all"]:
                    rec[name] = s["all"]["Force"]["cov95"]
            logo_rows.append(rec)
            print(f"  [{i + 1}/{len(groups)}] {g}: {time.perf_counter() - t0:.1f} s, force cov95 "
                  + " ".join(f"{n}={rec[n]:.2f}" for n in scores if n in rec), flush=True)
        ltab = pd.DataFrame(logo_rows).set_index("group")
        methods_cols = [c for c in ltab.columns if c not in ("n_E", "n_F")]
        print(f"\n  LOGO force cov95 per held-out group ({time.perf_counter() - t_logo:.0f} s):")
        print(ltab.to_string(float_format=lambda x: f"{x:.3f}"))
        frac = {c: float(np.mean(ltab[c].dropna() >= 0.80)) for c in methods_cols}
        ntot = {c: int(ltab[c].notna().sum()) for c in methods_cols}
        print("  fraction of groups (with force rows) whose force cov95 >= 0.80: "
              + ", ".join(f"{c} {frac[c]:.2f} (of {ntot[c]})" for c in methods_cols))
        res["logo_fraction_force_cov95_ge_0.80"] = frac
        md += [f"## {key}, leave-one-group-out: force cov95 per held-out group", "",
               ltab.reset_index().to_markdown(index=False, floatfmt=".3f"), "",
               "Fraction of groups with force cov95 >= 0.80: "
               + ", ".join(f"{c} {frac[c]:.2f}" for c in methods_cols), ""]
    res["timings_s"] = {k: {"calls": len(v), "mean": float(np.mean(v))} for k, v in timings.items()}
    print(f"\n  mean fit+predict time per call [{key}]: "
          + ", ".join(f"{k} {np.mean(v):.2f} s" for k, v in timings.items()))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", nargs="+", default=["ta", "wbe"], choices=sorted(DATASETS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[101, 202, 303])
    ap.add_argument("--no-logo", dest="logo", action="store_false", help="skip leave-one-group-out")
    ap.add_argument("--logo-groups", type=int, default=0, help="LOGO over the first N groups only")
    ap.add_argument("--logo-pytuq-merr", action="store_true",
                    help="also run pytuq's model-error regression in every LOGO fit (slow)")
    ap.add_argument("--logo-prev-default", action="store_true",
                    help="run the previous default in LOGO even on data sets with > "
                         f"{LOGO_PREV_DEFAULT_MAX_GROUPS} groups (slow: ~1 min per fit on W-Be)")
    ap.add_argument("--pops-max-rows", type=int, default=0,
                    help="fit POPSRegression on at most this many training rows (seeded; 0: all)")
    ap.add_argument("--quick", action="store_true", help="smoke test: one seed, Ta only, 3 LOGO groups")
    ap.add_argument("--recompute", action="store_true", help="recompute FitSNAP's rows (ignore the cache)")
    ap.add_argument("--outdir", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--basis", choices=BASES, default="posterior",
                    help="axes on which ours' model error is diagonal (fit_with_model_error's basis)")
    ap.add_argument("--rank", type=int, default=3,
                    help="rank of the correlated model-error part of ours (fit_with_model_error's rank)")
    ap.add_argument("--no-atom-scale", dest="atom_scale", action="store_false",
                    help="no per-atom force scale in ours (the rows carry no atom/element labels)")
    ap.add_argument("--atom-floor", choices=FLOOR_MODES, default="constant",
                    help="how ours' per-atom force scale's floor depends on the atom "
                         "(fit_atom_scale's floor_model)")
    ap.add_argument("--no-energy-scale", dest="energy_scale", action="store_false",
                    help="no per-configuration energy scale in ours")
    ap.add_argument("--scale-weights", choices=SCALE_WEIGHTS, default="rows",
                    help="how held-out force rows count in ours' per-atom scale fit "
                         "(fit_with_model_error's scale_weights: rows, or each group equally)")
    ap.add_argument("--prior", choices=PRIORS, default=None,
                    help="ours' prior on the coefficients (fit_with_model_error's prior; default its own)")
    ap.add_argument("--_dump-rows", nargs=2, metavar=("INFILE", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._dump_rows:
        _dump_rows_main(*args._dump_rows)
        return 0
    if args.quick:
        args.datasets, args.seeds = ["ta"], args.seeds[:1]
        args.logo_groups = args.logo_groups or 3
    args.outdir = args.outdir.resolve()
    args.outdir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    peers = Peers()
    for name, text in peers.notes.items():
        print(f"note [{name}]: {text}")
    report: dict = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                             if not k.startswith("_")}}
    md = ["# Calibration on new configurations (no group label)", "",
          "Units: energy eV/atom, force eV/A. cov68/cov95: fraction of held-out errors inside the "
          "68.27%/95.45% interval; miscal_area: mean |observed - nominal| coverage over 0.01-0.99; nll: "
          "Gaussian NLL with the calibrated 1-sigma; ence: expected normalized calibration error "
          "(10 equal-count sigma bins); spearman: rank correlation of |error| and sigma.", ""]
    for key in args.datasets:
        run_dataset(key, args, peers, report, md)

    print("\n################ ACCEPTANCE (ours, recalibrated; held-out configurations without group)")
    lines = []
    for key in args.datasets:
        for seed, rec in report.get(key, {}).get("seeds", {}).items():
            for item in rec["acceptance"]:
                line = (f"  {'PASS' if item['pass'] else 'FAIL'}  [{key} seed {seed}] {item['check']}: "
                        f"{item['value']}")
                print(line)
                lines.append(line.strip())
        frac = report.get(key, {}).get("logo_fraction_force_cov95_ge_0.80")
        if frac:
            print(f"  info  [{key} LOGO] fraction of groups with force cov95 >= 0.80: "
                  + ", ".join(f"{k} {v:.2f}" for k, v in frac.items()))
    report["peers_notes"] = peers.notes
    report["seconds"] = time.perf_counter() - t_start
    md += ["# Acceptance (ours, recalibrated)", "", *[f"- {x}" for x in lines], "",
           "# Peers", "", *[f"- {k}: {v}" for k, v in peers.notes.items()], ""]
    (args.outdir / "report.json").write_text(json.dumps(report, indent=1, default=float))
    (args.outdir / "report.md").write_text("\n".join(md))
    print(f"\nwrote {args.outdir / 'report.json'}, {args.outdir / 'report.md'} "
          f"(total {report['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
