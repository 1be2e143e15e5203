"""FitSNAP solver classes of fitsnap-uq (thin adapters: gather rows from FitSNAP, no math here).

FitSNAP 3.1.0.4 chooses a solver by searching ``Solver.__subclasses__()`` for the name given in
``[SOLVER] solver = ...`` (case-insensitive), so these classes are registered by being imported
(:func:`fitsnap_uq.fitsnap_plugin.activate`; the network ensemble ``NNENSEMBLE`` is in
:mod:`fitsnap_uq.nn.fitsnap_solver`). Each solver reads its options from ``[UQ]``, hands numpy arrays to
:mod:`fitsnap_uq.linear` (the numerical code: fits, sampling, noise per quantity), sets
``self.fit`` (FitSNAP's coefficient layout, for FitSNAP's own metrics and ``.snapcoeff`` output) and
writes a :class:`~fitsnap_uq.posterior.Posterior`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from fitsnap3lib.solvers.solver import Solver

from fitsnap_uq import calibration, progress
from fitsnap_uq.errors import InputError
from fitsnap_uq.io import atomic_write
from fitsnap_uq.linear import mcmc, threads
from fitsnap_uq.linear.merr import fit_model_error
from fitsnap_uq.linear.noise import pair_codes, quantity_noise_var
from fitsnap_uq.linear.outliers import gross_outliers
from fitsnap_uq.linear.rows import (
    Rows,
    fit_and_recalibrate,
    fit_rows,
    fit_with_model_error,
    group_rmse_against,
    recalibration_map,
)
from fitsnap_uq.options import UQ_KEYS
from fitsnap_uq.parallel import rank_thread_budget, sleeping_barrier
from fitsnap_uq.posterior import Posterior, posterior_from_fit
from fitsnap_uq.sections import uq_options


def gather_rows(pt: Any, infile: str | None = None) -> Rows:
    """Read FitSNAP's shared arrays into :class:`~fitsnap_uq.linear.rows.Rows`; refuse NaN/inf.

    Raises:
        InputError: a descriptor, truth or weight is NaN or infinite (names the configuration).
    """
    d = pt.fitsnap_dict
    rows = Rows(a=pt.shared_arrays["a"].array, b=pt.shared_arrays["b"].array,
                   w=pt.shared_arrays["w"].array, testing=np.asarray(d["Testing"], dtype=bool),
                   groups=np.asarray(d["Groups"]), row_types=np.asarray(d["Row_Type"]),
                   configs=np.asarray(d["Configs"]))
    bad = ~np.isfinite(rows.b) | ~np.isfinite(rows.w) | ~np.all(np.isfinite(rows.a), axis=1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        files = sorted(set(rows.configs[bad].tolist()))
        what = "truth" if not np.isfinite(rows.b[i]) else (
            "weight" if not np.isfinite(rows.w[i]) else "descriptor")
        raise InputError(f"NaN or infinite {what} in {rows.row_types[i]} row(s) of configuration "
                         f"file(s) {', '.join(files[:5])}{' ...' if len(files) > 5 else ''} "
                         f"(group {rows.groups[i]}); fix or remove the data", file=infile,
                         section="PATH", key="dataPath")
    return rows


def with_atom_labels(rows: Rows, d: Any) -> Rows:
    """``rows`` with the atom index and element of each force row (:attr:`Rows.atom`,
    :attr:`Rows.element`) from FitSNAP's ``Atom_I`` and ``Atom_Type`` (LAMMPS types 1..ntypes, in the
    ``[BISPECTRUM] type`` order), when FitSNAP recorded them for every row; else ``rows`` unchanged
    (no per-atom force scale is then learned)."""
    try:
        atom = np.asarray(d["Atom_I"], dtype=np.int64)
        atype = np.asarray(d["Atom_Type"], dtype=np.int64)
    except (KeyError, TypeError, ValueError):
        return rows
    n = rows.b.shape[0]
    if atom.shape != (n,) or atype.shape != (n,):
        return rows
    force = rows.row_types.astype(str) == "Force"
    if force.any() and atype[force].min() < 1:
        return rows
    return replace(rows, atom=np.where(force, atom, -1), element=np.where(force, atype - 1, -1))


def with_natoms(rows: Rows, infile: str | None = None) -> Rows:
    """``rows`` with :attr:`Rows.natoms`, each row's configuration's number of atoms: its force rows
    over 3 (FitSNAP writes 3 per atom; its linear calculators record no atom count).

    Raises:
        InputError: a configuration with an energy row has no force rows (``[CALCULATOR] force =
            0``): the per-configuration energy scale (``[UQ] energy_scale``) cannot count its atoms.
    """
    _, code = pair_codes(rows.groups, rows.configs)
    types = rows.row_types.astype(str)
    nforce = np.bincount(code, weights=(types == "Force").astype(float),
                         minlength=int(code.max()) + 1 if code.size else 0)
    natoms = (nforce // 3).astype(np.int64)[code]
    missing = (types == "Energy") & (natoms < 1)
    if missing.any():
        raise InputError(f"energy_scale = yes counts each configuration's atoms from its force rows, "
                         f"and configuration {rows.configs[np.flatnonzero(missing)[0]]} has none "
                         "([CALCULATOR] force = 1 is needed)", file=infile, section="UQ",
                         key="energy_scale")
    return replace(rows, natoms=natoms)


def energy_scale_dict(pm: Any) -> dict[str, Any] | None:
    """The Posterior's ``energy_scale`` entry of a
    :class:`~fitsnap_uq.linear.predictive.PredictiveModel` (its composition columns in FitSNAP's
    layout; :func:`~fitsnap_uq.posterior.posterior_from_fit` maps them), None without one."""
    if pm.energy_scale is None:
        return None
    cols = [] if pm.energy_columns is None else np.asarray(pm.energy_columns, dtype=int).tolist()
    return {**pm.energy_scale.to_dict(), "composition_columns": cols}


def snap_parameters(config: Any) -> tuple[list[str], dict[str, Any]]:
    """Element order and SNAP parameters of a FitSNAP config (for the Posterior header)."""
    bs = config.sections["BISPECTRUM"]
    snap = {
        "twojmax": max(int(t) for t in bs.twojmax),
        "twojmax_per_element": [int(t) for t in bs.twojmax],
        "rcutfac": float(bs.rcutfac), "rfac0": float(bs.rfac0), "rmin0": float(bs.rmin0),
        "radelem": [float(x) for x in bs.radelem], "wj": [float(x) for x in bs.wj],
        "bzeroflag": int(bs.bzeroflag), "switchflag": int(bs.switchflag),
        "wselfallflag": int(bs.wselfallflag), "chemflag": int(bs.chemflag != 0),
        "quadraticflag": int(bs.quadraticflag), "bnormflag": int(bs.bnormflag),
        "switchinnerflag": int(bs.switchinnerflag), "ncoeff": int(bs.ncoeff),
    }
    if "REFERENCE" in config.sections:
        ref = config.sections["REFERENCE"]
        snap["reference"] = {"units": ref.units, "atom_style": ref.atom_style,
                             "pair_commands": list(ref.lmp_pairdecl)}
    return list(bs.types), snap


def constant_columns(config: Any) -> np.ndarray:
    """(m,) bool over FitSNAP's A columns: the per-element constant (energy offset) columns, which
    exist when ``bzeroflag = 0``; they get a flat prior (an intercept is not shrunk)."""
    bs = config.sections["BISPECTRUM"]
    block = int(bs.ncoeff) + (0 if int(bs.bzeroflag) else 1)
    cols = np.zeros(block * int(bs.numtypes), dtype=bool)
    if not int(bs.bzeroflag):
        cols[::block] = True
    return cols


class UQSolverMixin:
    """Shared plumbing of our solvers: options, posterior path and writing.

    A mixin, not a base class: FitSNAP's factory finds only direct subclasses of its ``Solver``, so
    each solver is declared ``class NAME(UQSolverMixin, Solver)``.
    """

    config: Any
    pt: Any

    def __init__(self, name: str, pt: Any, config: Any) -> None:
        super().__init__(name, pt, config)  # type: ignore[call-arg]
        self.options = uq_options(config)
        self.posterior: Posterior | None = None

    def run_on_rank_zero(self, work: Callable[[], None]) -> None:
        """``work()`` on FitSNAP's head rank of each node (``pt.sub_rank_zero``), with the BLAS threads
        of one rank of the node (cores // ranks on the node, :func:`~fitsnap_uq.parallel.rank_thread_budget`);
        the other ranks sleep until it is done (:func:`~fitsnap_uq.parallel.sleeping_barrier`), not
        spin in MPI. An error on the head rank skips the barrier: the command line aborts the run."""
        pt = self.pt
        threads.set_budget(rank_thread_budget(getattr(pt, "_sub_size", 1)))
        pt.sub_rank_zero(work)()
        sleeping_barrier(None if getattr(pt, "stubs", 1) else pt._comm)

    @property
    def infile(self) -> str | None:
        return getattr(self.config, "infile", None)

    def training_rows(self, trainall: bool = False) -> tuple[Rows, Rows]:
        """FitSNAP's rows (all) and the rows to fit: training configurations (all with
        ``trainall``), without rows of weight 0."""
        rows = gather_rows(self.pt, self.infile)
        train = rows if trainall else rows.training()
        return rows, train.subset(train.w != 0)

    def bayes_fit_options(self) -> dict[str, Any]:
        """Keyword arguments of :func:`~fitsnap_uq.linear.rows.fit_rows` from ``[UQ]`` (constant
        columns unpenalized)."""
        opts = {k: self.options[k] for k in ("noise_classes", "prior", "weights", "max_iter", "tol")}
        opts["unpenalized"] = constant_columns(self.config)
        return opts

    def output_path(self, key: str, suffix: str) -> Path:
        """``[UQ] <key>`` if given (relative to the input file with ``--relative``), else
        ``<potential><suffix>`` next to FitSNAP's potential files."""
        if self.options[key]:
            path = Path(self.options[key])
            if not path.is_absolute() and self.infile and getattr(self.config.args, "relative", False):
                path = Path(self.infile).parent / path
            return path
        potential = "fitsnap_potential"
        if "OUTFILE" in self.config.sections:
            potential = self.config.sections["OUTFILE"].potential_name or potential
        return Path(f"{potential}{suffix}")

    def posterior_path(self) -> Path:
        """Where the Posterior goes: ``[UQ] posterior`` or ``<potential>.posterior.npz``."""
        return self.output_path("posterior", ".posterior.npz")

    def _check_output_free(self) -> None:
        path = self.posterior_path()
        if path.exists() and not getattr(self.config.args, "overwrite", False):
            raise InputError(f"posterior file {path} exists; pass --overwrite to replace it",
                             file=self.infile, section="UQ", key="posterior")

    def write_posterior(self, posterior: Posterior) -> Path:
        """Save the posterior and the optional sampled ``.snapcoeff`` files (rank 0)."""
        path = posterior.save(self.posterior_path())
        nsamples = self.options["nsamples"]
        if nsamples:
            stem = str(path)[: -len(".posterior.npz")] if str(path).endswith(".posterior.npz") \
                else os.path.splitext(str(path))[0]
            for i, coeffs in enumerate(posterior.sample(nsamples, seed=self.options["seed"])):
                posterior.write_snapcoeff(f"{stem}.sample{i}.snapcoeff", coeffs,
                                          comment=f"sample {i} of {path.name}")
        self.pt.single_print(f"fitsnap-uq: wrote posterior {path}")
        return path

    def calibration_paths(self) -> tuple[Path, Path]:
        """Markdown table and PNG curve of the calibration report, next to FitSNAP's metrics file."""
        metrics = "fitsnap_metrics.md"
        if "OUTFILE" in self.config.sections and self.config.sections["OUTFILE"].metric_file:
            metrics = self.config.sections["OUTFILE"].metric_file
        stem = metrics[:-3] if metrics.endswith(".md") else metrics
        return Path(f"{stem}.uq.md"), Path(f"{stem}.calibration.png")

    def write_calibration(self, posterior: Posterior, rows: Rows, names: np.ndarray,
                          compare_svd: bool = False) -> None:
        """Raw and recalibrated calibration tables of training and testing rows, and the curve.

        Args:
            names: (n,) the noise class each row is predicted with.
            compare_svd: also tabulate each group's RMSE beside FitSNAP SVD's (weighted least
                squares on the training rows), for fits whose learned noise re-weights the mean.
        """
        labels: dict[str, np.ndarray] = {}
        if posterior.atom_scale is not None and rows.atom is not None and rows.element is not None:
            labels = {"atom": rows.atom_ids(), "element": rows.element}  # the per-atom force scale
        if posterior.energy_scale is not None and rows.natoms is not None:
            # the per-configuration energy scale: each energy row's number of atoms
            labels["natoms"] = np.where(rows.row_types.astype(str) == "Energy", rows.natoms, 0)
        mean, sigma = posterior.predict_raw(rows.a, noise=list(names), **labels)
        multiplier = posterior.multiplier if posterior.recalibration is not None else None
        extra = self.report_outliers(rows)
        if compare_svd:
            table = group_rmse_against(rows, mean)
            extra += ("\n## Mean fit against FitSNAP SVD (the learned noise classes re-weight the mean)\n\n"
                     "RMSE of this fit's mean and of weighted least squares with FitSNAP's weights on the "
                     "same training rows (eV/atom, eV/A, bar); ratio > 1: the re-weighting made the group "
                     "worse than the user's weights.\n\n" + _markdown_rows(table) + "\n")
        self.write_calibration_report(rows.b, mean, sigma, rows.groups, rows.row_types, rows.testing,
                                      keep=rows.w != 0, multiplier=multiplier, extra=extra)

    def report_outliers(self, rows: Rows) -> str:
        """Name the training configurations whose residuals dwarf their group's (``[UQ]
        outlier_ratio``; :func:`~fitsnap_uq.linear.outliers.gross_outliers`) in the log; return the
        report's Markdown section (empty when none)."""
        ratio = self.options["outlier_ratio"]
        fitted = ~rows.testing & (rows.w != 0)
        if not ratio or not fitted.any():
            return ""
        # One weighted copy of the fitted rows, scaled in place by the screen (peak: the rows + 1 copy).
        aw = np.asarray(rows.a[fitted], dtype=float)
        aw *= rows.w[fitted, None]
        found = gross_outliers(aw, rows.w[fitted] * rows.b[fitted], rows.groups[fitted],
                               rows.row_types[fitted], rows.configs[fitted], ratio=ratio, overwrite_a=True)
        del aw
        for outlier in found:
            self.pt.single_print(f"fitsnap-uq {self.name}: WARNING gross outlier: {outlier.line()}")
        if not found:
            return ""
        lines = [f"\n## Gross outliers among the training configurations ({len(found)})\n",
                 f"Configurations whose rms weighted residual (per quantity), predicted by a weighted "
                 f"least-squares fit of all other configurations, is above {ratio:g} times that of the "
                 "other configurations of their group under the same fit ([UQ] outlier_ratio; "
                 "fitsnap_uq.linear.outliers). They were fitted (nothing is removed) and widen their "
                 "group's uncertainty: check their data. rms: weighted units (residual x weight).\n",
                 "| group | quantity | configuration | ratio | rms | rms of the others |",
                 "|---|---|---|---|---|---|"]
        lines += [f"| {o.group} | {o.quantity} | {o.config} | {o.ratio:.3g} | {o.rms:.4g} "
                  f"| {o.rms_others:.4g} |" for o in found]
        return "\n".join(lines) + "\n"

    def write_calibration_report(self, truth: np.ndarray, mean: np.ndarray, sigma: np.ndarray,
                                 groups: np.ndarray, row_types: np.ndarray, testing: np.ndarray,
                                 keep: np.ndarray, multiplier: calibration.Multiplier | None = None,
                                 recalibration: str = "cross-validated quantile recalibration",
                                 extra: str = "") -> None:
        """The calibration report (Markdown tables and PNG curves) of any predictions.

        Args:
            truth, mean, sigma: (n,) truths, predicted means, raw Gaussian stds (eV/atom, eV/A, bar).
            groups, row_types, testing, keep: (n,) group, quantity, testing flag, rows to score.
            multiplier: the recalibrated interval half-width in raw sigmas (None: raw table only).
            recalibration: how the recalibration was learned (the heading of its table).
            extra: Markdown appended to the report.
        """
        args = (truth, mean, sigma, groups, row_types, testing)
        raw = calibration.metrics_table(*args, keep=keep)
        recal = None
        if multiplier is not None:
            recal = calibration.metrics_table(*args, multiplier=multiplier, keep=keep)
        table_path, png_path = self.calibration_paths()
        text = calibration.markdown(raw, recal, title=f"Calibration of {self.name} predictions",
                                    recalibration=recalibration) + extra
        _write_text(table_path, text)
        curves = calibration.coverage_curves(truth, mean, sigma, row_types, testing, keep, multiplier)
        calibration.calibration_plot(png_path, curves, title=f"{self.name}: calibration")
        self.pt.single_print(f"fitsnap-uq: wrote calibration report {table_path} and {png_path}")


