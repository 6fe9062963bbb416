"""Per-customer text aggregation, checked by hand on tiny data."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gpuseg.runtime.errors import ConfigError, UserInputError
from gpuseg.text import aggregate_by_customer, customer_text_table

DAY = 86_400 * 1_000_000  # microseconds


@pytest.fixture()
def tiny():
    """4 customers; customer 2 has no text, customer 3 only a text after as_of and an empty one."""
    emb = np.array(
        [
            [1.0, 0.0],  # c0 review, 10 days old
            [0.0, 1.0],  # c0 ticket, today
            [1.0, 1.0],  # c0 review, 20 days old
            [2.0, 4.0],  # c1 ticket, 30 days old
            [5.0, 5.0],  # c3 review, after as_of: excluded everywhere
            [0.0, 0.0],  # c3 empty text (zero row): ignored
            [3.0, 3.0],  # c1 chat, 0 days old
        ],
        dtype=np.float32,
    )
    cust = np.array([0, 0, 0, 1, 3, 3, 1])
    as_of = np.datetime64("2024-06-30T00:00:00", "us")
    age = np.array([10, 0, 20, 30, -5, 1, 0])
    ts = as_of - age * np.timedelta64(1, "D")
    src = np.array(["review", "ticket", "review", "ticket", "review", "review", "chat"])
    return emb, cust, ts, src, as_of


def test_means_counts_and_recency_by_hand(tiny):
    emb, cust, ts, src, as_of = tiny
    out = aggregate_by_customer(emb, cust, ts, src, 4, as_of=as_of, half_life_days=10)

    w = lambda days: 0.5 ** (days / 10)  # noqa: E731
    np.testing.assert_array_equal(out["has_text"], [True, True, False, False])
    np.testing.assert_array_equal(out["all_count"], [3, 2, 0, 0])
    np.testing.assert_array_equal(out["review_count"], [2, 0, 0, 0])
    np.testing.assert_array_equal(out["ticket_count"], [1, 1, 0, 0])
    np.testing.assert_array_equal(out["chat_count"], [0, 1, 0, 0])

    np.testing.assert_allclose(out["all_mean"][0], [2 / 3, 2 / 3], rtol=1e-6)
    np.testing.assert_allclose(out["all_mean"][1], [2.5, 3.5], rtol=1e-6)
    np.testing.assert_allclose(out["review_mean"][0], [1.0, 0.5], rtol=1e-6)

    w0 = np.array([w(10), w(0), w(20)])
    rec0 = (w0[:, None] * emb[[0, 1, 2]]).sum(0) / w0.sum()
    np.testing.assert_allclose(out["all_recency_mean"][0], rec0, rtol=1e-5)
    w1 = np.array([w(30), w(0)])
    rec1 = (w1[:, None] * emb[[3, 6]]).sum(0) / w1.sum()
    np.testing.assert_allclose(out["all_recency_mean"][1], rec1, rtol=1e-5)
    rrev = (np.array([w(10), w(20)])[:, None] * emb[[0, 2]]).sum(0) / (w(10) + w(20))
    np.testing.assert_allclose(out["review_recency_mean"][0], rrev, rtol=1e-5)

    # nobody is dropped: customers without (usable) text get zeros
    for key, value in out.items():
        assert value.shape[0] == 4, key
        if value.ndim == 2:
            assert value.dtype == np.float32 and not value[2:].any(), key
    assert set(out) == {
        "has_text",
        *(f"{s}_{k}" for s in ("all", "chat", "review", "ticket") for k in ("mean", "count", "recency_mean")),
    }


def test_timestamp_forms_order_and_defaults(tiny):
    emb, cust, ts, src, as_of = tiny
    base = aggregate_by_customer(emb, cust, ts, src, 4, as_of=as_of, half_life_days=10)
    as_int = aggregate_by_customer(
        emb, cust, ts.astype(np.int64), src, 4, as_of="2024-06-30", half_life_days=10,
        sources_order=["ticket", "review"],
    )
    assert [k for k in as_int if k.endswith("_count")] == ["all_count", "ticket_count", "review_count"]
    for key in as_int:
        np.testing.assert_allclose(as_int[key], base[key], rtol=1e-6)
    # as_of=None takes the latest timestamp, so the "future" text now counts
    latest = aggregate_by_customer(emb, cust, ts, src, 4)
    assert latest["all_count"][3] == 1 and latest["has_text"][3]
    # a longer half-life weights old texts more, moving the recency mean towards the plain mean
    slow = aggregate_by_customer(emb, cust, ts, src, 4, as_of=as_of, half_life_days=1e6)
    np.testing.assert_allclose(slow["all_recency_mean"][:2], slow["all_mean"][:2], rtol=1e-4)
    # without sources there is only the "all" block
    only_all = aggregate_by_customer(emb, cust, ts, None, 4, as_of=as_of)
    assert sorted(only_all) == ["all_count", "all_mean", "all_recency_mean", "has_text"]


def test_nat_timestamps_and_zero_rows(tiny):
    emb, cust, ts, src, as_of = tiny
    ts = ts.copy()
    ts[3] = np.datetime64("NaT")
    out = aggregate_by_customer(emb, cust, ts, src, 4, as_of=as_of, half_life_days=10)
    assert out["all_count"][1] == 2  # the undated text still counts in the mean
    np.testing.assert_allclose(out["all_recency_mean"][1], emb[6], rtol=1e-6)  # but has no weight
    keep_zero = aggregate_by_customer(
        emb, cust, ts, src, 4, as_of=as_of, half_life_days=10, skip_zero_rows=False
    )
    assert keep_zero["all_count"][3] == 1 and keep_zero["has_text"][3]


def test_empty_input_gives_all_zero_rows():
    out = aggregate_by_customer(
        np.zeros((0, 3), np.float32), np.zeros(0, np.int64), np.zeros(0, "datetime64[us]"),
        np.array([], dtype=str), 5, as_of="2024-01-01",
    )
    assert out["all_mean"].shape == (5, 3) and not out["all_mean"].any()
    assert not out["has_text"].any() and (out["all_count"] == 0).all()


def test_bad_input_errors(tiny):
    emb, cust, ts, src, as_of = tiny
    with pytest.raises(UserInputError, match=r"customer_index must lie in \[0, 3\)"):
        aggregate_by_customer(emb, cust, ts, src, 3, as_of=as_of)
    with pytest.raises(UserInputError, match="shape"):
        aggregate_by_customer(emb, cust[:-1], ts, src, 4, as_of=as_of)
    with pytest.raises(ConfigError, match="half_life_days"):
        aggregate_by_customer(emb, cust, ts, src, 4, as_of=as_of, half_life_days=0)
    with pytest.raises(ConfigError, match="as_of"):
        aggregate_by_customer(emb, cust, ts, src, 4, as_of="not a date")
    with pytest.raises(UserInputError, match="reserved"):
        aggregate_by_customer(emb, cust, ts, np.where(src == "chat", "all", src), 4, as_of=as_of)
    with pytest.raises(UserInputError, match="datetime64 or int64"):
        aggregate_by_customer(emb, cust, ts.astype(str), src, 4, as_of=as_of)
    with pytest.raises(UserInputError, match="2-d"):
        aggregate_by_customer(emb[:, 0], cust, ts, src, 4, as_of=as_of)


def test_customer_table_layouts_round_trip(tiny, tmp_path):
    emb, cust, ts, src, as_of = tiny
    out = aggregate_by_customer(emb, cust, ts, src, 4, as_of=as_of)
    ids = ["c0", "c1", "c2", "c3"]

    table = customer_text_table(out, ids)
    assert table.column_names[:2] == ["customer_id", "has_text"]
    assert table.schema.field("customer_id").type == pa.string()
    assert table.schema.field("all_mean").type == pa.list_(pa.float32(), 2)
    pq.write_table(table, tmp_path / "t.parquet")
    back = pq.read_table(tmp_path / "t.parquet")
    mat = back.column("all_mean").combine_chunks().values.to_numpy().reshape(-1, 2)
    np.testing.assert_array_equal(mat, out["all_mean"])
    frame = back.to_pandas()
    assert frame["has_text"].tolist() == [True, True, False, False]
    np.testing.assert_array_equal(np.stack(frame["review_recency_mean"]), out["review_recency_mean"])

    wide = customer_text_table(out, np.array(ids), layout="columns")
    assert "all_mean_000" in wide.column_names and "all_mean_001" in wide.column_names
    np.testing.assert_array_equal(wide.column("ticket_mean_001").to_numpy(), out["ticket_mean"][:, 1])

    with pytest.raises(UserInputError, match="3 entries"):
        customer_text_table(out, ids[:3])
    with pytest.raises(ConfigError, match="layout"):
        customer_text_table(out, ids, layout="json")
