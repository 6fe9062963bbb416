"""Errors that gpuseg reports to a user as a message (exit code 2), never as a traceback."""

from __future__ import annotations

from collections.abc import Sequence


class GpusegError(Exception):
    """Base class for errors that carry a message meant for the user."""

    exit_code = 1


class UserInputError(GpusegError):
    """Bad input data or configuration: the message names what to change.

    Parameters
    ----------
    message : str
        What is wrong, in the user's terms.
    table : str, optional
        Input table concerned (``customers``, ``events``, ``texts``).
    column : str, optional
        Column concerned, as named in the user's file.
    config_key : str, optional
        Dotted config key that the user can change to fix it.
    rows : sequence of str, optional
        A few offending rows, already formatted.
    """

    exit_code = 2

    def __init__(
        self,
        message: str,
        *,
        table: str | None = None,
        column: str | None = None,
        config_key: str | None = None,
        rows: Sequence[str] | None = None,
    ):
        self.table = table
        self.column = column
        self.config_key = config_key
        self.rows = list(rows or [])
        super().__init__(message)

    def __str__(self) -> str:
        where = []
        if self.table:
            where.append(f"table '{self.table}'")
        if self.column:
            where.append(f"column '{self.column}'")
        text = (", ".join(where) + ": " if where else "") + self.args[0]
        if self.rows:
            text += "\n  first offending rows:\n" + "\n".join(f"    {r}" for r in self.rows)
        if self.config_key:
            text += f"\n  config key to change: {self.config_key}"
        return text


class ConfigError(UserInputError):
    """A configuration value that cannot work (unknown option, impossible combination)."""
