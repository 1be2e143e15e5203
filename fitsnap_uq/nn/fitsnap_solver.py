"""The FitSNAP solver ``NNENSEMBLE``: an adapter that gathers FitSNAP's configurations, trains the members
(:mod:`fitsnap_uq.nn.fitsnap_ensemble`) and writes the ensemble's description, predictions and calibration
report.

FitSNAP 3.1.0.4 chooses a solver among ``Solver.__subclasses__()`` by name, so :class:`NNENSEMBLE` is a
direct subclass of FitSNAP's ``Solver``, registered when :func:`fitsnap_uq.fitsnap_plugin.activate`
imports this module.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from fitsnap3lib.solvers.solver import Solver

from fitsnap_uq.errors import InputError
from fitsnap_uq.io import atomic_write, json_default
from fitsnap_uq.linear.gaussian import interval_multiplier
from fitsnap_uq.sections import uq_options
from fitsnap_uq.solvers import UQSolverMixin, snap_parameters


class NNENSEMBLE(UQSolverMixin, Solver):
    """An ensemble of FitSNAP PyTorch networks on resampled configurations (see
    :mod:`fitsnap_uq.nn.fitsnap_ensemble`). ``[SOLVER] solver = NNENSEMBLE``, ``[CALCULATOR]
    nonlinear = 1``, the network in ``[PYTORCH]``, the ensemble's options ``nn_*`` and ``seed`` in ``[UQ]``.

    FitSNAP 3.1.0.4 calls a nonlinear solver's ``perform_fit`` on rank 0 only, then ``fit_gather`` on every
    rank: the members are trained in ``fit_gather`` (member m on rank m % size). Rank 0 then writes the
    description, the predictions and the calibration report; FitSNAP's own error table (metrics file)
    scores the ensemble mean. The recalibration (``[UQ] recalibration = quantile``) is learned from the
    out-of-bag errors of the training configurations (not with nn_resample = none). The sigma of the
    calibration report is the members' std, floored per quantity (see
    :func:`~fitsnap_uq.nn.fitsnap_ensemble.floored_sigma`).
    """

    def __init__(self, name: str, pt: Any, config: Any) -> None:
        self.config, self.pt = config, pt
        self._check_sections()  # before FitSNAP's own checks, which fail with a bare assertion
        super().__init__(name, pt, config)
        self.linear = False
        self.rows: Any = None
        self.description: dict[str, Any] | None = None

    def _check_sections(self) -> None:
        self.options = uq_options(self.config)
        sections = self.config.sections
        calc = sections.get("CALCULATOR")
        if calc is None or not getattr(calc, "nonlinear", False):
            raise InputError("NNENSEMBLE trains neural networks on per-atom descriptors: set nonlinear = 1",
                             file=self.infile, section="CALCULATOR", key="nonlinear")
        if "PYTORCH" not in sections:
            raise InputError("NNENSEMBLE needs a [PYTORCH] section (layer_sizes, learning_rate, num_epochs, "
                             "batch_size, ...) for its members", file=self.infile, section="PYTORCH")
        torch_section = sections["PYTORCH"]
        if getattr(torch_section, "global_fraction_bool", False):
            raise InputError("training_fraction splits the data at random inside FitSNAP; NNENSEMBLE "
                             "resamples itself: remove it and use [UQ] nn_resample / nn_fraction",
                             file=self.infile, section="PYTORCH", key="training_fraction")
        if getattr(torch_section, "save_state_input", None) is not None:
            raise InputError("NNENSEMBLE trains every member from its own initialization; remove "
                             "save_state_input", file=self.infile, section="PYTORCH", key="save_state_input")
        if self.pt.fitsnap_dict.get("force") and "BISPECTRUM" in sections and \
                not getattr(sections["BISPECTRUM"], "dgradflag", True):
            raise InputError("force training of networks needs per-neighbor descriptor derivatives: set "
                             "dgradflag = 1", file=self.infile, section="BISPECTRUM", key="dgradflag")
        if "BISPECTRUM" in sections and getattr(sections["BISPECTRUM"], "dgradflag", False) and \
                not getattr(sections["BISPECTRUM"], "bikflag", False):
            raise InputError("dgradflag = 1 needs per-atom descriptors: set bikflag = 1",
                             file=self.infile, section="BISPECTRUM", key="bikflag")
        if self.options["nn_members"] < 2:
            raise InputError("an ensemble needs at least 2 members", file=self.infile, section="UQ",
                             key="nn_members")

    def description_path(self) -> Path:
        """``[UQ] nn_ensemble`` or ``<potential>.nnensemble.json``."""
        return self.output_path("nn_ensemble", ".nnensemble.json")

    def perform_fit(self, *args: Any, **kwargs: Any) -> None:
        """Nothing on rank 0 alone: the collective training is in :meth:`fit_gather`."""

    def fit_gather(self) -> None:
        """Train the members over all ranks, then (rank 0) write the outputs."""
        if not getattr(self.config.args, "perform_fit", True):
            return
        from fitsnap_uq.nn import fitsnap_ensemble as fe  # torch: only when a network is trained

        opts = self.options
        desc_path = self.description_path()
        if desc_path.exists() and not getattr(self.config.args, "overwrite", False):
            raise InputError(f"ensemble description {desc_path} exists; pass --overwrite to replace it",
                             file=self.infile, section="UQ", key="nn_ensemble")
        testing = np.asarray(self.pt.fitsnap_dict["Testing"], dtype=bool)
        names = [f"{g}/{c}" for g, c in zip(self.pt.fitsnap_dict["Groups"], self.pt.fitsnap_dict["Configs"])]
        # Resample in a canonical order (group/file), so that plans do not depend on how FitSNAP spread
        # the configurations over ranks.
        train_idx = np.array(sorted(np.flatnonzero(~testing), key=lambda i: names[i]), dtype=int)
        if train_idx.size == 0:
            raise InputError("no training configurations", file=self.infile, section="GROUPS")
        plans = fe.plan_members(train_idx, opts["nn_members"], opts["nn_resample"], opts["nn_fraction"],
                                opts["seed"])
        prefix = desc_path.with_name(desc_path.name[:-5] if desc_path.name.endswith(".json")
                                     else desc_path.name)
        start = time.perf_counter()
        configs, results, nranks = fe.train_members(self.pt, self.config, plans, prefix,
                                                    opts["nn_early_stopping"], opts["nn_activation"])
        elapsed = time.perf_counter() - start
        self.configs = configs
        if results is None:  # not rank 0
            return
        rows = fe.ensemble_rows(configs, results, plans)
        self.rows = rows
        recalibrate = opts["recalibration"] == "quantile" and opts["nn_resample"] != "none"
        sigma, recal = fe.ensemble_sigma(rows, recalibrate)
        multiplier = None
        if recal is not None:
            def multiplier(level: float, quantity: str | None, rec: dict = recal) -> float:
                return interval_multiplier(rec, level, quantity)
        elements, snap = snap_parameters(self.config)
        torch_section = self.config.sections["PYTORCH"]
        self.description = {
            "solver": "NNENSEMBLE", "format": "fitsnap-uq nnensemble 1",
            "elements": elements, "snap": snap,
            "network": {"layer_sizes": [str(x) for x in torch_section.layer_sizes],
                        "learning_rate": float(torch_section.learning_rate),
                        "num_epochs": int(torch_section.num_epochs),
                        "batch_size": int(torch_section.batch_size),
                        "multi_element_option": int(torch_section.multi_element_option),
                        "activation": opts["nn_activation"],
                        "energy_weight": float(torch_section.energy_weight),
                        "force_weight": float(torch_section.force_weight)},
            "options": {k: opts[k] for k in ("nn_members", "nn_resample", "nn_fraction",
                                             "nn_early_stopping", "seed", "recalibration")},
            "ranks": nranks, "train_seconds": elapsed,
            "predictions": f"{prefix.name}.predictions.npz",
            "recalibration": ({k: np.asarray(v).tolist() for k, v in recal.items()}
                              if recal is not None else None),
            "members": [r.info for r in results],
        }
        fe.write_predictions(Path(f"{prefix}.predictions.npz"), rows)
        atomic_write(desc_path, json.dumps(self.description, indent=1, default=json_default))
        self.pt.single_print(f"fitsnap-uq NNENSEMBLE: {len(results)} members on {nranks} rank(s) in "
                             f"{elapsed:.1f} s; wrote {desc_path} and {prefix.name}.member*.pt")
        if opts["nn_activation"] != "softplus":  # ML-IAP has the activation: write the LAMMPS files
            from fitsnap_uq.nn.fitsnap_mliap import display_path, export_ensemble

            exported = export_ensemble(fe.NNEnsemble(desc_path))
            self.pt.single_print(f"fitsnap-uq NNENSEMBLE: wrote the members and their mean for plain LAMMPS "
                                 f"(ML-IAP model nn): include {display_path(exported.pair_files['mean'])} "
                                 f"(the mean) or {prefix.name}.member<m>.pair.lmp")
        self.write_calibration_report(rows.truth, rows.mean, sigma, rows.groups, rows.row_types,
                                      rows.testing, keep=rows.keep, multiplier=multiplier,
                                      recalibration="quantile recalibration on out-of-bag errors")

    def create_datasets(self) -> None:
        """FitSNAP's configuration list without a fit (its error analysis asks for it with --nofit)."""
        from fitsnap3lib.solvers.pytorch import PYTORCH

        from fitsnap_uq.nn import fitsnap_ensemble as fe

        self.configs = fe.build_configs(PYTORCH, self.pt, self.config)

    def evaluate_configs(self, config_idx: int | None = 0, standardize_bool: bool = True,
                         dtype: Any = None, eval_device: str = "cpu") -> tuple[Any, Any]:
        """The ensemble mean in the form FitSNAP's error analysis reads: (total energy (eV), forces (3N,)
        eV/A) as tensors, of configuration ``config_idx`` (or lists over all with None)."""
        import torch

        if self.rows is None:
            raise RuntimeError("NNENSEMBLE has no predictions (not fitted, or not rank 0)")
        idx = range(len(self.configs)) if config_idx is None else [config_idx]
        energies, forces = [], []
        for i in idx:
            sel = self.rows.config_index == i
            mean, types = self.rows.mean[sel], self.rows.row_types[sel]
            energies.append(torch.tensor(mean[types == "Energy"][0] * int(self.configs[i].natoms)))
            f = mean[types == "Force"]
            forces.append(torch.tensor(f) if f.size else None)
        if config_idx is None:
            return energies, forces
        return energies[0], forces[0]
