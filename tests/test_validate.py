"""Validation: every fatal problem is a clear error, every recoverable one follows its policy."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import ONLINE_RETAIL, write_table

from gpuseg.data.mapping import DataMapping
from gpuseg.data.schema import EVENTS, TEXTS
from gpuseg.data.validate import validate_tables
from gpuseg.runtime.errors import ConfigError, UserInputError


def _files(tmp_path, *, customers=None, events=None, texts=None, suffix=".parquet"):
    customers = customers if customers is not None else {
        "cid": ["a", "b", "c"], "age": [30.0, None, 41.0], "region": ["n", "s", None], "churned": [0, 1, 0]}
    events = events if events is not None else {
        "cid": ["a", "a", "b", "c"],
        "ts": ["2024-01-01 10:00:00", "2024-02-01 10:00:00", "2024-01-15 12:00:00", "2024-03-01 08:00:00"],
        "type": ["purchase", "purchase", "view", "purchase"],
        "amount": [10.0, 20.0, None, 5.5],
    }
    texts = texts if texts is not None else {
        "cid": ["a", "c"], "ts": ["2024-01-02 00:00:00", "2024-03-02 00:00:00"], "src": ["review", "ticket"],
        "body": ["great", "broken item"], "stars": [5.0, None]}
    paths = {}
    for name, cols in (("customers", customers), ("events", events), ("texts", texts)):
        paths[name] = str(write_table(tmp_path / "in" / f"{name}{suffix}", cols))
    return paths


def _mapping(paths, **changes):
    d = {
        "customers": {"path": paths["customers"], "columns": {"customer_id": "cid"}, "numeric": ["age"],
                      "categorical": ["region"], "labels": ["churned"]},
        "events": {"path": paths["events"], "columns": {"customer_id": "cid", "timestamp": "ts", "event_type": "type",
                                                        "amount": "amount", "category": None, "channel": None}},
        "texts": {"path": paths["texts"], "columns": {"customer_id": "cid", "timestamp": "ts", "source": "src",
                                                      "text": "body", "rating": "stars"}},
        "policy": {},
    }
    for dotted, value in changes.items():
        node = d
        keys = dotted.split("__")
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value
    return DataMapping.from_dict(d)


def _run(tmp_path, mapping):
    return validate_tables(mapping, tmp_path / "work", as_of="2024-06-01")


def test_clean_data_gives_canonical_tables(tmp_path):
    report = _run(tmp_path, _mapping(_files(tmp_path)))
    out = tmp_path / "work" / "validated"
    events = pq.read_table(out / "events.parquet")
    texts = pq.read_table(out / "texts.parquet")
    customers = pq.read_table(out / "customers.parquet")
    assert events.schema.equals(EVENTS)
    assert texts.schema.equals(TEXTS)
    assert customers.column_names == ["customer_id", "age", "region", "churned"]
    assert events.num_rows == 4 and texts.num_rows == 2 and report["n_customers"] == 3
    assert events["timestamp"][0].as_py() == datetime(2024, 1, 1, 10)
    schema = json.loads((out / "schema.json").read_text())
    assert schema["customers"]["labels"] == ["churned"] and schema["as_of"] == "2024-06-01"


def test_csv_input_matches_parquet_input(tmp_path):
    _run(tmp_path, _mapping(_files(tmp_path)))
    a = pq.read_table(tmp_path / "work" / "validated" / "events.parquet")
    other = tmp_path / "csv"
    validate_tables(_mapping(_files(other, suffix=".csv")), other / "work")
    b = pq.read_table(other / "work" / "validated" / "events.parquet")
    assert a.equals(b)


def test_missing_file_names_table_and_key(tmp_path):
    paths = _files(tmp_path)
    paths["events"] = str(tmp_path / "nope.parquet")
    with pytest.raises(UserInputError) as err:
        _run(tmp_path, _mapping(paths))
    assert err.value.table == "events" and err.value.config_key == "data.events.path"
    assert "nope.parquet" in str(err.value)


def test_missing_column_lists_what_the_file_has(tmp_path):
    with pytest.raises(UserInputError) as err:
        _run(tmp_path, _mapping(_files(tmp_path), events__columns__amount="price"))
    assert err.value.column == "price" and "the file has" in str(err.value)
    assert err.value.config_key == "data.events.columns"


def test_unparseable_timestamp_shows_first_rows(tmp_path):
    events = {"cid": ["a", "b"], "ts": ["2024-01-01", "31/12/2024"], "type": ["purchase"] * 2, "amount": [1.0, 2.0]}
    with pytest.raises(UserInputError) as err:
        _run(tmp_path, _mapping(_files(tmp_path, events=events)))
    assert err.value.column == "ts" and "31/12/2024" in str(err.value) and "row 1" in str(err.value)
    assert err.value.config_key == "data.events.timestamp_format"


def test_timestamp_format_fixes_it(tmp_path):
    events = {"cid": ["a", "b"], "ts": ["01/02/2024 10:00", "31/03/2024 11:30"], "type": ["purchase"] * 2,
              "amount": [1.0, 2.0]}
    _run(tmp_path, _mapping(_files(tmp_path, events=events), events__timestamp_format="%d/%m/%Y %H:%M"))
    ts = pq.read_table(tmp_path / "work" / "validated" / "events.parquet")["timestamp"].to_pylist()
    assert ts == [datetime(2024, 2, 1, 10), datetime(2024, 3, 31, 11, 30)]


def test_wrong_type_amount(tmp_path):
    events = {"cid": ["a", "b"], "ts": ["2024-01-01", "2024-01-02"], "type": ["purchase"] * 2, "amount": ["3.5", "ten"]}
    with pytest.raises(UserInputError) as err:
        _run(tmp_path, _mapping(_files(tmp_path, events=events)))
    assert err.value.column == "amount" and "expected a number" in str(err.value) and "'ten'" in str(err.value)


def test_non_finite_amount(tmp_path):
    events = {"cid": ["a", "b"], "ts": ["2024-01-01", "2024-01-02"], "type": ["purchase"] * 2,
              "amount": [1.0, float("inf")]}
    with pytest.raises(UserInputError, match="finite") as err:
        _run(tmp_path, _mapping(_files(tmp_path, events=events)))
    assert err.value.table == "events"


def test_duplicate_customer_ids(tmp_path):
    customers = {"cid": ["a", "b", "a"], "age": [1.0, 2.0, 3.0], "region": ["n", "s", "e"], "churned": [0, 0, 1]}
    with pytest.raises(UserInputError, match="duplicate customer id") as err:
        _run(tmp_path, _mapping(_files(tmp_path, customers=customers)))
    assert "'a' appears 2 times" in str(err.value) and err.value.table == "customers"


def test_integral_float_ids_match_integer_ids(tmp_path):
    # pandas writes integer ids with gaps as float64; the same customer must match across tables
    customers = {"cid": [1, 2, 3], "age": [1.0, 2.0, 3.0], "region": ["n", "s", "e"], "churned": [0, 0, 1]}
    events = {"cid": [1.0, 2.0, None], "ts": ["2024-01-01"] * 3, "type": ["purchase"] * 3, "amount": [1.0, 2.0, 3.0]}
    texts = {"cid": [3], "ts": ["2024-01-01"], "src": ["review"], "body": ["ok"], "stars": [3.0]}
    report = _run(tmp_path, _mapping(_files(tmp_path, customers=customers, events=events, texts=texts)))
    assert report["tables"]["events"]["rows_kept"] == 2
    assert report["tables"]["events"]["rejected"] == {"missing customer_id": 1}
    ids = pq.read_table(tmp_path / "work" / "validated" / "events.parquet")["customer_id"].to_pylist()
    assert ids == ["1", "2"]


@pytest.mark.parametrize("table", ["customers", "events", "texts"])
def test_empty_table(tmp_path, table):
    paths = _files(tmp_path)
    schema = pq.read_schema(paths[table])
    pq.write_table(schema.empty_table(), paths[table])
    with pytest.raises(UserInputError, match="empty") as err:
        _run(tmp_path, _mapping(paths))
    assert err.value.table == table


def test_unknown_customers_policy(tmp_path):
    events = {"cid": ["a", "zz", "b"], "ts": ["2024-01-01"] * 3, "type": ["purchase"] * 3, "amount": [1.0, 2.0, 3.0]}
    # one stranger among known customers (a table of nothing but strangers is an id mismatch)
    texts = {"cid": ["zz", "a"], "ts": ["2024-01-01"] * 2, "src": ["review"] * 2, "body": ["who am i", "me"],
             "stars": [2.0, 3.0]}
    paths = _files(tmp_path, events=events, texts=texts)
    with pytest.raises(UserInputError, match="unknown customer") as err:
        _run(tmp_path, _mapping(paths, policy={"unknown_customer": "error"}))
    assert err.value.config_key == "data.policy.unknown_customer" and "'zz'" in str(err.value)
    report = _run(tmp_path, _mapping(paths))
    assert report["tables"]["events"]["rejected"] == {"unknown customer": 1}
    assert report["tables"]["texts"]["rejected"] == {"unknown customer": 1}
    rejects = pq.read_table(tmp_path / "work" / "validated" / "rejects" / "events.parquet").to_pylist()
    assert rejects[0]["row"] == 1 and rejects[0]["reason"] == "unknown customer"
    assert json.loads(rejects[0]["record"])["cid"] == "zz"


def test_empty_texts_policy(tmp_path):
    # empty texts without a rating follow the policy (rated ones keep their rating: test_validate_texts.py)
    texts = {"cid": ["a", "b", "c"], "ts": ["2024-01-01"] * 3, "src": ["review"] * 3, "body": ["fine", "   ", None],
             "stars": [4.0, None, None]}
    paths = _files(tmp_path, texts=texts)
    with pytest.raises(UserInputError, match="empty text"):
        _run(tmp_path, _mapping(paths, policy={"empty_text": "error"}))
    report = _run(tmp_path, _mapping(paths))
    assert report["tables"]["texts"] == {"rows_read": 3, "rows_kept": 1, "rejected": {"empty text": 2},
                                         "repaired_utf8": 0, "dropped_values": {}}


def test_duplicate_events_policy(tmp_path):
    events = {"cid": ["a", "a", "a", "b"], "ts": ["2024-01-01"] * 4, "type": ["purchase"] * 4,
              "amount": [1.0, 1.0, 2.0, 1.0]}
    paths = _files(tmp_path, events=events)
    with pytest.raises(UserInputError, match="duplicate event"):
        _run(tmp_path, _mapping(paths, policy={"duplicate_event": "error"}))
    report = _run(tmp_path, _mapping(paths))
    assert report["tables"]["events"]["rejected"] == {"duplicate event": 1}
    kept = pq.read_table(tmp_path / "work" / "validated" / "events.parquet")
    assert kept["amount"].to_pylist() == [1.0, 2.0, 1.0]
    assert not (tmp_path / "work" / "validated" / ".events.pass1.parquet").exists()


def test_duplicate_events_above_the_memory_budget_are_found_on_disk(tmp_path, caplog):
    """The same duplicates whether the row hashes are sorted in memory or spilled to disk."""
    n = 30_000
    rng = np.random.default_rng(4)
    ids = np.array([f"c{i}" for i in range(300)])
    cid, day, amount = ids[rng.integers(0, 300, n)], rng.integers(0, 200, n), rng.integers(1, 50, n).astype(float)
    repeat = rng.choice(n, 900, replace=False)  # 900 later rows copy an earlier one
    source = rng.integers(0, n, 900)
    cid[repeat], day[repeat], amount[repeat] = cid[source], day[source], amount[source]
    ts = pa.array(np.datetime64("2024-01-01") + day.astype("timedelta64[D]"), pa.timestamp("us"))
    events = {"cid": cid, "ts": ts, "type": ["purchase"] * n, "amount": amount}
    customers = {"cid": ids, "age": rng.random(300), "region": ["n"] * 300, "churned": [0] * 300}
    texts = {"cid": ["c1"], "ts": ["2024-01-02"], "src": ["review"], "body": ["great"], "stars": [5.0]}
    paths = _files(tmp_path, customers=customers, events=events, texts=texts)
    kept, rejected = {}, {}
    for name, budget in (("memory", 1024), ("disk", 0.05)):
        mapping = _mapping(paths)
        mapping.batch_size, mapping.memory_mb = 4096, budget
        with caplog.at_level("INFO", logger="gpuseg.data.repeats"):
            report = _run(tmp_path / name, mapping)
        assert ("sorted on disk" in caplog.text) == (name == "disk")
        caplog.clear()
        kept[name] = pq.read_table(tmp_path / name / "work" / "validated" / "events.parquet")
        rejected[name] = report["tables"]["events"]["rejected"]["duplicate event"]
        assert not list((tmp_path / name / "work" / "validated").glob(".repeats-*"))  # spill files removed
    assert kept["disk"].equals(kept["memory"]) and rejected["disk"] == rejected["memory"]
    # every row left is distinct, and no distinct row was lost
    frame = pa.table({"cid": cid, "ts": ts, "amount": amount}).to_pandas()
    assert rejected["memory"] == int(frame.duplicated().sum()) and kept["memory"].num_rows == n - rejected["memory"]
    with pytest.raises(UserInputError, match=r"\d+ duplicate event"):
        mapping = _mapping(paths, policy={"duplicate_event": "error"})
        mapping.memory_mb = 0.05
        _run(tmp_path / "error", mapping)
    with pytest.raises(ConfigError, match="data.memory_mb must be a positive number"):
        _mapping(paths, memory_mb=0)


def test_repeat_finder_keeps_the_first_of_each_hash_in_memory_and_on_disk(tmp_path):
    from gpuseg.data.repeats import RepeatFinder

    rng = np.random.default_rng(0)
    hashes = rng.integers(0, 2**63, 5000, dtype=np.uint64) * np.uint64(2)  # the top bits pick the spill file
    hashes[rng.choice(5000, 400)] = hashes[rng.choice(5000, 400)]
    first = {}
    want = [i for i, h in enumerate(hashes.tolist()) if first.setdefault(h, i) != i]
    for budget in (1 << 30, 1000):
        with RepeatFinder(tmp_path, budget) as finder:
            for start in range(0, 5000, 700):
                finder.add(hashes[start:start + 700])
            assert finder.spilled == (budget == 1000)
            assert finder.repeats().tolist() == want
        assert not list(tmp_path.iterdir())


def test_missing_customer_ids_rejected_with_reason(tmp_path):
    events = {"cid": ["a", None, " ", "b"], "ts": ["2024-01-01"] * 4, "type": ["purchase"] * 4,
              "amount": [1.0, 2.0, 3.0, 4.0]}
    report = _run(tmp_path, _mapping(_files(tmp_path, events=events)))
    assert report["tables"]["events"]["rejected"] == {"missing customer_id": 2}
    with pytest.raises(UserInputError, match="missing customer_id"):
        _run(tmp_path, _mapping(_files(tmp_path, events=events), policy={"missing_customer_id": "error"}))


def test_no_customers_table_and_no_event_type_column(tmp_path):
    """Real transaction logs: ids and country on each line, cancellations by invoice prefix."""
    events = {
        "Invoice": ["1", "1", "C2", "3", "4"],
        "Customer ID": [7.0, 7.0, 7.0, 8.0, None],
        "InvoiceDate": ["2024-01-01 10:00"] * 5,
        "Quantity": [2, 1, -1, -3, 1],
        "Price": [1.5, 4.0, 4.0, 2.0, 9.0],
        "Country": ["UK", "UK", "France", "Spain", "UK"],
    }
    path = write_table(tmp_path / "lines.csv", events)
    mapping = DataMapping.from_dict({
        "customers": {"path": None},
        "events": {"path": str(path), "columns": {"customer_id": "Customer ID", "timestamp": "InvoiceDate",
                                                  "event_type": None, "amount": None, "category": None, "channel": None},
                   "event_type_rule": {"column": "Invoice", "prefix": "C", "match": "cancellation",
                                       "otherwise": "purchase"},
                   "amount_product": ["Quantity", "Price"], "extra_columns": {"invoice": "Invoice"},
                   "attributes": {"categorical": {"country": "Country"}}},
        "texts": {"path": None},
    })
    report = validate_tables(mapping, tmp_path / "work")
    out = tmp_path / "work" / "validated"
    events_out = pq.read_table(out / "events.parquet").to_pydict()
    assert events_out["event_type"] == ["purchase", "purchase", "cancellation", "return"]
    assert events_out["amount"] == [3.0, 4.0, -4.0, -6.0]
    assert events_out["invoice"] == ["1", "1", "C2", "3"]
    customers = pq.read_table(out / "customers.parquet").to_pydict()
    assert customers == {"customer_id": ["7", "8"], "country": ["UK", "Spain"]}
    assert report["tables"]["events"]["rejected"] == {"missing customer_id": 1}


def test_constant_event_type_rule_and_config_errors(tmp_path):
    paths = _files(tmp_path)
    with pytest.raises(ConfigError, match="event_type_rule"):
        _mapping(paths, events__columns__event_type=None)
    m = _mapping(paths, events__columns__event_type=None, events__event_type_rule={"constant": "purchase"})
    _run(tmp_path, m)
    types = pq.read_table(tmp_path / "work" / "validated" / "events.parquet")["event_type"].to_pylist()
    assert types == ["purchase"] * 4
    with pytest.raises(ConfigError) as err:
        _mapping(paths, policy={"unknown_customer": "ignore"})
    assert err.value.config_key == "data.policy.unknown_customer"
    with pytest.raises(ConfigError) as err:
        _mapping(paths, events__colums={})
    assert err.value.config_key == "data.events.colums"


def test_non_utf8_text_is_repaired_not_fatal(tmp_path):
    paths = _files(tmp_path)
    csv = tmp_path / "texts.csv"
    csv.write_bytes(b"cid,ts,src,body,stars\na,2024-01-01,review,caf\xe9 ok,4\nb,2024-01-02,ticket,fine,\n")
    paths["texts"] = str(csv)
    report = _run(tmp_path, _mapping(paths))
    texts = pq.read_table(tmp_path / "work" / "validated" / "texts.parquet")["text"].to_pylist()
    assert texts == ["caf\ufffd ok", "fine"] and report["tables"]["texts"]["repaired_utf8"] == 1


def test_large_input_streams_in_batches(tmp_path):
    n = 50_000
    rng = np.random.default_rng(0)
    ids = np.array([f"c{i}" for i in range(500)])
    events = {"cid": ids[rng.integers(0, 500, n)], "ts": pa.array(rng.integers(0, 10**15, n), pa.timestamp("us")),
              "type": np.array(["view", "purchase"])[rng.integers(0, 2, n)], "amount": rng.random(n)}
    customers = {"cid": ids, "age": rng.random(500), "region": ["n"] * 500, "churned": [0] * 500}
    texts = {"cid": ["c1"], "ts": ["2024-01-02"], "src": ["review"], "body": ["great"], "stars": [5.0]}
    paths = _files(tmp_path, customers=customers, events=events, texts=texts)
    mapping = _mapping(paths)
    mapping.batch_size = 4096
    report = _run(tmp_path, mapping)
    assert report["tables"]["events"]["rows_kept"] == n


@pytest.mark.skipif(not ONLINE_RETAIL.exists(), reason="shared Online Retail data not beside the checkout")
def test_online_retail_example_config_validates_and_features(make_cfg):
    """The documented real-data config runs validate then features with no other step."""
    from gpuseg.jobs import features, validate

    cfg = make_cfg("validate", "data=online_retail", f"paths.data_dir={ONLINE_RETAIL.parent}")
    report = validate.run(cfg)
    events = report["tables"]["events"]
    assert report["n_customers"] == 5942  # as documented with the data
    assert events["rows_read"] == 1_044_847
    assert events["rejected"]["missing customer_id"] == 235_287
    schema = json.loads((Path(cfg.paths.work_dir) / "validated" / "schema.json").read_text())
    assert set(schema["events"]["event_types"]) >= {"purchase", "cancellation"}
    assert schema["customers"] == {"numeric": [], "categorical": ["country"], "labels": [],
                                   "derived_from_events": True}
    cfg = make_cfg("features", "data=online_retail", f"paths.data_dir={ONLINE_RETAIL.parent}")
    result = features.run(cfg)
    table = pq.read_table(result["features_path"])
    assert table.num_rows == 5942 and table["customer_id"].null_count == 0
    # point in time: nobody's recency or tenure reaches past as_of (2011-09-01)
    assert np.nanmin(table["recency_days"].to_numpy(zero_copy_only=False)) >= 0
    assert np.nanmax(table["tenure_days"].to_numpy(zero_copy_only=False)) <= (
        np.datetime64("2011-09-01") - np.datetime64("2009-12-01")).astype(int) + 1
    matrix = pq.read_table(result["matrix_path"])
    values = np.column_stack([matrix[c].to_numpy() for c in matrix.column_names[1:]])
    assert np.isfinite(values).all()
    assert "country=United Kingdom" in matrix.column_names