class BAYES(UQSolverMixin, Solver):
    """Bayesian linear regression with learned noise per class and evidence-optimized prior.

    ``[SOLVER] solver = BAYES``; options in ``[UQ]`` (see :data:`fitsnap_uq.options.UQ_KEYS`).
    Writes the Posterior (with its cross-validated recalibration), and the calibration report of
    training and testing rows next to FitSNAP's metrics file.
    """

    def scales(self, rows: Rows) -> tuple[bool, bool]:
        """Whether the fit learns the per-atom force scale and the per-configuration energy scale:
        ``[UQ] atom_scale`` and ``energy_scale`` (BAYES with ``predictive = model_error`` only);
        ``auto`` is yes where the rows allow it (forces for the first; force rows in every
        configuration with an energy row, which count its atoms, for the second), and says so
        when they do not."""
        opts = self.options
        if opts["predictive"] != "model_error":
            return False, False
        types = rows.row_types.astype(str)
        has_force = bool(np.any(types == "Force"))
        atom = opts["atom_scale"] == "yes" or (opts["atom_scale"] == "auto" and has_force)
        energy = opts["energy_scale"] == "yes"
        if opts["energy_scale"] == "auto" and np.any(types == "Energy"):
            _, code = pair_codes(rows.groups, rows.configs)
            with_force = np.zeros(int(code.max()) + 1, dtype=bool)
            with_force[code[types == "Force"]] = True
            energy = bool(np.all(with_force[code[types == "Energy"]]))
            if not energy:
                self.pt.single_print("fitsnap-uq BAYES: energy_scale = auto: off, some configurations "
                                     "have no force rows to count their atoms")
        return atom, energy

    def perform_fit(self, a: Any = None, b: Any = None, w: Any = None, trainall: bool = False) -> None:
        def fit_on_rank_zero() -> None:
            self._check_output_free()
            rows = gather_rows(self.pt, self.infile)
            atom_scale, energy_scale = self.scales(rows)
            if atom_scale:
                rows = with_atom_labels(rows, self.pt.fitsnap_dict)
            if energy_scale:
                rows = with_natoms(rows, self.infile)
            # The training rows are selected by a mask, not copied (the fits read the rows in blocks).
            keep = None if trainall else ~rows.testing
            used = rows.w != 0 if keep is None else keep & (rows.w != 0)
            if not np.any(used):
                raise InputError("no training rows with nonzero weight", file=self.infile,
                                 section="GROUPS")
            opts = self.options
            fit_opts = self.bayes_fit_options()
            folds = check_folds(rows, opts["cv_folds"], self.infile, self.pt.single_print, keep=keep)
            recal, model_error, pm = None, None, None
            n_train = int(rows.b.shape[0] if keep is None else np.count_nonzero(keep))
            cv = opts["predictive"] == "model_error" or opts["recalibration"] == "quantile"
            what = ("mean fit (evidence), " + (f"{folds}-fold cross-validation" if cv else "")
                    + (" and the predictive model of new configurations"
                       if opts["predictive"] == "model_error" else "")).rstrip(", ")
            with progress.timed(f"fitsnap-uq BAYES: {what} on {n_train} rows x "
                                f"{rows.a.shape[1]} coefficients"), \
                    progress.bar(total=folds if cv else None, desc="BAYES: cross-validation folds",
                                 unit="folds", leave=False, show=cv) as bar:
                on_fold = lambda f: bar.update(1)  # noqa: E731
                if opts["predictive"] == "model_error":
                    model, pm, ratios = fit_with_model_error(rows, folds=folds, seed=opts["seed"],
                                                             basis=opts["model_error_basis"],
                                                             rank=opts["model_error_rank"],
                                                             keep=keep, on_fold=on_fold,
                                                             energy_scale=energy_scale,
                                                             scale_weights=opts["scale_weights"],
                                                             **fit_opts)
                    noise_var = dict(pm.floor_var)
                    model_error = {"cov_scale": pm.cov_scale, "coef_var": pm.coef_var,
                                   "factor": pm.factor,
                                   "atom_scale": (None if pm.atom_scale is None
                                                  else pm.atom_scale.to_dict()),
                                   "energy_scale": energy_scale_dict(pm)}
                    if opts["recalibration"] == "quantile":
                        recal = recalibration_map(ratios)
                elif opts["recalibration"] == "quantile":
                    model, ratios = fit_and_recalibrate(rows, folds=folds, seed=opts["seed"],
                                                        keep=keep, on_fold=on_fold, **fit_opts)
                    noise_var = model.noise_var
                    recal = recalibration_map(ratios)
                else:
                    model = fit_rows(rows, keep=keep, **fit_opts)
                    noise_var = model.noise_var
            result = model.result
            progress.stage(f"fitsnap-uq BAYES: evidence optimization: {result.iterations} "
                           f"iterations ({result.message})")
            elements, snap = snap_parameters(self.config)
            info = {
                "solver": "BAYES", "options": {k: v for k, v in opts.items() if k != "posterior"},
                "converged": result.converged, "iterations": result.iterations,
                "message": result.message, "n_train_rows": n_train,
                "active_columns": int(result.active.sum()), "tied_columns": len(result.ties),
                "alpha": result.alpha.tolist(),
            }
            if pm is not None:
                info["predictive_model"] = {"cov_scale": pm.cov_scale, "floor_std": pm.floor_std,
                                            "nll": pm.nll, "rows": pm.n_rows, "converged": pm.converged,
                                            "message": pm.message}
                self.pt.single_print(
                    f"fitsnap-uq BAYES: predictive model of new configurations from {folds}-fold "
                    f"cross-validation: posterior covariance x {pm.cov_scale:.4g}, model error on the "
                    f"{opts['model_error_basis']} axes, floors "
                    + ", ".join(f"{q} {v:.3g}" for q, v in pm.floor_std.items()))
            self.posterior = posterior_from_fit(result.mean, result.cov, elements, snap,
                                                noise_var=noise_var,
                                                log_evidence=result.log_evidence,
                                                recalibration=recal, info=info, model_error=model_error,
                                                ties=result.ties)
            self.fit = self.posterior.mean[self.posterior.fit_columns].copy()  # tied coefficients spread
            self.cov = result.cov
            if result.log_evidence is not None:
                self.pt.single_print(f"fitsnap-uq BAYES: log evidence {result.log_evidence:.6g}")
            if not result.converged:
                self.pt.single_print(f"fitsnap-uq BAYES: WARNING not converged after "
                                     f"{result.iterations} iterations ({result.message})")
            self.write_posterior(self.posterior)
            names = rows.row_types.astype(object) if pm is not None else model.noise_names(rows)
            with progress.timed("fitsnap-uq BAYES: calibration report"):
                self.write_calibration(self.posterior, rows, names,
                                       compare_svd=opts["noise_classes"] != "one")

        self.run_on_rank_zero(fit_on_rank_zero)


