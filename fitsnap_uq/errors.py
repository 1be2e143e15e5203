"""Errors for a user's mistakes: each names the file, the input section and the key at fault."""

from __future__ import annotations


class InputError(Exception):
    """A user's input is wrong; the message says where (file, section, key) and what to do.

    Args:
        message: what is wrong and, where it helps, what is accepted.
        file: the file at fault (input file, data file, posterior file), if any.
        section: the input-file section, e.g. ``UQ`` or ``SOLVER``, if any.
        key: the key within the section, if any.
    """

    def __init__(self, message: str, file: str | None = None, section: str | None = None,
                 key: str | None = None) -> None:
        self.file = file
        self.section = section
        self.key = key
        self.detail = message
        where = []
        if file:
            where.append(f"file {file}")
        if section:
            where.append(f"section [{section}]")
        if key:
            where.append(f"key '{key}'")
        prefix = ", ".join(where)
        super().__init__(f"{prefix}: {message}" if prefix else message)


class NumericalError(RuntimeError):
    """A numerical result is unusable (e.g. a covariance that is not positive definite)."""
