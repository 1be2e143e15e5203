"""The ``[UQ]`` input section for FitSNAP (a thin adapter over :mod:`fitsnap_uq.options`).

FitSNAP 3.1.0.4 makes one object per input section by searching ``Section.__subclasses__()`` by
name, so defining :class:`UQ` here (imported by :func:`fitsnap_uq.fitsnap_plugin.activate`) is the whole
registration.
"""

from __future__ import annotations

from typing import Any

from fitsnap3lib.io.sections.sections import Section

from fitsnap_uq.options import parse_uq


class UQ(Section):
    """``[UQ]``: options of the fitsnap-uq solvers (see :data:`fitsnap_uq.options.UQ_KEYS`)."""

    def __init__(self, name: str, config: Any, pt: Any, infile: str | None, args: Any) -> None:
        super().__init__(name, config, pt, infile, args)
        values = dict(self._config.items(self.name)) if self.name in self._config else {}
        # configparser adds [DEFAULT] entries to every section; FitSNAP has none of its own.
        self.options = parse_uq(values, file=infile)
        self.__dict__.update(self.options)
        self.delete()


def uq_options(config: Any) -> dict[str, Any]:
    """The parsed ``[UQ]`` options of a FitSNAP config, defaults when the section is absent."""
    section = config.sections.get("UQ")
    if section is not None:
        return dict(section.options)
    return parse_uq({}, file=getattr(config, "infile", None))
