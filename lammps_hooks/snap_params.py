"""The SNAP parameters of a posterior on the LAMMPS side: the descriptor-compute arguments the MD hook
builds from them, and the checks every command that runs a posterior in LAMMPS shares (``fitsnap-uq
md``, ``fitsnap-uq build-plugin`` / ``fix snap/uq``, ``fitsnap-uq ensemble``), so that each refuses
the same thing with the same message.

Supported: linear and quadratic SNAP (``quadraticflag``), one or several elements, explicit
multi-element SNAP (``chemflag = 1``, with ``bnormflag`` and ``wselfallflag`` as fitted), ``bzeroflag``,
``switchflag``. With ``chemflag = 1`` the descriptor columns of every element block are indexed by the
elements of the neighbours (``B[e1, e2, e3]``), numbered in the potential's element order. LAMMPS'
``pair_style snap`` numbers the elements in the order in which they first appear among the element
names of its ``pair_coeff`` command, so that order must be the posterior's: :func:`check_chem_order`.

Refused (:func:`check_supported`): the inner switching function (``switchinnerflag = 1``, with
``sinner``/``dinner``), which the posterior's SNAP parameters do not carry.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fitsnap_uq.errors import InputError
from fitsnap_uq.posterior import per_element

UNSUPPORTED = {
    "switchinnerflag": "the inner switching function of SNAP (switchinnerflag = 1, sinner/dinner)",
}
"""[BISPECTRUM] keys whose non-zero value the LAMMPS side refuses, with what they switch on."""


def check_supported(snap: Mapping[str, Any], file: str | None = None) -> None:
    """Raise :class:`InputError` naming ``file`` (the posterior) and the ``[BISPECTRUM]`` key when the
    SNAP parameters use something the LAMMPS side does not support (:data:`UNSUPPORTED`)."""
    for key, what in UNSUPPORTED.items():
        if int(snap.get(key, 0) or 0):
            raise InputError(f"{what} is not supported by fitsnap-uq's LAMMPS side (fitsnap-uq md, "
                             "fix snap/uq, fitsnap-uq ensemble); refit with "
                             f"{key} = 0", file=file, section="BISPECTRUM", key=key)


def chem_order(type_elements: Sequence[str]) -> list[str]:
    """The element numbering of LAMMPS' ``pair_style snap``: the distinct names of ``type_elements``
    (pair_coeff's element of each atom type, ``NULL`` for a type the snap style does not handle) in
    the order in which they first appear."""
    out: list[str] = []
    for e in type_elements:
        if e != "NULL" and e not in out:
            out.append(e)
    return out


def check_chem_order(snap: Mapping[str, Any], elements: Sequence[str], type_elements: Sequence[str],
                     file: str | None = None, where: str = "pair_coeff") -> None:
    """With ``chemflag = 1``: raise :class:`InputError` unless the elements of the atom types, in the
    order of their first appearance (LAMMPS' numbering, :func:`chem_order`), are the posterior's
    ``elements`` in their order (the numbering the descriptor columns were fitted with).

    Args:
        snap: the posterior's SNAP parameters; nothing is checked when ``chemflag`` is 0.
        elements: the posterior's element order.
        type_elements: the element of each LAMMPS atom type (as in ``pair_coeff``).
        file, where: the posterior file, and where ``type_elements`` come from (for the message).
    """
    if not int(snap.get("chemflag", 0) or 0):
        return
    order = chem_order(type_elements)
    if order != list(elements):
        raise InputError(
            "explicit multi-element SNAP (chemflag 1) numbers the elements in the order they first "
            f"appear in pair_coeff ({' '.join(order)}; {where}: {' '.join(type_elements)}), and its "
            f"descriptors were fitted with the posterior's order ({' '.join(elements)}): number the "
            "atom types so that the elements first appear in that order and every element has a type",
            file=file, section="BISPECTRUM", key="chemflag")


def compute_args(snap: Mapping[str, Any], nelements: int, type_to_element: Sequence[int]) -> str:
    """The arguments of ``compute sna/atom`` / ``snad/atom`` (and the plugin's ``snap/uq/atom``) for
    the posterior's SNAP parameters: ``rcutfac rfac0 twojmax``, the radius and the weight of each atom
    type's element, and the keywords (``chem NELEM map..`` with ``chemflag = 1``).

    Args:
        snap: the SNAP parameters (``rcutfac``, ``rfac0``, ``twojmax``, ``radelem``, ``wj`` per element
            or scalar, ``rmin0``, ``bzeroflag``, ``quadraticflag``, optionally ``switchflag``,
            ``bnormflag``, ``wselfallflag``, ``chemflag``).
        nelements: elements of the posterior.
        type_to_element: (ntypes,) 0-based element index of each LAMMPS atom type.
    """
    radelem = per_element(snap["radelem"], nelements)
    wj = per_element(snap["wj"], nelements)
    rad = " ".join(str(radelem[i]) for i in type_to_element)
    wjs = " ".join(str(wj[i]) for i in type_to_element)
    opts = (f"rmin0 {snap['rmin0']} bzeroflag {int(snap['bzeroflag'])} quadraticflag "
            f"{int(snap['quadraticflag'])} switchflag {int(snap.get('switchflag', 1))} "
            f"bnormflag {int(snap.get('bnormflag', 0))} wselfallflag {int(snap.get('wselfallflag', 0))}")
    if int(snap.get("chemflag", 0) or 0):
        opts += f" chem {nelements} " + " ".join(str(int(i)) for i in type_to_element)
    return f"{snap['rcutfac']} {snap['rfac0']} {snap['twojmax']} {rad} {wjs} {opts}"
