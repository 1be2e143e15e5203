"""Calibration of the NN ensemble's force spread on NEW Ta configurations, beside BAYES's, same rows.

    python benchmarks/calibration_nn_newdata.py [--seeds 101 202 303] [--epochs 60] [--members 4]
        [--outdir DIR] [--rows-cache rows_ta.npz]

Per split seed, 20% of each Ta group's configurations are held out, with the split of
``benchmarks/calibration_newdata.py`` (:func:`split_by_group`, same seeds, same held-out rows), and
predicted without their group label:

* NN ensemble: the 4-member tanh NNENSEMBLE of ``examples/ta_nnensemble_lammps`` (the one that drives
  MD in plain LAMMPS) trained by ``fitsnap-uq fit`` on the other configurations (each Ta group split
  into two FitSNAP groups, its training configurations with training_size 1 and its held-out ones with
  testing_size 1, so FitSNAP trains on exactly the complement); sigma = the std over members
  (``floored_sigma``), raw and recalibrated by the quantile map of the out-of-bag ratios of the training
  rows (``ensemble_sigma``, what the fit's calibration table uses; no group used);
* BAYES: ``calibration_newdata``'s "ours" (``fit_with_model_error`` on FitSNAP's linear rows of the Ta
  example, raw and recalibrated), fitted on the same training configurations.

Rows are matched by (group, configuration, row within the configuration), and their DFT truths must
agree (checked), so both are scored on the same Energy and Force rows with ``calibration_newdata``'s
metrics (cov68/cov95, miscalibration area, NLL, ZMS, Spearman(|err|, sigma), ENCE, RMSE). Prints the
table per seed and the mean over seeds; writes ``report.json`` and ``report.md`` under ``--outdir``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import calibration_newdata as CN  # noqa: E402
from _ta import require_ta  # noqa: E402

from fitsnap_uq import calibration as C  # noqa: E402
from fitsnap_uq.linear.gaussian import interval_multiplier  # noqa: E402
from fitsnap_uq.linear.rows import Rows, fit_with_model_error, recalibration_map  # noqa: E402
from fitsnap_uq.nn.fitsnap_ensemble import ensemble_sigma, load_predictions  # noqa: E402

EXAMPLE = ROOT / "examples" / "ta_nnensemble_lammps" / "Ta-nnensemble-tanh.in"
HELD = "__heldout"
DEFAULT_OUT = ROOT / "benchmarks" / "out" / "calibration_nn_newdata"


def split_input(folder: Path, data: Path, held_keys: set[str], epochs: int, members: int) -> Path:
    """A copy of the Ta data in ``folder/JSON`` with each group G split into G (training
    configurations) and G__heldout (``held_keys``, "group/file"), and the example's input for it."""
    text = EXAMPLE.read_text()
    head, groups = text.split("[GROUPS]")
    groups, tail = groups.split("[UQ]")
    lines = []
    for line in groups.splitlines():
        words = line.split()
        if len(words) >= 6 and words[1] == "=" and (data / words[0]).is_dir():
            g, weights = words[0], words[4:]
            files = sorted(p.name for p in (data / g).glob("*.json"))
            (folder / "JSON" / g).mkdir(parents=True)
            (folder / "JSON" / (g + HELD)).mkdir(parents=True)
            for name in files:
                dest = g + HELD if f"{g}/{name}" in held_keys else g
                shutil.copy(data / g / name, folder / "JSON" / dest / name)
            lines.append(f"{g} = 1.0 0.0 {' '.join(weights)}")
            lines.append(f"{g + HELD} = 0.0 1.0 {' '.join(weights)}")
        else:
            lines.append(line)
    text = head + "[GROUPS]" + "\n".join(lines) + "\n[UQ]" + tail
    text = re.sub(r"dataPath = .*", "dataPath = JSON", text)
    text = re.sub(r"num_epochs = \d+", f"num_epochs = {epochs}", text)
    text = re.sub(r"nn_members = \d+", f"nn_members = {members}", text)
    path = folder / "Ta.in"
    path.write_text(text)
    return path