def _markdown_rows(records: list[dict[str, Any]]) -> str:
    """A Markdown table of records with the same keys (numbers to 4 significant digits)."""
    if not records:
        return "(no rows)\n"
    keys = list(records[0])
    cell = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(cell(r[k]) for k in keys) + " |" for r in records]
    return "\n".join(lines) + "\n"


def check_folds(rows: Rows, folds: int, infile: str | None, say: Any = print,
                keep: np.ndarray | None = None) -> int:
    """The cross-validation folds to use, checked against the training configurations (the rows where
    ``keep`` is True, default all) before any work: more folds than configurations is an error,
    except for the default (5), which becomes leave-one-out on a data set of fewer configurations
    (said in the log)."""
    nconf = len(pair_codes(rows.groups, rows.configs, use=keep)[0])
    if nconf < 2:
        raise InputError(f"cross-validation needs at least 2 training configurations, there are {nconf}",
                         file=infile, section="UQ", key="cv_folds")
    if folds <= nconf:
        return folds
    if folds == int(UQ_KEYS["cv_folds"].default):
        say(f"fitsnap-uq: {nconf} training configurations: cross-validation with {nconf} folds "
            f"(leave one out) instead of the default {folds}")
        return nconf
    raise InputError(f"{folds} folds for {nconf} training configurations: use at most {nconf}",
                     file=infile, section="UQ", key="cv_folds")


