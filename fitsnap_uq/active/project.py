"""A user's FitSNAP project as the start of active learning: the SNAP settings, elements, groups and weights
of its input file, and the folder of its JSON training set (standard library only: FitSNAP reads its
input with :mod:`configparser` too).

The loop keeps the project's groups with their sizes and weights, adds its own groups beside them and
writes its own input from :attr:`FitSNAPProject.bispectrum` (so descriptors match the user's fit).
"""

from __future__ import annotations

import configparser
from dataclasses import dataclass, field
from pathlib import Path

from fitsnap_uq.errors import InputError

BISPECTRUM_KEYS = ("twojmax", "rcutfac", "rfac0", "rmin0", "wj", "radelem", "wselfallflag", "chemflag",
                   "bzeroflag", "quadraticflag", "bnormflag", "switchflag")
"""Keys of the project's ``[BISPECTRUM]`` carried over (others are the loop's)."""


@dataclass
class FitSNAPProject:
    """What the loop takes from a FitSNAP input.

    Attributes:
        input_file: the input file.
        elements: ``[BISPECTRUM] type``, in type order.
        bispectrum: the carried-over ``[BISPECTRUM]`` keys (:data:`BISPECTRUM_KEYS`), as written.
        data_path: the JSON training set's folder (``[PATH] dataPath``, relative to the input's folder).
        groups: group name -> the rest of its ``[GROUPS]`` line as written (sizes and weights).
        group_sections: ``[GROUPS] group_sections`` (column names), for checking the layout.
    """

    input_file: Path
    elements: list[str]
    bispectrum: dict[str, str]
    data_path: Path
    groups: dict[str, str] = field(default_factory=dict)
    group_sections: str = ""


LOOP_COLUMNS = ["name", "training_size", "testing_size", "eweight", "fweight", "vweight"]


def read_project(input_file: str | Path, where: str = "[start] fitsnap_input") -> FitSNAPProject:
    """Read a FitSNAP input (``where``: the config key that named it, for messages).

    Raises InputError naming the file and section for a missing file, section, key or group folder, or
    a ``[GROUPS]`` layout other than the one the loop writes (name training_size testing_size eweight
    fweight vweight).
    """
    path = Path(input_file)
    if not path.is_file():
        raise InputError(f"FitSNAP input not found (named by {where})", file=str(path))
    parser = configparser.ConfigParser(inline_comment_prefixes=("#",))
    parser.optionxform = str  # group names keep their case
    try:
        parser.read_string(path.read_text())
    except configparser.Error as exc:
        raise InputError(f"cannot parse: {exc}", file=str(path)) from None
    for section in ("BISPECTRUM", "PATH", "GROUPS"):
        if not parser.has_section(section):
            raise InputError("section missing", file=str(path), section=section)
    bis = parser["BISPECTRUM"]
    if "type" not in bis:
        raise InputError("key missing", file=str(path), section="BISPECTRUM", key="type")
    elements = bis["type"].split()
    bispectrum = {k: bis[k] for k in BISPECTRUM_KEYS if k in bis}
    for key in ("twojmax", "rcutfac"):
        if key not in bispectrum:
            raise InputError("key missing", file=str(path), section="BISPECTRUM", key=key)
    try:
        rcutfac = float(bispectrum["rcutfac"])
    except ValueError:
        rcutfac = float("nan")
    if not rcutfac > 0:  # FitSNAP takes a negative one and every descriptor is zero
        raise InputError(f"must be a positive number, got '{bispectrum['rcutfac']}'", file=str(path),
                         section="BISPECTRUM", key="rcutfac")
    if "dataPath" not in parser["PATH"]:
        raise InputError("key missing", file=str(path), section="PATH", key="dataPath")
    data_path = (path.parent / parser["PATH"]["dataPath"]).resolve()
    grp = parser["GROUPS"]
    sections = grp.get("group_sections", " ".join(LOOP_COLUMNS))
    if sections.split() != LOOP_COLUMNS:
        raise InputError(f"group_sections must be '{' '.join(LOOP_COLUMNS)}' for active learning, got "
                         f"'{sections}'", file=str(path), section="GROUPS", key="group_sections")
    settings = {"group_sections", "group_types", "smartweights", "random_sampling", "BOLTZT"}
    groups = {name: value for name, value in grp.items() if name not in settings}
    for name, value in groups.items():
        if len(value.split()) != len(LOOP_COLUMNS) - 1:
            raise InputError(f"expected {len(LOOP_COLUMNS) - 1} values ({' '.join(LOOP_COLUMNS[1:])})",
                             file=str(path), section="GROUPS", key=name)
        if not any((data_path / name).glob("*.json")):
            raise InputError(f"no JSON files in {data_path / name}", file=str(path), section="GROUPS",
                             key=name)
    if not groups:
        raise InputError("no groups", file=str(path), section="GROUPS")
    return FitSNAPProject(path.resolve(), elements, bispectrum, data_path, groups, sections)
