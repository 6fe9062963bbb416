"""What the canonical events mean, for every layer: event roles and time units.

The roles (which event types count as purchases, returns, tickets, reviews) and the conversion of
an ``as_of`` setting to microseconds are read by the features, the journeys, the customer-value
summary and the jobs alike, so they live here, below all of them.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np

from gpuseg.runtime.errors import ConfigError

US_PER_DAY = 86_400_000_000

#: the event types playing each role when ``data.roles`` does not say
DEFAULT_ROLES: dict[str, list[str]] = {
    "purchase": ["purchase"],
    "return": ["return"],
    "ticket": ["support_ticket"],
    "review": ["review"],
}


def to_microseconds(as_of: Any) -> int:
    """Microseconds since the epoch (naive UTC) of an ISO string, date, datetime or datetime64.

    Raises
    ------
    ConfigError
        When ``as_of`` cannot be read as a point in time.
    """
    value = as_of
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value.strip())
        except ValueError:
            raise ConfigError(
                f"The 'as_of' parameter must be an ISO date or datetime such as '2024-01-31' or "
                f"'2024-01-31T00:00:00'. Got {as_of!r} instead."
            ) from None
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.timezone.utc).replace(tzinfo=None)
        return int(np.datetime64(value, "us").astype(np.int64))
    if isinstance(value, dt.date):
        return int(np.datetime64(value, "D").astype("datetime64[us]").astype(np.int64))
    if isinstance(value, np.datetime64) and not np.isnat(value):
        return int(value.astype("datetime64[us]").astype(np.int64))
    raise ConfigError(
        "The 'as_of' parameter must be an ISO date string, a datetime.date/datetime or a "
        f"numpy.datetime64. Got {as_of!r} instead."
    )


def format_instant(us: int) -> str:
    """A point in time for a log line: the date alone at midnight, else to the second."""
    value = np.datetime64(int(us), "us")
    if value == value.astype("datetime64[D]"):
        return str(value.astype("datetime64[D]"))
    return str(value.astype("datetime64[s]")).replace("T", " ")
