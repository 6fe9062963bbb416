"""The fields an audience rule can name: every per-customer output, aligned on the base customers.

A :class:`FieldSet` holds one column per field, one row per customer of the base (the validated
customers table, in its order), and a :class:`Field` for each: its kind (``number``, ``text``,
``bool``), the job that writes it and a readable description. The segment, profile and lookalike
columns are spelt by those jobs; their meaning is described here (:data:`SCORE_DESCRIPTIONS`),
the RFM+ features' in :mod:`gpuseg.features.descriptions`, and a customer attribute's is derived
from its name. Float NaN (an undefined statistic) becomes a null, so that it never matches.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gpuseg.features.descriptions import Description, describe_feature, readable_name
from gpuseg.features.rfm import BASE_FEATURES, sanitize_name
from gpuseg.runtime.errors import UserInputError
from gpuseg.runtime.tables import join_on_customer_id

_SEGMENT = "segment"
_PROFILE = "profile"
_LOOKALIKE = "lookalike"

#: job -> column -> description of the scores that job writes per customer
SCORE_DESCRIPTIONS: dict[str, dict[str, Description]] = {
    _SEGMENT: {
        "segment": Description("segment number: the customer's cluster", frozenset({"category"})),
        "macro_segment": Description("macro segment number: the group of segments the customer's belongs to",
                                     frozenset({"category"})),
        "distance": Description("distance to the segment centre: how atypical the customer is of its segment"),
        "confidence": Description("segment confidence: probability that the customer keeps its segment"),
        "margin": Description("segment margin: how much nearer the own segment centre is than the second"),
        "second_segment": Description("second nearest segment number", frozenset({"category"})),
        "is_outlier": Description("outlier flag: unusual customer, far from every segment centre",
                                  frozenset({"outlier"})),
    },
    _PROFILE: {
        "churn_score": Description("churn score: predicted probability that the customer churns, leaves or "
                                   "stops buying; at risk of churn", frozenset({"risk"})),
        "churn_risk": Description("churn risk tier (low, medium, high): risk of churning, at-risk customers",
                                  frozenset({"risk"})),
        "expected_purchases": Description("forecast of how many times the customer will buy in the coming "
                                          "months (predicted, not past)", frozenset({"count"})),
        "expected_value": Description("expected customer value: predicted spend in the coming months, future revenue, customer "
                                      "lifetime value, high-value valuable customers", frozenset({"money"})),
    },
    _LOOKALIKE: {
        "lookalike_score": Description("lookalike score: similarity to the seed customers of the lookalike "
                                       "audience, customers who look like the seeds"),
        "lookalike_rank": Description("lookalike rank: position in the lookalike audience (1 = most similar)"),
    },
}

#: where each job's per-customer fields come from, in the order a name is looked up
SOURCES = ("features", _SEGMENT, _PROFILE, _LOOKALIKE, "validate")

_LOOKALIKE_COLUMNS = {"score": "lookalike_score", "rank": "lookalike_rank"}


@dataclass(frozen=True)
class Field:
    """One field a rule can name.

    Attributes
    ----------
    name : str
        The name used in rules.
    kind : str
        ``number``, ``text`` or ``bool``.
    source : str
        The job that writes it (``features``, ``segment``, ``profile``, ``lookalike``, ``validate``).
    description : str
        What it means, in words.
    tags : frozenset of str
        Groups the plain-words matcher uses (``trend``, ``recency``, ``tenure``, ``count``, ``risk``...).
    values : tuple of str
        The distinct values of a text field with few of them (``low, medium, high``), else empty.
    flag : bool
        A number field whose only values are 0 and 1 (a label such as ``churned``).
    """

    name: str
    kind: str
    source: str
    description: str
    tags: frozenset[str] = frozenset()
    values: tuple[str, ...] = ()
    flag: bool = False


@dataclass
class FieldSet:
    """Columns of the per-customer outputs, aligned on the base customers.

    Attributes
    ----------
    ids : pyarrow.Array
        ``customer_id`` of every base customer.
    columns : dict of str to pyarrow.Array
        One array per field, same length as ``ids``.
    fields : dict of str to Field
    absent : dict of str to str
        Jobs whose output is missing from the work directory -> why (shown in errors).
    """

    ids: pa.Array
    columns: dict[str, pa.Array] = field(default_factory=dict)
    fields: dict[str, Field] = field(default_factory=dict)
    absent: dict[str, str] = field(default_factory=dict)

    @property
    def n(self) -> int:
        """Number of base customers."""
        return len(self.ids)

    def source_of_missing(self, name: str) -> str | None:
        """The job that would write field ``name`` when that job has not run here, else None."""
        for job in self.absent:
            if name in SCORE_DESCRIPTIONS.get(job, {}):
                return job
            if job == _LOOKALIKE and name.startswith("lookalike_"):
                return job
            if job == "features" and (name in BASE_FEATURES or describe_feature(name) is not None):
                return job
        return None


def _kind(values: pa.Array) -> str | None:
    t = values.type
    if pa.types.is_boolean(t):
        return "bool"
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t):
        return "number"
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_dictionary(t):
        return "text"
    return None  # timestamps, lists, vectors: not a field


def _normalised(values: pa.Array, kind: str) -> pa.Array:
    """Strings as plain strings; float NaN as null, so that an undefined value never matches."""
    if kind == "text":
        return values.cast(pa.string()) if not pa.types.is_dictionary(values.type) else \
            values.dictionary_decode().cast(pa.string())
    if kind == "number" and (pa.types.is_floating(values.type) or pa.types.is_decimal(values.type)):
        values = values.cast(pa.float64())
        return pc.if_else(pc.is_nan(values), pa.scalar(None, pa.float64()), values)
    return values


def _distinct(values: pa.Array, limit: int = 50) -> tuple[str, ...]:
    uniq = pc.unique(values.drop_null())
    if len(uniq) > limit:
        return ()
    return tuple(sorted(str(v) for v in uniq.to_pylist()))


def _is_flag(values: pa.Array) -> bool:
    known = values.drop_null()
    if len(known) == 0:
        return False
    uniq = set(np.asarray(pc.unique(known).to_numpy(zero_copy_only=False), dtype=np.float64).tolist())
    return uniq <= {0.0, 1.0} and len(uniq) == 2


def _attribute_description(name: str, kind: str, values: tuple[str, ...], role: str) -> Description:
    text = f"customer {role}: {readable_name(name)}"
    if kind == "text" and values:
        text += f" ({', '.join(values[:12])})"
    return Description(text, frozenset({"attribute"}))


def _describe(name: str, source: str, kind: str, values: tuple[str, ...], attributes: Mapping[str, str]
              ) -> Description:
    if source in SCORE_DESCRIPTIONS and name in SCORE_DESCRIPTIONS[source]:
        return SCORE_DESCRIPTIONS[source][name]
    if name in attributes:
        return _attribute_description(name, kind, values, attributes[name])
    found = describe_feature(name) if source == "features" else None
    if found is not None:
        return found
    if source == _LOOKALIKE:
        base, _, query = name.partition("__")
        desc = SCORE_DESCRIPTIONS[_LOOKALIKE].get(base)
        if desc is not None:
            return Description(f"{desc.text} (query {query})", desc.tags)
    return Description(readable_name(name))


def lookalike_fields(audience: pa.Table) -> pa.Table:
    """``lookalike/audience.parquet`` as fields: ``lookalike_score``, ``lookalike_rank`` per customer.

    An audience file of several queries (a ``query`` column) gives ``lookalike_score__<query>``
    and ``lookalike_rank__<query>`` per query. Customers outside an audience get nulls.
    """
    if "query" not in audience.column_names:
        return pa.table({"customer_id": audience["customer_id"],
                         **{new: audience[old] for old, new in _LOOKALIKE_COLUMNS.items()}})
    parts = []
    queries = sorted(q for q in pc.unique(audience["query"]).to_pylist() if q is not None)
    for q in queries:
        part = audience.filter(pc.equal(audience["query"], q))
        parts.append({f"{new}__{sanitize_name(q)}": (part["customer_id"], part[old])
                      for old, new in _LOOKALIKE_COLUMNS.items()})
    ids = pc.unique(audience["customer_id"].combine_chunks())
    out = {"customer_id": ids}
    for part in parts:
        for name, (pid, values) in part.items():
            out[name] = values.take(pc.index_in(ids, value_set=pid.combine_chunks()))
    return pa.table(out)


def _left_join(base_ids: pa.Array, table: pa.Table) -> pa.Table:
    """``table``'s columns for every base customer (nulls for those it lacks)."""
    index = pc.index_in(base_ids, value_set=table["customer_id"].combine_chunks())
    return pa.table({"customer_id": base_ids, **{c: table[c].combine_chunks().take(index)
                                                  for c in table.column_names if c != "customer_id"}})


