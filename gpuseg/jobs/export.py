"""``gpuseg export``: an audience, segments or a lookalike list as a customer file for a CRM or ad platform.

Reads the list (``audiences/<name>.parquet``, ``segment/segments.parquet`` or
``lookalike/audience.parquet``), keeps the customers whose consent column says yes, joins their
personal data from ``validated/pii.parquet`` (the only place it lives), normalises each
identifier the way the platform matches them and hashes it with SHA-256 (see
:mod:`gpuseg.export.normalise` for the rules and their sources), and writes
``exports/<name>.csv`` (or ``.parquet``) with ``exports/<name>.json``: rows, consent-filtered,
missing and unusable identifiers per column, platform, hashed or not, the file's SHA-256.
No identifier value is ever logged.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from omegaconf import DictConfig, ListConfig

from gpuseg.export.normalise import PLATFORMS, is_calling_code
from gpuseg.export.writer import FORMATS, identifier_columns, write_export
from gpuseg.jobs.common import finish, load_validated, staged, start, work_dir
from gpuseg.runtime.errors import ConfigError, UserInputError
from gpuseg.runtime.io import write_json
from gpuseg.runtime.layout import artifact, job_dir
from gpuseg.runtime.tables import join_on_customer_id
from gpuseg.runtime.validation import check_bool, check_options

log = logging.getLogger(__name__)

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


def _plain_name(value: Any, key: str) -> str:
    name = str(value)
    if not _NAME.match(name) or name.endswith((".parquet", ".csv", ".json")):
        raise ConfigError(f"{key} must be a plain name (letters, digits, _ . -; no folder, no extension), "
                          f"got {value!r}", config_key=key)
    return name


def _segment_ids(spec: Any) -> list[int]:
    values = list(spec) if isinstance(spec, (list, tuple, ListConfig)) else [spec]
    try:
        ids = [int(v) for v in values]
    except (TypeError, ValueError):
        raise ConfigError(f"export.segment must be a segment number or a list of them, got {spec!r}",
                          config_key="export.segment") from None
    if not ids:
        raise ConfigError("export.segment is an empty list: name one segment or more", config_key="export.segment")
    return ids


def _source(ecfg: DictConfig) -> tuple[str, Any]:
    """Which list to export: exactly one of export.audience, export.segment, export.lookalike."""
    given = {"audience": ecfg.audience is not None, "segment": ecfg.segment is not None,
             "lookalike": bool(ecfg.lookalike)}
    chosen = [k for k, v in given.items() if v]
    if len(chosen) != 1:
        what = "none is" if not chosen else f"{' and '.join('export.' + c for c in chosen)} are"
        raise ConfigError(f"give exactly one list to export: export.audience=<name>, export.segment=<id or list> "
                          f"or export.lookalike=true; {what} set", config_key="export.audience")
    kind = chosen[0]
    if kind == "audience":
        return kind, _plain_name(ecfg.audience, "export.audience")
    if kind == "segment":
        return kind, _segment_ids(ecfg.segment)
    return kind, True


def _read_list(work: Path, kind: str, spec: Any) -> pa.Table:
    """customer_id (+ segment) of the list, one row per customer, in the list's order."""
    if kind == "audience":
        path = artifact(work, "audience", "table", name=spec)
        hint = f"run `gpuseg audience` to make audience '{spec}' first"
        key = "export.audience"
    elif kind == "segment":
        path, hint, key = artifact(work, "segment", "segments"), "run `gpuseg segment` first", "export.segment"
    else:
        path, hint, key = artifact(work, "lookalike", "audience"), "run `gpuseg lookalike` first", "export.lookalike"
    if not path.exists():
        raise UserInputError(f"'{path}' does not exist: {hint}", config_key=key)
    table = pq.read_table(path)
    if "customer_id" not in table.column_names:
        raise UserInputError(f"'{path}' has no customer_id column (columns: {table.column_names})",
                             column="customer_id", config_key=key)
    if kind == "segment":
        known = sorted(set(table["segment"].to_pylist()))
        missing = [s for s in spec if s not in known]
        if missing:
            raise UserInputError(f"segment(s) {missing} do not exist; segments are {known}", config_key=key)
        table = table.filter(pc.is_in(table["segment"], value_set=pa.array(spec, table["segment"].type)))
        table = table.select(["customer_id", "segment"])
    else:
        table = table.select(["customer_id"])
    ids = table["customer_id"].cast(pa.string())
    table = table.set_column(0, "customer_id", ids)
    # a lookalike of several queries (or an audience file) may name a customer twice: the first row wins
    first_rows = _first_occurrences(ids)
    if len(first_rows) < table.num_rows:
        log.info("export: %d repeated customer rows of the list dropped", table.num_rows - len(first_rows))
        table = table.take(pa.array(first_rows, pa.int64()))
    return table


def _first_occurrences(ids: pa.ChunkedArray) -> list[int]:
    seen: set[str] = set()
    rows = []
    for i, value in enumerate(ids.to_pylist()):
        if value not in seen:
            seen.add(value)
            rows.append(i)
    return rows


