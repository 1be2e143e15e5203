"""The keys of the ``[UQ]`` input section: one table with defaults, types, accepted values and docs.

The FitSNAP ``UQ`` section (:mod:`fitsnap_uq.sections`) and every solver read their options from
here, so the defaults and the validation live in one place. Values are checked on parsing; a bad
value raises :class:`~fitsnap_uq.errors.InputError` naming the file, the section and the key.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fitsnap_uq.errors import InputError


@dataclass(frozen=True)
class Key:
    """One ``[UQ]`` key: default (as written in an input file), parser, accepted values, doc."""

    default: str
    parse: Callable[[str], Any]
    doc: str
    choices: tuple[str, ...] = ()


def _bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected 0/1 or true/false, got {text!r}")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError(f"must be >= 0, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError(f"must be > 0, got {value}")
    return value


def _outlier_ratio(text: str) -> float:
    value = float(text)
    if value != 0.0 and not value > 1.0:
        raise ValueError(f"must be 0 (off) or above 1, got {value}")
    return value


def _optional_path(text: str) -> str | None:
    return None if text.strip() in ("", "None", "none") else text.strip()


UQ_KEYS: dict[str, Key] = {
    "posterior": Key("", _optional_path,
                     "Posterior file to write; default <potential>.posterior.npz next to FitSNAP's "
                     "potential output."),
    "outlier_ratio": Key("10", _outlier_ratio,
                         "Name in the log and the calibration report every training configuration whose "
                         "rms weighted residual (per quantity) exceeds this many times that of the rest "
                         "of its group (fitsnap_uq.linear.outliers); 0 switches the check off. Outliers "
                         "are named, never removed."),
    "noise_classes": Key("one", str,
                         "Noise classes of the mean fit: one (default: FitSNAP's weights are kept as "
                         "fixed relative precisions, so the mean is the user's weighted fit, as SVD/ANL "
                         "up to the prior), quantity (energy/force/stress) or group (each FitSNAP group "
                         "and quantity): a learned noise level per class re-weights the mean (opt-in; "
                         "the calibration report then shows each group's RMSE beside SVD's).",
                         ("one", "quantity", "group")),
    "predictive": Key("model_error", str,
                      "BAYES: uncertainty of new configurations (MD frames, candidates; no group): "
                      "model_error (default: c * posterior covariance + embedded model error diag(s^2) "
                      "+ a floor per quantity, learned from cross-validated residuals; follows the "
                      "descriptors) or noise_classes (the learned noise of the classes, pooled per "
                      "quantity for new data: a constant per quantity).",
                      ("model_error", "noise_classes")),
    "model_error_basis": Key("posterior", str,
                             "BAYES predictive = model_error: the axes on which the model error is "
                             "diagonal: posterior (the principal axes of the fit's posterior covariance), "
                             "coefficients (each SNAP coefficient its own, as in MODELERROR) or misfit (the "
                             "principal axes of the held-out rows' pointwise corrections, as POPS).",
                             ("posterior", "coefficients", "misfit")),
    "model_error_rank": Key("3", _positive_int,
                            "BAYES predictive = model_error: rank of an extra correlated part U U^T of the "
                            "model error (default 3: ranked held-out Ta and W-Be forces better than 0 and "
                            "POPSRegression, and lowered the force NLL, with every aggregate bound of the "
                            "benchmark met: README; 0: none, ~3x faster on large data)."),
    "atom_scale": Key("auto", str,
                      "BAYES predictive = model_error: yes to multiply each force's coefficient variance "
                      "by a per-atom factor exp(theta . z) of the atom's element and environment "
                      "(fitsnap_uq.linear.atomscale; learned from cross-validated force residuals; the "
                      "features clipped to the training atoms' range). Posterior.predict (with atom "
                      "ids and elements), the Python MD hook and the native plugin (fix snap/uq) apply "
                      "it. auto (default): yes when the training rows have forces.",
                      ("auto", "yes", "no")),
    "energy_scale": Key("auto", str,
                        "BAYES predictive = model_error: yes to multiply each configuration's energy "
                        "variance (per atom) by a factor exp(theta . z) of its composition and of its "
                        "energy row (a^T M a, a^T S a, |a|^2, number of atoms), and its energy floor by "
                        "exp(phi . z) (fitsnap_uq.linear.atomscale; learned from cross-validated energy "
                        "residuals). Posterior.predict (with each energy row's number of atoms), the "
                        "Python MD hook and the native plugin (fix snap/uq) apply it to the "
                        "configuration's energy sigma. auto (default): yes when every configuration "
                        "with an energy row has force rows (they count its atoms).",
                        ("auto", "yes", "no")),
    "scale_weights": Key("rows", str,
                         "BAYES predictive = model_error with the per-atom force scale: how the held-out "
                         "force rows count in the scale's fit: rows (each once) or group (each FitSNAP "
                         "group equally, so the largest groups and a few configurations with gross "
                         "residuals do not set the scale and the floor for all; training labels only, "
                         "a prediction uses no group). Measured on held-out W-Be configurations: fewer "
                         "groups over- or under-covered and a lower force NLL; see the README.",
                         ("rows", "group")),
    "prior": Key("isotropic", str,
                 "Prior on the coefficients, its strength maximizing the evidence: isotropic (one "
                 "precision on the raw coefficients), none (flat), ard (one precision per coefficient, "
                 "automatic relevance determination) or g (Zellner's g-prior: precision proportional to "
                 "the Gram matrix of the weighted rows, so the mean is the weighted least-squares fit "
                 "shrunk by the factor 1 - p/(signal-to-noise sum) and does not depend on the columns' "
                 "scales; it does not regularize what the rows determine poorly; isotropic where the "
                 "rows do not determine every coefficient).",
                 ("none", "isotropic", "ard", "g")),
    "weights": Key("ratios", str,
                   "How FitSNAP's group weights enter: ratios (fixed relative precisions inside a "
                   "noise class; a class's overall level is learned) or ignore (every row weight 1; "
                   "rows of weight 0 stay out).", ("ratios", "ignore")),
    "max_iter": Key("500", _positive_int, "Most evidence-maximization iterations."),
    "tol": Key("1e-8", _positive_float, "Convergence tolerance on the relative change of the "
               "hyperparameters."),
    "recalibration": Key("quantile", str,
                         "Recalibration of the predictive intervals, learned by K-fold "
                         "cross-validation over training configurations: quantile (per quantity) or "
                         "none (Gaussian intervals from the posterior alone).", ("quantile", "none")),
    "cv_folds": Key("5", _positive_int, "Folds of the recalibration's cross-validation (>= 2)."),
    "nsamples": Key("0", _positive_int, "Also write this many sampled coefficient sets as "
                    "<potential>.sample<i>.snapcoeff files."),
    "seed": Key("0", int, "Seed of every random choice (samples, folds)."),
}


def _embed(text: str) -> str | list[int]:
    text = text.strip()
    if text in ("all", ""):
        return "all"
    return [int(x) for x in text.replace(",", " ").split()]


def _data_var(text: str) -> str | float:
    text = text.strip()
    if text == "anl":
        return "anl"
    value = float(text)
    if not value > 0:
        raise ValueError(f"must be 'anl' or a variance > 0, got {value}")
    return value


MERR_KEYS: dict[str, Key] = {
    "merr_embed": Key("all", _embed, "MODELERROR: coefficients carrying model error: all, or indices "
                      "(0-based, in FitSNAP's column layout: per element, constant first unless "
                      "bzeroflag = 1)."),
    "merr_multiplicative": Key("0", _bool, "MODELERROR: report the model error relative to |c_k| "
                               "(the same maximum-likelihood fit)."),
    "merr_likelihood": Key("iid", str, "MODELERROR and BAYESMCMC model_error: iid, abc or full "
                           "(see fitsnap_uq/linear/merr.py).", ("iid", "abc", "full")),
    "merr_mean": Key("weights", str, "MODELERROR: the mean: weights (default: the weighted least-squares "
                     "fit FitSNAP's weights ask for, as SVD; the model error is fitted around it) or joint "
                     "(FitSNAP MERR's objective: mean and model error together, which re-weights the mean).",
                     ("weights", "joint")),
    "merr_data_var": Key("anl", _data_var, "MODELERROR: data-noise variance of the weighted rows: anl "
                         "(FitSNAP ANL's sigmahat, as FitSNAP's MERR) or a number."),
}

MCMC_KEYS: dict[str, Key] = {
    "mcmc_likelihood": Key("gaussian", str, "BAYESMCMC: gaussian (BAYES noise classes, sampled scale), "
                           "student_t (heavy tails) or model_error (embedded model error, iid).",
                           ("gaussian", "student_t", "model_error")),
    "mcmc_walkers": Key("64", _positive_int, "BAYESMCMC: walkers per chain (at least 2 d + 2)."),
    "mcmc_steps": Key("2000", _positive_int, "BAYESMCMC: steps per chain."),
    "mcmc_burn": Key("500", _positive_int, "BAYESMCMC: burn-in steps discarded."),
    "mcmc_thin": Key("1", _positive_int, "BAYESMCMC: keep every n-th step."),
    "mcmc_chains": Key("4", _positive_int, "BAYESMCMC: independent chains (>= 2, for R-hat)."),
    "student_nu": Key("4", _positive_float, "BAYESMCMC student_t: degrees of freedom."),
    "max_samples": Key("2000", _positive_int, "Most coefficient samples stored in the Posterior."),
}


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 < value <= 1.0:
        raise ValueError(f"must be in (0, 1], got {value}")
    return value


NN_KEYS: dict[str, Key] = {
    "nn_members": Key("4", _positive_int, "NNENSEMBLE: number of FitSNAP PyTorch networks (>= 2)."),
    "nn_resample": Key("bootstrap", str, "NNENSEMBLE: training configurations of each member: bootstrap "
                       "(drawn with replacement), fraction (nn_fraction of them, without replacement) or "
                       "none (all; only the seed differs).", ("bootstrap", "fraction", "none")),
    "nn_fraction": Key("0.8", _fraction, "NNENSEMBLE with nn_resample = fraction: share of the training "
                       "configurations each member draws."),
    "nn_early_stopping": Key("1", _bool, "NNENSEMBLE: keep each member's epoch of lowest loss on its "
                             "out-of-bag training configurations (0: the last epoch)."),
    "nn_ensemble": Key("", _optional_path, "NNENSEMBLE: ensemble description file to write; default "
                       "<potential>.nnensemble.json (members <prefix>.member<m>.pt beside it)."),
    "nn_activation": Key("softplus", str, "NNENSEMBLE: activation of the members' hidden layers: softplus "
                         "(FitSNAP's) or tanh, sigmoid, relu, which LAMMPS' ML-IAP 'model nn' also has, so "
                         "the members and their mean run in plain LAMMPS (fitsnap-uq nn-export).",
                         ("softplus", "tanh", "sigmoid", "relu")),
}
UQ_KEYS.update(MERR_KEYS)
UQ_KEYS.update(MCMC_KEYS)
UQ_KEYS.update(NN_KEYS)


def parse_uq(values: dict[str, str], file: str | None = None) -> dict[str, Any]:
    """Validate and parse ``[UQ]`` values (strings, as read from an input file) over the defaults.

    Raises:
        InputError: for an unknown key or a value that does not parse, naming file, section, key.
    """
    out: dict[str, Any] = {}
    for name in values:
        if name not in UQ_KEYS:
            raise InputError(f"unknown key; [UQ] accepts: {', '.join(sorted(UQ_KEYS))}",
                             file=file, section="UQ", key=name)
    for name, key in UQ_KEYS.items():
        text = values.get(name, key.default)
        if key.choices and text.strip() not in key.choices:
            raise InputError(f"value {text!r} is not one of: {', '.join(key.choices)}",
                             file=file, section="UQ", key=name)
        try:
            out[name] = key.parse(text.strip() if isinstance(text, str) else text)
        except ValueError as exc:
            raise InputError(f"bad value {text!r}: {exc}", file=file, section="UQ", key=name) from None
    if out["cv_folds"] < 2:
        raise InputError("need at least 2 folds", file=file, section="UQ", key="cv_folds")
    if out["mcmc_chains"] < 2:
        raise InputError("need at least 2 chains (for R-hat)", file=file, section="UQ", key="mcmc_chains")
    if out["mcmc_burn"] >= out["mcmc_steps"]:
        raise InputError(f"burn-in {out['mcmc_burn']} must be shorter than mcmc_steps "
                         f"{out['mcmc_steps']}", file=file, section="UQ", key="mcmc_burn")
    if out["scale_weights"] != "rows" and (out["atom_scale"] == "no" or out["predictive"] != "model_error"):
        raise InputError("weighs the fit of the per-atom force scale: needs predictive = model_error and "
                         "atom_scale yes or auto", file=file, section="UQ", key="scale_weights")
    if out["nn_members"] < 2:
        raise InputError("an ensemble needs at least 2 members", file=file, section="UQ", key="nn_members")
    return out
