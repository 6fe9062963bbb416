"""Named sources and a SQL query per table (DuckDB): real multi-file data through configuration alone."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gpuseg.data.mapping import DataMapping
from gpuseg.data.sources import SourceDatabase, ordered_query, sql_literal
from gpuseg.data.validate import validate_tables
from gpuseg.runtime.errors import ConfigError, UserInputError

CHINOOK = Path(__file__).resolve().parents[2] / "shared" / "data" / "chinook"

# one event per invoice: its total, and its most frequent genre (ties go to the first name)
CHINOOK_EVENTS = """
select i.CustomerId as customer_id, i.InvoiceDate as ts, i.Total as amount, g.genre, i.InvoiceId as invoice
from invoices i
left join (
    select InvoiceId, genre from (
        select il.InvoiceId, g.Name as genre,
               row_number() over (partition by il.InvoiceId order by count(*) desc, g.Name) as rn
        from lines il join tracks t on t.TrackId = il.TrackId join genres g on g.GenreId = t.GenreId
        group by il.InvoiceId, g.Name
    ) where rn = 1
) g on g.InvoiceId = i.InvoiceId;  -- a trailing semicolon and comment are fine
"""

EVENT_COLUMNS = {"customer_id": "customer_id", "timestamp": "ts", "event_type": None, "amount": "amount",
                 "category": "genre", "channel": None}


def _chinook_mapping(**events) -> DataMapping:
    return DataMapping.from_dict({
        "dir": str(CHINOOK),
        "sources": {"invoices": str(CHINOOK / "invoice.csv"), "lines": str(CHINOOK / "invoiceline.csv"),
                    "tracks": str(CHINOOK / "track.csv"), "genres": {"path": str(CHINOOK / "genre.csv")},
                    "people": {"path": str(CHINOOK / "customer.csv"), "format": "csv", "delimiter": ","}},
        "customers": {"path": None, "query": "select CustomerId as id, Country from people",
                      "columns": {"customer_id": "id"}, "categorical": ["Country"]},
        "events": {"path": None, "query": CHINOOK_EVENTS, "columns": EVENT_COLUMNS,
                   "event_type_rule": {"constant": "purchase"}, "extra_columns": {"invoice": "invoice"},
                   **events},
        "texts": {"path": None},
    })


def test_chinook_invoices_become_one_event_each(tmp_path):
    report = validate_tables(_chinook_mapping(), tmp_path / "a", as_of="2024-01-01")
    out = tmp_path / "a" / "validated"
    assert report["n_customers"] == 59
    assert report["tables"]["events"]["rows_kept"] == 412 and report["tables"]["events"]["rejected"] == {}
    events = pq.read_table(out / "events.parquet").to_pydict()
    assert round(sum(events["amount"]), 2) == 2328.6
    assert events["category"].count(None) == 0 and set(events["event_type"]) == {"purchase"}
    by_invoice = dict(zip(events["invoice"], events["category"], strict=True))
    assert by_invoice["1"] == "Rock" and by_invoice["5"] == "Metal"
    # ties: invoice 15 has one Alternative & Punk and one Jazz track, 38 three Jazz and three Metal
    assert by_invoice["15"] == "Alternative & Punk" and by_invoice["38"] == "Jazz"
    # the imposed order is that of the query's columns: numeric customer ids, then time
    keys = list(zip((int(c) for c in events["customer_id"]), events["timestamp"], strict=True))
    assert keys == sorted(keys)
    customers = pq.read_table(out / "customers.parquet").to_pydict()
    assert customers["customer_id"][:3] == ["1", "2", "3"] and customers["Country"][0] == "Brazil"
    schema = json.loads((out / "schema.json").read_text())
    assert schema["tables"] == ["customers", "events"] and schema["events"]["first"] == "2021-01-01 00:00:00"


def test_query_output_is_the_same_bit_for_bit(tmp_path):
    mapping = _chinook_mapping()
    mapping.batch_size = 100  # several batches, as for a large result
    for run in ("a", "b"):
        validate_tables(mapping, tmp_path / run)
    for name in ("events.parquet", "customers.parquet"):
        a = (tmp_path / "a" / "validated" / name).read_bytes()
        assert a == (tmp_path / "b" / "validated" / name).read_bytes()


def test_ordered_query_wraps_for_a_total_order():
    sql = ordered_query("select ';' as x -- one\n; -- two\n")
    assert sql == "select * from (\nselect ';' as x\n) order by all"
    assert ordered_query("select 1 -- c") == "select * from (\nselect 1\n) order by all"


def test_sql_literals_for_read_csv_options():
    assert sql_literal({"id": "VARCHAR", "n": [1, 2.5, None, True]}) == "{'id': 'VARCHAR', 'n': [1, 2.5, NULL, true]}"
    assert sql_literal("it's") == "'it''s'"


def _orders(tmp_path, *, ids="customer_key", delimiter=","):
    d = delimiter
    (tmp_path / "orders.csv").write_text(
        f"order_id{d}customer_key{d}created_at{d}total\n1{d}k1{d}2024-01-05 10:00:00{d}12.5\n"
        f"2{d}k2{d}2024-01-06 11:00:00{d}3\n3{d}k1{d}2024-02-01 09:30:00{d}7.25\n")
    with gzip.open(tmp_path / "people.csv.gz", "wt") as f:
        f.write(f"{ids},person_id\nk1,00042\nk2,00007\n")
    return {"orders": str(tmp_path / "orders.csv"),
            "people": {"path": str(tmp_path / "people.csv.gz"), "options": {"all_varchar": True}}}


QUERY = ("select p.person_id as customer_id, o.created_at as timestamp, o.total as amount "
         "from orders o join people p using (customer_key)")


def _query_mapping(sources, query=QUERY, **extra):
    return DataMapping.from_dict({
        "sources": sources,
        "customers": {"path": None},
        "events": {"path": None, "query": query,
                   "columns": {"customer_id": "customer_id", "timestamp": "timestamp", "event_type": None,
                               "amount": "amount", "category": None, "channel": None},
                   "event_type_rule": {"constant": "purchase"}},
        **extra,
    })


def test_join_of_two_files_keeps_zero_padded_ids_as_text(tmp_path):
    validate_tables(_query_mapping(_orders(tmp_path)), tmp_path / "work")
    events = pq.read_table(tmp_path / "work" / "validated" / "events.parquet").to_pydict()
    assert events["customer_id"] == ["00007", "00042", "00042"]
    assert events["amount"] == [3.0, 12.5, 7.25]


def test_whitespace_and_semicolon_sources(tmp_path):
    (tmp_path / "orders.txt").write_text(
        '   order_id  customer_key   created_at         total\n'
        '   1         "key one"      "2024-01-05 10:00"  12.5\n'
        '\t2\tk2 "2024-01-06 11:00"   3   \n')
    (tmp_path / "people.csv").write_text("customer_key;person_id\nkey one;a\nk2;b\n")
    sources = {"orders": {"path": str(tmp_path / "orders.txt"), "format": "csv", "delimiter": "whitespace"},
               "people": {"path": str(tmp_path / "people.csv"), "delimiter": ";"}}
    validate_tables(_query_mapping(sources), tmp_path / "work")
    events = pq.read_table(tmp_path / "work" / "validated" / "events.parquet").to_pydict()
    assert events["customer_id"] == ["a", "b"] and events["amount"] == [12.5, 3.0]
    assert [str(t) for t in events["timestamp"]] == ["2024-01-05 10:00:00", "2024-01-06 11:00:00"]
    assert not list((tmp_path / "work" / "validated").glob(".gpuseg-sources-*"))  # temp files removed


def test_parquet_folder_source(tmp_path):
    folder = tmp_path / "orders"
    folder.mkdir()
    pq.write_table(pa.table({"cid": ["x", "y"], "ts": ["2024-01-01", "2024-01-02"], "total": [1.0, 2.0]}),
                   folder / "part-0.parquet")
    pq.write_table(pa.table({"cid": ["x"], "ts": ["2024-01-03"], "total": [4.0]}), folder / "part-1.parquet")
    mapping = _query_mapping({"orders": str(folder)},
                             "select cid as customer_id, ts as timestamp, total as amount from orders")
    report = validate_tables(mapping, tmp_path / "work")
    assert report["tables"]["events"]["rows_kept"] == 3 and report["n_customers"] == 2


def test_table_with_path_and_query_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError) as err:
        DataMapping.from_dict({"events": {"path": "e.csv", "query": "select 1"}})
    assert err.value.config_key == "data.events.query" and "not both" in str(err.value)


@pytest.mark.parametrize(("source", "key"), [
    ({"path": "o.csv", "delim": ";"}, "data.sources.orders.delim"),
    ({"path": "o.csv", "delimiter": ";;"}, "data.sources.orders.delimiter"),
    ({"path": "o.csv", "format": "xlsx"}, "data.sources.orders.format"),
    ({"format": "csv"}, "data.sources.orders.path"),
    ({"path": "o.csv", "options": {"all varchar": True}}, "data.sources.orders.options"),
])
def test_bad_source_config_names_the_key(source, key):
    with pytest.raises(ConfigError) as err:
        _query_mapping({"orders": source})
    assert err.value.config_key == key


def test_source_name_must_be_a_sql_name():
    with pytest.raises(ConfigError, match="plain SQL name") as err:
        _query_mapping({"my orders": "o.csv"})
    assert err.value.config_key == "data.sources.my orders"


def test_missing_source_file_names_the_source(tmp_path):
    sources = _orders(tmp_path)
    sources["people"]["path"] = str(tmp_path / "nobody.csv")
    with pytest.raises(UserInputError, match="nobody.csv") as err:
        validate_tables(_query_mapping(sources), tmp_path / "work")
    assert err.value.config_key == "data.sources.people.path"


def test_unknown_read_csv_option_names_the_source(tmp_path):
    sources = _orders(tmp_path)
    sources["people"]["options"] = {"all_varchars": True}
    with pytest.raises(UserInputError, match="all_varchars") as err:
        validate_tables(_query_mapping(sources), tmp_path / "work")
    assert err.value.config_key == "data.sources.people"


@pytest.mark.parametrize(("query", "duckdb_says"), [
    ("selec customer_id from orders", "syntax error"),
    ("select * from ordres", "ordres"),
    ("select nope as customer_id from orders", "nope"),
    ("select cast(customer_key as int) as customer_id from orders", "Conversion Error"),
    ("create table t as select 1; select 1", "one select statement"),
])
def test_query_errors_name_the_table_query_and_duckdb_message(tmp_path, query, duckdb_says):
    with pytest.raises(UserInputError) as err:
        validate_tables(_query_mapping(_orders(tmp_path), query), tmp_path / "work")
    text = str(err.value)
    assert err.value.table == "events" and err.value.config_key == "data.events.query"
    assert duckdb_says in text and query in text


def test_query_missing_a_mapped_column_lists_its_output(tmp_path):
    query = "select customer_key as customer_id, created_at as timestamp from orders"
    with pytest.raises(UserInputError, match="not in the output of the query") as err:
        validate_tables(_query_mapping(_orders(tmp_path), query), tmp_path / "work")
    assert err.value.column == "amount" and err.value.config_key == "data.events.columns"
    assert "'timestamp'" in str(err.value)


def test_source_database_streams_batches(tmp_path):
    from gpuseg.data.mapping import SourceSpec

    path = tmp_path / "n.csv"
    path.write_text("n\n" + "".join(f"{i}\n" for i in range(5000, 0, -1)))
    with SourceDatabase({"n": SourceSpec("n", str(path))}, temp_dir=tmp_path) as db:
        stream = db.query("select n from n", table="events", batch_size=1024)
        batches = list(stream)
        again = pa.Table.from_batches(list(db.query("select n * 2 as m from n", table="events")))
    assert len(batches) > 1 and sum(b.num_rows for b in batches) == 5000
    assert batches[0].column(0)[0].as_py() == 1  # sorted: order by all
    assert again["m"][0].as_py() == 2
    assert not list(tmp_path.glob(".gpuseg-sources-*"))


def test_custom_template_accepts_sources_and_queries(tmp_path):
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    sources = _orders(tmp_path)
    with initialize_config_module(config_module="gpuseg.conf", version_base="1.3"):
        cfg = compose(config_name="validate", overrides=[
            "data=custom", f"paths.data_dir={tmp_path}", "data.as_of=2024-01-31", "data.customers.path=null",
            f"+data.sources.orders={sources['orders']}", f"+data.sources.people.path={sources['people']['path']}",
            "+data.sources.people.options.all_varchar=true", "data.events.path=null",
            f"data.events.query='{QUERY}'", "data.events.columns.event_type=null",
            "data.events.columns.category=null", "data.events.columns.channel=null",
            "data.events.event_type_rule={constant: purchase}"])
    mapping = DataMapping.from_dict(OmegaConf.to_container(cfg.data, resolve=True))
    assert mapping.texts is None and mapping.policy.duplicate_customer == "error"
    report = validate_tables(mapping, tmp_path / "work", as_of="2024-01-31")
    assert report["n_customers"] == 2 and report["warnings"] == []
