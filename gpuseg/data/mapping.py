"""How a user's files map onto the canonical tables: parsed from the ``data`` config.

The mapping is plain data (dataclasses built from a dict), so validation code never sees Hydra and
every problem can name the config key a user should change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gpuseg.runtime.errors import ConfigError

POLICIES = ("error", "reject")
EVENT_COLUMNS = ("customer_id", "timestamp", "event_type", "amount", "category", "channel")
TEXT_COLUMNS = ("customer_id", "timestamp", "source", "text", "rating")


@dataclass
class FileSpec:
    """Where a table lives and how to read it."""

    path: str | None
    format: str = "auto"
    delimiter: str = ","


@dataclass
class EventTypeRule:
    """Derives the event type when the file has no event-type column.

    Either a constant for every row, or a prefix rule on a column (e.g. invoices starting with
    ``C`` are cancellations in the Online Retail data).
    """

    constant: str | None = None
    column: str | None = None
    prefix: str | None = None
    match: str | None = None
    otherwise: str | None = None


@dataclass
class CustomersSpec:
    file: FileSpec
    customer_id: str = "customer_id"
    numeric: list[str] = field(default_factory=list)
    categorical: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)


@dataclass
class EventsSpec:
    file: FileSpec
    columns: dict[str, str | None]
    timestamp_format: str | None = None
    timestamp_unit: str = "s"
    event_type_rule: EventTypeRule | None = None
    negative_amount_type: str | None = "return"
    amount_product: list[str] | None = None
    extra_columns: dict[str, str] = field(default_factory=dict)
    numeric_attributes: dict[str, str] = field(default_factory=dict)
    categorical_attributes: dict[str, str] = field(default_factory=dict)


@dataclass
class TextsSpec:
    file: FileSpec
    columns: dict[str, str | None]
    timestamp_format: str | None = None
    timestamp_unit: str = "s"
    source_constant: str | None = None


@dataclass
class Policy:
    missing_customer_id: str = "reject"
    unknown_customer: str = "reject"
    empty_text: str = "reject"
    duplicate_event: str = "reject"


@dataclass
class DataMapping:
    """The whole ``data`` config section, checked."""

    customers: CustomersSpec | None
    events: EventsSpec
    texts: TextsSpec | None
    policy: Policy
    batch_size: int = 262_144

    @classmethod
    def from_dict(cls, d: dict[str, Any], prefix: str = "data") -> DataMapping:
        """Build and check the mapping from a plain dictionary (``OmegaConf.to_container``)."""
        _known(d, {"dir", "as_of", "customers", "events", "texts", "policy", "roles", "batch_size",
                   "generate_if_missing", "name", "description", "generator"}, prefix)
        events = d.get("events")
        if not events or not events.get("path"):
            raise ConfigError("the events table is required: set its path", config_key=f"{prefix}.events.path")
        customers = d.get("customers") or {}
        texts = d.get("texts") or {}
        return cls(
            customers=_customers(customers, f"{prefix}.customers") if customers.get("path") else None,
            events=_events(events, f"{prefix}.events"),
            texts=_texts(texts, f"{prefix}.texts") if texts.get("path") else None,
            policy=_policy(d.get("policy") or {}, f"{prefix}.policy"),
            batch_size=int(d.get("batch_size") or 262_144),
        )


def _known(d: dict[str, Any], keys: set[str], prefix: str) -> None:
    unknown = sorted(set(d) - keys)
    if unknown:
        raise ConfigError(
            f"unknown key(s) {unknown}; expected some of {sorted(keys)}", config_key=f"{prefix}.{unknown[0]}"
        )


def _file(d: dict[str, Any]) -> FileSpec:
    return FileSpec(path=d.get("path"), format=d.get("format") or "auto", delimiter=d.get("delimiter") or ",")


def _columns(d: dict[str, Any] | None, names: tuple[str, ...], prefix: str) -> dict[str, str | None]:
    d = dict(d or {})
    _known(d, set(names), f"{prefix}.columns")
    return {name: d.get(name, name) for name in names}


def _customers(d: dict[str, Any], prefix: str) -> CustomersSpec:
    _known(d, {"path", "format", "delimiter", "columns", "numeric", "categorical", "labels"}, prefix)
    columns = dict(d.get("columns") or {})
    _known(columns, {"customer_id"}, f"{prefix}.columns")
    return CustomersSpec(
        file=_file(d),
        customer_id=columns.get("customer_id") or "customer_id",
        numeric=list(d.get("numeric") or []),
        categorical=list(d.get("categorical") or []),
        labels=list(d.get("labels") or []),
    )


def _events(d: dict[str, Any], prefix: str) -> EventsSpec:
    _known(d, {"path", "format", "delimiter", "columns", "timestamp_format", "timestamp_unit",
               "event_type_rule", "negative_amount_type", "amount_product", "extra_columns",
               "attributes"}, prefix)
    columns = _columns(d.get("columns"), EVENT_COLUMNS, prefix)
    for required in ("customer_id", "timestamp"):
        if not columns[required]:
            raise ConfigError(f"the events table needs a {required} column", config_key=f"{prefix}.columns.{required}")
    rule = d.get("event_type_rule")
    parsed_rule = None
    if rule:
        _known(rule, {"constant", "column", "prefix", "match", "otherwise"}, f"{prefix}.event_type_rule")
        parsed_rule = EventTypeRule(**rule)
        if not parsed_rule.constant and not (parsed_rule.column and parsed_rule.prefix is not None
                                             and parsed_rule.match and parsed_rule.otherwise):
            raise ConfigError(
                "event_type_rule needs either 'constant' or all of 'column', 'prefix', 'match', 'otherwise'",
                config_key=f"{prefix}.event_type_rule",
            )
    if not columns["event_type"] and parsed_rule is None:
        raise ConfigError(
            "the events table has no event_type column mapped: map one, or set an event_type_rule "
            "(e.g. {constant: purchase})",
            config_key=f"{prefix}.event_type_rule",
        )
    product = d.get("amount_product")
    if product is not None and (not isinstance(product, list | tuple) or len(product) < 2):
        raise ConfigError("amount_product must list two or more columns to multiply, e.g. [Quantity, Price]",
                          config_key=f"{prefix}.amount_product")
    attributes = dict(d.get("attributes") or {})
    _known(attributes, {"numeric", "categorical"}, f"{prefix}.attributes")
    return EventsSpec(
        file=_file(d),
        columns=columns,
        timestamp_format=d.get("timestamp_format"),
        timestamp_unit=d.get("timestamp_unit") or "s",
        event_type_rule=parsed_rule,
        negative_amount_type=d.get("negative_amount_type", "return"),
        amount_product=list(product) if product else None,
        extra_columns=dict(d.get("extra_columns") or {}),
        numeric_attributes=dict(attributes.get("numeric") or {}),
        categorical_attributes=dict(attributes.get("categorical") or {}),
    )


def _texts(d: dict[str, Any], prefix: str) -> TextsSpec:
    _known(d, {"path", "format", "delimiter", "columns", "timestamp_format", "timestamp_unit",
               "source_constant"}, prefix)
    columns = _columns(d.get("columns"), TEXT_COLUMNS, prefix)
    for required in ("customer_id", "text"):
        if not columns[required]:
            raise ConfigError(f"the texts table needs a {required} column", config_key=f"{prefix}.columns.{required}")
    if not columns["source"] and not d.get("source_constant"):
        raise ConfigError("the texts table has no source column mapped: map one or set source_constant "
                          "(e.g. review)", config_key=f"{prefix}.source_constant")
    return TextsSpec(
        file=_file(d),
        columns=columns,
        timestamp_format=d.get("timestamp_format"),
        timestamp_unit=d.get("timestamp_unit") or "s",
        source_constant=d.get("source_constant"),
    )


def _policy(d: dict[str, Any], prefix: str) -> Policy:
    _known(d, {"missing_customer_id", "unknown_customer", "empty_text", "duplicate_event"}, prefix)
    policy = Policy(**d)
    for key, value in vars(policy).items():
        if value not in POLICIES:
            raise ConfigError(f"policy must be one of {POLICIES}, got {value!r}", config_key=f"{prefix}.{key}")
    return policy
