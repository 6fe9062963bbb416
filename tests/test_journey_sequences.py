"""Sequence building: vocabularies, truncation, step values, and the vectorised path vs a loop."""

from __future__ import annotations

import math
from datetime import datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gpuseg.data.schema import EVENTS
from gpuseg.journey.sequences import (
    NULL,
    PAD,
    UNK,
    SequenceBuilder,
    Vocabulary,
    _customer_time_order,
)
from gpuseg.runtime.errors import ConfigError, UserInputError

AS_OF = datetime(2024, 2, 1)
AS_OF_US = int(np.datetime64(AS_OF, "us").astype(np.int64))


def t(day: int, hour: int = 0) -> datetime:
    return datetime(2024, 1, day) + timedelta(hours=hour)


ROWS = [  # customer, timestamp, event_type, amount, category, channel
    ("c1", t(5), "view", None, "A", "web"),
    ("c1", t(1), "visit", None, None, "web"),  # out of order on purpose
    ("c1", t(6, 12), "purchase", 99.0, "A", "app"),
    ("c1", t(7), "return", -20.0, "A", "store"),
    ("zz", t(3), "visit", None, "Z", "web"),  # unknown customer
    ("c2", t(10), "coupon", 5.0, "B", "email"),
    ("c2", t(11), "visit", None, "C", "web"),
    ("c1", t(31, 23), "visit", None, None, "web"),
    ("c1", AS_OF, "purchase", 10.0, "A", "web"),  # exactly at as_of: excluded
    ("c3", AS_OF + timedelta(days=1), "visit", None, None, "web"),  # only after as_of
]
IDS = ["c3", "c1", "c2", "c4"]  # c4 has no events at all


def events_table(rows=ROWS) -> pa.Table:
    cols = list(zip(*rows, strict=True))
    return pa.Table.from_arrays([pa.array(c, type=f.type) for c, f in zip(cols, EVENTS, strict=True)], schema=EVENTS)


def test_vocabulary_codes_specials_and_limits():
    v = Vocabulary.from_counts({"a": 5, "b": 5, "c": 1, "d": 3}, min_count=2, max_size=2)
    assert v.tokens == ["a", "b"] and len(v) == 5  # ties by value; c below min_count; d cut by size
    codes = v.encode(pa.array(["b", None, "zzz", "a"]))
    assert codes.tolist() == [4, NULL, UNK, 3]
    assert v.decode(np.array([PAD, UNK, NULL, 3])) == ["<pad>", "<unk>", "<null>", "a"]


def test_sequences_hand_checked():
    builder = SequenceBuilder(max_len=3, as_of=AS_OF_US).fit(events_table(), ["c1", "c2"])
    seqs = builder.transform(events_table(), IDS)
    assert seqs.customer_ids.to_pylist() == IDS
    assert seqs.n_events.tolist() == [0, 5, 2, 0]  # c1: 5 events strictly before as_of
    assert seqs.lengths.tolist() == [0, 3, 2, 0]
    et = builder.vocabularies_["event_type"]
    # c1 keeps its last three events, oldest first, left-aligned
    assert et.decode(seqs.categorical[1, :, 0]) == ["purchase", "return", "visit"]
    assert seqs.categorical[0].sum() == 0 and seqs.continuous[3].sum() == 0  # padding only
    cat = builder.vocabularies_["category"]
    assert cat.decode(seqs.categorical[1, :, 1]) == ["A", "A", "<null>"]
    cont = seqs.continuous[1]
    # signed log amounts; the first kept step's gap is measured from the dropped previous event
    assert cont[0, 0] == pytest.approx(math.log1p(99.0))
    assert cont[1, 0] == pytest.approx(-math.log1p(20.0))
    assert cont[2, 0] == 0.0
    assert cont[0, 1] == pytest.approx(math.log1p(36.0))  # Jan 5 00:00 -> Jan 6 12:00
    assert cont[1, 1] == pytest.approx(math.log1p(12.0))
    assert cont[2, 2] == pytest.approx(math.log1p(1.0))  # Jan 31 23:00 -> as_of
    # c2: first event has gap 0; 'C' was seen at fit (c2 is a training customer)
    assert seqs.continuous[2, 0, 1] == 0.0 and seqs.continuous[2, 1, 1] == pytest.approx(math.log1p(24.0))
    assert cat.decode(seqs.categorical[2, :2, 1]) == ["B", "C"]


