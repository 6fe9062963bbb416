"""Validation of data as users hold it: whitespace files, epoch and YYYYMMDD timestamps, Yes/No
labels, duplicate customers, customers-only data, mismatched ids and an ``as_of`` outside the data."""

from __future__ import annotations

import gzip
import json
import logging
from datetime import datetime

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gpuseg.data.mapping import DataMapping
from gpuseg.data.validate import validate_tables
from gpuseg.runtime.errors import ConfigError, UserInputError

EVENT_COLUMNS = {"customer_id": "cid", "timestamp": "ts", "event_type": None, "amount": "amount",
                 "category": None, "channel": None}


def _events_only(path, **events) -> DataMapping:
    return DataMapping.from_dict({
        "customers": {"path": None},
        "events": {"path": str(path), "columns": dict(EVENT_COLUMNS), "event_type_rule": {"constant": "purchase"},
                   **events},
    })


def _validated(work, table):
    return pq.read_table(work / "validated" / f"{table}.parquet").to_pydict()


# ------------------------------------------------------------------------------ whitespace, columns


def test_whitespace_delimited_gzip_file(tmp_path):
    path = tmp_path / "events.txt.gz"
    with gzip.open(path, "wt") as f:
        f.write("   cid    ts            amount\n"
                "   a      2024-01-01    1.5\n"
                "\tb\t \t2024-01-02\t  2   \n"
                '   "c d"  2024-01-03    3\n')
    validate_tables(_events_only(path, format="csv", delimiter="whitespace"), tmp_path / "work")
    events = _validated(tmp_path / "work", "events")
    assert events["customer_id"] == ["a", "b", "c d"] and events["amount"] == [1.5, 2.0, 3.0]


def test_whitespace_stream_cuts_blocks_at_line_ends(tmp_path):
    from gpuseg.runtime.io import WhitespaceCsvStream

    path = tmp_path / "t.txt"
    path.write_text("x  y\n" + "".join(f"  {i}   {i * 2}\n" for i in range(2000)))
    with WhitespaceCsvStream(path, block_size=100) as stream:  # many blocks, cut mid-line
        text = stream.read().decode()
    assert text.splitlines()[:3] == ["x\ty", "0\t0", "1\t2"] and len(text.splitlines()) == 2001


def test_bad_delimiter_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError) as err:
        _events_only(tmp_path / "e.csv", delimiter="tabs")
    assert err.value.config_key == "data.events.delimiter" and "whitespace" in str(err.value)


def test_duplicate_csv_column_names_are_an_error(tmp_path):
    path = tmp_path / "events.csv"
    path.write_text("cid,ts,amount,ts\na,2024-01-01,1,2023-01-01\n")
    with pytest.raises(UserInputError) as err:
        validate_tables(_events_only(path), tmp_path / "work")
    assert "duplicate column name(s) ['ts']" in str(err.value) and "events.csv" in str(err.value)
    assert err.value.table == "events" and err.value.config_key == "data.events.path"


# ------------------------------------------------------------------------------------- timestamps


def test_epoch_seconds_and_milliseconds_as_csv_text(tmp_path):
    path = tmp_path / "events.csv"
    path.write_text("cid,ts,amount\na,1704067200,1\nb, 1704153600 ,2\n")
    validate_tables(_events_only(path), tmp_path / "s")
    assert _validated(tmp_path / "s", "events")["timestamp"] == [datetime(2024, 1, 1), datetime(2024, 1, 2)]
    path.write_text("cid,ts,amount\na,1704067200500,1\n")
    validate_tables(_events_only(path, timestamp_unit="ms"), tmp_path / "ms")
    assert _validated(tmp_path / "ms", "events")["timestamp"] == [datetime(2024, 1, 1, 0, 0, 0, 500_000)]


def test_bad_timestamp_unit_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError) as err:
        _events_only(tmp_path / "e.csv", timestamp_unit="days")
    assert err.value.config_key == "data.events.timestamp_unit"


def test_yyyymmdd_numbers_ask_for_a_format(tmp_path):
    path = tmp_path / "events.csv"
    path.write_text("cid,ts,amount\na,20110901,1\nb,20111231,2\n")
    with pytest.raises(UserInputError) as err:
        validate_tables(_events_only(path), tmp_path / "work")
    assert "%Y%m%d" in str(err.value) and "20110901" in str(err.value)
    assert err.value.column == "ts" and err.value.config_key == "data.events.timestamp_format"


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_yyyymmdd_format_reads_text_and_integers(tmp_path, suffix):
    path = tmp_path / f"events{suffix}"
    table = pa.table({"cid": ["a", "b"], "ts": pa.array([20110901, 20111231], pa.int64()), "amount": [1.0, 2.0]})
    if suffix == ".csv":
        path.write_text("cid,ts,amount\na,20110901,1\nb,20111231,2\n")
    else:
        pq.write_table(table, path)
    validate_tables(_events_only(path, timestamp_format="%Y%m%d"), tmp_path / "work")
    assert _validated(tmp_path / "work", "events")["timestamp"] == [datetime(2011, 9, 1), datetime(2011, 12, 31)]


