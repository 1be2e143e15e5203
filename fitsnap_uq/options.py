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


def _optional_path(text: str) -> str | None:
    return None if text.strip() in ("", "None", "none") else text.strip()


UQ_KEYS: dict[str, Key] = {
    "posterior": Key("", _optional_path,
                     "Posterior file to write; default <potential>.posterior.npz next to FitSNAP's "
                     "potential output."),
    "noise_classes": Key("group", str,
                         "Noise classes with their own learned noise level: one (all rows), quantity "
                         "(energy/force/stress) or group (each FitSNAP group and quantity).",
                         ("one", "quantity", "group")),
    "prior": Key("isotropic", str,
                 "Prior on the coefficients: none (flat), isotropic (one precision) or ard (one "
                 "precision per coefficient, automatic relevance determination).",
                 ("none", "isotropic", "ard")),
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
    return out