def test_vocabularies_come_from_training_customers_only():
    builder = SequenceBuilder(max_len=5, as_of=AS_OF_US).fit(events_table(), ["c1"])
    assert "email" not in builder.vocabularies_["channel"].tokens
    seqs = builder.transform(events_table(), ["c2"])
    # c2's coupon, its channel email and categories B, C were never seen in training: <unk>
    assert seqs.categorical[0, 0, 0] == UNK and seqs.categorical[0, 0, 2] == UNK
    assert seqs.categorical[0, 1, 0] != UNK  # visit was seen


def test_state_round_trip_and_parquet_input(tmp_path):
    table = events_table()
    builder = SequenceBuilder(max_len=4, as_of=AS_OF_US, min_count=1).fit(table, ["c1", "c2"])
    path = tmp_path / "events.parquet"
    pq.write_table(table, path)
    builder.save(tmp_path / "vocab.json")
    again = SequenceBuilder.load(tmp_path / "vocab.json")
    a, b = builder.transform(table, IDS), again.transform(path, IDS)
    assert np.array_equal(a.categorical, b.categorical) and np.array_equal(a.continuous, b.continuous)
    assert a.vocab_sizes == b.vocab_sizes


def _random_events(rng, n_customers=60, n_events=1500):
    base = np.datetime64("2024-01-01T00:00:00", "us").astype(np.int64)
    # few distinct times so that ties occur; those keep the table's order
    ts = base + rng.integers(0, 400, n_events) * 3_600_000_000
    cust = rng.integers(0, n_customers + 5, n_events)  # some ids are unknown customers
    types = rng.choice(["a", "b", "c", "d", None], n_events)
    amount = np.where(rng.random(n_events) < 0.3, np.nan, rng.normal(0, 50, n_events))
    table = pa.table({
        "customer_id": pa.array([f"k{c}" for c in cust]),
        "timestamp": pa.array(ts, type=pa.timestamp("us")),
        "event_type": pa.array(types, type=pa.string()),
        "amount": pa.array(amount, from_pandas=True),
        "category": pa.array(rng.choice(["x", "y"], n_events)),
        "channel": pa.array(rng.choice(["w", "m", "s"], n_events)),
    })
    return table, [f"k{i}" for i in range(n_customers)][::-1], int(base + 300 * 3_600_000_000)


def test_vectorised_build_matches_a_per_customer_loop():
    rng = np.random.default_rng(3)
    table, ids, as_of = _random_events(rng)
    L = 7
    builder = SequenceBuilder(max_len=L, as_of=as_of, batch_size=256).fit(table, ids[:30])
    seqs = builder.transform(table, ids)
    rows = table.to_pylist()
    for r, cid in enumerate(ids):
        mine = [(i, row) for i, row in enumerate(rows) if row["customer_id"] == cid
                and int(np.datetime64(row["timestamp"], "us").astype(np.int64)) < as_of]
        mine.sort(key=lambda ir: (ir[1]["timestamp"], ir[0]))  # stable: ties in table order
        assert seqs.n_events[r] == len(mine)
        kept = mine[-L:]
        assert seqs.lengths[r] == len(kept)
        for p, (i, row) in enumerate(kept):
            expected_type = builder.vocabularies_["event_type"].encode(pa.array([row["event_type"]]))[0]
            assert seqs.categorical[r, p, 0] == expected_type
            amount = row["amount"] if row["amount"] is not None and not math.isnan(row["amount"]) else 0.0
            assert seqs.continuous[r, p, 0] == pytest.approx(math.copysign(math.log1p(abs(amount)), amount))
            k = mine.index((i, row))
            gap = 0.0 if k == 0 else (row["timestamp"] - mine[k - 1][1]["timestamp"]).total_seconds() / 3600
            assert seqs.continuous[r, p, 1] == pytest.approx(math.log1p(gap), rel=1e-5)
        assert not seqs.categorical[r, len(kept):].any()


