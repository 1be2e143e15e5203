"""The two-element Cu-Au EMT active-learning config shared by the AL benchmarks and their tests."""

from __future__ import annotations

import json
from typing import Any

BASE: dict[str, dict[str, Any]] = {
    "system": {"elements": ["Cu", "Au"], "composition": [0.75, 0.25], "lattice": "fcc", "a": 3.75,
               "supercell": [2, 2, 2], "initial": 4, "seed": 0},
    "oracle": {"name": "emt"},
    "snap": {"twojmax": 4, "rcutfac": 4.9, "radelem": [0.5, 0.55], "wj": [1.0, 0.9]},
    "md": {"temperatures": [800.0, 1200.0], "md_cells": [2, 2, 2], "md_steps": 100},
    "select": {"strategy": "max_std", "batch": 2, "tolerance": 0.0},
    "loop": {"iterations": 3, "qm_budget": 20, "test_structures": 3},
}
"""32-atom fcc cells of Cu3Au composition (Au on random sites), EMT, SNAP 2J = 4, MD at 800 and 1200 K,
two frames a round chosen by max_std among every evaluated frame."""


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_value(x)}" for k, x in v.items()) + "}"
    return json.dumps(v)  # numbers, strings and lists of them are TOML as JSON writes them


def cuau_toml(**tables: dict[str, Any]) -> str:
    """The config as TOML, with ``tables`` ({table: {key: value}}) overriding or adding keys."""
    return config_toml(BASE, **tables)


def config_toml(base: dict[str, dict[str, Any]], **tables: dict[str, Any]) -> str:
    """The config ``base`` as TOML, with ``tables`` ({table: {key: value}}) overriding or adding keys."""
    merged = {name: dict(keys) for name, keys in base.items()}
    for name, keys in tables.items():
        merged.setdefault(name, {}).update(keys)
    return "".join(f"[{name}]\n" + "".join(f"{k} = {_value(v)}\n" for k, v in keys.items())
                   for name, keys in merged.items())