class MODELERROR(UQSolverMixin, Solver):
    """Embedded model error (Sargsyan et al. 2019) on all or chosen coefficients.

    ``[SOLVER] solver = MODELERROR``; options ``merr_*`` in ``[UQ]``. The Posterior's covariance is
    the model-error part ``diag(s^2)`` plus the Laplace covariance of the mean; the data-noise part
    is its noise classes (``Energy``/``Force``/``Stress``). The optimizer's report (iterations,
    gradient norm, reason) is printed and stored in the header; non-convergence is a warning.
    """

    def perform_fit(self, a: Any = None, b: Any = None, w: Any = None, trainall: bool = False) -> None:
        def fit_on_rank_zero() -> None:
            self._check_output_free()
            rows, train = self.training_rows(trainall)
            opts = self.options
            embed = None if opts["merr_embed"] == "all" else opts["merr_embed"]
            data_var = None if opts["merr_data_var"] == "anl" else opts["merr_data_var"]
            try:  # the rows are weighted block by block (no weighted copy)
                with progress.timed(f"fitsnap-uq MODELERROR: {opts['merr_likelihood']} model-error fit on "
                                    f"{train.b.shape[0]} rows x {train.a.shape[1]} coefficients"):
                    res = fit_model_error(train.a, train.b, embed=embed, w=train.w,
                                          multiplicative=opts["merr_multiplicative"],
                                          likelihood=opts["merr_likelihood"], data_var=data_var,
                                          max_iter=opts["max_iter"],
                                          fix_mean=opts["merr_mean"] == "weights")
            except InputError as exc:
                raise InputError(exc.detail, file=self.infile, section="UQ", key="merr_embed") from None
            report = {"iterations": res.iterations, "converged": res.converged, "message": res.message,
                      "grad_norm": res.grad_norm, "nll": res.nll}
            self.pt.single_print(f"fitsnap-uq MODELERROR ({opts['merr_likelihood']}): NLL {res.nll:.8g}, "
                                 f"{res.iterations} iterations, projected gradient "
                                 f"{res.grad_norm:.2e}: {res.message}")
            if not res.converged:
                self.pt.single_print("fitsnap-uq MODELERROR: WARNING not converged; see the report "
                                     "in the posterior header")
            elements, snap = snap_parameters(self.config)
            info = {"solver": "MODELERROR", "report": report, "data_var_weighted": res.data_var,
                    "tied_columns": len(res.ties),
                    "model_error_std": res.sigma.tolist(), "embed": res.embed.tolist(),
                    "options": {k: v for k, v in opts.items() if k.startswith("merr") or k == "seed"}}
            cov = res.total_cov
            self.posterior = posterior_from_fit(res.coef, 0.5 * (cov + cov.T), elements, snap,
                                                noise_var=quantity_noise_var(res.data_var, train.row_types,
                                                                             train.w),
                                                info=info, ties=res.ties)
            self.fit = self.posterior.mean[self.posterior.fit_columns].copy()  # tied coefficients spread
            self.cov = cov
            self.write_posterior(self.posterior)
            with progress.timed("fitsnap-uq MODELERROR: calibration report"):
                self.write_calibration(self.posterior, rows, rows.row_types.astype(object))

        self.run_on_rank_zero(fit_on_rank_zero)