def _default_name(kind: str, spec: Any) -> str:
    if kind == "audience":
        return str(spec)
    if kind == "segment":
        return "segment_" + "_".join(str(s) for s in spec)
    return "lookalike"


def _country_code(value: Any) -> str | None:
    key = "export.default_country_code"
    if value is None:
        return None
    text = str(value).strip().lstrip("+")
    if isinstance(value, bool) or not is_calling_code(text):
        raise ConfigError(f"{key} must be a country calling code such as 1, 44 or 420 (the digits after '+' in "
                          f"international numbers), got {value!r}", config_key=key)
    return text


def _consented(table: pa.Table, consent: str | None, n_listed: int) -> tuple[pa.Table, int]:
    """Only customers whose consent column is true; without one, a warning saying so."""
    if consent is None:
        log.warning("export: no consent column is configured (data.customers.consent): all %d customers of the "
                    "list are exported without a marketing-consent check. Set data.customers.consent to the "
                    "column that records it and re-run validate", n_listed)
        return table, 0
    keep = pc.fill_null(table[consent], False)
    kept = table.filter(keep)
    return kept, table.num_rows - kept.num_rows


@staged("export")
def run(cfg: DictConfig) -> dict[str, Any]:
    """Export the configured list as a hashed customer file plus its JSON summary."""
    ctx = start(cfg, "export")
    ecfg = cfg.export
    work = work_dir(cfg)
    platform = str(ecfg.platform)
    fmt = str(ecfg.format)
    check_options("export", "platform", platform, PLATFORMS, config_key="export.platform")
    check_options("export", "format", fmt, FORMATS, config_key="export.format")
    check_bool("export", "hash", ecfg.hash, config_key="export.hash")
    check_bool("export", "include_customer_id", ecfg.include_customer_id, config_key="export.include_customer_id")
    hash_values = bool(ecfg.hash)
    country_code = _country_code(ecfg.default_country_code)
    kind, spec = _source(ecfg)
    name = _plain_name(ecfg.name, "export.name") if ecfg.name is not None else _default_name(kind, spec)

    schema, _ = load_validated(work)
    customers_meta = schema.get("customers") or {}
    kinds: dict[str, str] = dict(customers_meta.get("pii") or {})
    consent = customers_meta.get("consent")
    pii_path = artifact(work, "validate", "pii")
    if not kinds or not pii_path.exists():
        raise UserInputError("no personal data to export: declare the identifier columns in data.customers.pii "
                             "(e.g. [email, phone]) and re-run `gpuseg validate`", config_key="data.customers.pii")
    listed = _read_list(work, kind, spec)
    try:
        joined = join_on_customer_id(listed, pq.read_table(pii_path), names=(str(pii_path),))
    except UserInputError as exc:
        exc.config_key = f"export.{kind}"
        raise
    joined, filtered = _consented(joined, consent, listed.num_rows)
    if not hash_values:
        log.warning("export.hash=false: %s holds the customers' personal data IN CLEAR (normalised, not hashed). "
                    "Ad platforms expect SHA-256 hashes; send this file only where clear personal data may go",
                    f"exports/{name}.{fmt}")
    identifiers, report = identifier_columns(joined, kinds, platform, hash_values=hash_values,
                                             default_country_code=country_code)
    if not identifiers.num_columns:
        raise UserInputError(f"none of the personal data columns {sorted(kinds)} is an identifier {platform} takes "
                             f"({report['not_exported']})", config_key="export.platform")
    table = identifiers
    if kind == "segment":
        table = table.append_column("segment", joined["segment"])
    if bool(ecfg.include_customer_id):
        table = table.add_column(0, "customer_id", joined["customer_id"])

    out = job_dir(work, "export")
    out.mkdir(parents=True, exist_ok=True)
    path = artifact(work, "export", "table", name=name, format=fmt)
    summary_path = artifact(work, "export", "summary", name=name)
    digest = write_export(path, table, fmt)
    unusable = {col: r["unusable"] for col, r in report["columns"].items()}
    summary = {
        "name": name,
        "source": {"kind": kind, "value": spec if kind != "lookalike" else True},
        "platform": platform,
        "hashed": hash_values,
        "format": fmt,
        "rows": table.num_rows,
        "listed": listed.num_rows,
        "consent": {"column": consent, "filtered_out": filtered},
        "unusable": unusable,
        "columns": report["columns"],
        "not_exported": report["not_exported"],
        "default_country_code": country_code,
        "file": path.name,
        "sha256": digest,
    }
    write_json(summary_path, summary)
    log.info("export %s: %d of %d listed customers (%d without consent) to %s for %s, %s; unusable identifiers: %s",
             name, table.num_rows, listed.num_rows, filtered, path.name, platform,
             "SHA-256 hashed" if hash_values else "NOT hashed", unusable)
    result = {**summary, "output_dir": str(out), "export_path": str(path), "summary_path": str(summary_path)}
    return finish(cfg, "export", ctx["manifest"], result)
