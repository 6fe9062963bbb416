"""The canonical tables every job after ``validate`` reads (``<work_dir>/validated/``).

Users map their own column names onto these in the ``data`` config; ``gpuseg validate`` writes
the canonical tables, so downstream jobs never see user column names or file formats.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from gpuseg.runtime.layout import artifact, job_dir

SCHEMA_VERSION = 1

TIMESTAMP = pa.timestamp("us")

#: Canonical columns of the events table (amount, category and channel may be all-null).
EVENTS = pa.schema(
    [
        ("customer_id", pa.string()),
        ("timestamp", TIMESTAMP),
        ("event_type", pa.string()),
        ("amount", pa.float64()),
        ("category", pa.string()),
        ("channel", pa.string()),
    ]
)

#: Canonical columns of the texts table (rating may be all-null).
TEXTS = pa.schema(
    [
        ("customer_id", pa.string()),
        ("timestamp", TIMESTAMP),
        ("source", pa.string()),
        ("text", pa.string()),
        ("rating", pa.float64()),
    ]
)

#: The customers table is customer_id plus the mapped attribute and label columns.
CUSTOMER_ID = pa.field("customer_id", pa.string())

#: Columns of every rejects file: the original row (as JSON text) and why it was set aside.
REJECTS = pa.schema(
    [
        ("table", pa.string()),
        ("row", pa.int64()),
        ("reason", pa.string()),
        ("customer_id", pa.string()),
        ("record", pa.string()),
    ]
)

TABLES = ("customers", "events", "texts")

#: Kinds of personal data a ``customers.pii`` column can hold. ``validate`` writes these columns
#: (with customer_id and the consent column) to ``validated/pii.parquet`` only, never to
#: customers.parquet; ``schema.json`` lists them under customers -> "pii" (column -> kind) and
#: "consent". ``other`` (street address, fax, ...) is kept out of everything and never exported.
PII_KINDS = ("email", "phone", "first_name", "last_name", "city", "state", "postcode", "country", "other")


def validated_dir(work_dir: str | Path) -> Path:
    """Folder of the canonical tables written by ``gpuseg validate``."""
    return job_dir(work_dir, "validate")


def validated_path(work_dir: str | Path, table: str) -> Path:
    """Path of one canonical table (``customers``, ``events`` or ``texts``)."""
    return artifact(work_dir, "validate", table)
