"""An export table from personal data columns, and its file (CSV or Parquet) with its SHA-256.

Plain Arrow in and out, no configuration: the ``export`` job decides what to read and where to
write; this module decides which columns a platform gets, under which headers, and counts the
identifiers that were missing or could not be normalised.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv

from gpuseg.export.normalise import HEADERS, NEVER_HASHED, header, normalise_values
from gpuseg.runtime.io import atomic_path, write_parquet

FORMATS = ("csv", "parquet")


def identifier_columns(pii: pa.Table, kinds: dict[str, str], platform: str, *, hash_values: bool,
                       default_country_code: str | None = None) -> tuple[pa.Table, dict[str, Any]]:
    """The normalised (and hashed) identifier columns a platform takes, in its header order.

    Parameters
    ----------
    pii : pyarrow.Table
        One row per exported customer, with the personal data columns named in ``kinds``.
    kinds : dict
        Column -> personal data kind (``email``, ``phone``, ..., ``other``).
    platform : {'generic', 'google', 'meta'}
        Whose rules and headers to follow.
    hash_values : bool
        SHA-256 the normalised values (but the kinds the platform wants unhashed).
    default_country_code : str, optional
        Calling code of national phone numbers.

    Returns
    -------
    (pyarrow.Table, dict)
        The identifier columns (string, null where missing or unusable) and a report:
        ``columns`` (header -> source column, kind, hashed, missing, unusable) and
        ``not_exported`` (column -> why).
    """
    wanted = HEADERS[platform]
    columns: dict[str, pa.Array] = {}
    report: dict[str, Any] = {"columns": {}, "not_exported": {}}
    for kind in wanted:
        for column in (c for c, k in kinds.items() if k == kind):
            values, counts = normalise_values(pii[column].to_pylist(), kind, platform, hash_values=hash_values,
                                              default_country_code=default_country_code)
            hashed = hash_values and kind not in NEVER_HASHED[platform]
            name = header(kind, platform, hashed=hashed)
            columns[name] = pa.array(values, pa.string())
            report["columns"][name] = {"source": column, "kind": kind, "hashed": hashed, **counts}
    for column, kind in kinds.items():
        if kind not in wanted:
            report["not_exported"][column] = ("kind 'other' is never exported" if kind == "other"
                                              else f"{platform} takes no {kind} identifier")
    return pa.table(columns), report


def write_export(path: Path, table: pa.Table, fmt: str) -> str:
    """Write ``table`` atomically as CSV (UTF-8, header row, empty cells for nulls) or Parquet.

    Returns
    -------
    str
        The SHA-256 (hex) of the written file, for the receiving side to check what it got.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    if fmt == "parquet":
        write_parquet(path, table)
    else:
        with atomic_path(path) as tmp:
            pacsv.write_csv(table, tmp, write_options=pacsv.WriteOptions(quoting_style="needed"))
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()