# ----------------------------------------------------------------------------------------- labels


def test_telecom_table_with_yes_no_labels_and_blank_numbers(tmp_path):
    customers = tmp_path / "telco.csv"
    customers.write_text(
        "customerID,tenure,TotalCharges,Partner,Churn,Promo\n"
        "7590-VHVEG,1,29.85,Yes,No,Y\n"
        "5575-GNVDE,34,1889.5,No,Yes,n\n"
        "4472-LVYGI,0, ,Yes,No,true\n"
        "3668-QPYBK,2,108.15,No,YES,\n"
        "9237-HQITU,2,151.65,No,no,0\n")
    mapping = DataMapping.from_dict({
        "customers": {"path": str(customers), "columns": {"customer_id": "customerID"},
                      "numeric": ["tenure", "TotalCharges"], "categorical": ["Partner"], "labels": ["Churn", "Promo"]},
        "events": {"path": None},
    })
    report = validate_tables(mapping, tmp_path / "work")
    out = _validated(tmp_path / "work", "customers")
    assert out["Churn"] == [0.0, 1.0, 0.0, 1.0, 0.0]
    assert out["Promo"] == [1.0, 0.0, 1.0, None, 0.0]
    assert out["TotalCharges"][2] is None and out["tenure"][2] == 0.0
    assert report["n_customers"] == 5


# ---------------------------------------------------------------------------- duplicate customers


def _customers_with_duplicates(tmp_path):
    path = tmp_path / "customers.csv"
    path.write_text("cid,plan,updated\n"
                    "a,basic,2024-03-01\n"
                    "b,gold,2024-01-01\n"
                    "a,gold,2024-05-01\n"
                    "a,silver,2024-04-01\n"
                    "c,basic,\n"
                    "c,gold,2024-01-01\n")
    return path


def _dup_mapping(path, policy, order_by=None):
    return DataMapping.from_dict({
        "customers": {"path": str(path), "columns": {"customer_id": "cid"}, "categorical": ["plan"],
                      "order_by": order_by},
        "events": {"path": None},
        "policy": {"duplicate_customer": policy},
    })


def test_duplicate_customers_error_by_default(tmp_path):
    with pytest.raises(UserInputError, match="duplicate_customer") as err:
        validate_tables(_dup_mapping(_customers_with_duplicates(tmp_path), "error"), tmp_path / "work")
    assert "'a' appears 3 times" in str(err.value)


@pytest.mark.parametrize(("policy", "order_by", "plans", "reason"), [
    ("first", None, ["basic", "gold", "basic"], "duplicate customer: kept the first in row order"),
    ("last", None, ["silver", "gold", "gold"], "duplicate customer: kept the last in row order"),
    ("last", "updated", ["gold", "gold", "gold"], "duplicate customer: kept the last by updated"),
    ("first", "updated", ["basic", "gold", "gold"], "duplicate customer: kept the first by updated"),
])
def test_duplicate_customers_keep_one(tmp_path, caplog, policy, order_by, plans, reason):
    work = tmp_path / "work"
    with caplog.at_level(logging.INFO, logger="gpuseg.data.validate"):
        report = validate_tables(_dup_mapping(_customers_with_duplicates(tmp_path), policy, order_by), work)
    out = _validated(work, "customers")
    # a row without an order_by value never wins (customer c)
    assert sorted(out["customer_id"]) == ["a", "b", "c"]
    assert dict(zip(out["customer_id"], out["plan"], strict=True)) == dict(zip("abc", plans, strict=True))
    assert report["tables"]["customers"]["rejected"] == {reason: 3}
    assert report["tables"]["customers"]["rows_kept"] == 3
    rejects = pq.read_table(work / "validated" / "rejects" / "customers.parquet").to_pylist()
    assert {r["reason"] for r in rejects} == {reason} and len(rejects) == 3
    # the kept rows stay in row order: the rows not set aside, in the file's order
    kept_rows = sorted(set(range(6)) - {r["row"] for r in rejects})
    assert out["customer_id"] == ["abaacc"[i] for i in kept_rows]
    assert all(json.loads(r["record"])["cid"] in "ac" for r in rejects)
    assert any("3 rows of 2 duplicated ids set aside" in m for m in caplog.messages)
    assert json.loads((work / "validated" / "validation.json").read_text())["tables"]["customers"]["rejected"] == {
        reason: 3}


def test_duplicate_customer_policy_values_are_checked(tmp_path):
    with pytest.raises(ConfigError) as err:
        _dup_mapping(tmp_path / "c.csv", "newest")
    assert err.value.config_key == "data.policy.duplicate_customer"