def build_fields(customers: pa.Table, outputs: Mapping[str, pa.Table | None], *,
                 attributes: Mapping[str, str] | None = None, excluded: Iterable[str] = (),
                 categorical: Iterable[str] = ("segment", "macro_segment", "second_segment")) -> FieldSet:
    """Gather the per-customer outputs into one :class:`FieldSet` over the base customers.

    Parameters
    ----------
    customers : pyarrow.Table
        The base: one row per customer (``customer_id`` and the validated attribute columns).
    outputs : mapping
        ``features``, ``segment``, ``profile``, ``lookalike`` -> the job's per-customer table, or
        None where that job has not run (its fields are then named in errors as coming from it).
        ``lookalike`` is the audience table (not every customer is in it).
    attributes : mapping, optional
        Attribute column -> role (``attribute``, ``label``): described from their names.
    excluded : iterable of str
        Columns that must never be fields (personal data).
    categorical : iterable of str
        Number fields that are labels, not quantities (profiled as indicators).

    Returns
    -------
    FieldSet

    Raises
    ------
    UserInputError
        When an output lacks customers of the base (it comes from another run).
    """
    attributes = dict(attributes or {})
    banned = set(excluded) | {"customer_id"}
    ids = customers["customer_id"].combine_chunks()
    out = FieldSet(ids=ids)
    tables: list[tuple[str, pa.Table]] = []
    for job in SOURCES[:-1]:
        table = outputs.get(job)
        if table is None:
            out.absent[job] = f"`gpuseg {job}` has not run in this work directory"
            continue
        if job == _LOOKALIKE:
            table = _left_join(ids, lookalike_fields(table))
        else:
            table = join_on_customer_id(pa.table({"customer_id": ids}), table, names=(f"{job} output",))
        tables.append((job, table))
    tables.append(("validate", customers))
    categorical = set(categorical)
    for source, table in tables:
        for name in table.column_names:
            if name in banned or name in out.columns:
                continue
            raw = table[name].combine_chunks()
            kind = _kind(raw)
            if kind is None:
                continue
            values = _normalised(raw, kind)
            distinct = _distinct(values) if kind == "text" else ()
            desc = _describe(name, source, kind, distinct, attributes)
            tags = desc.tags | ({"category"} if name in categorical else frozenset())
            out.columns[name] = values
            out.fields[name] = Field(name, kind, source, desc.text, tags, distinct,
                                     kind == "number" and _is_flag(values))
    return out


#: a rule's field name is an identifier; any other column name is written in backquotes
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def check_name(name: str) -> None:
    """An audience name is a file stem: letters, digits, ``_ - .``, not starting with a dot."""
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", str(name)):
        raise UserInputError(f"audience name {name!r} must be letters, digits, '_', '-' or '.' (a file name, at most "
                             "128 characters, not starting with a dot), e.g. audience.name=at_risk_vip",
                             config_key="audience.name")
