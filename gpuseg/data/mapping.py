"""How a user's files map onto the canonical tables: parsed from the ``data`` config.

The mapping is plain data (dataclasses built from a dict), so validation code never sees Hydra and
every problem can name the config key a user should change.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from gpuseg.data.convert import TIMESTAMP_UNITS
from gpuseg.data.schema import PII_KINDS
from gpuseg.runtime.errors import ConfigError
from gpuseg.runtime.io import WHITESPACE

POLICIES = ("error", "reject")
DUPLICATE_CUSTOMER_POLICIES = ("error", "first", "last")
FORMATS = ("auto", "csv", "parquet")
EVENT_COLUMNS = ("customer_id", "timestamp", "event_type", "amount", "category", "channel")
TEXT_COLUMNS = ("customer_id", "timestamp", "source", "text", "rating")


#: a source name becomes a DuckDB view name, so it must be a plain SQL identifier
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass
class FileSpec:
    """Where a table lives and how to read it: one file (``path``) or a SQL query over the sources."""

    path: str | None
    format: str = "auto"
    delimiter: str = ","
    query: str | None = None


@dataclass
class SourceSpec:
    """A named input (file, folder of Parquet files or glob) that table queries read as a view.

    ``delimiter`` None lets DuckDB detect it; ``options`` go to DuckDB's ``read_csv`` or
    ``read_parquet`` as they are (e.g. ``{all_varchar: true}``).
    """

    name: str
    path: str
    format: str = "auto"
    delimiter: str | None = None
    options: dict[str, Any] = field(default_factory=dict)


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
    order_by: str | None = None
    #: personal data: column -> kind (one of PII_KINDS); kept out of customers.parquet
    pii: dict[str, str] = field(default_factory=dict)
    #: marketing-consent column (true/yes/1 = may be exported), or None
    consent: str | None = None


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
    text_columns: list[str] | None = None
    text_separator: str = "\n"

    @property
    def text_sources(self) -> list[str]:
        """The user columns whose non-blank values make up the text (one, or ``text_columns``)."""
        return list(self.text_columns) if self.text_columns else [self.columns["text"]]


@dataclass
class Policy:
    missing_customer_id: str = "reject"
    unknown_customer: str = "reject"
    empty_text: str = "reject"
    duplicate_event: str = "reject"
    duplicate_customer: str = "error"


@dataclass
class DataMapping:
    """The whole ``data`` config section, checked.

    ``events`` is None for customers-only data; ``sources`` are the named inputs that table
    queries read.
    """

    customers: CustomersSpec | None
    events: EventsSpec | None
    texts: TextsSpec | None
    policy: Policy
    batch_size: int = 262_144
    sources: dict[str, SourceSpec] = field(default_factory=dict)
    #: MiB validation's duplicate-event check may hold (about 32 bytes per event); above it, on disk
    memory_mb: float = 1024.0

    @property
    def uses_queries(self) -> bool:
        """Whether any table is built by a SQL query (and so needs the sources opened)."""
        return any(spec is not None and spec.file.query for spec in (self.customers, self.events, self.texts))

    @classmethod
    def from_dict(cls, d: dict[str, Any], prefix: str = "data") -> DataMapping:
        """Build and check the mapping from a plain dictionary (``OmegaConf.to_container``).

        Parameters
        ----------
        d : dict
            The ``data`` config section, resolved.
        prefix : str
            Dotted config path of ``d``, used to name keys in errors.

        Returns
        -------
        DataMapping

        Raises
        ------
        ConfigError
            For an unknown key, an impossible combination (a table with both ``path`` and
            ``query``, no events and no customers) or a value out of range, naming the key.
        """
        _known(d, {"dir", "as_of", "sources", "customers", "events", "texts", "policy", "roles", "batch_size",
                   "memory_mb", "generate_if_missing", "name", "description", "generator",
                   "journey"}, prefix)  # journey: the source's journey fields, read by `gpuseg journeys`
        customers = d.get("customers") or {}
        events = d.get("events") or {}
        texts = d.get("texts") or {}
        has_customers = _given(customers, f"{prefix}.customers")
        has_events = _given(events, f"{prefix}.events")
        if not has_events and not has_customers:
            raise ConfigError(
                "there is neither an events nor a customers table: set data.events.path (or "
                "data.events.query), or for customers-only data a customers table",
                config_key=f"{prefix}.customers.path")
        return cls(
            customers=_customers(customers, f"{prefix}.customers") if has_customers else None,
            events=_events(events, f"{prefix}.events") if has_events else None,
            texts=_texts(texts, f"{prefix}.texts") if _given(texts, f"{prefix}.texts") else None,
            policy=_policy(d.get("policy") or {}, f"{prefix}.policy"),
            batch_size=int(d.get("batch_size") or 262_144),
            sources=_sources(d.get("sources") or {}, f"{prefix}.sources"),
            memory_mb=_memory_mb(d.get("memory_mb"), f"{prefix}.memory_mb"),
        )


def _memory_mb(value: Any, key: str) -> float:
    """``data.memory_mb``: a positive number of MiB (null: 1024)."""
    if value is None:
        return 1024.0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or value == float("inf"):
        raise ConfigError(f"{key} must be a positive number of MiB, got {value!r}", config_key=key)
    return float(value)


def _given(d: dict[str, Any], prefix: str) -> bool:
    """Whether a table section names its input; both a path and a query is an error."""
    if d.get("path") and d.get("query"):
        raise ConfigError("a table is read either from one file (path) or by a SQL query over data.sources "
                          "(query), not both: set the other one to null", config_key=f"{prefix}.query")
    return bool(d.get("path") or d.get("query"))


def _known(d: dict[str, Any], keys: set[str], prefix: str) -> None:
    unknown = sorted(set(d) - keys)
    if unknown:
        raise ConfigError(
            f"unknown key(s) {unknown}; expected some of {sorted(keys)}", config_key=f"{prefix}.{unknown[0]}"
        )


def _file(d: dict[str, Any], prefix: str) -> FileSpec:
    query = d.get("query")
    if query is not None and (not isinstance(query, str) or not query.strip().rstrip(";").strip()):
        raise ConfigError(f"query must be a SQL select statement, got {query!r}", config_key=f"{prefix}.query")
    if query and d.get("delimiter") not in (None, ","):
        raise ConfigError("delimiter applies to a path: file; for a query set it on the source it reads "
                          "(data.sources.<name>.delimiter)", config_key=f"{prefix}.delimiter")
    return FileSpec(path=d.get("path"), format=_format(d.get("format"), f"{prefix}.format"),
                    delimiter=_delimiter(d.get("delimiter"), f"{prefix}.delimiter") or ",",
                    query=query.strip() if query else None)


def _format(value: Any, key: str) -> str:
    value = value or "auto"
    if value not in FORMATS:
        raise ConfigError(f"format must be one of {FORMATS}, got {value!r}", config_key=key)
    return value


def _delimiter(value: Any, key: str) -> str | None:
    if value is None or value == WHITESPACE or (isinstance(value, str) and len(value) == 1):
        return value
    raise ConfigError(f"delimiter must be one character (e.g. ';' or \"\\t\") or '{WHITESPACE}' (runs of "
                      f"spaces and tabs), got {value!r}", config_key=key)


def _sources(d: dict[str, Any], prefix: str) -> dict[str, SourceSpec]:
    if not isinstance(d, dict):
        raise ConfigError("sources must map names to files, e.g. {orders: orders.csv}", config_key=prefix)
    return {name: _source(name, value, f"{prefix}.{name}") for name, value in d.items()}


def _source(name: str, value: Any, key: str) -> SourceSpec:
    if not _IDENTIFIER.match(str(name)):
        raise ConfigError(f"source name {name!r} must be a plain SQL name (letters, digits, _; not starting "
                          "with a digit): queries use it as a table name", config_key=key)
    if isinstance(value, str):
        value = {"path": value}
    if not isinstance(value, dict):
        raise ConfigError(f"a source is a path or {{path:, format:, delimiter:, options:}}, got {value!r}",
                          config_key=key)
    _known(value, {"path", "format", "delimiter", "options"}, key)
    if not value.get("path"):
        raise ConfigError(f"source '{name}' needs a path", config_key=f"{key}.path")
    options = value.get("options") or {}
    if not isinstance(options, dict) or not all(_IDENTIFIER.match(str(k)) for k in options):
        raise ConfigError("options must map DuckDB read_csv/read_parquet option names to values, e.g. "
                          "{all_varchar: true}", config_key=f"{key}.options")
    return SourceSpec(name=name, path=str(value["path"]), format=_format(value.get("format"), f"{key}.format"),
                      delimiter=_delimiter(value.get("delimiter"), f"{key}.delimiter"), options=dict(options))


def _columns(d: dict[str, Any] | None, names: tuple[str, ...], prefix: str) -> dict[str, str | None]:
    d = dict(d or {})
    _known(d, set(names), f"{prefix}.columns")
    return {name: d.get(name, name) for name in names}


def _customers(d: dict[str, Any], prefix: str) -> CustomersSpec:
    _known(d, {"path", "query", "format", "delimiter", "columns", "numeric", "categorical", "labels",
               "order_by", "pii", "consent"}, prefix)
    columns = dict(d.get("columns") or {})
    _known(columns, {"customer_id"}, f"{prefix}.columns")
    order_by = d.get("order_by")
    if order_by is not None and (not isinstance(order_by, str) or not order_by):
        raise ConfigError(f"order_by must name one column of the customers table, got {order_by!r}",
                          config_key=f"{prefix}.order_by")
    spec = CustomersSpec(
        file=_file(d, prefix),
        customer_id=columns.get("customer_id") or "customer_id",
        numeric=list(d.get("numeric") or []),
        categorical=list(d.get("categorical") or []),
        labels=list(d.get("labels") or []),
        order_by=order_by,
        pii=_pii(d.get("pii"), f"{prefix}.pii"),
    )
    spec.consent = _consent(d.get("consent"), spec, f"{prefix}.consent")
    _private_apart(spec, prefix)
    return spec


#: normalised column name -> personal data kind, for ``pii: [Email, Phone, FirstName]``
_PII_NAMES = {
    "email": ("email", "emailaddress", "mail", "email1"),
    "phone": ("phone", "phonenumber", "telephone", "tel", "mobile", "mobilephone", "cell", "cellphone"),
    "first_name": ("firstname", "givenname", "forename", "fn"),
    "last_name": ("lastname", "surname", "familyname", "ln"),
    "city": ("city", "town", "ct"),
    "state": ("state", "province", "st"),
    "postcode": ("postcode", "postalcode", "zip", "zipcode", "zp"),
    "country": ("country", "countrycode"),
    "other": ("address", "streetaddress", "street", "fax"),
}
_KIND_OF_NAME = {name: kind for kind, names in _PII_NAMES.items() for name in names}


def guess_pii_kind(column: str) -> str | None:
    """The personal data kind a column name stands for (``Email`` -> email, ``PostalCode`` -> postcode)."""
    return _KIND_OF_NAME.get(re.sub(r"[^a-z0-9]", "", column.lower()))


def _pii(value: Any, key: str) -> dict[str, str]:
    """``customers.pii``: a list of columns (kinds guessed from their names, or ``{column: kind}``
    items) or a mapping column -> kind; checked into column -> kind."""
    if value is None:
        return {}
    example = "e.g. pii: [email, phone, first_name] or pii: {Mail: email, Mobile: phone, Fax: other}"
    items: list[tuple[Any, Any]] = []
    if isinstance(value, dict):
        items = list(value.items())
    elif isinstance(value, list | tuple):
        for item in value:
            if isinstance(item, dict):
                items.extend(item.items())
            else:
                items.append((item, None))
    else:
        raise ConfigError(f"pii must list the personal data columns, {example}; got {value!r}", config_key=key)
    out: dict[str, str] = {}
    for column, kind in items:
        if not isinstance(column, str) or not column:
            raise ConfigError(f"pii names columns, {example}; got {column!r}", config_key=key)
        if kind is None:
            kind = guess_pii_kind(column)
            if kind is None:
                raise ConfigError(f"cannot tell the kind of personal data column {column!r} from its name: give it, "
                                  f"e.g. pii: [{{{column}: other}}]; kinds are {list(PII_KINDS)}",
                                  config_key=f"{key}.{column}")
        if kind not in PII_KINDS:
            raise ConfigError(f"pii kind of column {column!r} must be one of {list(PII_KINDS)}, got {kind!r}",
                              config_key=f"{key}.{column}")
        if column in out:
            raise ConfigError(f"pii lists column {column!r} twice", config_key=f"{key}.{column}")
        same = [c for c, k in out.items() if k == kind and kind != "other"]
        if same:
            raise ConfigError(f"pii columns {same[0]!r} and {column!r} are both {kind}: one column per kind "
                              "(declare the other one as other)", config_key=f"{key}.{column}")
        out[column] = kind
    return out


def _consent(value: Any, spec: CustomersSpec, key: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ConfigError(f"consent must name one column of the customers table (true/yes/1 = may be exported), "
                          f"got {value!r}", config_key=key)
    if value in spec.pii:
        raise ConfigError(f"column {value!r} is both the consent column and a pii column", config_key=key)
    return value


def _private_apart(spec: CustomersSpec, prefix: str) -> None:
    """Personal data and consent never become features, labels or ids: a column is one or the other."""
    roles = {"numeric": spec.numeric, "categorical": spec.categorical, "labels": spec.labels,
             "columns.customer_id": [spec.customer_id], "order_by": [spec.order_by] if spec.order_by else []}
    for column in [*spec.pii, *([spec.consent] if spec.consent else [])]:
        for role, names in roles.items():
            if column in names:
                what = "personal data (pii)" if column in spec.pii else "the consent column"
                raise ConfigError(f"column {column!r} is {what} and also in customers.{role}: personal data never "
                                  f"becomes a feature, label or id; remove it from customers.{role}",
                                  config_key=f"{prefix}.{role}")


def _events(d: dict[str, Any], prefix: str) -> EventsSpec:
    _known(d, {"path", "query", "format", "delimiter", "columns", "timestamp_format", "timestamp_unit",
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
        file=_file(d, prefix),
        columns=columns,
        timestamp_format=d.get("timestamp_format"),
        timestamp_unit=_unit(d.get("timestamp_unit"), f"{prefix}.timestamp_unit"),
        event_type_rule=parsed_rule,
        negative_amount_type=d.get("negative_amount_type", "return"),
        amount_product=list(product) if product else None,
        extra_columns=dict(d.get("extra_columns") or {}),
        numeric_attributes=dict(attributes.get("numeric") or {}),
        categorical_attributes=dict(attributes.get("categorical") or {}),
    )


def _unit(value: Any, key: str) -> str:
    value = value or "s"
    if value not in TIMESTAMP_UNITS:
        raise ConfigError(f"timestamp_unit must be one of {TIMESTAMP_UNITS}, got {value!r}", config_key=key)
    return value


def _texts(d: dict[str, Any], prefix: str) -> TextsSpec:
    _known(d, {"path", "query", "format", "delimiter", "columns", "timestamp_format", "timestamp_unit",
               "source_constant", "text_columns", "text_separator"}, prefix)
    columns = _columns(d.get("columns"), TEXT_COLUMNS, prefix)
    text_columns = _text_columns(d, prefix)
    if text_columns:
        columns["text"] = None
    for required in ("customer_id", "text"):
        if not columns[required] and not (required == "text" and text_columns):
            raise ConfigError(f"the texts table needs a {required} column", config_key=f"{prefix}.columns.{required}")
    if not columns["source"] and not d.get("source_constant"):
        raise ConfigError("the texts table has no source column mapped: map one or set source_constant "
                          "(e.g. review)", config_key=f"{prefix}.source_constant")
    separator = d.get("text_separator")
    if separator is not None and not isinstance(separator, str):
        raise ConfigError(f"text_separator must be a string, got {separator!r}", config_key=f"{prefix}.text_separator")
    return TextsSpec(
        file=_file(d, prefix),
        columns=columns,
        timestamp_format=d.get("timestamp_format"),
        timestamp_unit=_unit(d.get("timestamp_unit"), f"{prefix}.timestamp_unit"),
        source_constant=d.get("source_constant"),
        text_columns=text_columns,
        text_separator="\n" if separator is None else separator,
    )


def _text_columns(d: dict[str, Any], prefix: str) -> list[str] | None:
    """``text_columns``, checked; it replaces ``columns.text``, so setting both is an error."""
    value = d.get("text_columns")
    if value is None:
        return None
    if not isinstance(value, list | tuple) or not value or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"text_columns must list the columns whose text is joined, e.g. [title, message]; "
                          f"got {value!r}", config_key=f"{prefix}.text_columns")
    if (d.get("columns") or {}).get("text"):
        raise ConfigError("set either columns.text (one text column) or text_columns (several), not both: "
                          "set columns.text to null", config_key=f"{prefix}.text_columns")
    return list(value)


def _policy(d: dict[str, Any], prefix: str) -> Policy:
    _known(d, {"missing_customer_id", "unknown_customer", "empty_text", "duplicate_event", "duplicate_customer"},
           prefix)
    policy = Policy(**d)
    for key, value in vars(policy).items():
        allowed = DUPLICATE_CUSTOMER_POLICIES if key == "duplicate_customer" else POLICIES
        if value not in allowed:
            raise ConfigError(f"policy must be one of {allowed}, got {value!r}", config_key=f"{prefix}.{key}")
    return policy