class BAYESMCMC(UQSolverMixin, Solver):
    """MCMC samples of the coefficient posterior (emcee), for Gaussian, Student-t or model-error
    likelihoods. ``[SOLVER] solver = BAYESMCMC``; options ``mcmc_*`` in ``[UQ]``.

    The noise model comes from a BAYES fit (its noise classes fix the rows' relative noise, a common
    scale is sampled); that fit also whitens the sampler's coordinates. ``model_error`` samples the
    embedded coefficients' mean and log model-error std (those with a non-zero model error in the
    MODELERROR fit) and stores coefficient draws ``c + s xi``. R-hat, effective sample size and
    acceptance are printed and stored in the header.
    """

    def perform_fit(self, a: Any = None, b: Any = None, w: Any = None, trainall: bool = False) -> None:
        def fit_on_rank_zero() -> None:
            self._check_output_free()
            rows, train = self.training_rows(trainall)
            opts = self.options
            with progress.timed(f"fitsnap-uq BAYESMCMC: BAYES fit (noise model, starting point) on "
                                f"{train.b.shape[0]} rows x {train.a.shape[1]} coefficients"):
                base = fit_rows(train, **self.bayes_fit_options())
            like = opts["mcmc_likelihood"]
            steps = opts["mcmc_chains"] * opts["mcmc_steps"]
            try:
                with progress.timed(f"fitsnap-uq BAYESMCMC: sampling ({like}): {opts['mcmc_chains']} chains "
                                    f"x {opts['mcmc_steps']} steps"), \
                        progress.bar(total=steps, desc="BAYESMCMC: sampling", unit="steps",
                                     leave=False) as bar:
                    drawn = mcmc.sample_posterior(
                        train, base, like, noise_classes=opts["noise_classes"], weights=opts["weights"],
                        prior=opts["prior"], student_nu=opts["student_nu"],
                        max_samples=opts["max_samples"], seed=opts["seed"], nwalkers=opts["mcmc_walkers"],
                        nsteps=opts["mcmc_steps"], burn=opts["mcmc_burn"], thin=opts["mcmc_thin"],
                        nchains=opts["mcmc_chains"], on_step=lambda: bar.update(1))
            except InputError as exc:
                raise InputError(exc.detail, file=self.infile, section="UQ", key="mcmc_likelihood") from None
            res, noise_var = drawn.mcmc, drawn.noise_var
            diag = res.report()
            self.pt.single_print(f"fitsnap-uq BAYESMCMC ({like}): {diag['n_samples']} samples, R-hat max "
                                 f"{diag['rhat_max']:.4f}, ESS min {diag['ess_min']:.0f}, acceptance "
                                 f"{diag['acceptance']:.2f}")
            if diag["rhat_max"] > 1.05:
                self.pt.single_print("fitsnap-uq BAYESMCMC: WARNING R-hat > 1.05: run longer chains")
            elements, snap = snap_parameters(self.config)
            mean, cov = drawn.mean, drawn.cov
            info = {"solver": "BAYESMCMC", "likelihood": like, "diagnostics": diag,
                    "options": {k: v for k, v in opts.items() if k.startswith("mcmc") or k in
                                ("seed", "student_nu", "noise_classes", "prior")}}
            self.posterior = posterior_from_fit(mean, 0.5 * (cov + cov.T), elements, snap,
                                                noise_var=noise_var, samples=drawn.theta[drawn.kept],
                                                info=info, ties=base.result.ties)
            self.fit = self.posterior.mean[self.posterior.fit_columns].copy()  # tied coefficients spread
            self.cov = cov
            self.write_posterior(self.posterior)
            with progress.timed("fitsnap-uq BAYESMCMC: calibration report"):
                self.write_calibration(self.posterior, rows, base.noise_names(rows))

        self.run_on_rank_zero(fit_on_rank_zero)


def _write_text(path: Path, text: str) -> None:
    atomic_write(path, text)


def available_solvers() -> list[str]:
    """Names of every solver FitSNAP's factory can find now (its own and ours), sorted."""
    import fitsnap3lib.solvers.solver_factory  # noqa: F401  (imports FitSNAP's solvers)

    return sorted({cls.__name__ for cls in Solver.__subclasses__()}, key=str.upper)