def test_order_falls_back_to_coarser_time_then_two_sorts():
    rng = np.random.default_rng(0)
    cases = [
        (2**20, rng.integers(0, 10**6, 5000)),  # µs fit in the key
        (2**20, rng.integers(0, 10**12, 5000) * 1_000_000),  # only whole seconds fit (and suffice)
        (2**30, rng.integers(0, 2**61, 5000)),  # nothing fits: time sort, then customer sort
    ]
    for n_cust, ts in cases:
        cust = rng.integers(0, n_cust, 5000).astype(np.int32)
        cust[:100] = cust[100:200]  # some customers with many events, some tied times
        ts[:50] = ts[100:150]
        order, sorted_cust = _customer_time_order(cust, ts)
        assert np.array_equal(sorted_cust, cust[order])
        assert np.array_equal(order, np.lexsort((ts, cust)))


def test_errors_name_the_problem():
    with pytest.raises(ConfigError, match="'max_len' parameter of SequenceBuilder must be an int >= 1"):
        SequenceBuilder(max_len=0).fit(events_table())
    with pytest.raises(UserInputError, match="no 'event_type' column"):
        SequenceBuilder().fit(events_table().drop_columns(["event_type"]))
    with pytest.raises(UserInputError, match="not fitted yet"):
        SequenceBuilder().transform(events_table(), IDS)
    with pytest.raises(UserInputError, match="no events of the training customers"):
        SequenceBuilder(as_of=AS_OF_US).fit(events_table(), ["c4"])
    with pytest.raises(UserInputError, match="duplicated ids"):
        SequenceBuilder(as_of=AS_OF_US).fit(events_table()).transform(events_table(), ["c1", "c1"])


def test_prefix_fields_and_identifier_columns():
    """``stock_code[:3]`` is a product-group field; a per-customer invoice id is dropped."""
    rows = []
    for i in range(12):
        for j in range(4):
            rows.append((f"c{i}", t(1 + j), "purchase", f"inv{i}-{j // 2}", ["85099B", "85123A", "22423", "POST"][j]))
    table = pa.table({"customer_id": [r[0] for r in rows], "timestamp": pa.array([r[1] for r in rows], pa.timestamp("us")),
                      "event_type": [r[2] for r in rows], "invoice": [r[3] for r in rows],
                      "stock_code": [r[4] for r in rows]})
    builder = SequenceBuilder(max_len=4, as_of=AS_OF_US, extra_columns=["invoice", "stock_code[:3]"])
    builder.fit(table, [f"c{i}" for i in range(8)])
    assert builder.fields_ == ["event_type", "stock_code[:3]"] and builder.dropped_fields_ == ["invoice"]
    assert sorted(builder.vocabularies_["stock_code[:3]"].tokens) == ["224", "850", "851", "POS"]
    seqs = builder.transform(table, ["c9", "c0"])
    decoded = builder.vocabularies_["stock_code[:3]"].decode(seqs.categorical[1, :, 1])
    assert decoded == ["850", "851", "224", "POS"]
    again = SequenceBuilder.from_dict(builder.to_dict()).transform(table, ["c9", "c0"])
    assert np.array_equal(again.categorical, seqs.categorical)
    # kept on request: drop_identifiers=False
    keep = SequenceBuilder(max_len=4, as_of=AS_OF_US, extra_columns=["invoice"], drop_identifiers=False)
    assert "invoice" in keep.fit(table, ["c0", "c1"]).fields_