def fit_nn(folder: Path) -> float:
    """``fitsnap-uq fit Ta.in`` in ``folder``; wall seconds."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "fitsnap_uq", "fit", "Ta.in", "--overwrite"], cwd=folder,
                          env=env, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"NNENSEMBLE fit failed in {folder}:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t0


def nn_on_rows(folder: Path, test: Rows) -> dict[str, dict]:
    """The ensemble's held-out predictions on ``test``'s rows (same order): raw and recalibrated."""
    rows = load_predictions(folder / "Ta_pot.nnensemble.predictions.npz")
    sigma, recal = ensemble_sigma(rows)
    groups = np.char.replace(rows.groups.astype(str), HELD, "")
    index = {}
    count: dict[tuple[str, str, str], int] = {}
    for i, (g, c, q) in enumerate(zip(groups, rows.configs.astype(str), rows.row_types.astype(str))):
        k = count.get((g, c, q), 0)
        count[(g, c, q)] = k + 1
        if rows.testing[i]:
            index[(g, c, q, k)] = i
    pick = []
    count = {}
    for g, c, q in zip(test.groups.astype(str), test.configs.astype(str), test.row_types.astype(str)):
        k = count.get((g, c, q), 0)
        count[(g, c, q)] = k + 1
        pick.append(index.get((g, c, q, k), -1))
    pick = np.array(pick)
    scored = np.isin(test.row_types.astype(str), CN.SCORED)
    if np.any(pick[scored] < 0):
        sys.exit(f"{int(np.sum(pick[scored] < 0))} held-out rows have no NN prediction")
    sel = np.where(pick >= 0, pick, 0)
    truth_ok = np.allclose(rows.truth[sel][scored], test.b[scored], rtol=1e-8, atol=1e-8)
    if not truth_ok:
        worst = np.abs(rows.truth[sel][scored] - test.b[scored]).max()
        sys.exit(f"the NN rows and the linear rows disagree on the DFT truths (max |diff| {worst:.3g}): "
                 "not the same rows")
    mean, sig = rows.mean[sel], sigma[sel]

    def mult(level: float, q: str | None) -> float:
        return interval_multiplier(recal, level, q) if recal is not None else C.gaussian_multiplier(level)

    return {"NN ensemble raw": {"mean": mean, "sigma": sig, "mult": C.gaussian_multiplier},
            "NN ensemble recal": {"mean": mean, "sigma": sig, "mult": mult}}


def bayes_on_rows(train: Rows, test: Rows, unpen: np.ndarray | None) -> dict[str, dict]:
    """``calibration_newdata``'s "ours" (BAYES with the configuration-dependent model error)."""
    full, pm, ratios = fit_with_model_error(train, folds=5, seed=0, unpenalized=unpen)
    a, types = test.a, test.row_types.astype(str)
    sigma = np.sqrt(pm.variance(a, CN._quad(a, full.result.cov), types))
    mean = a @ full.result.mean
    return {"BAYES raw": {"mean": mean, "sigma": sigma, "mult": C.gaussian_multiplier},
            "BAYES recal": {"mean": mean, "sigma": sigma,
                            "mult": CN._interp_multiplier(recalibration_map(ratios))}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[101, 202, 303])
    ap.add_argument("--epochs", type=int, default=60, help="epochs per member (the example's 60)")
    ap.add_argument("--members", type=int, default=4)
    ap.add_argument("--outdir", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--rows-cache", type=Path, default=None,
                    help="calibration_newdata's rows_ta.npz (default: its cache, computed if absent)")
    args = ap.parse_args()
    data = require_ta() / "JSON"
    rows_dir = args.rows_cache.parent if args.rows_cache else CN.DEFAULT_OUT
    loaded = CN.load_rows("ta", rows_dir, recompute=False)
    if loaded is None:
        return 1
    rows, unpen = loaded
    args.outdir.mkdir(parents=True, exist_ok=True)
    report: dict = {}
    tables = []
    for seed in args.seeds:
        held = CN.split_by_group(rows, seed)
        train, test = rows.subset(~held), rows.subset(held)
        keys = set(test.config_keys().tolist())
        t0 = time.perf_counter()
        methods = bayes_on_rows(train, test, unpen)
        t_bayes = time.perf_counter() - t0
        with tempfile.TemporaryDirectory(prefix=f"cal-nn-{seed}-") as tmp:
            folder = Path(tmp)
            split_input(folder, data, keys, args.epochs, args.members)
            t_nn = fit_nn(folder)
            methods.update(nn_on_rows(folder, test))
        scores = CN.score(methods, test)
        table = CN.overall_table(scores)
        nforce = int(np.sum(test.row_types.astype(str) == "Force"))
        print(f"\n== seed {seed}: {len(keys)} held-out configurations, {nforce} force rows (BAYES "
              f"{t_bayes:.0f} s, NN ensemble fit {t_nn:.0f} s)", flush=True)
        print(table.to_string(float_format=lambda x: f"{x:.4g}"))
        report[str(seed)] = scores
        tables.append(table)
    mean = pd.concat(tables).groupby(level=["method", "q"], sort=False).mean()
    print(f"\n== mean over seeds {args.seeds}")
    print(mean.to_string(float_format=lambda x: f"{x:.4g}"))
    (args.outdir / "report.json").write_text(json.dumps(report, indent=1, default=float))
    (args.outdir / "report.md").write_text(
        f"# NN ensemble vs BAYES on held-out Ta configurations (seeds {args.seeds})\n\n"
        + "\n\n".join(f"## seed {s}\n\n{t.to_markdown(floatfmt='.4g')}" for s, t in zip(args.seeds, tables))
        + f"\n\n## mean over seeds\n\n{mean.to_markdown(floatfmt='.4g')}\n")
    print(f"\nwrote {args.outdir / 'report.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