# ------------------------------------------------------------------------------- customers only


def test_customers_only_data(tmp_path):
    work = tmp_path / "work"
    stale = work / "validated" / "events.parquet"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"from an earlier run")
    customers = tmp_path / "customers.csv"
    customers.write_text("cid,age\na,30\nb,41\n")
    texts = tmp_path / "texts.csv"
    texts.write_text("cid,body\na,great service\nb,slow delivery\n")
    mapping = DataMapping.from_dict({
        "customers": {"path": str(customers), "columns": {"customer_id": "cid"}, "numeric": ["age"]},
        "events": {"path": None, "columns": {"customer_id": "whatever"}},
        "texts": {"path": str(texts), "columns": {"customer_id": "cid", "timestamp": None, "source": None,
                                                  "text": "body", "rating": None}, "source_constant": "review"},
    })
    report = validate_tables(mapping, work, as_of="2024-06-01")
    out = work / "validated"
    assert not stale.exists()
    schema = json.loads((out / "schema.json").read_text())
    assert schema["events"] is None and schema["tables"] == ["customers", "texts"]
    assert schema["texts"]["sources"] == {"review": 2}
    assert set(report["tables"]) == {"customers", "texts"} and report["warnings"] == []
    assert json.loads((out / "validation.json").read_text())["tables"].keys() == {"customers", "texts"}


def test_no_events_needs_a_customers_table():
    with pytest.raises(ConfigError) as err:
        DataMapping.from_dict({"customers": {"path": None}, "events": {"path": None}})
    assert err.value.config_key == "data.customers.path"


# -------------------------------------------------------------------------------- mismatched ids


def test_integer_ids_against_zero_padded_ids(tmp_path):
    customers = tmp_path / "customers.csv"
    customers.write_text("cid,age\n00042,30\n00007,41\n")
    events = tmp_path / "events.parquet"
    pq.write_table(pa.table({"cid": [42, 7, 42], "ts": ["2024-01-01"] * 3, "amount": [1.0, 2.0, 3.0]}), events)
    mapping = DataMapping.from_dict({
        "customers": {"path": str(customers), "columns": {"customer_id": "cid"}},
        "events": {"path": str(events), "columns": dict(EVENT_COLUMNS), "event_type_rule": {"constant": "purchase"}},
    })
    with pytest.raises(UserInputError) as err:
        validate_tables(mapping, tmp_path / "work")
    text = str(err.value)
    assert "3 of 3 events rows" in text and "'42'" in text and "'00042'" in text
    assert "data.policy.unknown_customer" in text and "data.customers.columns.customer_id" in text
    assert err.value.config_key == "data.events.columns.customer_id"
    rejects = tmp_path / "work" / "validated" / "rejects" / "events.parquet"
    assert str(rejects) in text and pq.read_table(rejects).num_rows == 3


def test_mismatched_ids_under_the_error_policy(tmp_path):
    customers = tmp_path / "customers.csv"
    customers.write_text("cid\n00042\n")
    events = tmp_path / "events.csv"
    events.write_text("cid,ts,amount\n42,2024-01-01,1\n")
    mapping = DataMapping.from_dict({
        "customers": {"path": str(customers), "columns": {"customer_id": "cid"}},
        "events": {"path": str(events), "columns": dict(EVENT_COLUMNS), "event_type_rule": {"constant": "purchase"}},
        "policy": {"unknown_customer": "error"},
    })
    with pytest.raises(UserInputError, match="write ids differently"):
        validate_tables(mapping, tmp_path / "work")


# ------------------------------------------------------------------------------------------ as_of


def _dated_events(tmp_path):
    path = tmp_path / "events.csv"
    path.write_text("cid,ts,amount\na,2024-01-01 10:00:00,1\nb,2024-03-01 08:00:00,2\n")
    return _events_only(path)


def test_as_of_before_the_first_event_is_an_error(tmp_path):
    with pytest.raises(UserInputError) as err:
        validate_tables(_dated_events(tmp_path), tmp_path / "work", as_of="2023-12-31")
    assert err.value.config_key == "data.as_of"
    assert "2024-01-01 10:00:00" in str(err.value) and "2024-03-01 08:00:00" in str(err.value)


def test_as_of_after_the_last_event_is_a_warning(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="gpuseg.data.validate"):
        report = validate_tables(_dated_events(tmp_path), tmp_path / "work", as_of="2024-06-30")
    assert len(report["warnings"]) == 1 and "nothing is held out" in report["warnings"][0]
    assert "2024-03-01 08:00:00" in report["warnings"][0] and caplog.messages == report["warnings"]
    written = json.loads((tmp_path / "work" / "validated" / "validation.json").read_text())
    assert written["warnings"] == report["warnings"]
    inside = validate_tables(_dated_events(tmp_path), tmp_path / "inside", as_of="2024-02-01")
    assert inside["warnings"] == []
